//! Phase 5: an upstream's answer, on its way to the client through the response stages
//! (`crate::body::stages`: meter, then content filter, then hash; the access and `call.end`
//! records are written when the body ends or is dropped).
//!
//! A JSON answer the filter must read whole is read here, within the upstream's time limit and
//! `content::filter::MAX_SCANNED_ANSWER`; everything else streams.
//!
//! Owns: the response head (hop-by-hop headers out, request and session ids in) and when an
//! answer is read whole. Must not touch: the upstream request (`super::attempt`).

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use lattice_providers::Dialect;
use lattice_providers::dialect::error_body;

use super::Plan;
use super::attempt::{Answer, strip_hop_by_hop};
use crate::body::{AccessLog, ResponseBody};
use crate::gates::Call;
use crate::reply::{Rejection, reject};
use crate::request::{X_LATTICE_SESSION, X_REQUEST_ID};
use crate::state::State;

const JSON: HeaderValue = HeaderValue::from_static("application/json");
/// The fields a translated call dropped because its target cannot carry them.
pub const X_LATTICE_DROPPED: http::HeaderName = http::HeaderName::from_static("x-lattice-dropped-fields");

/// Sends `answer` to the client through the response stages.
pub async fn respond(
    answer: Answer,
    plan: &Plan,
    dialect: Dialect,
    mut log: Box<AccessLog>,
) -> Response<ResponseBody> {
    let rid = log.request_id.clone();
    match answer {
        Answer::Mock(reply) => {
            if let Some(s) = log.spend.as_mut() {
                s.start(dialect, reply.status, reply.content_type.as_bytes());
            }
            log.status = reply.status.as_u16();
            let mut parts = Response::new(()).into_parts().0;
            parts.status = reply.status;
            let h = &mut parts.headers;
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
            h.insert(X_REQUEST_ID, rid);
            h.insert(X_LATTICE_SESSION, log.session.clone());
            let stream = matches!(reply.content_type, "text/event-stream" | "application/x-ndjson");
            if log.filter.is_some() && !stream {
                // In memory already: read at once.
                let Ok(whole) = reply.body.collect().await.map(|c| c.to_bytes());
                return scanned_answer(parts, whole, dialect, log);
            }
            Response::from_parts(parts, ResponseBody::mock(reply.body).with_log(log))
        }
        Answer::Http { response, timeout } => {
            let upstream = &plan.deployment.upstream.name;
            let (mut rp, body) = response.into_parts();
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
            // A stream: server-sent events, or Ollama's NDJSON.
            let sse = ct.starts_with(b"text/event-stream") || ct.starts_with(b"application/x-ndjson");
            // The meter reads the upstream's own dialect.
            if let Some(s) = log.spend.as_mut() {
                s.start(plan.upstream_dialect(dialect), rp.status, ct);
            }
            log.status = rp.status.as_u16();
            if let Some(t) = &plan.translation {
                return translated(rp, body, sse, timeout, t, upstream, log).await;
            }
            if log.filter.is_some() {
                // Compressed anyway (it was not asked to): it cannot be checked, so it is not
                // passed on.
                if rp
                    .headers
                    .get(header::CONTENT_ENCODING)
                    .is_some_and(|e| e.as_bytes() != b"identity")
                {
                    return reject(Rejection::AnswerUnscanned(upstream.clone()), dialect, rid, log);
                }
                if !sse {
                    // The filter reads a JSON answer whole, within the upstream's time limit.
                    let read = tokio::time::timeout(
                        timeout,
                        http_body_util::Limited::new(body, crate::content::filter::MAX_SCANNED_ANSWER)
                            .collect(),
                    )
                    .await;
                    let Ok(Ok(whole)) = read else {
                        return reject(Rejection::AnswerUnscanned(upstream.clone()), dialect, rid, log);
                    };
                    return scanned_answer(rp, whole.to_bytes(), dialect, log);
                }
                // A filtered stream changes length: it is sent chunked.
                rp.headers.remove(header::CONTENT_LENGTH);
                streamed = true;
            }
            Response::from_parts(rp, ResponseBody::upstream(body, streamed).with_log(log))
        }
    }
}

/// The answer of an upstream of another dialect, in the client's: a stream is transcoded event
/// by event (a response stage); a JSON answer, or an error, is read whole and translated.
async fn translated(
    mut rp: http::response::Parts,
    body: hyper::body::Incoming,
    sse: bool,
    timeout: std::time::Duration,
    t: &super::Translation,
    upstream: &Arc<str>,
    mut log: Box<AccessLog>,
) -> Response<ResponseBody> {
    let rid = log.request_id.clone();
    let client = t.from;
    rp.headers.remove(header::CONTENT_LENGTH);
    if !t.dropped.is_empty()
        && let Ok(v) = HeaderValue::from_str(&t.dropped.join(", "))
    {
        rp.headers.insert(X_LATTICE_DROPPED, v);
    }
    if rp
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|e| e.as_bytes() != b"identity")
    {
        return reject(
            Rejection::AnswerUntranslatable(upstream.clone()),
            client,
            rid,
            log,
        );
    }
    if sse && rp.status.is_success() {
        log.transcode = Some(Box::new(lattice_providers::stream::Transcoder::new(
            t.to,
            t.from,
            t.stream_usage,
        )));
        let ct = match client {
            Dialect::Ollama => HeaderValue::from_static("application/x-ndjson"),
            _ => HeaderValue::from_static("text/event-stream"),
        };
        rp.headers.insert(header::CONTENT_TYPE, ct);
        return Response::from_parts(rp, ResponseBody::upstream(body, true).with_log(log));
    }
    let read = tokio::time::timeout(
        timeout,
        http_body_util::Limited::new(body, crate::content::filter::MAX_SCANNED_ANSWER).collect(),
    )
    .await;
    let Ok(Ok(whole)) = read else {
        return reject(
            Rejection::AnswerUntranslatable(upstream.clone()),
            client,
            rid,
            log,
        );
    };
    let whole = whole.to_bytes();
    if let Some(m) = log.meter() {
        m.feed(whole.clone());
    }
    rp.headers.insert(header::CONTENT_TYPE, JSON);
    if !rp.status.is_success() {
        // The upstream's error, in the client's dialect with the status its SDK acts on.
        let (status, body) = lattice_providers::translate::error(t.to, client, rp.status.as_u16(), &whole);
        rp.status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        log.status = rp.status.as_u16();
        return Response::from_parts(rp, ResponseBody::scanned(Bytes::from(body)).with_log(log));
    }
    match lattice_providers::translate::response(t.to, client, &whole) {
        Ok(body) => filtered(rp, Bytes::from(body), client, log),
        Err(e) => {
            tracing::warn!(target: "lattice::upstream", upstream = %upstream, error = %e, "answer not translatable");
            reject(
                Rejection::AnswerUntranslatable(upstream.clone()),
                client,
                rid,
                log,
            )
        }
    }
}

/// The response filter for a call with response rules: PII actions on answers (`[pii] response`
/// and the policy's), and the allowed tools (the policy's `allowed_tools`), on answers in the
/// client's dialect.
pub fn response_filter(
    state: &State,
    call: &mut Call<'_>,
    dialect: Dialect,
) -> Option<Box<crate::content::answer::AnswerFilter>> {
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
    Some(Box::new(crate::content::answer::AnswerFilter::new(
        dialect, rules,
    )))
}

/// A JSON answer read whole: the meter reads the upstream's bytes, the filter rewrites them (or
/// refuses the answer, in the client's dialect).
fn scanned_answer(
    parts: http::response::Parts,
    whole: Bytes,
    dialect: Dialect,
    mut log: Box<AccessLog>,
) -> Response<ResponseBody> {
    if let Some(m) = log.meter() {
        m.feed(whole.clone());
    }
    filtered(parts, whole, dialect, log)
}

/// A whole answer in the client's dialect through the filter (which may rewrite it, or refuse
/// it in the client's dialect).
fn filtered(
    mut parts: http::response::Parts,
    whole: Bytes,
    dialect: Dialect,
    mut log: Box<AccessLog>,
) -> Response<ResponseBody> {
    let success = parts.status.is_success();
    let body = match log.filter.as_mut().map(|f| f.json(&whole, success)) {
        None | Some(Ok(None)) => whole,
        Some(Ok(Some(b))) => b,
        Some(Err(stopped)) => {
            let status: StatusCode = stopped.status;
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
