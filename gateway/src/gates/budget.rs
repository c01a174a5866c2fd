//! The budget gate: reserves the call's worst-case cost on every budget it charges, or refuses
//! it (429 with `Retry-After` at the window's reset). The reservation travels with the call and
//! is settled with the real usage when the answer ends (`crate::budget`).

use std::sync::Arc;

use http::StatusCode;
use lattice_providers::Surface;

use super::{Call, Denial, Gate};
use crate::budget::Budgets;

pub struct BudgetGate(pub Arc<Budgets>);

impl Gate for BudgetGate {
    fn name(&self) -> &'static str {
        "budget"
    }

    fn check(&self, call: &mut Call<'_>) -> Result<(), Denial> {
        let v = call.view;
        // Counting tokens costs nothing upstream.
        if matches!(v.surface, Surface::CountTokens | Surface::GeminiCountTokens) {
            return Ok(());
        }
        let (upstream, model) = call.priced_as();
        let ask = crate::budget::Ask {
            principal: call.principal.as_deref(),
            upstream,
            model,
            body_len: call.body.len(),
            max_tokens: v.max_tokens,
            choices: v.choices,
            generates: v.surface != Surface::Embeddings,
            from_policy: &call.budget_obligations,
        };
        match self.0.reserve(&ask) {
            Ok(r) => {
                call.reservation = Some(r);
                Ok(())
            }
            Err(r) => Err(Denial {
                gate: "budget",
                code: r.code,
                status: if r.code == "budget_exceeded" {
                    StatusCode::TOO_MANY_REQUESTS
                } else {
                    StatusCode::FORBIDDEN
                },
                message: r.message.into(),
                retry_after: r.retry_after,
            }),
        }
    }
}
