//! Budgets and rate limits: the price table, the reserve-then-settle ledger, RPM/TPM limiters,
//! and the spend the audit log records. The gates that use them are `gates/ratelimit.rs` and
//! `gates/budget.rs`; `docs/budgets.md` is the user's guide.
//!
//! A call's life:
//! 1. The rate-limit gate checks the caller's requests-per-minute and that its tokens-per-minute
//!    allowance is not used up.
//! 2. The budget gate prices the worst case (input estimated from the body, plus `max_tokens`
//!    or the configured cap) and reserves it on every budget account the call charges, all or
//!    none ([`ledger::BudgetStore::reserve`]). The reservation is part of the call's
//!    `call.decision` audit record, which is durable before any answer goes out.
//! 3. The answer is metered as it passes ([`usage::Meter`]); when it ends or the client goes
//!    away, the call is settled with the real usage: the reservation is released, the real
//!    cost charged, the tokens counted against TPM, and the settlement written into the call's
//!    `call.end` record.
//! 4. On start, [`replay`] folds the log: every reservation with its settlement, and every
//!    reservation that never settled (a crash) charged at its reserved amount.

pub mod ledger;
pub use lattice_providers::prices;
pub mod report;
pub use lattice_providers::usage;

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use arc_swap::ArcSwap;
use chrono::{Datelike, TimeZone};
use governor::{DefaultKeyedRateLimiter, Quota};
use serde::{Deserialize, Serialize};

use ledger::{AccountRef, Amount, BudgetStore, Caps};
use prices::{Price, PriceTable, RawPrice};
use usage::{Basis, Usage};

use lattice_providers::CallView;

use crate::identity::Principal;
use crate::pattern::Pattern;

// ---- configuration -----------------------------------------------------------------------

/// `[budgets]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudgets {
    /// IANA time zone the daily and monthly windows follow.
    #[serde(default = "utc")]
    timezone: String,
    /// A model with no price: `deny` the call, or `default` (charge `default_price`, and log).
    #[serde(default)]
    unknown_model: UnknownModel,
    #[serde(default)]
    default_price: Option<RawPrice>,
    /// The output tokens reserved when a request sets no `max_tokens`.
    #[serde(default = "default_max_tokens")]
    default_max_tokens: u64,
    /// Bytes of request body per input token, for the worst-case estimate.
    #[serde(default = "default_bytes_per_token")]
    bytes_per_token: u64,
    /// Cut a stream whose output passes the tokens it reserved.
    #[serde(default)]
    cut_streams: bool,
    /// POSTed a JSON event when a budget reaches 80% and 100%.
    #[serde(default)]
    webhook: Option<String>,
    #[serde(default)]
    limit: Vec<RawLimit>,
}

fn utc() -> String {
    "UTC".into()
}
fn default_max_tokens() -> u64 {
    4096
}
fn default_bytes_per_token() -> u64 {
    3
}

#[derive(Debug, Default, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UnknownModel {
    #[default]
    Deny,
    Default,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Key,
    User,
    Team,
    TeamModel,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Window {
    Daily,
    Monthly,
    Total,
}

/// `[[budgets.limit]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimit {
    name: String,
    scope: Scope,
    window: Window,
    #[serde(default)]
    usd: Option<f64>,
    #[serde(default)]
    tokens: Option<u64>,
    /// Only calls of this team.
    #[serde(default)]
    team: Option<String>,
    /// Only calls of models matching this (`*` at the end for a prefix).
    #[serde(default)]
    model: Option<String>,
}

/// Budgets a policy's `budget` obligation sets are named with this prefix.
pub const POLICY_PREFIX: &str = "policy:";

impl RawLimit {
    /// Checks one budget (`key` names it in errors); its name gets `prefix`.
    fn validate(self, key: &str, prefix: &str) -> Result<Limit, Invalid> {
        let bad = |k: String, m: String| (k, m);
        if self.name.is_empty() {
            return Err(bad(format!("{key}.name"), "must not be empty".into()));
        }
        if self.usd.is_none() && self.tokens.is_none() {
            return Err(bad(key.to_string(), "set usd, tokens or both".into()));
        }
        let nano_usd = self
            .usd
            .map(|u| {
                if (0.0..1.0e9).contains(&u) {
                    Ok((u * 1.0e9).round() as u64)
                } else {
                    Err(bad(format!("{key}.usd"), format!("{u} is not an amount of USD")))
                }
            })
            .transpose()?;
        if let Some(m) = &self.model
            && (m.is_empty() || m.find('*').is_some_and(|i| i + 1 != m.len()))
        {
            return Err(bad(
                format!("{key}.model"),
                format!("\"{m}\": a model name, or a prefix ending in `*`"),
            ));
        }
        Ok(Limit {
            name: format!("{prefix}{}", self.name).into(),
            scope: self.scope,
            window: self.window,
            caps: Caps {
                nano_usd,
                tokens: self.tokens,
            },
            team: self.team,
            model: self.model.as_deref().map(Pattern::new),
        })
    }
}

/// The budgets a policy decision's `budget` obligation sets: one object, or an array of them,
/// each shaped as a `[[budgets.limit]]` (`name`, `scope`, `window`, `usd` and/or `tokens`,
/// optional `team`, `model`). Their names are prefixed `policy:`.
pub fn obligation(v: &serde_json::Value) -> Result<Vec<Limit>, String> {
    let one = |v: &serde_json::Value, i: usize| {
        let raw: RawLimit = serde_json::from_value(v.clone()).map_err(|e| format!("budget[{i}]: {e}"))?;
        raw.validate(&format!("budget[{i}]"), POLICY_PREFIX)
            .map_err(|(k, m)| format!("{k}: {m}"))
    };
    match v {
        serde_json::Value::Array(a) => a.iter().enumerate().map(|(i, v)| one(v, i)).collect(),
        v => one(v, 0).map(|l| vec![l]),
    }
}

/// `[[rate_limits]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    scope: Scope,
    #[serde(default)]
    rpm: Option<u32>,
    #[serde(default)]
    tpm: Option<u32>,
    #[serde(default)]
    team: Option<String>,
}

/// One budget.
#[derive(Debug, Clone)]
pub struct Limit {
    pub name: Arc<str>,
    pub scope: Scope,
    pub window: Window,
    pub caps: Caps,
    team: Option<String>,
    model: Option<Pattern>,
}

/// The validated `[budgets]`, `[prices]` and `[[rate_limits]]`.
#[derive(Debug, Clone)]
pub struct BudgetConfig {
    pub enabled: bool,
    pub timezone: chrono_tz::Tz,
    pub unknown_model: UnknownModel,
    pub default_price: Option<Price>,
    pub default_max_tokens: u64,
    pub bytes_per_token: u64,
    pub cut_streams: bool,
    pub webhook: Option<http::Uri>,
    pub limits: Vec<Limit>,
    pub prices: Vec<(String, Price)>,
    pub rate_limits: Vec<RateLimitConfig>,
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub scope: Scope,
    pub rpm: Option<NonZeroU32>,
    pub tpm: Option<NonZeroU32>,
    pub team: Option<String>,
}

type Invalid = (String, String);

/// Validates the three tables (config keys `budgets`, `prices`, `rate_limits`).
pub fn validate(
    budgets: Option<RawBudgets>,
    prices: BTreeMap<String, RawPrice>,
    rate_limits: Vec<RawRateLimit>,
) -> Result<BudgetConfig, Invalid> {
    let bad = |k: String, m: String| (k, m);
    let prices = prices
        .into_iter()
        .map(|(m, p)| {
            Price::try_from(p)
                .map(|p| (m.clone(), p))
                .map_err(|e| bad(format!("prices.{m}"), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut rates = Vec::new();
    for (i, r) in rate_limits.into_iter().enumerate() {
        let key = format!("rate_limits[{i}]");
        if r.scope == Scope::TeamModel {
            return Err(bad(
                format!("{key}.scope"),
                "rate limits are per key, user or team".into(),
            ));
        }
        if r.rpm.is_none() && r.tpm.is_none() {
            return Err(bad(key, "set rpm, tpm or both".into()));
        }
        let nz = |v: Option<u32>, k: &str| match v {
            None => Ok(None),
            Some(n) => NonZeroU32::new(n)
                .map(Some)
                .ok_or_else(|| bad(format!("{key}.{k}"), "must be greater than 0".into())),
        };
        rates.push(RateLimitConfig {
            scope: r.scope,
            rpm: nz(r.rpm, "rpm")?,
            tpm: nz(r.tpm, "tpm")?,
            team: r.team,
        });
    }
    let Some(b) = budgets else {
        return Ok(BudgetConfig {
            enabled: false,
            timezone: chrono_tz::UTC,
            unknown_model: UnknownModel::Default,
            default_price: None,
            default_max_tokens: default_max_tokens(),
            bytes_per_token: default_bytes_per_token(),
            cut_streams: false,
            webhook: None,
            limits: Vec::new(),
            prices,
            rate_limits: rates,
        });
    };
    let timezone: chrono_tz::Tz = b.timezone.parse().map_err(|_| {
        bad(
            "budgets.timezone".into(),
            format!(
                "\"{}\" is not an IANA time zone (e.g. UTC, Europe/Berlin)",
                b.timezone
            ),
        )
    })?;
    let default_price = b
        .default_price
        .map(Price::try_from)
        .transpose()
        .map_err(|e| bad("budgets.default_price".into(), e))?;
    if b.unknown_model == UnknownModel::Default && default_price.is_none() {
        return Err(bad(
            "budgets.default_price".into(),
            "unknown_model = \"default\" needs a default_price".into(),
        ));
    }
    if b.bytes_per_token == 0 {
        return Err(bad(
            "budgets.bytes_per_token".into(),
            "must be greater than 0".into(),
        ));
    }
    let webhook = b
        .webhook
        .map(|w| {
            w.parse::<http::Uri>()
                .ok()
                .filter(|u| u.scheme_str() == Some("http") || u.scheme_str() == Some("https"))
                .ok_or_else(|| bad("budgets.webhook".into(), format!("\"{w}\" is not an http(s) URL")))
        })
        .transpose()?;
    let mut limits: Vec<Limit> = Vec::with_capacity(b.limit.len());
    for (i, l) in b.limit.into_iter().enumerate() {
        let key = format!("budgets.limit[{i}]");
        if limits.iter().any(|x| *x.name == *l.name) || l.name.starts_with(POLICY_PREFIX) {
            return Err(bad(
                format!("{key}.name"),
                format!("must be unique and not start with `{POLICY_PREFIX}`"),
            ));
        }
        limits.push(l.validate(&key, "")?);
    }
    Ok(BudgetConfig {
        enabled: true,
        timezone,
        unknown_model: b.unknown_model,
        default_price,
        default_max_tokens: b.default_max_tokens,
        bytes_per_token: b.bytes_per_token,
        cut_streams: b.cut_streams,
        webhook,
        limits,
        prices,
        rate_limits: rates,
    })
}

// ---- windows -----------------------------------------------------------------------------

/// The current daily and monthly windows in the configured zone: `[start, end)`, Unix seconds.
#[derive(Debug, Clone, Copy)]
struct Windows {
    day: (i64, i64),
    month: (i64, i64),
}

/// Local midnight of `date` (or the first instant after it, where a DST jump skips midnight).
fn midnight(tz: chrono_tz::Tz, date: chrono::NaiveDate) -> i64 {
    for hour in 0..4 {
        if let Some(t) = date
            .and_hms_opt(hour, 0, 0)
            .and_then(|n| tz.from_local_datetime(&n).earliest())
        {
            return t.timestamp();
        }
    }
    date.and_hms_opt(0, 0, 0).map_or(0, |n| n.and_utc().timestamp())
}

fn windows_at(tz: chrono_tz::Tz, now: i64) -> Windows {
    let local = tz.timestamp_opt(now, 0).single().map_or_else(
        || {
            chrono::DateTime::from_timestamp(now, 0)
                .unwrap_or_default()
                .date_naive()
        },
        |t| t.date_naive(),
    );
    let next_day = local.succ_opt().unwrap_or(local);
    let first = local.with_day(1).unwrap_or(local);
    let next_month = if first.month() == 12 {
        chrono::NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
    } else {
        chrono::NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
    }
    .unwrap_or(first);
    Windows {
        day: (midnight(tz, local), midnight(tz, next_day)),
        month: (midnight(tz, first), midnight(tz, next_month)),
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

// ---- the engine --------------------------------------------------------------------------

type Limiter = DefaultKeyedRateLimiter<String>;

/// (team, model) -> charged.
type Totals = BTreeMap<(Box<str>, Box<str>), Amount>;

/// One Prometheus gauge per budget account: name, help, value.
type Gauge = (
    &'static str,
    &'static str,
    fn(&ledger::AccountState) -> Option<String>,
);

struct RateLimit {
    scope: Scope,
    team: Option<String>,
    rpm: Option<Limiter>,
    tpm: Option<(Limiter, NonZeroU32)>,
}

/// What the budget gate asks the ledger to reserve for.
#[derive(Clone, Copy)]
pub struct Ask<'a> {
    pub principal: Option<&'a Principal>,
    /// The upstream and the model name the call is sent under (what is priced).
    pub upstream: &'a str,
    pub model: &'a str,
    /// The request body's length: the input estimate.
    pub body_len: usize,
    pub max_tokens: Option<u64>,
    /// Choices the answer has (OpenAI `n`): each may reach `max_tokens`.
    pub choices: u64,
    /// False for embeddings: no output tokens.
    pub generates: bool,
    /// Budgets the policy decision set.
    pub from_policy: &'a [Limit],
}

/// A refusal of the constraint gates, for the gates to render.
#[derive(Debug)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

/// Budgets, prices and rate limits, shared by the two gates and every call's settlement.
pub struct Budgets {
    config: BudgetConfig,
    prices: PriceTable,
    store: Arc<dyn BudgetStore>,
    windows: ArcSwap<Windows>,
    rates: Vec<RateLimit>,
    webhook: Option<crate::client::WebhookClient>,
    /// Charged since the process started, by team and model (Prometheus counters).
    totals: std::sync::Mutex<Totals>,
}

/// Whether a rule for `team` (all teams when `None`) applies to the caller.
fn applies(team: Option<&str>, p: Option<&Principal>) -> bool {
    team.is_none_or(|t| p.is_some_and(|p| p.team == t))
}

/// The subject of `scope` for a principal (an anonymous caller's key, user and team are `-`).
fn subject(scope: Scope, p: Option<&Principal>, model: &str) -> String {
    let (key, user, team) = p.map_or(("-", "-", "-"), |p| (&p.id, &p.user, &p.team));
    match scope {
        Scope::Key => key.to_string(),
        Scope::User => user.to_string(),
        Scope::Team => team.to_string(),
        Scope::TeamModel => format!("{team}/{model}"),
    }
}

/// A budget's caps in words: `$10.000000000`, `5000 tokens`, or both.
fn caps_text(c: Caps) -> String {
    match (c.nano_usd, c.tokens) {
        (Some(u), Some(t)) => format!("${} and {t} tokens", usd(u)),
        (Some(u), None) => format!("${}", usd(u)),
        (None, Some(t)) => format!("{t} tokens"),
        (None, None) => "no cap".into(),
    }
}

/// USD with nine decimals (exact).
pub fn usd(nano: u64) -> String {
    format!("{}.{:09}", nano / 1_000_000_000, nano % 1_000_000_000)
}

impl Budgets {
    /// `None` when neither budgets nor rate limits are configured.
    pub fn new(config: BudgetConfig, store: Arc<dyn BudgetStore>) -> Result<Option<Arc<Budgets>>, String> {
        if !config.enabled && config.rate_limits.is_empty() {
            return Ok(None);
        }
        let prices = PriceTable::new(&config.prices)?;
        let windows = ArcSwap::from_pointee(windows_at(config.timezone, unix_now()));
        let rates = config
            .rate_limits
            .iter()
            .map(|r| RateLimit {
                scope: r.scope,
                team: r.team.clone(),
                rpm: r.rpm.map(|n| Limiter::keyed(Quota::per_minute(n))),
                tpm: r.tpm.map(|n| (Limiter::keyed(Quota::per_minute(n)), n)),
            })
            .collect();
        let webhook = config.webhook.clone().map(crate::client::WebhookClient::new);
        Ok(Some(Arc::new(Budgets {
            config,
            prices,
            store,
            windows,
            rates,
            webhook,
            totals: Default::default(),
        })))
    }

    fn windows(&self, now: i64) -> Windows {
        let w = **self.windows.load();
        if now < w.day.1 && now >= w.day.0 {
            return w;
        }
        let fresh = windows_at(self.config.timezone, now);
        self.windows.store(Arc::new(fresh));
        fresh
    }

    /// The window of `kind` at `now`: `(start, end)`; a total budget's is `(0, None)`.
    fn window(&self, kind: Window, now: i64) -> (i64, Option<i64>) {
        match kind {
            Window::Total => (0, None),
            Window::Daily => {
                let d = self.windows(now).day;
                (d.0, Some(d.1))
            }
            Window::Monthly => {
                let m = self.windows(now).month;
                (m.0, Some(m.1))
            }
        }
    }

    /// The price of `model` sent to `upstream`; a model without one is refused, or charged the
    /// default price, as configured (free when only rate limits are configured).
    fn price(&self, upstream: &str, model: &str) -> Result<Price, Refusal> {
        match self.prices.get(upstream, model) {
            Some(p) => Ok(p),
            None if !self.config.enabled => Ok(Price::default()),
            None => match (self.config.unknown_model, self.config.default_price) {
                (UnknownModel::Default, Some(d)) => {
                    tracing::warn!(
                        model,
                        upstream,
                        "no price for this model; charging the default price"
                    );
                    Ok(d)
                }
                _ => Err(Refusal {
                    code: "model_price_unknown",
                    message: format!(
                        "the model `{model}` has no price on this gateway, so its cost cannot be budgeted"
                    ),
                    retry_after: None,
                }),
            },
        }
    }

    /// The worst case of a call: (input tokens estimated from the body, output tokens): the
    /// most any upstream may produce for the request as sent, every choice at its limit.
    fn worst_case(
        &self,
        body_len: usize,
        max_tokens: Option<u64>,
        choices: u64,
        generates: bool,
    ) -> (u64, u64) {
        let input = (body_len as u64).div_ceil(self.config.bytes_per_token);
        let output = if generates {
            max_tokens
                .unwrap_or(self.config.default_max_tokens)
                .saturating_mul(choices.max(1))
        } else {
            0
        };
        (input, output)
    }

    /// `request.estimated_cost_usd` of the policy input: the worst case the budget gate will
    /// reserve, in USD; `None` without a price.
    pub fn estimate(&self, upstream: &str, model: &str, v: &CallView<'_>, body_len: usize) -> Option<f64> {
        let price = self.prices.get(upstream, model)?;
        let (input, output) = self.worst_case(
            body_len,
            v.max_tokens,
            v.choices,
            v.surface != lattice_providers::Surface::Embeddings,
        );
        let nano = price.cost(&Usage {
            input,
            output,
            ..Usage::default()
        });
        Some(nano as f64 / 1e9)
    }

    /// The rate-limit gate: requests per minute, and tokens per minute not used up.
    pub fn check_rates(&self, p: Option<&Principal>) -> Result<(), Refusal> {
        for r in &self.rates {
            if !applies(r.team.as_deref(), p) {
                continue;
            }
            let key = subject(r.scope, p, "");
            let scope = scope_name(r.scope);
            if let Some(l) = &r.rpm
                && let Err(not_until) = l.check_key(&key)
            {
                return Err(rate_refusal("requests", scope, &not_until));
            }
            // A minute's tokens used up by earlier calls (counted when they settled).
            if let Some((l, _)) = &r.tpm
                && let Err(not_until) = l.check_key(&key)
            {
                return Err(rate_refusal("tokens", scope, &not_until));
            }
        }
        Ok(())
    }

    /// The budget gate: prices the call's worst case and reserves it on every budget account
    /// the call charges (the configured budgets and the policy's).
    pub fn reserve(self: &Arc<Self>, call: &Ask<'_>) -> Result<Reservation, Refusal> {
        let Ask {
            principal: p,
            upstream,
            model,
            body_len,
            max_tokens,
            choices,
            generates,
            from_policy,
        } = *call;
        let price = self.price(upstream, model)?;
        let (estimated_input, output) = self.worst_case(body_len, max_tokens, choices, generates);
        let worst = Usage {
            input: estimated_input,
            output,
            ..Usage::default()
        };
        let amount = Amount {
            nano_usd: price.cost(&worst),
            tokens: worst.tokens(),
        };
        let now = unix_now();
        let mut accounts = Vec::new();
        for l in self.config.limits.iter().chain(from_policy) {
            if !applies(l.team.as_deref(), p) || l.model.as_ref().is_some_and(|m| !m.matches(model)) {
                continue;
            }
            let (window, end) = self.window(l.window, now);
            accounts.push(AccountRef {
                budget: l.name.clone(),
                subject: subject(l.scope, p, model).into(),
                window,
                until: end,
                caps: l.caps,
            });
        }
        if let Err(e) = self.store.reserve(&accounts, amount) {
            let end = e.account.until;
            let mut message = format!(
                "budget `{}` for `{}` is exhausted: this call may cost up to ${} and {} tokens; ${} and {} tokens of its {} are spent or reserved",
                e.account.budget,
                e.account.subject,
                usd(amount.nano_usd),
                amount.tokens,
                usd(e.used.nano_usd),
                e.used.tokens,
                caps_text(e.account.caps),
            );
            match end {
                Some(end) => message.push_str(&format!("; the window resets in {} s", end - now)),
                None => message.push_str("; the budget has no window and does not reset"),
            }
            return Err(Refusal {
                code: "budget_exceeded",
                message,
                retry_after: end.map(|e| (e - now).max(1) as u64),
            });
        }
        let tpm = self
            .rates
            .iter()
            .enumerate()
            .filter(|(_, r)| r.tpm.is_some() && applies(r.team.as_deref(), p))
            .map(|(i, r)| (i, subject(r.scope, p, "")))
            .collect();
        let mut id = [0u8; uuid::fmt::Simple::LENGTH];
        let id = uuid::Uuid::new_v4().simple().encode_lower(&mut id);
        Ok(Reservation {
            id: (&*id).into(),
            team: p.map_or("-", |p| p.team.as_str()).into(),
            budgets: self.clone(),
            accounts,
            amount,
            price,
            model: model.into(),
            estimated_input,
            output_cap: output,
            tpm,
            settled: false,
        })
    }

    /// Counts `tokens` against the caller's tokens per minute. Tokens past what a minute holds
    /// empty it; the excess is not carried into the next minute.
    fn count_tokens(&self, tpm: &[(usize, String)], tokens: u64) {
        for (i, key) in tpm {
            let Some((l, cap)) = self.rates.get(*i).and_then(|r| r.tpm.as_ref()) else {
                continue;
            };
            // The request itself took one cell at the gate. Take the rest in the largest
            // pieces the limiter still has, until it is all taken or the limiter is empty.
            let mut want = u32::try_from(tokens.saturating_sub(1))
                .unwrap_or(u32::MAX)
                .min(cap.get());
            let mut step = want;
            while let Some(n) = NonZeroU32::new(step.min(want)) {
                match l.check_key_n(key, n) {
                    Ok(Ok(())) => want -= n.get(),
                    _ => step /= 2,
                }
            }
        }
    }

    fn crossed(&self, crossings: Vec<ledger::Crossing>) {
        for c in crossings {
            tracing::warn!(
                target: "lattice::budget",
                budget = %c.account.budget,
                subject = %c.account.subject,
                threshold = c.threshold,
                spent_usd = %usd(c.spent.nano_usd),
                spent_tokens = c.spent.tokens,
                "budget threshold reached"
            );
            if let Some(w) = &self.webhook {
                w.post(serde_json::json!({
                    "event": "budget.threshold",
                    "budget": &*c.account.budget,
                    "subject": &*c.account.subject,
                    "window_start": c.account.window,
                    "threshold_percent": c.threshold,
                    "spent_usd": usd(c.spent.nano_usd),
                    "spent_tokens": c.spent.tokens,
                    "limit_usd": c.account.caps.nano_usd.map(usd),
                    "limit_tokens": c.account.caps.tokens,
                }));
            }
        }
    }

    /// The Prometheus text exposition of spend and budgets.
    pub fn metrics(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let totals = self.totals.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let _ = writeln!(
            out,
            "# HELP lattice_spend_usd_total USD charged since the gateway started."
        );
        let _ = writeln!(out, "# TYPE lattice_spend_usd_total counter");
        for ((team, model), a) in &totals {
            let _ = writeln!(
                out,
                "lattice_spend_usd_total{{team=\"{}\",model=\"{}\"}} {}",
                label(team),
                label(model),
                usd(a.nano_usd)
            );
        }
        let _ = writeln!(
            out,
            "# HELP lattice_spend_tokens_total Tokens charged since the gateway started."
        );
        let _ = writeln!(out, "# TYPE lattice_spend_tokens_total counter");
        for ((team, model), a) in &totals {
            let _ = writeln!(
                out,
                "lattice_spend_tokens_total{{team=\"{}\",model=\"{}\"}} {}",
                label(team),
                label(model),
                a.tokens
            );
        }
        let accounts = self.store.accounts();
        let gauges: [Gauge; 6] = [
            (
                "lattice_budget_spent_usd",
                "USD spent in the budget's current window.",
                |a| Some(usd(a.spent.nano_usd)),
            ),
            (
                "lattice_budget_reserved_usd",
                "USD reserved by calls in flight.",
                |a| Some(usd(a.reserved.nano_usd)),
            ),
            (
                "lattice_budget_remaining_usd",
                "USD left in the window (spent and reserved taken off).",
                |a| {
                    a.account
                        .caps
                        .nano_usd
                        .map(|c| usd(c.saturating_sub(a.spent.nano_usd + a.reserved.nano_usd)))
                },
            ),
            (
                "lattice_budget_spent_tokens",
                "Tokens spent in the budget's current window.",
                |a| Some(a.spent.tokens.to_string()),
            ),
            (
                "lattice_budget_reserved_tokens",
                "Tokens reserved by calls in flight.",
                |a| Some(a.reserved.tokens.to_string()),
            ),
            (
                "lattice_budget_remaining_tokens",
                "Tokens left in the window.",
                |a| {
                    a.account
                        .caps
                        .tokens
                        .map(|c| c.saturating_sub(a.spent.tokens + a.reserved.tokens).to_string())
                },
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for a in &accounts {
                if let Some(v) = value(a) {
                    let _ = writeln!(
                        out,
                        "{name}{{budget=\"{}\",subject=\"{}\"}} {v}",
                        label(&a.account.budget),
                        label(&a.account.subject)
                    );
                }
            }
        }
        out
    }

    /// The caps of the budget named `name` in the current config, with its current window.
    fn current(&self, name: &str, now: i64) -> Option<(Caps, i64)> {
        let l = self.config.limits.iter().find(|l| &*l.name == name)?;
        Some((l.caps, self.window(l.window, now).0))
    }

    /// Rebuilds the spend of the current windows from the audit log.
    pub fn restore(&self, storage: &dyn lattice_audit::Storage) -> std::io::Result<RestoreSummary> {
        let now = unix_now();
        let mut summary = RestoreSummary::default();
        report::replay(storage, |c| {
            summary.calls += 1;
            if c.settlement.is_none() {
                summary.unsettled += 1;
            }
            let charged = c.charged();
            let accounts: Vec<AccountRef> = c
                .accounts
                .into_iter()
                .filter_map(|mut a| {
                    // A policy's budget: current while its window lasts (its caps come with the
                    // next call). A configured one: current in its configured window.
                    if a.budget.starts_with(POLICY_PREFIX) {
                        return (a.window <= now && a.until.is_none_or(|u| now < u)).then_some(a);
                    }
                    let (caps, window) = self.current(&a.budget, now)?;
                    (a.window == window).then(|| {
                        a.caps = caps;
                        a
                    })
                })
                .collect();
            if !accounts.is_empty() {
                self.store.restore(&accounts, charged);
                summary.restored_nano_usd += charged.nano_usd;
            }
        })?;
        Ok(summary)
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct RestoreSummary {
    pub calls: u64,
    pub unsettled: u64,
    pub restored_nano_usd: u64,
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn scope_name(s: Scope) -> &'static str {
    match s {
        Scope::Key => "key",
        Scope::User => "user",
        Scope::Team => "team",
        Scope::TeamModel => "team and model",
    }
}

fn rate_refusal(
    what: &str,
    scope: &str,
    not_until: &governor::NotUntil<governor::clock::QuantaInstant>,
) -> Refusal {
    let wait = not_until.wait_time_from(governor::clock::Clock::now(
        &governor::clock::DefaultClock::default(),
    ));
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Refusal {
        code: "rate_limit_exceeded",
        message: format!(
            "the {scope}'s {what}-per-minute limit is reached; retry in {} s",
            secs.max(1)
        ),
        retry_after: Some(secs.max(1)),
    }
}

/// A call's reservation, from the budget gate until its settlement. Dropped unsettled (the call
/// never reached an upstream), it is released and charges nothing.
pub struct Reservation {
    /// Names the reservation in the log: its decision record and its settlement carry it (a
    /// random id, so a call whose client leaves before its decision is acknowledged is still
    /// matched).
    pub id: Box<str>,
    budgets: Arc<Budgets>,
    team: Box<str>,
    pub accounts: Vec<AccountRef>,
    pub amount: Amount,
    price: Price,
    pub model: Box<str>,
    estimated_input: u64,
    output_cap: u64,
    tpm: Vec<(usize, String)>,
    settled: bool,
}

/// What the `call.decision` record holds of a reservation.
#[derive(Serialize, Deserialize)]
pub struct Reserved<'a> {
    #[serde(borrow)]
    pub id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub model: std::borrow::Cow<'a, str>,
    pub reserved: Amount,
    pub accounts: std::borrow::Cow<'a, [AccountRef]>,
}

/// What the `call.end` record holds of a settlement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Settlement {
    /// The reservation's id (its `call.decision` record holds the reservation).
    pub id: String,
    pub basis: Basis,
    pub usage: Usage,
    pub charged: Amount,
}

impl Reservation {
    pub fn record(&self) -> Reserved<'_> {
        Reserved {
            id: std::borrow::Cow::Borrowed(&self.id),
            model: std::borrow::Cow::Borrowed(&self.model),
            reserved: self.amount,
            accounts: std::borrow::Cow::Borrowed(&self.accounts),
        }
    }

    /// Re-prices the reservation for a fallback deployment (`upstream`, `model`): a worst case
    /// that costs more there is reserved in addition, or refused when the budgets cannot hold it.
    pub fn reprice(&mut self, upstream: &str, model: &str) -> Result<(), Refusal> {
        let price = self.budgets.price(upstream, model)?;
        if price != self.price {
            let worst = Usage {
                input: self.estimated_input,
                output: self.output_cap,
                ..Usage::default()
            };
            let nano = price.cost(&worst);
            if let Some(more) = nano.checked_sub(self.amount.nano_usd).filter(|m| *m > 0) {
                let more = Amount {
                    nano_usd: more,
                    tokens: 0,
                };
                self.budgets
                    .store
                    .reserve(&self.accounts, more)
                    .map_err(|e| Refusal {
                        code: "budget_exceeded",
                        message: format!(
                            "budget `{}` for `{}` cannot hold this call's worst case at `{upstream}`",
                            e.account.budget, e.account.subject
                        ),
                        retry_after: None,
                    })?;
                self.amount.nano_usd = nano;
            }
            self.price = price;
        }
        if *self.model != *model {
            self.model = model.into();
        }
        Ok(())
    }

    /// The most output tokens a stream may produce before it is cut (`cut_streams`).
    pub fn output_cap(&self) -> Option<u64> {
        self.budgets.config.cut_streams.then_some(self.output_cap)
    }

    pub fn estimated_input(&self) -> u64 {
        self.estimated_input
    }

    /// Settles with what the call used, once.
    pub fn settle(&mut self, usage: Usage, basis: Basis) -> Amount {
        let charged = match basis {
            Basis::Reserved => self.amount,
            _ => Amount {
                nano_usd: self.price.cost(&usage),
                tokens: usage.tokens(),
            },
        };
        self.settled = true;
        let crossings = self.budgets.store.settle(&self.accounts, self.amount, charged);
        self.budgets.count_tokens(&self.tpm, charged.tokens);
        self.budgets.crossed(crossings);
        if charged != Amount::default() {
            let mut totals = self.budgets.totals.lock().unwrap_or_else(|p| p.into_inner());
            let key = (std::mem::take(&mut self.team), std::mem::take(&mut self.model));
            let t = totals.entry(key).or_default();
            t.nano_usd = t.nano_usd.saturating_add(charged.nano_usd);
            t.tokens = t.tokens.saturating_add(charged.tokens);
        }
        charged
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.budgets
                .store
                .settle(&self.accounts, self.amount, Amount::default());
        }
    }
}

/// A metered call in flight: its reservation, the meter on its answer, and where its decision
/// record is. Carried by the access record and settled when that is written.
pub struct Spend {
    pub reservation: Reservation,
    /// Set once a successful answer starts; none for an error answer (charged nothing).
    pub meter: Option<usage::Meter>,
    /// The gateway asked an OpenAI upstream for a stream's usage the client did not ask for:
    /// the usage chunk is removed from what the client gets.
    pub strip_usage: bool,
}

impl Spend {
    pub fn new(reservation: Reservation) -> Box<Spend> {
        Box::new(Spend {
            reservation,
            meter: None,
            strip_usage: false,
        })
    }

    /// The answer has started: meter it if the upstream accepted the call.
    pub fn start(
        &mut self,
        dialect: lattice_providers::Dialect,
        status: http::StatusCode,
        content_type: &[u8],
    ) {
        if status.is_success() {
            let stream = content_type.starts_with(b"text/event-stream")
                || content_type.starts_with(b"application/x-ndjson");
            self.meter = Some(usage::Meter::new(dialect, stream, self.strip_usage));
        }
    }

    /// True once a stream has produced more output than its reservation covers and streams
    /// are to be cut (`cut_streams`).
    pub fn over_reservation(&self) -> bool {
        match (self.reservation.output_cap(), &self.meter) {
            (Some(cap), Some(m)) => m.output_so_far() > cap,
            _ => false,
        }
    }

    /// Settles the call: `complete` when its answer was delivered in full.
    pub fn settle(&mut self, complete: bool) -> Settlement {
        let (usage, basis) = match &mut self.meter {
            Some(m) => m.finish(complete, self.reservation.estimated_input()),
            None => (Usage::default(), Basis::None),
        };
        let charged = self.reservation.settle(usage, basis);
        Settlement {
            id: self.reservation.id.to_string(),
            basis,
            usage,
            charged,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_the_time_zone() {
        // 2026-03-31 23:30 UTC is 2026-04-01 01:30 in Berlin (CEST, +2).
        let now = chrono::Utc
            .with_ymd_and_hms(2026, 3, 31, 23, 30, 0)
            .unwrap()
            .timestamp();
        let utc = windows_at(chrono_tz::UTC, now);
        assert_eq!(
            utc.day.0,
            chrono::Utc
                .with_ymd_and_hms(2026, 3, 31, 0, 0, 0)
                .unwrap()
                .timestamp()
        );
        assert_eq!(
            utc.month.0,
            chrono::Utc
                .with_ymd_and_hms(2026, 3, 1, 0, 0, 0)
                .unwrap()
                .timestamp()
        );
        assert_eq!(
            utc.month.1,
            chrono::Utc
                .with_ymd_and_hms(2026, 4, 1, 0, 0, 0)
                .unwrap()
                .timestamp()
        );
        let berlin = windows_at(chrono_tz::Europe::Berlin, now);
        assert_eq!(
            berlin.day.0,
            chrono::Utc
                .with_ymd_and_hms(2026, 3, 31, 22, 0, 0)
                .unwrap()
                .timestamp()
        );
        assert_eq!(berlin.month.0, berlin.day.0);
        // December rolls into January; a DST day is 23 hours long.
        let dec = chrono::Utc
            .with_ymd_and_hms(2026, 12, 15, 12, 0, 0)
            .unwrap()
            .timestamp();
        assert_eq!(
            windows_at(chrono_tz::UTC, dec).month.1,
            chrono::Utc
                .with_ymd_and_hms(2027, 1, 1, 0, 0, 0)
                .unwrap()
                .timestamp()
        );
        let dst = chrono::Utc
            .with_ymd_and_hms(2026, 3, 29, 12, 0, 0)
            .unwrap()
            .timestamp();
        let w = windows_at(chrono_tz::Europe::Berlin, dst);
        assert_eq!(w.day.1 - w.day.0, 23 * 3600);
    }

    #[test]
    fn usd_is_exact() {
        assert_eq!(usd(1_500_000_001), "1.500000001");
        assert_eq!(usd(0), "0.000000000");
    }
}
