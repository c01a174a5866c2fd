//! Failover: what moves a call from one deployment of its route to the next, and the shared
//! state that keeps an outage from becoming a retry storm.
//!
//! - [`Policy`]: a route's triggers, retries, attempt cap, deadline and backoff (`[failover]`,
//!   overridden per route).
//! - [`Health`]: a circuit breaker per deployment: open after consecutive failures or an error
//!   rate over the recent outcomes, or at once for an upstream's `Retry-After`; after the
//!   cool-down one probe is let through (half-open), whose outcome closes or reopens it.
//! - [`RetryBudget`]: retries at most a share of calls (plus a small floor per second), as
//!   Envoy's and Finagle's retry budgets do: under a total outage each call is tried about once.
//! - [`pick`]: the next deployment of a group, by weight among the healthy ones.
//!
//! Owns: these decisions, lock-free (atomics only), on the request path. Must not touch: the
//! upstream request or its answer (`crate::llm`).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;

// ---------------------------------------------------------------------------------------------
// Triggers.

/// What may move a call to its next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Trigger {
    /// The TCP connection was refused or could not be made.
    Connect = 1 << 0,
    /// The TLS handshake failed.
    Tls = 1 << 1,
    /// No connection within `connect_timeout_ms`, no response head within the first-byte
    /// timeout.
    Timeout = 1 << 2,
    /// The connection closed after the request was sent, before a response head.
    Reset = 1 << 3,
    TooManyRequests = 1 << 4,
    InternalError = 1 << 5,
    BadGateway = 1 << 6,
    Unavailable = 1 << 7,
    GatewayTimeout = 1 << 8,
    /// Anthropic's `overloaded_error`.
    Overloaded = 1 << 9,
}

impl Trigger {
    const ALL: [(Trigger, &'static str); 10] = [
        (Trigger::Connect, "connect"),
        (Trigger::Tls, "tls"),
        (Trigger::Timeout, "timeout"),
        (Trigger::Reset, "reset"),
        (Trigger::TooManyRequests, "429"),
        (Trigger::InternalError, "500"),
        (Trigger::BadGateway, "502"),
        (Trigger::Unavailable, "503"),
        (Trigger::GatewayTimeout, "504"),
        (Trigger::Overloaded, "529"),
    ];

    pub fn name(self) -> &'static str {
        Trigger::ALL
            .iter()
            .find(|(t, _)| *t == self)
            .map_or("", |(_, n)| n)
    }

    /// The trigger an upstream's status is, if any: no other status (no other 4xx above all)
    /// ever moves a call.
    pub fn of_status(status: u16) -> Option<Trigger> {
        Some(match status {
            429 => Trigger::TooManyRequests,
            500 => Trigger::InternalError,
            502 => Trigger::BadGateway,
            503 => Trigger::Unavailable,
            504 => Trigger::GatewayTimeout,
            529 => Trigger::Overloaded,
            _ => return None,
        })
    }
}

/// A set of triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Triggers(u16);

impl Triggers {
    /// Every trigger: the default.
    pub const ALL: Triggers = Triggers((1 << Trigger::ALL.len()) - 1);

    pub fn contains(self, t: Trigger) -> bool {
        self.0 & t as u16 != 0
    }

    fn parse(names: &[String]) -> Result<Triggers, String> {
        let mut set = 0u16;
        for n in names {
            let t = Trigger::ALL.iter().find(|(_, name)| name == n).ok_or_else(|| {
                let known: Vec<_> = Trigger::ALL.iter().map(|(_, n)| *n).collect();
                format!("\"{n}\" is not a failover trigger (one of {})", known.join(", "))
            })?;
            set |= t.0 as u16;
        }
        Ok(Triggers(set))
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration.

/// What a stream whose upstream dies after content has reached the client does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Resume {
    /// The stream ends with a typed error event in the client's dialect.
    #[default]
    Error,
}

/// `[failover]` and a route's `failover = { ... }`, as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    #[serde(default)]
    on: Option<Vec<String>>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    deadline_ms: Option<u64>,
    #[serde(default)]
    backoff_ms: Option<u64>,
    #[serde(default)]
    backoff_max_ms: Option<u64>,
    #[serde(default)]
    resume: Option<Resume>,
}

/// `[failover]`, as written: the route defaults, and the gateway-wide retry budget and breaker.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFailover {
    #[serde(default)]
    on: Option<Vec<String>>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    deadline_ms: Option<u64>,
    #[serde(default)]
    backoff_ms: Option<u64>,
    #[serde(default)]
    backoff_max_ms: Option<u64>,
    #[serde(default)]
    resume: Option<Resume>,
    #[serde(default)]
    retry_budget: Option<BudgetParams>,
    #[serde(default)]
    breaker: Option<RawBreaker>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    #[serde(default = "default_consecutive")]
    consecutive_failures: u32,
    #[serde(default = "default_error_rate")]
    error_rate_percent: u32,
    #[serde(default = "default_window")]
    window: u32,
    #[serde(default = "default_cooldown")]
    cooldown_ms: u64,
    #[serde(default = "default_max_ejection")]
    max_ejection_ms: u64,
}

fn default_consecutive() -> u32 {
    5
}
fn default_error_rate() -> u32 {
    50
}
fn default_window() -> u32 {
    20
}
fn default_cooldown() -> u64 {
    10_000
}
fn default_max_ejection() -> u64 {
    300_000
}

/// A route's failover rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub on: Triggers,
    /// Tries of the same deployment after its first, before the next one.
    pub retries: u32,
    /// Attempts per call at most, over all deployments.
    pub max_attempts: u32,
    /// From the call's start, the time within which an answer must have begun.
    pub deadline: Duration,
    /// The first retry of a deployment waits up to this long (full jitter), doubling.
    pub backoff: Duration,
    pub backoff_max: Duration,
    pub resume: Resume,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            on: Triggers::ALL,
            retries: 0,
            max_attempts: 4,
            deadline: Duration::from_secs(600),
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            resume: Resume::Error,
        }
    }
}

impl Policy {
    /// `raw` over `self` (the gateway's defaults, for a route).
    pub fn over(&self, raw: &RawPolicy) -> Result<Policy, (String, String)> {
        let bad = |k: &str, m: &str| (k.to_string(), m.to_string());
        let on = match &raw.on {
            None => self.on,
            Some(names) => Triggers::parse(names).map_err(|m| ("on".to_string(), m))?,
        };
        let p = Policy {
            on,
            retries: raw.retries.unwrap_or(self.retries),
            max_attempts: raw.max_attempts.unwrap_or(self.max_attempts),
            deadline: raw.deadline_ms.map_or(self.deadline, Duration::from_millis),
            backoff: raw.backoff_ms.map_or(self.backoff, Duration::from_millis),
            backoff_max: raw.backoff_max_ms.map_or(self.backoff_max, Duration::from_millis),
            resume: raw.resume.unwrap_or(self.resume),
        };
        if p.max_attempts == 0 {
            return Err(bad("max_attempts", "must be at least 1"));
        }
        if p.retries > 10 {
            return Err(bad("retries", "must be at most 10"));
        }
        if p.deadline.is_zero() {
            return Err(bad("deadline_ms", "must be greater than 0"));
        }
        if p.backoff > p.backoff_max {
            return Err(bad("backoff_ms", "must not exceed backoff_max_ms"));
        }
        Ok(p)
    }
}

/// The retry budget: retries may be at most `percent` of calls, plus `min_per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetParams {
    #[serde(default = "default_percent")]
    pub percent: u32,
    #[serde(default = "default_min_per_second")]
    pub min_per_second: u32,
}

fn default_percent() -> u32 {
    20
}
fn default_min_per_second() -> u32 {
    5
}

impl Default for BudgetParams {
    fn default() -> BudgetParams {
        BudgetParams {
            percent: default_percent(),
            min_per_second: default_min_per_second(),
        }
    }
}

/// When a deployment's circuit opens, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerParams {
    /// Consecutive failures that open the circuit; 0: never on that count.
    pub consecutive_failures: u32,
    /// The share of failures among the last `window` outcomes that opens it; 0: never.
    pub error_rate_percent: u32,
    pub window: u32,
    pub cooldown: Duration,
    /// The longest an upstream's `Retry-After` ejects a deployment for.
    pub max_ejection: Duration,
}

impl Default for BreakerParams {
    fn default() -> BreakerParams {
        BreakerParams {
            consecutive_failures: default_consecutive(),
            error_rate_percent: default_error_rate(),
            window: default_window(),
            cooldown: Duration::from_millis(default_cooldown()),
            max_ejection: Duration::from_millis(default_max_ejection()),
        }
    }
}

/// `[failover]`, validated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailoverConfig {
    /// What routes without their own `failover` do.
    pub defaults: Policy,
    pub retry_budget: BudgetParams,
    pub breaker: BreakerParams,
}

impl FailoverConfig {
    pub fn validate(raw: RawFailover) -> Result<FailoverConfig, (String, String)> {
        let key = |(k, m): (String, String)| (format!("failover.{k}"), m);
        let policy = RawPolicy {
            on: raw.on,
            retries: raw.retries,
            max_attempts: raw.max_attempts,
            deadline_ms: raw.deadline_ms,
            backoff_ms: raw.backoff_ms,
            backoff_max_ms: raw.backoff_max_ms,
            resume: raw.resume,
        };
        let defaults = Policy::default().over(&policy).map_err(key)?;
        let retry_budget = raw.retry_budget.unwrap_or_default();
        if retry_budget.percent > 100 {
            return Err(key(("retry_budget.percent".into(), "must be at most 100".into())));
        }
        let breaker = match raw.breaker {
            None => BreakerParams::default(),
            Some(b) => {
                if !(1..=64).contains(&b.window) {
                    return Err(key(("breaker.window".into(), "must be 1 to 64".into())));
                }
                if b.error_rate_percent > 100 {
                    return Err(key((
                        "breaker.error_rate_percent".into(),
                        "must be at most 100".into(),
                    )));
                }
                if b.cooldown_ms == 0 {
                    return Err(key((
                        "breaker.cooldown_ms".into(),
                        "must be greater than 0".into(),
                    )));
                }
                BreakerParams {
                    consecutive_failures: b.consecutive_failures,
                    error_rate_percent: b.error_rate_percent,
                    window: b.window,
                    cooldown: Duration::from_millis(b.cooldown_ms),
                    max_ejection: Duration::from_millis(b.max_ejection_ms.max(b.cooldown_ms)),
                }
            }
        };
        Ok(FailoverConfig {
            defaults,
            retry_budget,
            breaker,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Time, in milliseconds since the process's first use of this module (fits an atomic).

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    // Starts at 1, so 0 can mean "never".
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------------
// Health: the circuit breaker of one deployment.

/// A circuit's state, as `/readyz` and the metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    Closed,
    Open,
    /// The cool-down is over: the next call is a probe.
    HalfOpen,
}

impl Circuit {
    pub fn as_str(self) -> &'static str {
        match self {
            Circuit::Closed => "closed",
            Circuit::Open => "open",
            Circuit::HalfOpen => "half_open",
        }
    }
}

/// A deployment's circuit breaker. All atomics: admitting a call is two loads when closed.
#[derive(Debug, Default)]
pub struct Health {
    /// 0: closed; else open until this time (`now_ms`), half-open after it.
    open_until: AtomicU64,
    /// A half-open circuit's probe is in flight.
    probing: AtomicBool,
    consecutive: AtomicU32,
    /// The last outcomes, newest in bit 0 (1: failure), and how many are held (to `window`).
    outcomes: AtomicU64,
    held: AtomicU32,
    /// Times this circuit opened.
    pub opened: AtomicU64,
}

/// Whether a call may go to a deployment, and if it is its circuit's probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    Probe,
    /// Open: ejected for this many more milliseconds (0 while another call probes).
    No(u64),
}

impl Health {
    pub fn state(&self) -> Circuit {
        match self.open_until.load(Ordering::Acquire) {
            0 => Circuit::Closed,
            t if now_ms() < t => Circuit::Open,
            _ => Circuit::HalfOpen,
        }
    }

    /// Milliseconds until an open circuit may probe (0 when closed or half-open).
    pub fn ejected_for(&self) -> u64 {
        match self.open_until.load(Ordering::Acquire) {
            0 => 0,
            t => t.saturating_sub(now_ms()),
        }
    }

    /// Admits a call, or refuses it while open; after the cool-down admits one probe at a time.
    pub fn admit(&self) -> Admit {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Admit::Yes;
        }
        let now = now_ms();
        if now < until {
            return Admit::No(until - now);
        }
        if self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            Admit::Probe
        } else {
            Admit::No(0)
        }
    }

    /// A probe that reported no outcome: the next call may probe.
    pub fn release_probe(&self) {
        self.probing.store(false, Ordering::Release);
    }

    /// A call this deployment answered (any answer but a trigger's).
    pub fn success(&self, p: &BreakerParams) {
        self.consecutive.store(0, Ordering::Relaxed);
        self.push(false, p);
        if self.open_until.load(Ordering::Acquire) != 0 {
            self.open_until.store(0, Ordering::Release);
            self.outcomes.store(0, Ordering::Relaxed);
            self.held.store(0, Ordering::Relaxed);
        }
        self.probing.store(false, Ordering::Release);
    }

    /// A call this deployment failed; `retry_after`: the upstream's own ejection time.
    pub fn failure(&self, p: &BreakerParams, retry_after: Option<Duration>) {
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        let (failed, held) = self.push(true, p);
        let was_probe = self.probing.swap(false, Ordering::AcqRel);
        let by_count = p.consecutive_failures > 0 && n >= p.consecutive_failures;
        let by_rate = p.error_rate_percent > 0
            && held >= p.window
            && u64::from(failed) * 100 >= u64::from(p.error_rate_percent) * u64::from(held);
        let eject = match retry_after {
            Some(r) => Some(r.min(p.max_ejection).max(Duration::from_millis(1))),
            None if was_probe || by_count || by_rate => Some(p.cooldown),
            None => None,
        };
        if let Some(d) = eject {
            let until = now_ms() + millis(d);
            // A longer ejection already in force stands.
            let prev = self.open_until.fetch_max(until, Ordering::AcqRel);
            if prev == 0 || prev < now_ms() {
                self.opened.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records an outcome; returns the failures and outcomes now held.
    fn push(&self, failed: bool, p: &BreakerParams) -> (u32, u32) {
        let window = p.window.clamp(1, 64);
        let mask = if window == 64 {
            u64::MAX
        } else {
            (1u64 << window) - 1
        };
        let prev = self
            .outcomes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |o| {
                Some(((o << 1) | u64::from(failed)) & mask)
            })
            .unwrap_or(0);
        let now = ((prev << 1) | u64::from(failed)) & mask;
        let held = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
                Some((h + 1).min(window))
            })
            .map_or(window, |h| (h + 1).min(window));
        (now.count_ones(), held)
    }
}

// ---------------------------------------------------------------------------------------------
// The retry budget.

/// Retries allowed: each call deposits `percent / 100` of a retry, each retry withdraws one,
/// and `min_per_second` retries accrue with time; the balance is capped, so a quiet hour does
/// not bank a storm.
#[derive(Debug)]
pub struct RetryBudget {
    params: BudgetParams,
    /// Thousandths of a retry.
    balance: AtomicI64,
    /// When the time-based floor last accrued (`now_ms`).
    accrued: AtomicU64,
}

const MILLI: i64 = 1_000;

impl RetryBudget {
    pub fn new(params: BudgetParams) -> RetryBudget {
        RetryBudget {
            params,
            balance: AtomicI64::new(i64::from(params.min_per_second) * MILLI),
            accrued: AtomicU64::new(now_ms()),
        }
    }

    fn cap(&self) -> i64 {
        i64::from(self.params.min_per_second.max(10)) * MILLI
    }

    /// A call started: its share of a retry.
    pub fn deposit(&self) {
        let share = i64::from(self.params.percent) * MILLI / 100;
        if share > 0 {
            let cap = self.cap();
            let _ = self
                .balance
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                    Some((b + share).min(cap))
                });
        }
    }

    /// Takes one retry, if the budget has one.
    pub fn withdraw(&self) -> bool {
        let now = now_ms();
        let last = self.accrued.swap(now, Ordering::Relaxed);
        let floor = i64::try_from(now.saturating_sub(last))
            .unwrap_or(i64::MAX)
            .saturating_mul(i64::from(self.params.min_per_second));
        let cap = self.cap();
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                let b = b.saturating_add(floor).min(cap);
                (b >= MILLI).then_some(b - MILLI)
            })
            .is_ok()
    }
}

// ---------------------------------------------------------------------------------------------
// Choosing a deployment.

/// A deterministic, well-mixed sequence (splitmix64 of a counter): weighted choices split
/// traffic as the weights say without a lock or a random source on the request path.
pub fn mix(counter: u64) -> u64 {
    let mut z = counter.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Of the `weights` not yet `passed` (a bit per index: tried, or ejected), one chosen by weight
/// with `draw` (any well-mixed number); `None` when none is left.
pub fn pick(weights: &[u32], passed: u64, draw: u64) -> Option<usize> {
    let open = |i: usize| i < 64 && passed & (1 << i) == 0;
    let total: u64 = (0..weights.len())
        .filter(|&i| open(i))
        .map(|i| u64::from(weights[i]))
        .sum();
    if total == 0 {
        return None;
    }
    let mut at = draw % total;
    for (i, w) in weights.iter().enumerate() {
        if !open(i) {
            continue;
        }
        let w = u64::from(*w);
        if at < w {
            return Some(i);
        }
        at -= w;
    }
    None
}

/// The wait before retry `n` (1 for the first) of a deployment: full jitter over an
/// exponential ceiling, or the upstream's `Retry-After` when it gave one.
pub fn backoff(p: &Policy, n: u32, retry_after: Option<Duration>, draw: u64) -> Duration {
    if let Some(r) = retry_after {
        return r;
    }
    let ceiling = p
        .backoff
        .saturating_mul(1u32 << n.saturating_sub(1).min(16))
        .min(p.backoff_max);
    let ms = millis(ceiling);
    Duration::from_millis(if ms == 0 { 0 } else { draw % (ms + 1) })
}

/// An upstream's `Retry-After` (seconds, or an HTTP date), and the `retry-after-ms` OpenAI and
/// Anthropic also send.
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
    {
        return Some(Duration::from_millis(ms.min(86_400_000.0) as u64));
    }
    let v = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(86_400)));
    }
    let at = humantime::parse_rfc3339_weak(v).ok().or_else(|| httpdate(v))?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(86_400)),
    )
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form RFC 9110 says to send.
fn httpdate(v: &str) -> Option<std::time::SystemTime> {
    chrono::DateTime::parse_from_rfc2822(v)
        .ok()
        .and_then(|d| u64::try_from(d.timestamp()).ok())
        .map(|s| std::time::UNIX_EPOCH + Duration::from_secs(s))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn triggers_parse_and_refuse_what_is_not_one() {
        let t = Triggers::parse(&["connect".into(), "503".into()]).unwrap();
        assert!(t.contains(Trigger::Connect) && t.contains(Trigger::Unavailable));
        assert!(!t.contains(Trigger::TooManyRequests));
        let e = Triggers::parse(&["404".into()]).unwrap_err();
        assert!(e.contains("\"404\"") && e.contains("529"), "{e}");
        for s in [400, 401, 403, 404, 409, 413, 422, 200, 501] {
            assert_eq!(Trigger::of_status(s), None, "{s}");
        }
        assert_eq!(Trigger::of_status(529), Some(Trigger::Overloaded));
    }

    #[test]
    fn weights_split_calls_as_configured_and_skip_the_ejected() {
        let weights = [3, 1];
        let mut hits = [0u32; 2];
        for n in 0..10_000 {
            hits[pick(&weights, 0, mix(n)).unwrap()] += 1;
        }
        let share = f64::from(hits[0]) / 10_000.0;
        assert!((share - 0.75).abs() < 0.02, "{hits:?}");
        assert_eq!(pick(&weights, 0b01, mix(7)), Some(1));
        assert_eq!(pick(&weights, 0b11, mix(7)), None);
        assert_eq!(pick(&[0, 0], 0, 3), None);
    }

    #[test]
    fn the_circuit_opens_on_consecutive_failures_probes_once_and_closes() {
        let p = BreakerParams {
            consecutive_failures: 3,
            error_rate_percent: 0,
            window: 10,
            cooldown: Duration::from_millis(30),
            max_ejection: Duration::from_secs(1),
        };
        let h = Health::default();
        h.failure(&p, None);
        h.failure(&p, None);
        assert_eq!(h.admit(), Admit::Yes);
        h.failure(&p, None);
        assert!(matches!(h.admit(), Admit::No(ms) if ms > 0));
        assert_eq!(h.state(), Circuit::Open);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(h.state(), Circuit::HalfOpen);
        assert_eq!(h.admit(), Admit::Probe);
        assert_eq!(h.admit(), Admit::No(0), "one probe at a time");
        // The probe fails: open again for a cool-down.
        h.failure(&p, None);
        assert_eq!(h.state(), Circuit::Open);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(h.admit(), Admit::Probe);
        h.success(&p);
        assert_eq!(h.state(), Circuit::Closed);
        assert_eq!(h.admit(), Admit::Yes);
        assert_eq!(h.opened.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn the_circuit_opens_on_an_error_rate_and_for_retry_after() {
        let p = BreakerParams {
            consecutive_failures: 0,
            error_rate_percent: 50,
            window: 4,
            cooldown: Duration::from_secs(10),
            max_ejection: Duration::from_secs(60),
        };
        let h = Health::default();
        h.success(&p);
        h.failure(&p, None);
        h.success(&p);
        assert_eq!(h.state(), Circuit::Closed, "3 outcomes held, window 4");
        h.failure(&p, None);
        assert_eq!(h.state(), Circuit::Open, "2 of 4 failed");

        let h = Health::default();
        h.failure(&p, Some(Duration::from_secs(3600)));
        let ms = h.ejected_for();
        assert!(
            ms > 59_000 && ms <= 60_000,
            "Retry-After is capped by max_ejection: {ms}"
        );
    }

    #[test]
    fn the_retry_budget_holds_retries_to_a_share_of_calls() {
        let b = RetryBudget::new(BudgetParams {
            percent: 20,
            min_per_second: 0,
        });
        let mut retried = 0;
        for _ in 0..1000 {
            b.deposit();
            if b.withdraw() {
                retried += 1;
            }
        }
        assert!((195..=205).contains(&retried), "{retried}");
    }

    #[test]
    fn retry_after_reads_seconds_milliseconds_and_dates() {
        let mut h = http::HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert("retry-after-ms", "250".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        let mut h = http::HeaderMap::new();
        h.insert("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::ZERO), "a date in the past");
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", "99999999999".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(86_400)));
    }

    #[test]
    fn backoff_is_jittered_under_a_doubling_ceiling() {
        let p = Policy::default();
        for n in 1..6 {
            for d in 0..50 {
                let w = backoff(&p, n, None, mix(d));
                assert!(w <= (p.backoff * (1 << (n - 1))).min(p.backoff_max), "{n} {w:?}");
            }
        }
        assert_eq!(
            backoff(&p, 1, Some(Duration::from_secs(2)), 0),
            Duration::from_secs(2)
        );
    }
}
