//! The model lock: a principal the policy locks to some models or providers (the `model_lock`
//! obligation, `{"models": [...], "providers": [...]}`) reaches nothing else: not by an alias,
//! not through a route that renames the model, not through the policy's own `model` override.
//! The lock is checked against every name on the way (the name asked for, or the override, and
//! the model the route sends upstream) and against the upstream's provider kind and name.
//! Failover and dialect translation, when they come, must ask [`ModelLock::admits`] for every
//! deployment they try.

use std::sync::Arc;

use http::StatusCode;

use super::{Call, Denial, Gate};
use crate::router::{Deployment, Pattern, Router};

/// What a locked principal may reach. `None`: that side is not locked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelLock {
    models: Option<Vec<Pattern>>,
    providers: Option<Vec<Box<str>>>,
}

impl ModelLock {
    /// From the obligation's value; `None` when it is malformed (the call is then refused).
    pub fn from_obligation(v: &serde_json::Value) -> Option<ModelLock> {
        let o = v.as_object()?;
        if o.keys().any(|k| k != "models" && k != "providers") {
            return None;
        }
        let list = |key: &str| -> Option<Option<Vec<&str>>> {
            match o.get(key) {
                None => Some(None),
                Some(l) => l
                    .as_array()?
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Option<Vec<&str>>>()
                    .map(Some),
            }
        };
        Some(ModelLock {
            models: list("models")?.map(|l| l.into_iter().map(Pattern::new).collect()),
            providers: list("providers")?.map(|l| l.into_iter().map(Box::from).collect()),
        })
    }

    pub fn admits_model(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|m| m.iter().any(|p| p.matches(model)))
    }

    /// The upstream, by its provider kind (`openai`, `anthropic`, `mock`) or its name.
    pub fn admits_upstream(&self, target: &Deployment) -> bool {
        let u = &target.upstream;
        self.providers
            .as_ref()
            .is_none_or(|p| p.iter().any(|p| **p == *u.kind.as_str() || **p == *u.name))
    }

    /// `asked` (the model asked for, or the policy's override) and where it routes.
    pub fn admits(&self, asked: &str, target: Option<&Deployment>) -> Result<(), String> {
        if !self.admits_model(asked) {
            return Err(format!("this caller is locked to other models than `{asked}`"));
        }
        let Some(t) = target else {
            return Ok(());
        };
        if let Some(sent) = t.upstream_model.as_deref()
            && !self.admits_model(sent)
        {
            return Err(format!(
                "`{asked}` is served by model `{sent}`, outside the models this caller is locked to"
            ));
        }
        if !self.admits_upstream(t) {
            return Err(format!(
                "`{asked}` is served by provider `{}`, outside the providers this caller is locked to",
                t.upstream.kind.as_str()
            ));
        }
        Ok(())
    }
}

pub struct ModelLockGate(pub Arc<Router>);

impl Gate for ModelLockGate {
    fn name(&self) -> &'static str {
        "model_lock"
    }

    fn check(&self, call: &mut Call<'_>) -> Result<(), Denial> {
        let Some(lock) = &call.model_lock else {
            return Ok(());
        };
        let (asked, target) = match &call.model_override {
            Some(m) => (m.as_str(), self.0.resolve(m).map(|t| &**t.primary())),
            None => (call.view.model.as_ref(), call.route),
        };
        lock.admits(asked, target).map_err(|message| Denial {
            gate: "model_lock",
            code: "model_locked",
            status: StatusCode::FORBIDDEN,
            message: message.into(),
            retry_after: None,
        })
    }
}
