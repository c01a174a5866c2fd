//! The per-request path: surface -> body -> view -> gates -> route -> execute -> response.
//!
//! The body is read once (bounded), parsed once into a [`CallView`], and sent upstream as the
//! same bytes unless a route renames the model (then only that value is spliced). Every exit
//! carries an [`AccessLog`] that is written when the response body ends or is dropped.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use lattice_providers::dialect::error_body;
use lattice_providers::{CallView, Dialect, Surface, ViewError, mock, view};

use crate::body::{AccessLog, Outcome, ResponseBody};
use crate::config::{Config, ProviderKind};
use crate::gates::{Call, ConnInfo, Denial, Pipeline, Principal};
use crate::policy::store::PolicyStore;
use crate::router::Router;
use crate::upstream::{HttpTarget, Target, Upstream, UpstreamSetupError};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The session a call belongs to: given by the client, else assigned (the request id).
pub const X_LATTICE_SESSION: HeaderName = HeaderName::from_static("x-lattice-session");
const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
const DEFAULT_ANTHROPIC_VERSION: HeaderValue = HeaderValue::from_static("2023-06-01");
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Everything the request path reads; built once from the config.
pub struct State {
    router: Arc<Router>,
    /// The PII engine (response rules run it too).
    pii: Option<Arc<crate::content::Pii>>,
    /// `[pii] response`: the configured actions on answers.
    pii_response: Arc<crate::content::Actions>,
    tools: crate::content::tools::ToolsConfig,
    pipeline: Pipeline,
    policy: Option<Arc<PolicyStore>>,
    jwks: Option<Arc<crate::identity::jwt::Jwks>>,
    audit: Option<Arc<lattice_audit::AuditLog>>,
    /// Where signed heads are copied (`[audit] witness`).
    witness: Option<crate::witness::Witness>,
    /// Where the audit log lives, for the spend reports.
    audit_storage: Option<Arc<dyn lattice_audit::Storage>>,
    budgets: Option<Arc<crate::budget::Budgets>>,
    max_body: u64,
    body_timeout: std::time::Duration,
    models_openai: Bytes,
    models_anthropic: Bytes,
}

impl State {
    /// `audit_storage`: where the audit log lives; `None`: `<data_dir>/audit` on disk.
    pub fn new(
        config: &Config,
        audit_storage: Option<Arc<dyn lattice_audit::Storage>>,
    ) -> Result<State, String> {
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| Upstream::new(u).map(Arc::new))
            .collect::<Result<Vec<_>, UpstreamSetupError>>()
            .map_err(|e| e.to_string())?;
        let router = Arc::new(Router::new(config, &upstreams));
        let (models_openai, models_anthropic) = model_lists(&router);
        let policy = match &config.authorization {
            None => None,
            Some(a) => {
                let store = PolicyStore::open(&a.policy_dir, a.eval_timeout).map_err(|e| e.to_string())?;
                store
                    .watch()
                    .map_err(|e| format!("cannot watch {}: {e}", a.policy_dir.display()))?;
                Some(store)
            }
        };
        // Must run inside the runtime: a JWKS URL is fetched by a task.
        let jwks = config
            .identity
            .jwt
            .as_ref()
            .map(crate::identity::jwt::Jwks::start)
            .transpose()?;
        let mut kept_storage = None;
        let audit = match &config.audit {
            None => None,
            Some(a) => {
                let dir = config.data_dir.join("audit");
                let storage: Arc<dyn lattice_audit::Storage> = match audit_storage {
                    Some(s) => s,
                    None => Arc::new(
                        lattice_audit::DiskStorage::open(&dir)
                            .map_err(|e| format!("audit log {}: {e}", dir.display()))?,
                    ),
                };
                kept_storage = Some(storage.clone());
                // The log must extend the head its witness last kept (a rollback, or a replaced
                // key, of the data dir refuses to start instead of being witnessed anew).
                let mut options = a.options.clone();
                options.extends = a
                    .witness
                    .as_ref()
                    .map(|w| w.kept())
                    .transpose()
                    .map_err(|e| format!("audit witness: {e}"))?
                    .flatten();
                let log = lattice_audit::AuditLog::open(storage, options)
                    .map_err(|e| format!("audit log {}: {e}", dir.display()))?;
                let r = log.recovery();
                tracing::info!(dir = %dir.display(), records = r.records, segments = r.segments,
                    torn_tail_bytes = r.torn_tail.as_ref().map_or(0, |t| t.0), unsealed_records = r.unsealed_records,
                    skipped = r.skipped.len(), seals_vouch_from = r.base, "audit log opened");
                if let Some(w) = &a.witness {
                    w.spawn(&log);
                }
                Some(Arc::new(log))
            }
        };
        let budgets = crate::budget::Budgets::new(
            config.budgets.clone(),
            Arc::new(crate::budget::ledger::Embedded::new()),
        )?;
        // On with `[pii]` actions, and with a policy (whose `pii` obligation may ask for them).
        let pii = if config.pii.enabled() || config.authorization.is_some() {
            Some(Arc::new(crate::content::Pii::new(config.pii.clone())?))
        } else {
            None
        };
        // The ledger is a fold over the log: rebuild the current windows' spend.
        if let (Some(b), Some(storage)) = (&budgets, &kept_storage) {
            let t = Instant::now();
            let s = b
                .restore(&**storage)
                .map_err(|e| format!("rebuilding budgets from the audit log: {e}"))?;
            tracing::info!(calls = s.calls, unsettled = s.unsettled,
                restored_usd = %crate::budget::usd(s.restored_nano_usd),
                ms = t.elapsed().as_millis() as u64, "budgets rebuilt from the audit log");
        }
        Ok(State {
            pipeline: Pipeline::from_config(
                config,
                policy.clone(),
                jwks.clone(),
                budgets.clone(),
                pii.clone(),
                router.clone(),
                audit.clone(),
            )?,
            router,
            pii,
            pii_response: Arc::new(config.pii.response.clone()),
            tools: config.tools,
            policy,
            jwks,
            audit,
            witness: config.audit.as_ref().and_then(|a| a.witness.clone()),
            audit_storage: kept_storage,
            budgets,
            max_body: config.server.max_body_bytes,
            body_timeout: config.server.body_read_timeout,
            models_openai,
            models_anthropic,
        })
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Reloads the policy bundle now, as a change of its files would (SIGHUP). Blocking: it
    /// compiles the bundle and runs its tests, so call it off the runtime's worker threads.
    pub fn reload(&self) {
        tracing::info!("reload requested (SIGHUP)");
        match &self.policy {
            // The store logs the outcome: the new bundle's hash, or the error and the bundle kept.
            Some(p) => drop(p.reload()),
            None => tracing::info!("no policy bundle is configured; nothing to reload"),
        }
    }

    /// The audit log, unless `[audit] enabled = false`.
    pub fn audit(&self) -> Option<&Arc<lattice_audit::AuditLog>> {
        self.audit.as_ref()
    }

    /// The Prometheus text of `GET /metrics`.
    pub fn metrics_text(&self) -> String {
        self.budgets.as_ref().map(|b| b.metrics()).unwrap_or_default()
    }

    /// The audit witness, when `[audit] witness` is set.
    pub fn witness(&self) -> Option<&crate::witness::Witness> {
        self.witness.as_ref()
    }

    /// The JWT signing keys, when `[identity.jwt]` is configured.
    pub fn jwks(&self) -> Option<&Arc<crate::identity::jwt::Jwks>> {
        self.jwks.as_ref()
    }
}

/// Why a call was answered by the gateway itself. One place maps each to status and message.
#[derive(Debug)]
enum Rejection {
    NotFound,
    MethodNotAllowed(&'static str),
    BodyTooLarge(u64),
    BodyRead,
    BodyTimeout(std::time::Duration),
    /// HTTP/1.1 framing RFC 9112 does not allow (the connection is closed after the answer).
    BadFraming(&'static str),
    BadRequest(ViewError),
    UnknownModel(String),
    DialectMismatch {
        model: String,
        upstream: Arc<str>,
    },
    Denied(Denial),
    UpstreamConnect(Arc<str>),
    UpstreamTimeout(Arc<str>),
    UpstreamFailed(Arc<str>),
    /// An answer the response filter had to read whole was too large or too slow.
    AnswerUnscanned(Arc<str>),
    /// The audit log cannot take the call's record: refused, never unrecorded.
    AuditUnavailable,
    Internal,
}

impl Rejection {
    fn status(&self) -> StatusCode {
        match self {
            Rejection::NotFound | Rejection::UnknownModel(_) => StatusCode::NOT_FOUND,
            Rejection::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Rejection::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::BodyRead
            | Rejection::BadRequest(_)
            | Rejection::DialectMismatch { .. }
            | Rejection::BadFraming(_) => StatusCode::BAD_REQUEST,
            Rejection::Denied(d) => d.status,
            Rejection::UpstreamConnect(_) | Rejection::UpstreamFailed(_) | Rejection::AnswerUnscanned(_) => {
                StatusCode::BAD_GATEWAY
            }
            Rejection::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Rejection::AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Rejection::NotFound => "not_found",
            Rejection::MethodNotAllowed(_) => "method_not_allowed",
            Rejection::BodyTooLarge(_) => "request_too_large",
            Rejection::BodyRead => "body_read_failed",
            Rejection::BadFraming(_) => "invalid_framing",
            Rejection::BodyTimeout(_) => "request_timeout",
            Rejection::BadRequest(ViewError::Malformed(_)) => "invalid_json",
            Rejection::BadRequest(ViewError::OutOfRange(..)) => "invalid_value",
            Rejection::BadRequest(_) => "invalid_model",
            Rejection::UnknownModel(_) => "model_not_found",
            Rejection::DialectMismatch { .. } => "dialect_not_supported",
            Rejection::Denied(d) => d.code,
            Rejection::UpstreamConnect(_) => "upstream_unreachable",
            Rejection::UpstreamTimeout(_) => "upstream_timeout",
            Rejection::UpstreamFailed(_) => "upstream_error",
            Rejection::AnswerUnscanned(_) => "answer_unscanned",
            Rejection::AuditUnavailable => "audit_unavailable",
            Rejection::Internal => "internal_error",
        }
    }

    /// Where the failure came from, for the access record: the gate's name for a denial.
    fn origin(&self) -> &'static str {
        match self {
            Rejection::Denied(d) => d.gate,
            Rejection::UpstreamConnect(_)
            | Rejection::UpstreamTimeout(_)
            | Rejection::UpstreamFailed(_)
            | Rejection::AnswerUnscanned(_) => "upstream",
            Rejection::Internal | Rejection::AuditUnavailable => "internal",
            _ => "downstream",
        }
    }

    fn message(&self) -> Cow<'_, str> {
        match self {
            Rejection::NotFound => "no such API route on this gateway".into(),
            Rejection::MethodNotAllowed(allow) => format!("method not allowed; use {allow}").into(),
            Rejection::BodyTooLarge(limit) => {
                format!("the request body is larger than this gateway's limit of {limit} bytes").into()
            }
            Rejection::BodyRead => "the request body could not be read".into(),
            Rejection::BadFraming(why) => {
                format!("the request is not framed as HTTP/1.1 allows (RFC 9112): {why}").into()
            }
            Rejection::BodyTimeout(d) => {
                format!("the request body did not arrive within {} ms", d.as_millis()).into()
            }
            Rejection::BadRequest(e) => e.to_string().into(),
            Rejection::UnknownModel(m) => format!("the model `{m}` does not exist on this gateway").into(),
            Rejection::DialectMismatch { model, upstream } => format!(
                "the model `{model}` is served by upstream `{upstream}` in another API dialect; \
                 call it through that dialect's endpoint"
            )
            .into(),
            Rejection::Denied(d) => Cow::Borrowed(&d.message),
            Rejection::UpstreamConnect(u) => format!("upstream `{u}` could not be reached").into(),
            Rejection::UpstreamTimeout(u) => format!("upstream `{u}` did not answer in time").into(),
            Rejection::UpstreamFailed(u) => format!("upstream `{u}` failed before answering").into(),
            Rejection::AnswerUnscanned(u) => format!(
                "the answer of upstream `{u}` could not be checked (compressed, or not read whole \
                 within the time limit and {MAX_SCANNED_ANSWER} bytes), so it is not passed on"
            )
            .into(),
            Rejection::AuditUnavailable => {
                "the audit log cannot record this call, so it is refused; retry later".into()
            }
            Rejection::Internal => "internal gateway error".into(),
        }
    }
}

/// The dialect to answer in before the surface is known: Anthropic's SDKs always send
/// `anthropic-version`; everything else is answered as OpenAI.
fn guess_dialect(headers: &HeaderMap) -> Dialect {
    if headers.contains_key(&ANTHROPIC_VERSION) {
        Dialect::Anthropic
    } else {
        Dialect::OpenAi
    }
}

enum Endpoint {
    Health,
    Ready,
    Models,
    Model,
    /// `GET /v1/sessions/{id}/events`
    SessionEvents,
    /// `POST /v1/sessions/{id}/compactions`
    SessionCompaction,
    /// `GET /admin/spend`
    Spend,
    /// `GET /metrics` (Prometheus)
    Metrics,
    Call(Surface),
}

fn endpoint(method: &Method, path: &str) -> Result<Endpoint, Rejection> {
    let (ep, allow) = match path {
        "/v1/chat/completions" => (Endpoint::Call(Surface::ChatCompletions), "POST"),
        "/v1/messages" => (Endpoint::Call(Surface::Messages), "POST"),
        "/v1/embeddings" => (Endpoint::Call(Surface::Embeddings), "POST"),
        "/v1/messages/count_tokens" => (Endpoint::Call(Surface::CountTokens), "POST"),
        "/v1/models" => (Endpoint::Models, "GET"),
        "/healthz" => (Endpoint::Health, "GET"),
        "/readyz" => (Endpoint::Ready, "GET"),
        "/admin/spend" => (Endpoint::Spend, "GET"),
        "/metrics" => (Endpoint::Metrics, "GET"),
        p if p.starts_with("/v1/models/") => (Endpoint::Model, "GET"),
        p if p.starts_with("/v1/sessions/") && p.ends_with("/events") => (Endpoint::SessionEvents, "GET"),
        p if p.starts_with("/v1/sessions/") && p.ends_with("/compactions") => {
            (Endpoint::SessionCompaction, "POST")
        }
        _ => return Err(Rejection::NotFound),
    };
    let ok = match allow {
        "POST" => method == Method::POST,
        _ => method == Method::GET || method == Method::HEAD,
    };
    if ok {
        Ok(ep)
    } else {
        Err(Rejection::MethodNotAllowed(allow))
    }
}

/// A client-chosen id worth keeping: 1-128 visible ASCII characters.
fn sane_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(u8::is_ascii_graphic)
}

fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID).filter(|v| sane_id(v)) {
        return v.clone();
    }
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let s = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("-"))
}

/// `/readyz`: ready, with the state of the live stores. Still ready when a reload was refused
/// (the previous policy or keys decide), but the detail says so; not ready (503) while no JWT
/// signing key has loaded, as no token could be checked, or once the audit log has failed, as
/// no call can be recorded.
fn readiness(state: &State) -> (StatusCode, Bytes) {
    if state.policy.is_none() && state.jwks.is_none() && state.audit.is_none() {
        return (StatusCode::OK, Bytes::from_static(b"{\"status\":\"ready\"}"));
    }
    let mut status = StatusCode::OK;
    let mut detail = serde_json::json!({"status": "ready"});
    if let Some(p) = &state.policy {
        let b = p.current();
        detail["policy"] = serde_json::json!({"sha256": b.sha256(), "engine": b.engine_name(),
                                              "reload_error": p.last_error().as_deref()});
    }
    if let Some(j) = &state.jwks {
        let keys = j.current();
        if keys.is_none() {
            status = StatusCode::SERVICE_UNAVAILABLE;
            detail["status"] = "not ready".into();
        }
        detail["jwks"] = serde_json::json!({"sha256": keys.as_ref().map(|k| k.sha256()),
                                            "keys": keys.as_ref().map_or(0, |k| k.len()),
                                            "reload_error": j.last_error().as_deref()});
    }
    if let Some(a) = &state.audit {
        // A failed audit log refuses every call (503) until a restart: not ready.
        let failure = a.failure();
        if failure.is_some() {
            status = StatusCode::SERVICE_UNAVAILABLE;
            detail["status"] = "not ready".into();
        }
        let r = a.recovery();
        detail["audit"] = serde_json::json!({"failure": failure,
            "head": a.head().map(|h| h.covers()),
            "recovery": {"records": r.records, "unsealed_set_aside": r.unsealed_records,
                         "skipped": r.skipped.len(), "seals_vouch_from": r.base}});
    }
    (status, Bytes::from(detail.to_string()))
}

/// A refusal of an endpoint outside the call path (`gate` names it in the access record).
fn refusal(
    gate: &'static str,
    status: StatusCode,
    code: &'static str,
    message: impl Into<Cow<'static, str>>,
) -> Rejection {
    Rejection::Denied(Denial {
        gate,
        code,
        status,
        message: message.into(),
        retry_after: None,
    })
}

/// The largest compaction note a client may send.
const MAX_COMPACTION: u64 = 64 * 1024;

/// The session a sessions-API request names, once its caller may touch it: the session's own
/// principal (the principal of its first record) or one with the role `admin`. With no identity
/// method configured every caller is anonymous, and so is every session.
fn session_access(
    state: &State,
    conn: &ConnInfo,
    parts: &http::request::Parts,
    suffix: &str,
) -> Result<SessionAccess, Rejection> {
    let audit = state.audit.clone().ok_or(Rejection::NotFound)?;
    let id = parts
        .uri
        .path()
        .strip_prefix("/v1/sessions/")
        .and_then(|r| r.strip_suffix(suffix))
        .filter(|id| !id.is_empty() && !id.contains('/'))
        .ok_or(Rejection::NotFound)?
        .to_string();
    let principal = state
        .pipeline
        .identify(&parts.headers, conn)
        .map_err(Rejection::Denied)?;
    let (owner, compaction) = audit.session_info(&id).ok_or_else(|| {
        refusal(
            "sessions",
            StatusCode::NOT_FOUND,
            "session_not_found",
            "no such session",
        )
    })?;
    // The owner and admins read it all; a principal the policy let write into it (delegation)
    // reads its own records only.
    let (all, own) = match &principal {
        None => (owner.is_empty(), false),
        Some(p) => (
            p.id == owner || p.roles.iter().any(|r| r == "admin"),
            audit.session_writer(&id, &p.id),
        ),
    };
    if !all && !own {
        let msg = "the session belongs to another principal";
        return Err(refusal(
            "sessions",
            StatusCode::FORBIDDEN,
            "session_forbidden",
            msg,
        ));
    }
    let only = (!all).then(|| principal.as_ref().map(|p| p.id.clone())).flatten();
    Ok(SessionAccess {
        audit,
        id,
        principal,
        compaction,
        only,
    })
}

/// A session a caller may read or mark.
struct SessionAccess {
    audit: Arc<lattice_audit::AuditLog>,
    id: String,
    principal: Option<Arc<Principal>>,
    /// Its latest compaction boundary.
    compaction: Option<u64>,
    /// The only principal whose records the caller may see, when it may not see them all.
    only: Option<String>,
}

/// `GET /v1/sessions/{id}/events?after=SEQ&limit=N`: a session's events in order, with its
/// latest compaction boundary (`compaction`) and the sequence to ask from next (`next_after`).
async fn session_events(
    state: &State,
    conn: &ConnInfo,
    parts: &http::request::Parts,
    dialect: Dialect,
    rid: HeaderValue,
    log: Box<AccessLog>,
) -> Response<ResponseBody> {
    let (mut after, mut limit) = (0u64, 100usize);
    for pair in parts
        .uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let parsed = match pair.split_once('=') {
            Some(("after", v)) => v.parse().map(|v| after = v).is_ok(),
            Some(("limit", v)) => v.parse().map(|v: usize| limit = v).is_ok() && (1..=1000).contains(&limit),
            _ => false,
        };
        if !parsed {
            let msg =
                format!("bad query parameter `{pair}`: use after=<sequence number> and limit=<1..1000>");
            return reject(
                refusal("sessions", StatusCode::BAD_REQUEST, "invalid_request", msg),
                dialect,
                rid,
                log,
            );
        }
    }
    let SessionAccess {
        audit,
        id,
        principal,
        compaction,
        only,
    } = match session_access(state, conn, parts, "/events") {
        Ok(a) => a,
        Err(rej) => return reject(rej, dialect, rid, log),
    };
    // Who read which session is itself recorded (outside the session, so reading it does not
    // change it).
    let read = serde_json::json!({"session": id, "after": after, "limit": limit,
                                  "request_id": rid.to_str().unwrap_or("-")});
    if record_read(&audit, "session.read", principal.as_deref(), &read)
        .await
        .is_err()
    {
        return reject(Rejection::AuditUnavailable, dialect, rid, log);
    }
    let read = tokio::task::spawn_blocking(move || {
        audit
            .session_events_by(&id, after, limit, only.as_deref())
            .map(|e| (id, e))
    })
    .await;
    let Ok(Ok((id, events))) = read else {
        return reject(Rejection::AuditUnavailable, dialect, rid, log);
    };
    let next = events.last().map_or(after, |e| e.seq);
    let events: Vec<serde_json::Value> = events.iter().map(crate::gates::audit::record_json).collect();
    let body =
        serde_json::json!({"session": id, "events": events, "compaction": compaction, "next_after": next});
    plain(
        StatusCode::OK,
        "application/json",
        Bytes::from(body.to_string()),
        rid,
        log,
    )
}

/// `POST /v1/sessions/{id}/compactions` with a JSON object (what the client summarised, e.g.
/// `{"through": 41, "summary_sha256": "..."}`): records a compaction boundary, durably. Nothing
/// is deleted; readers can start from the boundary (`after=` its `seq`).
async fn session_compaction(
    state: &State,
    conn: &ConnInfo,
    parts: &http::request::Parts,
    body: Bytes,
    dialect: Dialect,
    rid: HeaderValue,
    log: Box<AccessLog>,
) -> Response<ResponseBody> {
    let SessionAccess {
        audit,
        id,
        principal,
        only,
        ..
    } = match session_access(state, conn, parts, "/compactions") {
        Ok(a) => a,
        Err(rej) => return reject(rej, dialect, rid, log),
    };
    if only.is_some() {
        // A delegate writes its calls into the session; only the owner marks its boundaries.
        let msg = "only the session's owner (or an admin) records its compactions";
        return reject(
            refusal("sessions", StatusCode::FORBIDDEN, "session_forbidden", msg),
            dialect,
            rid,
            log,
        );
    }
    if !serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|v| v.is_object()) {
        let msg = "the body must be a JSON object describing the compaction";
        return reject(
            refusal("sessions", StatusCode::BAD_REQUEST, "invalid_request", msg),
            dialect,
            rid,
            log,
        );
    }
    let event = lattice_audit::Event {
        kind: lattice_audit::log::COMPACTION.into(),
        session: id.clone(),
        principal: principal.map(|p| p.id.clone()).unwrap_or_default(),
        payload: body.to_vec(),
    };
    match audit.append(event).await {
        Ok(receipt) => {
            let body = serde_json::json!({"session": id, "seq": receipt.seq});
            plain(
                StatusCode::CREATED,
                "application/json",
                Bytes::from(body.to_string()),
                rid,
                log,
            )
        }
        Err(_) => reject(Rejection::AuditUnavailable, dialect, rid, log),
    }
}

/// Records, durably and outside any session, that `principal` read something (`what` says what).
async fn record_read(
    audit: &lattice_audit::AuditLog,
    kind: &str,
    principal: Option<&Principal>,
    what: &serde_json::Value,
) -> Result<lattice_audit::Receipt, lattice_audit::AuditError> {
    let event = lattice_audit::Event {
        kind: kind.into(),
        session: String::new(),
        principal: principal.map(|p| p.id.clone()).unwrap_or_default(),
        payload: serde_json::to_vec(what).unwrap_or_default(),
    };
    audit.append(event).await
}

/// The caller of a spend endpoint, if it may read spend: a principal with the role `admin`,
/// `finance` or `also` (when not empty); anyone when no identity method is configured.
fn finance_caller(
    state: &State,
    conn: &ConnInfo,
    parts: &http::request::Parts,
    also: &str,
) -> Result<Option<Arc<Principal>>, Rejection> {
    let principal = state
        .pipeline
        .identify(&parts.headers, conn)
        .map_err(Rejection::Denied)?;
    let may = |r: &String| r == "admin" || r == "finance" || (!also.is_empty() && r == also);
    if principal.as_ref().is_some_and(|p| !p.roles.iter().any(may)) {
        let msg = "spend reports need the role `admin` or `finance`";
        return Err(refusal("admin", StatusCode::FORBIDDEN, "spend_forbidden", msg));
    }
    Ok(principal)
}

/// `GET /admin/spend?group_by=team|user|key|model[,...]&since=&until=&format=json|csv`: spend
/// from the audit log, for principals with the role `admin` or `finance` (anyone, when no
/// identity method is configured). Each read is itself recorded (`spend.read`).
async fn spend_report(
    state: &State,
    conn: &ConnInfo,
    parts: &http::request::Parts,
    dialect: Dialect,
    rid: HeaderValue,
    log: Box<AccessLog>,
) -> Response<ResponseBody> {
    let principal = match finance_caller(state, conn, parts, "") {
        Ok(p) => p,
        Err(rej) => return reject(rej, dialect, rid, log),
    };
    let (Some(audit), Some(storage)) = (state.audit.clone(), state.audit_storage.clone()) else {
        let msg = "spend is reported from the audit log, which is disabled";
        return reject(
            refusal("admin", StatusCode::NOT_FOUND, "not_found", msg),
            dialect,
            rid,
            log,
        );
    };
    let query = parts.uri.query().unwrap_or("");
    let pairs = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")));
    let mut q = match crate::budget::report::Query::parse(pairs) {
        Ok(q) => q,
        Err(msg) => {
            return reject(
                refusal("admin", StatusCode::BAD_REQUEST, "invalid_request", msg),
                dialect,
                rid,
                log,
            );
        }
    };
    let wants_csv = parts
        .headers
        .get(header::ACCEPT)
        .is_some_and(|a| a.as_bytes().starts_with(b"text/csv"));
    if wants_csv && !query.contains("format=") {
        q.format = crate::budget::report::Format::Csv;
    }
    let read = serde_json::json!({"query": query, "request_id": rid.to_str().unwrap_or("-")});
    if record_read(&audit, "spend.read", principal.as_deref(), &read)
        .await
        .is_err()
    {
        return reject(Rejection::AuditUnavailable, dialect, rid, log);
    }
    let format = q.format;
    let Ok(Ok(report)) = tokio::task::spawn_blocking(move || q.run(&*storage)).await else {
        return reject(Rejection::AuditUnavailable, dialect, rid, log);
    };
    match format {
        crate::budget::report::Format::Csv => plain(
            StatusCode::OK,
            "text/csv; charset=utf-8",
            Bytes::from(report.csv()),
            rid,
            log,
        ),
        crate::budget::report::Format::Json => plain(
            StatusCode::OK,
            "application/json",
            Bytes::from(report.json().to_string()),
            rid,
            log,
        ),
    }
}

/// The call's session: the client's `x-lattice-session` when it is sane (1-128 visible ASCII
/// characters, as request ids), else a new one: a random UUID (not the request id, which a
/// client may choose), so an assigned session cannot be guessed and named by another caller.
fn session_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_LATTICE_SESSION).filter(|v| sane_id(v)) {
        return v.clone();
    }
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Serves one request. Never fails: every problem becomes a response in the client's dialect.
pub async fn handle(
    state: Arc<State>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let start = Instant::now();
    let (parts, body) = req.into_parts();
    let rid = request_id(&parts.headers);
    let mut log = Box::new(AccessLog {
        audit: None,
        session: HeaderValue::from_static(""),
        response_hash: None,
        spend: None,
        filter: None,
        start,
        request_id: rid.clone(),
        method: parts.method.clone(),
        path: parts.uri.clone(),
        status: 0,
        model: None,
        upstream: None,
        reason: None,
        principal: None,
        policy: None,
        bytes: 0,
        outcome: Outcome::Complete,
    });
    let dialect = guess_dialect(&parts.headers);
    // HTTP/1.1 framing the gateway refused (`crate::framing`): this is its stand-in request.
    if let Some(why) = conn.framing.error() {
        let dialect = endpoint(&parts.method, parts.uri.path())
            .ok()
            .and_then(|e| match e {
                Endpoint::Call(s) => Some(s.dialect()),
                _ => None,
            })
            .unwrap_or(dialect);
        return reject(Rejection::BadFraming(why), dialect, rid, log);
    }
    let surface = match endpoint(&parts.method, parts.uri.path()) {
        Ok(Endpoint::Call(s)) => s,
        Ok(Endpoint::Health) => {
            return plain(
                StatusCode::OK,
                "text/plain",
                Bytes::from_static(b"ok\n"),
                rid,
                log,
            );
        }
        Ok(Endpoint::Ready) => {
            let (status, body) = readiness(&state);
            return plain(status, "application/json", body, rid, log);
        }
        Ok(Endpoint::Models) => {
            let list = match dialect {
                Dialect::Anthropic => state.models_anthropic.clone(),
                Dialect::OpenAi => state.models_openai.clone(),
            };
            return plain(StatusCode::OK, "application/json", list, rid, log);
        }
        Ok(Endpoint::Model) => return model_object(&state, parts.uri.path(), dialect, rid, log),
        Ok(Endpoint::Spend) => return spend_report(&state, &conn, &parts, dialect, rid, log).await,
        Ok(Endpoint::Metrics) => {
            if let Err(rej) = finance_caller(&state, &conn, &parts, "metrics") {
                return reject(rej, dialect, rid, log);
            }
            let text = state.metrics_text();
            return plain(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                Bytes::from(text),
                rid,
                log,
            );
        }
        Ok(Endpoint::SessionEvents) => return session_events(&state, &conn, &parts, dialect, rid, log).await,
        Ok(Endpoint::SessionCompaction) => {
            let body = match tokio::time::timeout(
                state.body_timeout,
                read_framed_body(&conn, &parts.headers, body, MAX_COMPACTION),
            )
            .await
            {
                Ok(Ok(b)) => b,
                Ok(Err(rej)) => return reject(rej, dialect, rid, log),
                Err(_) => return reject(Rejection::BodyTimeout(state.body_timeout), dialect, rid, log),
            };
            return session_compaction(&state, &conn, &parts, body, dialect, rid, log).await;
        }
        Err(rej) => return reject(rej, dialect, rid, log),
    };
    let dialect = surface.dialect();
    log.session = session_id(&parts.headers);
    log.audit = state.audit.clone();
    if log.audit.is_some() {
        log.response_hash = Some(sha2::Digest::new());
    }
    let session_header = log.session.clone();
    let session = session_header.to_str().unwrap_or("");

    // A body that trickles in is cut off (slow-body clients); one that has already arrived
    // never arms the timer, as `timeout` polls the read first.
    let read = tokio::time::timeout(
        state.body_timeout,
        read_framed_body(&conn, &parts.headers, body, state.max_body),
    );
    let bytes = match read.await {
        Ok(Ok(b)) => b,
        Ok(Err(rej)) => return reject(rej, dialect, rid, log),
        Err(_) => return reject(Rejection::BodyTimeout(state.body_timeout), dialect, rid, log),
    };
    let view = match view::parse(surface, &bytes) {
        Ok(v) => v,
        Err(e) => return reject(Rejection::BadRequest(e), dialect, rid, log),
    };
    log.model = Some(view.model.as_ref().into());
    let route = state.router.resolve(&view.model);
    let mut call = Call {
        view: &view,
        headers: &parts.headers,
        path: parts.uri.path(),
        session,
        conn: &conn,
        request_id: rid.to_str().unwrap_or("-"),
        route: route.map(|r| &**r),
        principal: None,
        model_override: None,
        policy_sha256: None,
        body: &bytes,
        rewritten_body: None,
        pii_obligation: None,
        pii_response: None,
        pii_findings: Vec::new(),
        allowed_tools: None,
        tools_removed: Vec::new(),
        session_owner: None,
        session_shared: false,
        body_checked: false,
        model_lock: None,
        budget_obligations: Vec::new(),
        reservation: None,
    };
    let checked = state.pipeline.check(&mut call);
    // Who called and which policy decided, allowed or not.
    log.principal = call.principal.clone();
    log.policy = call.policy_sha256.clone();
    if let Err(d) = checked {
        // A refused call creates no session, and enters one only if its caller may write to it
        // (owns it, or the policy shared it): a bad key or a denied call cannot claim a
        // session id first, nor put records into another's. Nor is the session echoed.
        let caller = call.principal.as_deref().map_or("", |p| p.id.as_str());
        let may_write = d.code != crate::gates::session::FORBIDDEN
            && state
                .audit
                .as_ref()
                .and_then(|a| a.session_owned_by(session, caller))
                .is_some_and(|owns| owns || call.session_shared);
        let session = if may_write {
            session
        } else {
            log.session = HeaderValue::from_static("");
            ""
        };
        // A denial is recorded, durably, before it is answered.
        if let Some(audit) = &state.audit {
            let event = crate::gates::audit::decision(&call, session, &bytes, Some(&d), None, None);
            if let Err(e) = audit.append(event).await {
                return audit_refused(&e, dialect, rid, log);
            }
        }
        return reject(Rejection::Denied(d), dialect, rid, log);
    }
    // Dropped before the decision record (unknown model, wrong dialect), it charges nothing.
    let reservation = call.reservation.take();
    // The body the PII gate redacted goes upstream instead (with the model span found again).
    let (bytes_out, model_span) = match call.rewritten_body.take() {
        Some(b) => {
            let span = view::parse(surface, &b).map_or_else(|_| view.model_span.clone(), |v| v.model_span);
            (b, span)
        }
        None => (bytes.clone(), view.model_span.clone()),
    };
    // A policy's `model` obligation: the call goes where that model routes, under that name.
    let override_model = call.model_override.take();
    let route = match &override_model {
        Some(m) => state.router.resolve(m),
        None => route,
    };
    let Some(route) = route else {
        let model = override_model.unwrap_or_else(|| view.model.into_owned());
        return reject(Rejection::UnknownModel(model), dialect, rid, log);
    };
    // The name the upstream gets: the route's rename, else the policy's override, else as asked.
    let send_model = route.upstream_model.as_deref().or(override_model.as_deref());
    let upstream = &route.upstream;
    log.upstream = Some(upstream.name.clone());
    if !upstream.speaks(dialect) {
        let rej = Rejection::DialectMismatch {
            model: view.model.into_owned(),
            upstream: upstream.name.clone(),
        };
        return reject(rej, dialect, rid, log);
    }
    // The decision record goes to the writer now; its sync overlaps the upstream call, and the
    // response waits for it (below and in `forward`).
    let recorded = state.audit.as_ref().map(|a| {
        a.append(crate::gates::audit::decision(
            &call,
            session,
            &bytes,
            None,
            Some((&upstream.name, send_model)),
            reservation.as_ref(),
        ))
    });
    // Metered: an OpenAI stream is asked for its usage, which the client gets only if it asked.
    if let Some(r) = reservation {
        let mut spend = crate::budget::Spend::new(r);
        spend.strip_usage = surface == Surface::ChatCompletions && view.stream && !view.include_usage;
        log.spend = Some(spend);
    }
    let ask_usage = log.spend.as_ref().is_some_and(|s| s.strip_usage);
    log.filter = response_filter(&state, &mut call, dialect);

    match &upstream.target {
        Target::Mock(opts) => {
            let renamed;
            let view = match (send_model, ask_usage) {
                (None, false) => &view,
                (m, _) => {
                    renamed = CallView {
                        model: m.map_or_else(|| view.model.clone(), Cow::Borrowed),
                        include_usage: view.include_usage || ask_usage,
                        ..view.clone()
                    };
                    &renamed
                }
            };
            let reply = mock::respond(view, &bytes_out, opts);
            if let Some(recorded) = recorded
                && let Err(e) = recorded.await
            {
                return audit_refused(&e, dialect, rid, log);
            }
            if let Some(s) = log.spend.as_mut() {
                s.start(dialect, reply.status, reply.content_type.as_bytes());
            }
            log.status = reply.status.as_u16();
            let mut parts = Response::new(()).into_parts().0;
            parts.status = reply.status;
            let h = &mut parts.headers;
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
            h.insert(X_REQUEST_ID, rid);
            h.insert(X_LATTICE_SESSION, session_header);
            if log.filter.is_some() && reply.content_type != "text/event-stream" {
                // In memory already: read at once.
                let Ok(whole) = reply.body.collect().await.map(|c| c.to_bytes());
                return scanned_answer(parts, whole, dialect, log);
            }
            Response::from_parts(parts, ResponseBody::mock(reply.body).with_log(log))
        }
        Target::Http(t) => {
            let body = match send_model {
                Some(m) if m != view.model => splice_model(&bytes_out, model_span, m),
                _ => bytes_out,
            };
            let body = if ask_usage { with_include_usage(body) } else { body };
            let query = parts.uri.query();
            forward(
                t,
                upstream,
                surface,
                query,
                parts.headers,
                body,
                rid,
                dialect,
                log,
                recorded,
            )
            .await
        }
    }
}

/// `recorded`: the call's decision record, already sent to the audit writer; awaited once the
/// upstream has answered (or failed), so its sync overlaps the upstream's latency and no
/// response leaves before its record is durable.
#[allow(clippy::too_many_arguments)]
async fn forward(
    t: &HttpTarget,
    upstream: &Upstream,
    surface: Surface,
    query: Option<&str>,
    mut headers: HeaderMap,
    body: Bytes,
    rid: HeaderValue,
    dialect: Dialect,
    mut log: Box<AccessLog>,
    recorded: Option<
        impl std::future::Future<Output = Result<lattice_audit::Receipt, lattice_audit::AuditError>>,
    >,
) -> Response<ResponseBody> {
    // The query came from a parsed request URI, so it always forms a valid path-and-query.
    let Ok(pq) = t.path_and_query(surface, query) else {
        return reject(Rejection::Internal, dialect, rid, log);
    };
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(t.scheme.clone());
    uri.authority = Some(t.authority.clone());
    uri.path_and_query = Some(pq);
    let Ok(uri) = Uri::from_parts(uri) else {
        return reject(Rejection::Internal, dialect, rid, log);
    };

    strip_request_headers(&mut headers);
    headers.insert(header::HOST, t.host.clone());
    if let Some((name, value)) = &t.auth {
        headers.insert(name.clone(), value.clone());
    }
    if upstream.kind == ProviderKind::Anthropic && !headers.contains_key(&ANTHROPIC_VERSION) {
        headers.insert(ANTHROPIC_VERSION, DEFAULT_ANTHROPIC_VERSION);
    }
    headers.insert(X_REQUEST_ID, rid.clone());

    let mut req = Request::new(Full::new(body));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;

    let answer = tokio::time::timeout(t.timeout, t.client.request(req)).await;
    if let Some(recorded) = recorded
        && let Err(e) = recorded.await
    {
        // Dropping the upstream's answer closes its connection: nothing unrecorded goes out.
        return audit_refused(&e, dialect, rid, log);
    }
    let resp = match answer {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            let name = upstream.name.clone();
            let rej = if e.is_connect() {
                if is_timeout(&e) {
                    Rejection::UpstreamTimeout(name)
                } else {
                    Rejection::UpstreamConnect(name)
                }
            } else {
                Rejection::UpstreamFailed(name)
            };
            tracing::warn!(target: "lattice::upstream", upstream = %upstream.name, error = %ErrorChain(&e), "upstream request failed");
            return reject(rej, dialect, rid, log);
        }
        Err(_) => {
            return reject(
                Rejection::UpstreamTimeout(upstream.name.clone()),
                dialect,
                rid,
                log,
            );
        }
    };
    let (mut rp, body) = resp.into_parts();
    strip_hop_by_hop(&mut rp.headers);
    rp.headers.insert(X_REQUEST_ID, rid.clone());
    if !log.session.is_empty() {
        rp.headers.insert(X_LATTICE_SESSION, log.session.clone());
    }
    let mut streamed = !rp.headers.contains_key(header::CONTENT_LENGTH);
    let ct = rp
        .headers
        .get(header::CONTENT_TYPE)
        .map_or(&b""[..], |v| v.as_bytes());
    let sse = ct.starts_with(b"text/event-stream");
    if let Some(s) = log.spend.as_mut() {
        s.start(dialect, rp.status, ct);
    }
    log.status = rp.status.as_u16();
    if log.filter.is_some() {
        // Compressed anyway (it was not asked to): it cannot be checked, so it is not passed on.
        if rp
            .headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|e| e.as_bytes() != b"identity")
        {
            return reject(
                Rejection::AnswerUnscanned(upstream.name.clone()),
                dialect,
                rid,
                log,
            );
        }
        if !sse {
            // The filter reads a JSON answer whole, within the upstream's time limit.
            let read = tokio::time::timeout(
                t.timeout,
                http_body_util::Limited::new(body, MAX_SCANNED_ANSWER).collect(),
            )
            .await;
            let Ok(Ok(whole)) = read else {
                return reject(
                    Rejection::AnswerUnscanned(upstream.name.clone()),
                    dialect,
                    rid,
                    log,
                );
            };
            return scanned_answer(rp, whole.to_bytes(), dialect, log);
        }
        // A filtered stream changes length: it is sent chunked.
        rp.headers.remove(header::CONTENT_LENGTH);
        streamed = true;
    }
    Response::from_parts(rp, ResponseBody::upstream(body, streamed).with_log(log))
}

/// The largest JSON answer the response filter reads; a larger one is refused (502), never
/// passed on unscanned.
const MAX_SCANNED_ANSWER: usize = 16 * 1024 * 1024;

/// The response filter for a call with response rules: PII actions on answers (`[pii] response`
/// and the policy's), and the allowed tools (the policy's `allowed_tools`).
fn response_filter(
    state: &State,
    call: &mut Call<'_>,
    dialect: Dialect,
) -> Option<Box<crate::content::filter::Filter>> {
    // The config's actions are shared; a policy's rules make a merged copy for this call.
    let actions = match &call.pii_response {
        Some(o) => Arc::new(state.pii_response.with(o)),
        None => state.pii_response.clone(),
    };
    let pii = state
        .pii
        .as_ref()
        .filter(|_| !actions.all_allow())
        .map(|p| (p.clone(), actions));
    let tools = call.allowed_tools.take().map(|a| (a, state.tools.calls));
    if pii.is_none() && tools.is_none() {
        return None;
    }
    let rules = crate::content::filter::Rules { pii, tools };
    Some(Box::new(crate::content::filter::Filter::new(dialect, rules)))
}

/// A JSON answer read whole: the meter reads the upstream's bytes, the filter rewrites them (or
/// refuses the answer, in the client's dialect).
fn scanned_answer(
    mut parts: http::response::Parts,
    whole: Bytes,
    dialect: Dialect,
    mut log: Box<AccessLog>,
) -> Response<ResponseBody> {
    if let Some(m) = log.meter() {
        m.feed(whole.clone());
    }
    let body = match log.filter.as_mut().map(|f| f.json(&whole)) {
        None | Some(Ok(None)) => whole,
        Some(Ok(Some(b))) => b,
        Some(Err(stopped)) => {
            let status = stopped.status;
            log.reason = Some(stopped.gate);
            log.status = status.as_u16();
            parts.status = status;
            parts.headers.insert(header::CONTENT_TYPE, JSON);
            error_body(dialect, status, stopped.code, &stopped.message)
        }
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, ResponseBody::scanned(body).with_log(log))
}

/// Asks an OpenAI upstream for a stream's usage (`stream_options.include_usage`). Without a
/// `stream_options` key (the usual case) the member is spliced in after the opening brace and
/// no other byte changes; otherwise the body is re-serialised with the flag set.
fn with_include_usage(body: Bytes) -> Bytes {
    const MEMBER: &[u8] = br#""stream_options":{"include_usage":true},"#;
    if memchr::memmem::find(&body, br#""stream_options""#).is_none()
        && let Some(open) = memchr::memchr(b'{', &body)
    {
        let mut out = BytesMut::with_capacity(body.len() + MEMBER.len());
        out.extend_from_slice(&body[..=open]);
        out.extend_from_slice(MEMBER);
        out.extend_from_slice(&body[open + 1..]);
        return out.freeze();
    }
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(mut m)) => {
            let opts = m
                .entry("stream_options")
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            if !opts.is_object() {
                *opts = serde_json::Value::Object(Default::default());
            }
            opts["include_usage"] = serde_json::Value::Bool(true);
            serde_json::to_vec(&m).map(Bytes::from).unwrap_or(body)
        }
        _ => body,
    }
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Displays an error with its sources; hyper's errors carry no headers, so no credential.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}

/// RFC 9110 7.6.1 connection-specific headers, plus `transfer-encoding` (each leg frames its
/// own body). `proxy-authorization` / `proxy-authenticate` are for this hop only too.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// The client's credentials for the gateway itself: never forwarded upstream.
fn is_client_credential(name: &str) -> bool {
    matches!(name, "authorization" | "x-api-key" | "api-key" | "x-goog-api-key")
}

/// Removes the headers `doomed` selects and any named in `Connection`. One pass over the keys
/// with a string match (header names are lower-case): most requests carry few of them, and a
/// miss costs a comparison, not a hashed lookup.
fn strip(h: &mut HeaderMap, doomed: fn(&str) -> bool) {
    let mut found: Vec<HeaderName> = h.keys().filter(|k| doomed(k.as_str())).cloned().collect();
    if found.contains(&header::CONNECTION) {
        found.extend(
            h.get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()),
        );
    }
    for n in &found {
        h.remove(n);
    }
}

fn strip_hop_by_hop(h: &mut HeaderMap) {
    strip(h, is_hop_by_hop);
}

/// What a request loses before it goes upstream: hop-by-hop headers, the client's own
/// credentials, and `host` / `content-length`, which the upstream leg sets itself.
/// Also `accept-encoding`: the gateway reads answers (usage, content rules), so it asks for
/// them uncompressed.
fn strip_request_headers(h: &mut HeaderMap) {
    strip(h, |n| {
        is_hop_by_hop(n)
            || is_client_credential(n)
            || n == "host"
            || n == "content-length"
            || n == "accept-encoding"
    });
}

/// Reads the whole body, refusing more than `limit` bytes. A declared length over the limit is
/// refused before reading; the rest of an oversized body is drained in the background (bounded)
/// so the client reads the 413 instead of a reset connection.
/// [`read_body`], ended with 400 when the connection's chunked framing is refused mid-body
/// (`crate::framing`): the checker stops handing on bytes there.
async fn read_framed_body(
    conn: &ConnInfo,
    headers: &HeaderMap,
    body: Incoming,
    limit: u64,
) -> Result<Bytes, Rejection> {
    tokio::select! {
        r = read_body(headers, body, limit) => r,
        why = conn.framing.failed() => Err(Rejection::BadFraming(why)),
    }
}

async fn read_body(headers: &HeaderMap, mut body: Incoming, limit: u64) -> Result<Bytes, Rejection> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        drain(body);
        return Err(Rejection::BodyTooLarge(limit));
    }
    // Most bodies arrive as one frame: keep it without copying.
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(Rejection::BodyRead);
        };
        let Ok(data) = frame.into_data() else { continue };
        total += data.len() as u64;
        if total > limit {
            drain(body);
            return Err(Rejection::BodyTooLarge(limit));
        }
        match first.take() {
            None if buf.is_empty() => first = Some(data),
            prev => {
                if let Some(p) = prev {
                    buf.reserve(declared.map_or(0, |n| n as usize).max(p.len() + data.len()));
                    buf.extend_from_slice(&p);
                }
                buf.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

/// Reads and discards what is left of a refused body, for at most 64 MiB or 10 s.
fn drain(mut body: Incoming) {
    if body.is_end_stream() {
        return;
    }
    tokio::spawn(async move {
        let mut left: u64 = 64 * 1024 * 1024;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while let Some(Ok(f)) = body.frame().await {
                let n = f.data_ref().map_or(0, |d| d.len() as u64);
                match left.checked_sub(n) {
                    Some(l) => left = l,
                    None => break,
                }
            }
        })
        .await;
    });
}

/// Replaces the `model` value at `span` (quotes included) with `model`, leaving every other byte.
fn splice_model(body: &Bytes, span: std::ops::Range<usize>, model: &str) -> Bytes {
    let quoted = serde_json::Value::String(model.to_string()).to_string();
    let mut out = BytesMut::with_capacity(body.len() - span.len() + quoted.len());
    out.extend_from_slice(&body[..span.start]);
    out.extend_from_slice(quoted.as_bytes());
    out.extend_from_slice(&body[span.end..]);
    out.freeze()
}

fn plain(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
    rid: HeaderValue,
    mut log: Box<AccessLog>,
) -> Response<ResponseBody> {
    log.status = status.as_u16();
    let mut resp = Response::new(ResponseBody::full(body).with_log(log));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut().insert(X_REQUEST_ID, rid);
    resp
}

/// A call whose record the audit log could not take: refused (503), never answered unrecorded.
fn audit_refused(
    e: &lattice_audit::AuditError,
    dialect: Dialect,
    rid: HeaderValue,
    log: Box<AccessLog>,
) -> Response<ResponseBody> {
    tracing::error!(error = %e, "call refused: audit log unavailable");
    reject(Rejection::AuditUnavailable, dialect, rid, log)
}

/// Renders a rejection in `dialect`.
fn reject(
    rej: Rejection,
    dialect: Dialect,
    rid: HeaderValue,
    mut log: Box<AccessLog>,
) -> Response<ResponseBody> {
    let status = rej.status();
    log.reason = Some(rej.origin());
    log.status = status.as_u16();
    let body = error_body(dialect, status, rej.code(), &rej.message());
    let session = (!log.session.is_empty()).then(|| log.session.clone());
    let mut resp = Response::new(ResponseBody::full(body).with_log(log));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, JSON);
    h.insert(X_REQUEST_ID, rid);
    if let Some(s) = session {
        h.insert(X_LATTICE_SESSION, s);
    }
    match &rej {
        Rejection::Denied(Denial {
            retry_after: Some(s), ..
        }) => {
            h.insert(header::RETRY_AFTER, HeaderValue::from(*s));
        }
        Rejection::MethodNotAllowed(allow) => {
            h.insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        Rejection::BadFraming(_) => {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        _ => {}
    }
    resp
}

fn model_object(
    state: &State,
    path: &str,
    dialect: Dialect,
    rid: HeaderValue,
    log: Box<AccessLog>,
) -> Response<ResponseBody> {
    let id = path.trim_start_matches("/v1/models/");
    match state.router.listed().find(|(n, _)| *n == id) {
        Some((name, target)) => {
            let obj = match dialect {
                Dialect::OpenAi => openai_model(name, &target.upstream.name),
                Dialect::Anthropic => anthropic_model(name),
            };
            plain(
                StatusCode::OK,
                "application/json",
                Bytes::from(obj.to_string()),
                rid,
                log,
            )
        }
        None => reject(Rejection::UnknownModel(id.to_string()), dialect, rid, log),
    }
}

fn openai_model(name: &str, owner: &str) -> serde_json::Value {
    serde_json::json!({"id": name, "object": "model", "created": 0, "owned_by": owner})
}

fn anthropic_model(name: &str) -> serde_json::Value {
    serde_json::json!({"type": "model", "id": name, "display_name": name, "created_at": "1970-01-01T00:00:00Z"})
}

/// `GET /v1/models` in both dialects, built once.
fn model_lists(router: &Router) -> (Bytes, Bytes) {
    let openai: Vec<_> = router
        .listed()
        .map(|(n, t)| openai_model(n, &t.upstream.name))
        .collect();
    let anthropic: Vec<_> = router.listed().map(|(n, _)| anthropic_model(n)).collect();
    let first = router.listed().next().map(|(n, _)| n);
    let last = router.listed().last().map(|(n, _)| n);
    let o = serde_json::json!({"object": "list", "data": openai});
    let a = serde_json::json!({"data": anthropic, "has_more": false, "first_id": first, "last_id": last});
    (Bytes::from(o.to_string()), Bytes::from(a.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn splice_changes_only_the_model_value() {
        let body = Bytes::from_static(br#"{"a":1,"model":"alias","b":"model"}"#);
        let v = view::parse(Surface::ChatCompletions, &body).unwrap();
        let out = splice_model(&body, v.model_span.clone(), "real\"name");
        assert_eq!(&out[..], br#"{"a":1,"model":"real\"name","b":"model"}"#);
    }

    #[test]
    fn request_headers_lose_credentials_and_hop_by_hop() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer client"),
            ("x-api-key", "client"),
            ("connection", "keep-alive, x-custom-hop"),
            ("x-custom-hop", "1"),
            ("te", "trailers"),
            ("anthropic-beta", "tools-2024"),
            ("openai-organization", "org"),
            ("host", "gw"),
            ("content-length", "3"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_request_headers(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["anthropic-beta", "openai-organization"]);
    }

    #[test]
    fn request_ids_are_propagated_when_sane() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_eq!(request_id(&h).len(), 36);
        assert_ne!(request_id(&HeaderMap::new()), request_id(&HeaderMap::new()));
    }
}
