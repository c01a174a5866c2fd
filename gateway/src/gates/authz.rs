//! The authorization gate: Rego decides (`data.lattice.authz.decision`, see policies/README.md).
//!
//! Builds the versioned input document from the call (principal, request, time), evaluates the
//! bundle in force, and either denies with the policy's reasons (403) or lets the call on with
//! its obligations; a `model` obligation re-routes the call. Fail closed: an evaluation error or
//! time-out is 503 (the gateway could not decide), an undefined or malformed decision is 403.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;
use regorus::Value;

use super::{Call, Denial, Gate};
use crate::policy::store::PolicyStore;
use crate::policy::{INPUT_VERSION, PolicyError};

pub struct Authorization {
    store: Arc<PolicyStore>,
    /// Prices the call for `request.estimated_cost_usd` (when budgets are configured).
    budgets: Option<Arc<crate::budget::Budgets>>,
}

impl Authorization {
    pub fn new(store: Arc<PolicyStore>, budgets: Option<Arc<crate::budget::Budgets>>) -> Authorization {
        Authorization { store, budgets }
    }
}

fn obj(pairs: Vec<(&str, Value)>) -> Value {
    let mut o = Value::new_object();
    if let Ok(map) = o.as_object_mut() {
        for (k, v) in pairs {
            map.insert(Value::from(k), v);
        }
    }
    o
}

fn strs<'a>(items: impl Iterator<Item = &'a str>) -> Value {
    Value::from(items.map(Value::from).collect::<Vec<_>>())
}

const WEEKDAYS: [&str; 7] = [
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
];

/// The input document, version 1.
fn input(call: &Call<'_>, budgets: Option<&crate::budget::Budgets>) -> Value {
    let principal = match &call.principal {
        None => Value::Null,
        Some(p) => {
            let mut attrs = Value::new_object();
            if let Ok(map) = attrs.as_object_mut() {
                for (k, v) in &p.attributes {
                    map.insert(Value::from(k.as_str()), Value::from(v.as_str()));
                }
            }
            obj(vec![
                ("id", Value::from(p.id.as_str())),
                ("kind", Value::from(p.kind)),
                ("user", Value::from(p.user.as_str())),
                ("team", Value::from(p.team.as_str())),
                ("roles", strs(p.roles.iter().map(String::as_str))),
                ("attributes", attrs),
            ])
        }
    };
    let v = call.view;
    let (provider, upstream, upstream_dialect) = match call.route {
        Some(r) => (
            Value::from(r.upstream.kind.as_str()),
            Value::from(&*r.upstream.name),
            Value::from(r.upstream.dialect_for(v.surface.dialect()).as_str()),
        ),
        None => (Value::Null, Value::Null, Value::Null),
    };
    let request = obj(vec![
        ("surface", Value::from(v.surface.name())),
        // Every gated surface is a POST; the field is there so policies need not assume it.
        ("method", Value::from("POST")),
        ("path", Value::from(call.path)),
        ("model", Value::from(v.model.as_ref())),
        ("provider", provider),
        ("upstream", upstream),
        // The client's dialect and the one the upstream is called in (they differ when the
        // call is translated).
        ("dialect", Value::from(v.surface.dialect().as_str())),
        ("upstream_dialect", upstream_dialect),
        ("stream", Value::from(v.stream)),
        ("max_tokens", v.max_tokens.map_or(Value::Null, Value::from)),
        ("tools", strs(v.tools.iter().map(|t| t.as_ref()))),
        ("session", Value::from(call.session)),
        // Null unless another principal owns the session (it is new, or the caller's).
        (
            "session_owner",
            call.session_owner.as_ref().map_or(Value::Null, |o| {
                obj(vec![
                    ("id", Value::from(o.id.as_str())),
                    ("user", Value::from(o.user.as_str())),
                    ("team", Value::from(o.team.as_str())),
                ])
            }),
        ),
        // The worst case the budget gate will reserve; null without budgets or a price.
        (
            "estimated_cost_usd",
            budgets
                .and_then(|b| {
                    let (upstream, model) = call.priced_as();
                    b.estimate(upstream, model, call.view, call.body.len())
                })
                .map_or(Value::Null, Value::from),
        ),
    ]);
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let time = obj(vec![
        ("unix", Value::from(secs)),
        (
            "rfc3339",
            Value::from(humantime::format_rfc3339_seconds(now).to_string()),
        ),
        ("weekday", Value::from(WEEKDAYS[((secs / 86_400) % 7) as usize])),
        ("hour", Value::from((secs % 86_400) / 3_600)),
    ]);
    obj(vec![
        ("version", Value::from(u64::from(INPUT_VERSION))),
        ("principal", principal),
        ("request", request),
        ("budget", Value::new_object()),
        ("time", time),
    ])
}

impl Authorization {
    /// Whether the policy lets the call go to the deployment now in `call.route` (a fallback)
    /// with exactly the obligations it was let on with: any other answer, a denial, an error,
    /// other obligations, refuses that deployment (fail closed).
    pub fn admits_fallback(&self, call: &Call<'_>) -> Result<(), &'static str> {
        let bundle = self.store.current();
        match bundle.decide(input(call, self.budgets.as_deref())) {
            Ok(d) if d.allow && d.obligations == call.obligations => Ok(()),
            Ok(d) if d.allow => Err("the policy sets other obligations for this upstream"),
            Ok(_) => Err("denied by policy for this upstream"),
            Err(_) => Err("the policy could not decide for this upstream"),
        }
    }
}

impl Gate for Authorization {
    fn name(&self) -> &'static str {
        "authorization"
    }

    fn check(&self, call: &mut Call<'_>) -> Result<(), Denial> {
        let bundle = self.store.current();
        call.policy_sha256 = Some(bundle.sha256_shared());
        let deny = |status, code, message: String| Denial {
            gate: "authorization",
            code,
            status,
            message: message.into(),
            retry_after: (status == StatusCode::SERVICE_UNAVAILABLE).then_some(1),
        };
        match bundle.decide(input(call, self.budgets.as_deref())) {
            Ok(d) if d.allow => {
                if let Some(m) = d.obligations.get("model").and_then(|m| m.as_str()) {
                    call.model_override = Some(m.to_string());
                }
                let invalid = |what: &str| {
                    tracing::error!(
                        obligation = what,
                        sha256 = bundle.sha256(),
                        "policy's obligation is malformed; call refused"
                    );
                    deny(
                        StatusCode::FORBIDDEN,
                        "policy_invalid",
                        format!("the authorization policy set a `{what}` obligation the gateway cannot read"),
                    )
                };
                if let Some(p) = d.obligations.get("pii") {
                    // {"request": {"email": "redact", ...}, "response": {...}}
                    let actions = |dir: &str| match p.get(dir) {
                        None | Some(serde_json::Value::Null) => Ok(None),
                        Some(a) => serde_json::from_value::<crate::content::Actions>(a.clone()).map(Some),
                    };
                    call.pii_obligation = actions("request").map_err(|_| invalid("pii"))?;
                    call.pii_response = actions("response").map_err(|_| invalid("pii"))?;
                }
                if let Some(t) = d.obligations.get("allowed_tools") {
                    let allowed = crate::content::tools::AllowedTools::from_obligation(t)
                        .ok_or_else(|| invalid("allowed_tools"))?;
                    call.allowed_tools = Some(Arc::new(allowed));
                }
                if let Some(s) = d.obligations.get("session_shared") {
                    call.session_shared = s.as_bool().ok_or_else(|| invalid("session_shared"))?;
                }
                if let Some(l) = d.obligations.get("model_lock") {
                    call.model_lock = Some(
                        super::model_lock::ModelLock::from_obligation(l)
                            .ok_or_else(|| invalid("model_lock"))?,
                    );
                }
                if let Some(b) = d.obligations.get("budget") {
                    // A budget the gateway cannot read is not silently dropped: fail closed.
                    call.budget_obligations = crate::budget::obligation(b).map_err(|e| {
                        tracing::error!(error = %e, sha256 = bundle.sha256(), "policy's budget obligation is malformed; call refused");
                        deny(
                            StatusCode::FORBIDDEN,
                            "policy_invalid",
                            "the authorization policy set a budget the gateway cannot read".into(),
                        )
                    })?;
                }
                call.obligations = d.obligations;
                Ok(())
            }
            Ok(d) if d.reasons.is_empty() => Err(deny(
                StatusCode::FORBIDDEN,
                "policy_denied",
                "denied by policy".to_string(),
            )),
            Ok(d) => Err(deny(StatusCode::FORBIDDEN, "policy_denied", d.reasons.join("; "))),
            Err(e @ PolicyError::Eval(_)) => {
                tracing::error!(error = %e, sha256 = bundle.sha256(), "policy evaluation failed; call refused");
                Err(deny(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "policy_unavailable",
                    "the authorization policy could not decide; the call is refused".into(),
                ))
            }
            Err(e) => {
                tracing::error!(error = %e, sha256 = bundle.sha256(), "policy gave no valid decision; call refused");
                Err(deny(
                    StatusCode::FORBIDDEN,
                    "policy_invalid",
                    "the authorization policy gave no valid decision".into(),
                ))
            }
        }
    }
}
