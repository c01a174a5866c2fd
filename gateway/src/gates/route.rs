//! The route gate: once a caller has passed authorization, a model this gateway does not serve
//! is 404 `model_not_found` (the SDKs' `NotFoundError`), before a constraint gate can hide it
//! behind one of its own refusals (a budget's "has no price", say). It runs after the policy on
//! purpose: a caller who may not call at all learns nothing about which models exist.

use std::sync::Arc;

use http::StatusCode;

use super::{Call, Denial, Gate};
use crate::router::Router;

pub struct RouteGate(pub Arc<Router>);

impl Gate for RouteGate {
    fn name(&self) -> &'static str {
        "route"
    }

    fn check(&self, call: &mut Call<'_>) -> Result<(), Denial> {
        // The asked model was resolved before the gates (`call.route`); a policy's `model`
        // override is where the call goes instead.
        let routed = match call.model_override.as_deref() {
            None => call.route.is_some(),
            Some(m) => self.0.resolve(m).is_some(),
        };
        if routed {
            return Ok(());
        }
        let model = call.model_override.as_deref().unwrap_or(&call.view.model);
        Err(Denial {
            gate: "route",
            code: "model_not_found",
            status: StatusCode::NOT_FOUND,
            message: format!("the model `{model}` does not exist on this gateway").into(),
            retry_after: None,
        })
    }
}
