//! The price table: USD per million tokens for each model, shipped in `providers/data/prices.toml`
//! and overridden by the config's `[prices]`.
//!
//! Money is counted in integers so that sums are exact: prices in pico-dollars per token
//! (10^-12 USD; $2.50 per million tokens is 2,500,000), amounts in nano-dollars (10^-9 USD). A
//! call's cost is rounded up to the next nano-dollar, once.

use std::collections::HashMap;

use serde::Deserialize;

use crate::usage::Usage;

/// The shipped table (see the file for its format and the date of its prices).
pub const SHIPPED: &str = include_str!("../data/prices.toml");

/// One model's price, in pico-dollars per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Price {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
    pub cache_write: u64,
}

/// A price as written: USD per million tokens.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub input: f64,
    pub output: f64,
    #[serde(default)]
    pub cached_input: Option<f64>,
    #[serde(default)]
    pub cache_write: Option<f64>,
}

/// USD per million tokens -> pico-dollars per token (exact for up to six decimal places).
fn pico(usd_per_million: f64) -> Result<u64, String> {
    if !(0.0..=1.0e6).contains(&usd_per_million) {
        return Err(format!(
            "{usd_per_million} is not a price in USD per million tokens (0 to 1,000,000)"
        ));
    }
    Ok((usd_per_million * 1.0e6).round() as u64)
}

impl TryFrom<RawPrice> for Price {
    type Error = String;

    fn try_from(r: RawPrice) -> Result<Price, String> {
        let input = pico(r.input)?;
        Ok(Price {
            input,
            output: pico(r.output)?,
            cached_input: r.cached_input.map(pico).transpose()?.unwrap_or(input),
            cache_write: r.cache_write.map(pico).transpose()?.unwrap_or(input),
        })
    }
}

impl Price {
    /// The cost of `usage`, in nano-dollars, rounded up.
    pub fn cost(&self, u: &Usage) -> u64 {
        // Each product fits in u128; their sum may not: saturate, never wrap.
        let part = |n: u64, p: u64| u128::from(n) * u128::from(p);
        let pico = part(u.input, self.input)
            .saturating_add(part(u.output, self.output))
            .saturating_add(part(u.cached_input, self.cached_input))
            .saturating_add(part(u.cache_write, self.cache_write));
        u64::try_from(pico.div_ceil(1000)).unwrap_or(u64::MAX)
    }
}

/// Model name (or `upstream/model`) -> price.
#[derive(Debug, Default)]
pub struct PriceTable {
    prices: HashMap<Box<str>, Price>,
    /// Whether any price names an upstream (`upstream/model`): only then is that key built.
    qualified: bool,
}

impl PriceTable {
    /// The shipped table with `overrides` (config `[prices]`) on top.
    pub fn new(overrides: &[(String, Price)]) -> Result<PriceTable, String> {
        let shipped: HashMap<String, HashMap<String, RawPrice>> =
            toml::from_str(SHIPPED).map_err(|e| format!("the shipped price table: {e}"))?;
        let mut prices = HashMap::new();
        for (model, raw) in shipped.into_values().flatten() {
            let p = Price::try_from(raw).map_err(|e| format!("the shipped price of {model}: {e}"))?;
            prices.insert(model.into_boxed_str(), p);
        }
        for (model, p) in overrides {
            prices.insert(model.as_str().into(), *p);
        }
        let qualified = prices.keys().any(|k| k.contains('/'));
        Ok(PriceTable { prices, qualified })
    }

    /// The price of `model` as sent to `upstream`: `upstream/model` first, then `model`, then
    /// the longest listed name that `model` extends with `-` (a dated version).
    pub fn get(&self, upstream: &str, model: &str) -> Option<Price> {
        if self.qualified && !upstream.is_empty() {
            let mut key = String::with_capacity(upstream.len() + 1 + model.len());
            key.push_str(upstream);
            key.push('/');
            key.push_str(model);
            if let Some(p) = self.prices.get(key.as_str()) {
                return Some(*p);
            }
        }
        if let Some(p) = self.prices.get(model) {
            return Some(*p);
        }
        // Dated versions: try each shorter prefix that ends before a `-`.
        let mut end = model.len();
        while let Some(i) = model[..end].rfind('-') {
            if let Some(p) = self.prices.get(&model[..i]) {
                return Some(*p);
            }
            end = i;
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn shipped_table_loads_and_prices_dated_versions() {
        let t = PriceTable::new(&[]).unwrap();
        let p = t.get("openai", "gpt-4o-mini").unwrap();
        assert_eq!(p.input, 150_000);
        assert_eq!(p.output, 600_000);
        assert_eq!(p.cached_input, 75_000);
        assert_eq!(t.get("openai", "gpt-4o-mini-2024-07-18"), Some(p));
        assert_eq!(t.get("", "gpt-4o-2024-08-06").unwrap().input, 2_500_000);
        assert_eq!(
            t.get("anthropic", "claude-sonnet-4-5-20250929")
                .unwrap()
                .cache_write,
            3_750_000
        );
        assert_eq!(t.get("openai", "no-such-model"), None);
        assert_eq!(t.get("openai", "gpt"), None);
    }

    #[test]
    fn overrides_win_and_can_name_an_upstream() {
        let cheap = Price {
            input: 1,
            output: 2,
            cached_input: 1,
            cache_write: 1,
        };
        let t = PriceTable::new(&[("azure/gpt-4o".into(), cheap)]).unwrap();
        assert_eq!(t.get("azure", "gpt-4o"), Some(cheap));
        assert_eq!(t.get("openai", "gpt-4o").unwrap().input, 2_500_000);
    }

    #[test]
    fn sums_saturate_instead_of_wrapping() {
        let p = Price {
            input: u64::MAX,
            output: u64::MAX,
            cached_input: u64::MAX,
            cache_write: u64::MAX,
        };
        let u = Usage {
            input: u64::MAX,
            output: u64::MAX,
            cached_input: u64::MAX,
            cache_write: u64::MAX,
        };
        assert_eq!(p.cost(&u), u64::MAX);
        assert_eq!(u.tokens(), u64::MAX);
        let one_more = Usage {
            input: u64::MAX,
            output: 34,
            ..Usage::default()
        };
        assert_eq!(one_more.tokens(), u64::MAX, "u64::MAX + 34 wrapped to 33");
    }

    #[test]
    fn cost_is_exact_and_rounds_up_once() {
        let p = Price::try_from(RawPrice {
            input: 0.15,
            output: 0.60,
            cached_input: Some(0.075),
            cache_write: None,
        })
        .unwrap();
        let u = Usage {
            input: 1_000_000,
            output: 1_000_000,
            cached_input: 0,
            cache_write: 0,
        };
        // $0.15 + $0.60, in nano-dollars.
        assert_eq!(p.cost(&u), 750_000_000);
        let one = Usage {
            input: 1,
            ..Usage::default()
        };
        assert_eq!(p.cost(&one), 150);
        let cached = Usage {
            cached_input: 3,
            ..Usage::default()
        };
        // 3 x 75,000 pico = 225 nano.
        assert_eq!(p.cost(&cached), 225);
        assert!(
            Price::try_from(RawPrice {
                input: -1.0,
                output: 0.0,
                cached_input: None,
                cache_write: None
            })
            .is_err()
        );
    }
}
