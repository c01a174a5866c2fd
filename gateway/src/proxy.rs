//! Every request: the endpoint it names, the state it reads, and the one table of rejections
//! (status, code, origin, message) rendered in the client's dialect. Model calls go on to
//! `crate::llm` (intake -> decide -> plan -> attempt -> respond).
//!
//! The body is read once (bounded), parsed once into a `CallView`, and sent upstream as the
//! same bytes unless a route renames the model (then only that value is spliced). Every exit
//! carries an [`AccessLog`] that is written when the response body ends or is dropped.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use lattice_providers::{Dialect, Surface};

use crate::body::{AccessLog, Outcome, ResponseBody};
use crate::gates::ConnInfo;
use crate::reply::{Rejection, plain, reject};
use crate::request::{read_framed_body, request_id};
use crate::state::State;

const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");

/// The dialect to answer in before the surface is known: Gemini's and Ollama's paths are their
/// own; Anthropic's SDKs always send `anthropic-version`; everything else is answered as OpenAI.
fn guess_dialect(path: &str, headers: &HeaderMap) -> Dialect {
    if path.starts_with("/v1beta/") {
        Dialect::Gemini
    } else if path.starts_with("/api/") {
        Dialect::Ollama
    } else if headers.contains_key(&ANTHROPIC_VERSION) {
        Dialect::Anthropic
    } else {
        Dialect::OpenAi
    }
}

/// Gemini's SDKs and REST examples may carry the key as `?key=`: it is taken as the
/// `x-goog-api-key` header (where the identity gate reads it), unless that header is set. The
/// query never goes upstream (a Gemini path is rebuilt from the model and method).
fn gemini_query_key(parts: &mut http::request::Parts) {
    const X_GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");
    if parts.headers.contains_key(&X_GOOG_API_KEY) {
        return;
    }
    let key = parts
        .uri
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("key="));
    if let Some(mut v) = key.and_then(|k| HeaderValue::from_str(k).ok()) {
        v.set_sensitive(true);
        parts.headers.insert(X_GOOG_API_KEY, v);
    }
}

/// Whether a Gemini URL's query asks for server-sent events (`alt=sse`).
fn asks_sse(query: Option<&str>) -> bool {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .any(|kv| kv == "alt=sse")
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
    /// Ollama's `GET /api/tags`
    OllamaTags,
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
        "/api/chat" => (Endpoint::Call(Surface::OllamaChat), "POST"),
        "/api/tags" => (Endpoint::OllamaTags, "GET"),
        p if p.starts_with("/v1beta/models/") => match p.rsplit_once(':').map(|(_, m)| m) {
            Some("generateContent") => (Endpoint::Call(Surface::GenerateContent), "POST"),
            Some("streamGenerateContent") => (Endpoint::Call(Surface::StreamGenerateContent), "POST"),
            Some("countTokens") => (Endpoint::Call(Surface::GeminiCountTokens), "POST"),
            _ => return Err(Rejection::NotFound),
        },
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

/// `/readyz`: ready, with the state of the live stores. Still ready when a reload was refused
/// (the previous policy or keys decide), but the detail says so; not ready (503) while no JWT
/// signing key has loaded, as no token could be checked, or once the audit log has failed, as
/// no call can be recorded.
fn readiness(state: &State) -> (StatusCode, Bytes) {
    let mut status = StatusCode::OK;
    let mut detail = serde_json::json!({"status": "ready"});
    // Each deployment's circuit (still ready while some are open: the others serve).
    let mut seen = std::collections::HashSet::new();
    let deployments: Vec<_> = state
        .router
        .routes()
        .flat_map(|r| r.deployments())
        .filter(|d| seen.insert(std::sync::Arc::as_ptr(&d.health)))
        .map(|d| {
            serde_json::json!({"upstream": &*d.upstream.name, "model": d.upstream_model.as_deref(),
                               "circuit": d.health.state().as_str(), "ejected_ms": d.health.ejected_for(),
                               "opened": d.health.opened.load(std::sync::atomic::Ordering::Relaxed)})
        })
        .collect();
    if !deployments.is_empty() {
        detail["deployments"] = deployments.into();
    }
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

/// Serves one request. Never fails: every problem becomes a response in the client's dialect.
pub async fn handle(
    state: Arc<State>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Response<ResponseBody> {
    let start = Instant::now();
    let (mut parts, body) = req.into_parts();
    let rid = request_id(&parts.headers);
    let log = Box::new(AccessLog {
        audit: None,
        session: HeaderValue::from_static(""),
        response_hash: None,
        spend: None,
        transcode: None,
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
    let dialect = guess_dialect(parts.uri.path(), &parts.headers);
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
        Ok(Endpoint::Call(Surface::StreamGenerateContent)) if !asks_sse(parts.uri.query()) => {
            // Without `alt=sse` Gemini streams one JSON array; this gateway streams events only,
            // and says so rather than answer in a form the client did not ask for.
            let why = "`:streamGenerateContent` is served as server-sent events only: add `?alt=sse` to the URL (Google's SDKs do)";
            return reject(Rejection::Unsupported(why), Dialect::Gemini, rid, log);
        }
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
                Dialect::OpenAi | Dialect::Gemini | Dialect::Ollama => state.models_openai.clone(),
            };
            return plain(StatusCode::OK, "application/json", list, rid, log);
        }
        Ok(Endpoint::OllamaTags) => {
            let tags = crate::models::ollama_tags(&state.router);
            return plain(StatusCode::OK, "application/json", tags, rid, log);
        }
        Ok(Endpoint::Model) => {
            return crate::models::model_object(&state.router, parts.uri.path(), dialect, rid, log);
        }
        Ok(Endpoint::Spend) => {
            return crate::admin::spend_report(&state, &conn, &parts, dialect, rid, log).await;
        }
        Ok(Endpoint::Metrics) => {
            if let Err(rej) = crate::admin::finance_caller(&state, &conn, &parts, "metrics") {
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
        Ok(Endpoint::SessionEvents) => {
            return crate::sessions::events(&state, &conn, &parts, dialect, rid, log).await;
        }
        Ok(Endpoint::SessionCompaction) => {
            let body = match tokio::time::timeout(
                state.body_timeout,
                read_framed_body(&conn, &parts.headers, body, crate::sessions::MAX_COMPACTION),
            )
            .await
            {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => return reject(e.into(), dialect, rid, log),
                Err(_) => return reject(Rejection::BodyTimeout(state.body_timeout), dialect, rid, log),
            };
            return crate::sessions::compaction(&state, &conn, &parts, body, dialect, rid, log).await;
        }
        Err(rej) => return reject(rej, dialect, rid, log),
    };
    if surface.dialect() == Dialect::Gemini {
        gemini_query_key(&mut parts);
    }
    crate::llm::serve(&state, &conn, parts, body, surface, log).await
}
