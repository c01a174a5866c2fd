//! The rate-limit gate: requests per minute, and tokens per minute, per key, user or team
//! (`[[rate_limits]]`; `governor`'s GCRA limiters, one keyed limiter per rule). Tokens are
//! counted from each call's real usage when it settles (`crate::budget`), so this gate refuses
//! a caller whose earlier calls used up the minute's tokens. A refusal is a 429 with
//! `Retry-After`.

use std::sync::Arc;

use http::StatusCode;

use super::{Call, Denial, Gate};
use crate::budget::Budgets;

pub struct RateLimits(pub Arc<Budgets>);

impl Gate for RateLimits {
    fn name(&self) -> &'static str {
        "rate_limit"
    }

    fn check(&self, call: &mut Call<'_>) -> Result<(), Denial> {
        self.0.check_rates(call.principal.as_deref()).map_err(|r| Denial {
            gate: "rate_limit",
            code: r.code,
            status: StatusCode::TOO_MANY_REQUESTS,
            message: r.message.into(),
            retry_after: r.retry_after,
        })
    }
}
