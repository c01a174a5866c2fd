//! The gate pipeline: every call passes these gates, in this order, before Execute.
//!
//! A gate is a value implementing [`Gate`]. It reads the parsed [`Call`] and either lets it on
//! or denies it with a [`Denial`], which the proxy renders in the client's own dialect and logs
//! like any other outcome. Adding a gate is one new module here plus one line in
//! [`Pipeline::from_config`].
//!
//! Gates run on the request path, so they decide from in-memory state: no I/O, no locks held
//! across awaits. Work that needs I/O (the audit log's sync) overlaps the upstream call instead.

pub mod audit;
pub mod authz;
pub mod budget;
mod deny;
pub mod identity;
pub mod model_lock;
pub mod pii;
pub mod ratelimit;
pub mod route;
pub mod session;
pub mod tools;

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, StatusCode};
use lattice_providers::CallView;
use rustls_pki_types::CertificateDer;

use crate::config::Config;
pub use crate::identity::Principal;
use crate::router::Deployment;

/// What the connection tells about the caller (filled once per connection).
#[derive(Debug, Default)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    pub tls: bool,
    /// The verified client certificate chain (mTLS), leaf first.
    pub peer_certs: Option<Vec<CertificateDer<'static>>>,
    /// The principal the certificate maps to, derived once per connection.
    pub mtls_principal: std::sync::OnceLock<Option<Arc<Principal>>>,
    /// HTTP/1.1: whether the connection's framing was refused (`crate::framing`).
    pub framing: Arc<crate::framing::Framing>,
    /// Requests whose responses are not yet done, and since when (unix ms) there were none:
    /// an HTTP/2 connection idle past its timeout is closed.
    pub in_flight: std::sync::atomic::AtomicUsize,
    pub idle_since_ms: std::sync::atomic::AtomicU64,
}

impl ConnInfo {
    /// A new connection's facts; its framing and idle time start clean.
    pub fn new(remote: SocketAddr, tls: bool, peer_certs: Option<Vec<CertificateDer<'static>>>) -> ConnInfo {
        ConnInfo {
            remote: Some(remote),
            tls,
            peer_certs,
            mtls_principal: Default::default(),
            framing: Default::default(),
            in_flight: Default::default(),
            idle_since_ms: unix_ms().into(),
        }
    }
}

/// The unix time in milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A request in flight on its connection, from its start until its response body is dropped
/// (sent, or abandoned).
pub struct InFlight(Arc<ConnInfo>);

impl InFlight {
    pub fn start(conn: Arc<ConnInfo>) -> InFlight {
        conn.in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlight(conn)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        self.0.idle_since_ms.store(unix_ms(), Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// One call as the gates see it.
pub struct Call<'a> {
    pub view: &'a CallView<'a>,
    pub headers: &'a HeaderMap,
    /// The request's path (the surface's; the query string is not part of it).
    pub path: &'a str,
    /// The call's session: the client's `x-lattice-session`, else assigned.
    pub session: &'a str,
    pub conn: &'a ConnInfo,
    pub request_id: &'a str,
    /// The deployment the model's route tries first, if the model routes. Resolved before the
    /// gates because policy reads the provider; an unknown model is reported only after the
    /// gates pass, so a caller who may not call at all cannot probe which models exist.
    pub route: Option<&'a Deployment>,
    /// Set by the identity gate; `None` when no identity method is configured.
    pub principal: Option<Arc<Principal>>,
    /// A policy obligation: call this model instead (re-routed before Execute).
    pub model_override: Option<String>,
    /// The SHA-256 of the policy bundle that decided the call (set by the authorization gate).
    pub policy_sha256: Option<Arc<str>>,
    /// The request body as received (the PII gate scans it; the budget gate estimates input
    /// tokens from its length).
    pub body: &'a [u8],
    /// The body to send instead (the PII gate redacted it).
    pub rewritten_body: Option<bytes::Bytes>,
    /// The policy's `pii` obligation for requests: actions by kind, over `[pii] request`.
    pub pii_obligation: Option<crate::content::Actions>,
    /// The policy's `pii` obligation for answers: actions by kind, over `[pii] response`.
    pub pii_response: Option<crate::content::Actions>,
    /// What the PII gate found and did (for the audit record).
    pub pii_findings: Vec<crate::content::Finding>,
    /// The policy's `allowed_tools` obligation: the tools this call may offer and the model may
    /// call (the tool gate and the response filter enforce it).
    pub allowed_tools: Option<Arc<crate::content::tools::AllowedTools>>,
    /// Tools the tool gate took out of the request (`[tools] offered = "filter"`).
    pub tools_removed: Vec<Box<str>>,
    /// The owner of the session the call names, when that is another principal (set by the
    /// session gate before authorization, for the policy input).
    pub session_owner: Option<session::Owner>,
    /// The policy's `session_shared` obligation: the call may write into that session.
    pub session_shared: bool,
    /// The body passed [`crate::content::strict::check`] (done once, by the first content
    /// gate that reads it).
    pub body_checked: bool,
    /// The policy's `model_lock` obligation.
    pub model_lock: Option<model_lock::ModelLock>,
    /// Every obligation the policy set (a fallback deployment must get the same).
    pub obligations: serde_json::Map<String, serde_json::Value>,
    /// Budgets the policy decision set (its `budget` obligation), charged with the configured.
    pub budget_obligations: Vec<crate::budget::Limit>,
    /// The worst case reserved on the call's budgets (set by the budget gate).
    pub reservation: Option<crate::budget::Reservation>,
}

impl Call<'_> {
    /// Where the call is priced: the upstream and the model name it is sent under (a policy's
    /// model, else the route's upstream name for the model, else the model as asked).
    pub fn priced_as(&self) -> (&str, &str) {
        let v = self.view;
        match (&self.model_override, self.route) {
            (Some(m), _) => ("", m.as_str()),
            (None, Some(r)) => (&*r.upstream.name, r.upstream_model.as_deref().unwrap_or(&v.model)),
            (None, None) => ("", v.model.as_ref()),
        }
    }

    /// Refuses a body the content rules cannot read one way only (see `content::strict`):
    /// called by every gate that reads the body's content, before it reads it. `gate` is the
    /// caller's name, for the denial.
    pub fn check_body(&mut self, gate: &'static str) -> Result<(), Denial> {
        if self.body_checked {
            return Ok(());
        }
        crate::content::strict::check(self.body).map_err(|e| Denial {
            gate,
            code: "unreadable_body",
            status: StatusCode::BAD_REQUEST,
            message: format!(
                "the request body cannot be checked by this gateway's content rules, which read a body one way only: {e}"
            )
            .into(),
            retry_after: None,
        })?;
        self.body_checked = true;
        Ok(())
    }
}

/// A gate's refusal. Rendered in the client's dialect by the proxy; `message` must not contain
/// a credential or another principal's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The denying gate's [`Gate::name`].
    pub gate: &'static str,
    /// Machine-readable reason (OpenAI's `code`).
    pub code: &'static str,
    pub status: StatusCode,
    pub message: Cow<'static, str>,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
}

pub trait Gate: Send + Sync + 'static {
    /// A static name used in logs, metrics, traces and audit records.
    fn name(&self) -> &'static str;

    /// The request-side check; a gate may record what it learnt (the principal) in `call`.
    fn check(&self, call: &mut Call<'_>) -> Result<(), Denial>;
}

/// A gate shared with another user (the identity gate with the sessions API).
impl<G: Gate> Gate for Arc<G> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn check(&self, call: &mut Call<'_>) -> Result<(), Denial> {
        (**self).check(call)
    }
}

/// THE ordered list of gates.
pub struct Pipeline {
    gates: Vec<Box<dyn Gate>>,
    /// The authorization gate again, for fallback deployments.
    authorization: Option<Arc<authz::Authorization>>,
    /// The identity gate again, for endpoints that need a caller but are not calls.
    identity: Option<Arc<identity::Identity>>,
}

impl Pipeline {
    /// `policy` and `jwks` are the live stores the gates read (started by the caller, which also
    /// reports their state on `/readyz`).
    pub fn from_config(
        config: &Config,
        policy: Option<Arc<crate::policy::store::PolicyStore>>,
        jwks: Option<Arc<crate::identity::jwt::Jwks>>,
        budgets: Option<Arc<crate::budget::Budgets>>,
        pii: Option<Arc<crate::content::Pii>>,
        router: Arc<crate::router::Router>,
        audit: Option<Arc<lattice_audit::AuditLog>>,
    ) -> Result<Pipeline, String> {
        let mut gates: Vec<Box<dyn Gate>> = Vec::new();
        // Identity (mTLS, API keys, JWT) comes first: every later gate decides about a principal.
        let identity = identity::Identity::from_config(config, jwks)?.map(Arc::new);
        if let Some(g) = &identity {
            gates.push(Box::new(g.clone()));
        }
        // Who owns the session the call names (sessions live in the audit log), for the policy.
        if let Some(a) = &audit {
            gates.push(Box::new(session::SessionOwner(a.clone())));
        }
        // Authorization (Rego) next: it issues the obligations the constraint gates enforce.
        let authorized = policy.is_some();
        let authorization = policy.map(|store| Arc::new(authz::Authorization::new(store, budgets.clone())));
        if let Some(a) = &authorization {
            gates.push(Box::new(a.clone()));
        }
        // Another principal's session is refused unless the policy shared it (before any
        // constraint gate counts the call).
        if audit.is_some() {
            gates.push(Box::new(session::SessionAccess));
        }

        // Constraints: the static deny list is the first (a static rule is the cheapest check),
        // the model lock next, then rate limits, the tool gate and PII (content: the tool gate
        // first, so PII scans what is sent), and budgets last: a reservation is only made for a
        // call that every other gate let through.
        if let Some(g) = deny::DenyList::from_config(&config.deny) {
            gates.push(Box::new(g));
        }
        // A model that routes nowhere is 404 from here on (the static deny list, a policy of
        // its own, still speaks first): no constraint refusal hides it.
        gates.push(Box::new(route::RouteGate(router.clone())));
        // The model lock and the tool gate enforce obligations, so they exist with a policy.
        if authorized {
            gates.push(Box::new(model_lock::ModelLockGate(router)));
        }
        if let Some(b) = &budgets
            && !config.budgets.rate_limits.is_empty()
        {
            gates.push(Box::new(ratelimit::RateLimits(b.clone())));
        }
        if authorized {
            gates.push(Box::new(tools::ToolGate(config.tools)));
        }
        // Content before budgets: a blocked call reserves nothing.
        if let Some(p) = pii {
            gates.push(Box::new(pii::PiiGate(p)));
        }
        if let Some(b) = budgets {
            gates.push(Box::new(budget::BudgetGate(b)));
        }
        Ok(Pipeline {
            gates,
            authorization,
            identity,
        })
    }

    /// The caller, for endpoints outside the call path: `Ok(None)` when no identity method is
    /// configured (everyone is anonymous).
    pub fn identify(&self, headers: &HeaderMap, conn: &ConnInfo) -> Result<Option<Arc<Principal>>, Denial> {
        self.identity
            .as_ref()
            .map(|i| i.identify(headers, conn))
            .transpose()
    }

    /// Whether a fallback deployment (now in `call.route`) may take the call: the policy lets
    /// it with the same obligations, and the model lock admits it.
    pub fn admits_fallback(&self, call: &Call<'_>) -> Result<(), Cow<'static, str>> {
        if let Some(lock) = &call.model_lock {
            let asked = call.model_override.as_deref().unwrap_or(&call.view.model);
            lock.admits(asked, call.route).map_err(Cow::Owned)?;
        }
        match &self.authorization {
            Some(a) => a.admits_fallback(call).map_err(Cow::Borrowed),
            None => Ok(()),
        }
    }

    /// Runs the request-side checks in order; the first denial wins.
    pub fn check(&self, call: &mut Call<'_>) -> Result<(), Denial> {
        for g in &self.gates {
            g.check(call)?;
        }
        Ok(())
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.gates.iter().map(|g| g.name())
    }
}
