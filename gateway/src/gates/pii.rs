//! The PII gate: finds personal data and secrets in every text part of a request (both
//! dialects, all roles, tool calls and results) and acts per detector kind: the call is refused
//! (`block`, naming the kind, never the value), or the body is rewritten (`redact`, `mask`,
//! `hash`) before it goes upstream. What was found and done is in the call's audit record.
//! Actions come from `[pii] request` and the policy's `pii` obligation (which wins per kind).

use std::sync::Arc;

use http::StatusCode;

use super::{Call, Denial, Gate};
use crate::content::{Pii, describe};

pub struct PiiGate(pub Arc<Pii>);

impl Gate for PiiGate {
    fn name(&self) -> &'static str {
        "pii"
    }

    fn check(&self, call: &mut Call<'_>) -> Result<(), Denial> {
        let config = &self.0.config().request;
        let merged;
        let actions = match &call.pii_obligation {
            Some(o) => {
                merged = config.with(o);
                &merged
            }
            None => config,
        };
        if actions.all_allow() {
            return Ok(());
        }
        call.check_body(self.name())?;
        // What the tool gate left of the body, if it changed it.
        let body = call.rewritten_body.as_deref().unwrap_or(call.body);
        let scanned = self.0.request(body, actions);
        call.pii_findings = scanned.findings;
        if let Some(kind) = scanned.blocked {
            return Err(Denial {
                gate: "pii",
                code: "pii_blocked",
                status: StatusCode::FORBIDDEN,
                message: format!(
                    "the request contains {}, which this gateway does not send to a model",
                    describe(&kind)
                )
                .into(),
                retry_after: None,
            });
        }
        if scanned.body.is_some() {
            call.rewritten_body = scanned.body;
        }
        Ok(())
    }
}
