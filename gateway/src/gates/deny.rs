//! The static deny list: models an operator blocks outright, from `[[deny]]` in the config.
//!
//! Exact names and `prefix*` patterns; the first matching rule's status (401, 403 or 429) and
//! message are returned. Policy-driven decisions belong to the authorization gate; this is the
//! operator's emergency brake, and the pipeline's reference gate in tests.

use std::borrow::Cow;

use http::StatusCode;

use super::{Call, Denial, Gate};
use crate::config::DenyConfig;
use crate::router::Pattern;

pub struct DenyList {
    rules: Vec<(Pattern, StatusCode, Cow<'static, str>)>,
}

impl DenyList {
    pub fn from_config(rules: &[DenyConfig]) -> Option<DenyList> {
        if rules.is_empty() {
            return None;
        }
        Some(DenyList {
            rules: rules
                .iter()
                .map(|r| (Pattern::new(&r.model), r.status, Cow::Owned(r.message.clone())))
                .collect(),
        })
    }
}

impl Gate for DenyList {
    fn name(&self) -> &'static str {
        "deny_list"
    }

    fn check(&self, call: &mut Call<'_>) -> Result<(), Denial> {
        let model = call.view.model.as_ref();
        match self.rules.iter().find(|(p, _, _)| p.matches(model)) {
            None => Ok(()),
            Some((_, status, message)) => Err(Denial {
                gate: self.name(),
                code: match status.as_u16() {
                    401 => "unauthenticated",
                    429 => "rate_limited",
                    _ => "model_denied",
                },
                status: *status,
                message: message.clone(),
                retry_after: (status.as_u16() == 429).then_some(60),
            }),
        }
    }
}
