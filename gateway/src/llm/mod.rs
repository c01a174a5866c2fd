//! A model call, in named phases:
//!
//! 1. [`intake`]: the session, the body (read once, bounded in size and time), the view (parsed
//!    once).
//! 2. decide: THE gates (`crate::gates`), in order; a denial is recorded, durably, before it is
//!    answered.
//! 3. [`plan`]: where the call goes (the route, after a policy's model override), under which
//!    name, with which body.
//! 4. attempt ([`attempt::attempt`]): one try at the upstream; an [`attempt::Answer`] or a typed
//!    [`attempt::AttemptError`], never a rendered error, so failover can loop around it.
//! 5. respond ([`respond::respond`]): the decision record made durable, then the answer through
//!    the response stages (listed once, in `crate::body`).
//!
//! Owns: the order of the phases and what each hands the next. Must not touch: wire formats
//! (`lattice_providers`) or a gate's own rules (`crate::gates`).

pub mod attempt;
pub mod respond;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::HeaderValue;
use hyper::body::Incoming;
use lattice_providers::{CallView, Dialect, Surface, view};

use crate::body::{AccessLog, ResponseBody};
use crate::gates::{Call, ConnInfo};
use crate::reply::{Rejection, audit_refused, reject};
use crate::request::read_framed_body;
use crate::router::{Chosen, Deployment};
use crate::state::State;

/// The call's session: the client's `x-lattice-session` when it is sane (1-128 visible ASCII
/// characters, as request ids), else a new one: a random UUID (not the request id, which a
/// client may choose), so an assigned session cannot be guessed and named by another caller.
fn session_id(headers: &http::HeaderMap) -> HeaderValue {
    if let Some(v) = headers
        .get(&crate::request::X_LATTICE_SESSION)
        .filter(|v| crate::request::sane_id(v))
    {
        return v.clone();
    }
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Phase 1: the body, read once. A body that trickles in is cut off (slow-body clients); one
/// that has already arrived never arms the timer, as `timeout` polls the read first.
async fn intake(
    state: &State,
    conn: &ConnInfo,
    headers: &http::HeaderMap,
    body: Incoming,
) -> Result<Bytes, Rejection> {
    let read = tokio::time::timeout(
        state.body_timeout,
        read_framed_body(conn, headers, body, state.max_body),
    );
    match read.await {
        Ok(r) => r.map_err(Rejection::from),
        Err(_) => Err(Rejection::BodyTimeout(state.body_timeout)),
    }
}

/// Phase 3's result: where the call goes and what it sends.
pub struct Plan {
    pub deployment: Arc<Deployment>,
    /// The name the upstream gets, when it is not the name asked: the route's rename, else the
    /// policy's override.
    pub send_model: Option<Box<str>>,
    /// The body to send: as received, or as the PII gate redacted it, with the model renamed
    /// and usage asked for where needed.
    pub body: Bytes,
    /// The gateway asks an OpenAI stream for the usage the client did not ask for.
    pub ask_usage: bool,
    /// The surface called upstream: the client's, unless the call is translated.
    pub surface: Surface,
    /// Set when the upstream speaks another dialect than the client.
    pub translation: Option<Translation>,
}

/// A call translated from the client's dialect to the upstream's.
pub struct Translation {
    /// The client's dialect.
    pub from: Dialect,
    /// The upstream's.
    pub to: Dialect,
    /// The client asked for usage in its stream.
    pub stream_usage: bool,
    /// Fields the target cannot carry, dropped (`x-lattice-dropped-fields`).
    pub dropped: Vec<String>,
}

impl Plan {
    /// The dialect the upstream answers in.
    pub fn upstream_dialect(&self, client: Dialect) -> Dialect {
        self.translation.as_ref().map_or(client, |t| t.to)
    }
}

/// Serves a model call on `surface`. Never fails: every problem becomes a response in the
/// client's dialect.
pub async fn serve(
    state: &State,
    conn: &ConnInfo,
    parts: http::request::Parts,
    body: Incoming,
    surface: Surface,
    mut log: Box<AccessLog>,
) -> Response {
    let dialect = surface.dialect();
    let rid = log.request_id.clone();
    log.session = session_id(&parts.headers);
    log.audit = state.audit.clone();
    if log.audit.is_some() {
        log.response_hash = Some(sha2::Digest::new());
    }
    let session_header = log.session.clone();
    let session = session_header.to_str().unwrap_or("");
    let request_id = rid.clone();

    // 1. Intake.
    let bytes = match intake(state, conn, &parts.headers, body).await {
        Ok(b) => b,
        Err(rej) => return reject(rej, dialect, rid, log),
    };
    let view = match view::parse_at(surface, parts.uri.path(), &bytes) {
        Ok(v) => v,
        Err(e) => return reject(Rejection::BadRequest(e), dialect, rid, log),
    };
    log.model = Some(view.model.as_ref().into());
    // Resolved before the gates because policy reads the provider: the deployment the call
    // tries first, by weight among those whose circuit admits it.
    let mut route = state.router.resolve(&view.model);
    let mut walk = route.map(|r| r.candidates());
    let mut chosen = match (route, walk.as_mut()) {
        (Some(r), Some(w)) => r.next(w),
        _ => None,
    };
    let mut call = Call {
        view: &view,
        headers: &parts.headers,
        path: parts.uri.path(),
        session,
        conn,
        request_id: request_id.to_str().unwrap_or("-"),
        route: chosen
            .as_ref()
            .map(|c| &**c.deployment)
            .or_else(|| route.map(|r| &**r.primary())),
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
        obligations: Default::default(),
        budget_obligations: Vec::new(),
        reservation: None,
    };

    // 2. Decide.
    let checked = state.pipeline.check(&mut call);
    // Who called and which policy decided, allowed or not.
    log.principal = call.principal.clone();
    log.policy = call.policy_sha256.clone();
    if let Err(d) = checked {
        return denied(state, &call, session, &bytes, d, dialect, rid, log).await;
    }
    // Dropped before the decision record (unknown model, wrong dialect), it charges nothing.
    let mut reservation = call.reservation.take();
    // What the gates decided about: a fallback deployment is governed anew.
    let decided = call.route;

    // 3. Plan: a policy's `model` obligation sends the call where that model routes, under
    // that name; an unknown model is reported only now, after the gates, so a caller who may
    // not call at all cannot probe which models exist.
    let override_model = call.model_override.clone();
    if let Some(m) = &override_model {
        route = state.router.resolve(m);
        walk = route.map(|r| r.candidates());
        chosen = match (route, walk.as_mut()) {
            (Some(r), Some(w)) => r.next(w),
            _ => None,
        };
    }
    let (Some(route), Some(mut walk)) = (route, walk) else {
        let model = override_model.unwrap_or_else(|| view.model.to_string());
        return reject(Rejection::UnknownModel(model), dialect, rid, log);
    };
    // The body the PII gate redacted goes upstream instead (with the model span found again).
    let (body, model_span) = match call.rewritten_body.take() {
        Some(b) => {
            let span = view::parse(surface, &b).map_or_else(|_| view.model_span.clone(), |v| v.model_span);
            (b, span)
        }
        None => (bytes.clone(), view.model_span.clone()),
    };
    let prepared = Prepared {
        surface,
        view: &view,
        body: &body,
        model_span,
        override_model: override_model.as_deref(),
        metered: reservation.is_some(),
    };
    log.filter = respond::response_filter(state, &mut call, dialect);

    // 4. Attempts: each deployment the walk chooses, until one answers or a failure may not
    // move on. The decision record names the first; each failed attempt has a record of its own.
    let policy = &route.failover;
    let breaker = &state.breaker;
    let deadline = tokio::time::Instant::now() + policy.deadline;
    route.retry_budget.deposit();
    let mut recorded = None;
    let mut attempts = 0u32;
    let mut same = 0u32;
    let mut last: Option<(Plan, Result<attempt::Answer, attempt::AttemptError>)> = None;
    let started = std::time::Instant::now();
    while let Some(c) = chosen.take() {
        let d = c.deployment;
        if !decided.is_some_and(|g| std::ptr::eq(g, &**d)) {
            call.route = Some(d);
            if let Err(why) = state.pipeline.admits_fallback(&call) {
                attempt_record(
                    state,
                    session,
                    &call,
                    d,
                    &view,
                    "skipped",
                    Some(&why),
                    None,
                    started,
                );
                chosen = route.next(&mut walk);
                continue;
            }
        }
        let plan = match plan(state, &prepared, d) {
            Ok(p) => p,
            // The first deployment's refusal is the call's (as without fallbacks).
            Err(rej) if attempts == 0 && recorded.is_none() && last.is_none() => {
                if let Rejection::DialectMismatch { upstream, .. } = &rej {
                    log.upstream = Some(upstream.clone());
                }
                return reject(rej, dialect, rid, log);
            }
            Err(_) => {
                attempt_record(
                    state,
                    session,
                    &call,
                    d,
                    &view,
                    "skipped",
                    Some("cannot carry the call"),
                    None,
                    started,
                );
                chosen = route.next(&mut walk);
                continue;
            }
        };
        if let Some(r) = reservation.as_mut() {
            let (upstream, model) = d.label(&view.model);
            if let Err(refused) = r.reprice(upstream, plan.send_model.as_deref().unwrap_or(model)) {
                attempt_record(
                    state,
                    session,
                    &call,
                    d,
                    &view,
                    "skipped",
                    Some(&refused.message),
                    None,
                    started,
                );
                chosen = route.next(&mut walk);
                continue;
            }
        }
        if recorded.is_none() {
            // The decision record goes to the writer now; its sync overlaps the upstream call,
            // and the response waits for it (below).
            let sent = crate::gates::audit::Sent {
                upstream: &d.upstream.name,
                model: plan.send_model.as_deref(),
                translated_to: plan.translation.as_ref().map(|t| t.to),
                dropped: plan.translation.as_ref().map_or(&[][..], |t| &t.dropped),
            };
            recorded = Some(state.audit.as_ref().map(|a| {
                a.append(crate::gates::audit::decision(
                    &call,
                    session,
                    &bytes,
                    None,
                    Some(&sent),
                    reservation.as_ref(),
                ))
            }));
        }
        attempts += 1;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let answer = attempt::attempt(
            &plan,
            &view,
            parts.uri.query(),
            parts.headers.clone(),
            &rid,
            Some(left),
        )
        .await;
        let (trigger, retry_after) = match &answer {
            Ok(attempt::Answer::Http { response, .. }) => (
                crate::failover::Trigger::of_status(response.status().as_u16()),
                crate::failover::retry_after(response.headers()),
            ),
            Ok(attempt::Answer::Mock(_)) => (None, None),
            Err(e) => (e.trigger(), None),
        };
        let Some(trigger) = trigger else {
            d.health.success(breaker);
            last = Some((plan, answer));
            break;
        };
        d.health
            .failure(breaker, retry_after.filter(|_| trigger_ejects(trigger)));
        let outcome = match &answer {
            Ok(attempt::Answer::Http { response, .. }) => Outcome::Status(response.status().as_u16()),
            _ => Outcome::Failed(trigger.name()),
        };
        attempt_record(
            state,
            session,
            &call,
            d,
            &view,
            "failed",
            None,
            Some(outcome),
            started,
        );
        last = Some((plan, answer));
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !policy.on.contains(trigger) || attempts >= policy.max_attempts || left.is_zero() {
            break;
        }
        // The same deployment again (after a backoff, or its `Retry-After`), else the next.
        let wait = crate::failover::backoff(
            policy,
            same + 1,
            retry_after,
            crate::failover::mix(attempts.into()),
        );
        let again = same < policy.retries && wait <= policy.backoff_max.min(left) && c.probe.is_none();
        let next = if again {
            Some(Chosen {
                deployment: d,
                probe: None,
            })
        } else {
            route.next(&mut walk)
        };
        if next.is_none() || !route.retry_budget.withdraw() {
            break;
        }
        if again {
            same += 1;
            tokio::time::sleep(wait).await;
        } else {
            same = 0;
        }
        chosen = next;
    }

    // 5. Respond: nothing leaves before the decision record is durable. Dropping an upstream's
    // answer closes its connection: nothing unrecorded goes out.
    let Some((plan, answer)) = last else {
        // No deployment could take the call: every circuit open, or each refused it.
        let retry = walk.ejected_ms.map_or(1, |ms| ms.div_ceil(1000).max(1));
        return match recorded.flatten() {
            None => {
                if let Some(a) = &state.audit {
                    let event = crate::gates::audit::decision(
                        &call,
                        session,
                        &bytes,
                        None,
                        None,
                        reservation.as_ref(),
                    );
                    if let Err(e) = a.append(event).await {
                        return audit_refused(&e, dialect, rid, log);
                    }
                }
                reject(Rejection::NoDeployment(retry), dialect, rid, log)
            }
            Some(r) => match r.await {
                Err(e) => audit_refused(&e, dialect, rid, log),
                Ok(_) => reject(Rejection::NoDeployment(retry), dialect, rid, log),
            },
        };
    };
    log.upstream = Some(plan.deployment.upstream.name.clone());
    // Metered: an OpenAI stream is asked for its usage, which the client gets only if it asked.
    if let Some(r) = reservation {
        let mut spend = crate::budget::Spend::new(r);
        spend.strip_usage = plan.ask_usage;
        log.spend = Some(spend);
    }
    if let Some(recorded) = recorded.flatten()
        && let Err(e) = recorded.await
    {
        return audit_refused(&e, dialect, rid, log);
    }
    match answer {
        Ok(answer) => respond::respond(answer, &plan, dialect, log).await,
        Err(failure) => reject(failure.rejection(), dialect, rid, log),
    }
}

/// Whether an upstream's `Retry-After` on this trigger ejects the deployment for that long
/// (it asks to be left alone); on other failures it only paces a retry.
fn trigger_ejects(t: crate::failover::Trigger) -> bool {
    use crate::failover::Trigger;
    matches!(
        t,
        Trigger::TooManyRequests | Trigger::Unavailable | Trigger::Overloaded
    )
}

/// How an attempt failed, for its record.
enum Outcome {
    Status(u16),
    Failed(&'static str),
}

/// A `call.attempt` record: a deployment the call tried and that failed, or skipped. Appended
/// lazily (synced with the decision record, or the call's next record).
#[allow(clippy::too_many_arguments)]
fn attempt_record(
    state: &State,
    session: &str,
    call: &Call<'_>,
    d: &Deployment,
    view: &CallView<'_>,
    result: &'static str,
    reason: Option<&str>,
    outcome: Option<Outcome>,
    started: std::time::Instant,
) {
    let (upstream, model) = d.label(&view.model);
    tracing::info!(target: "lattice::failover", upstream, model, result, reason, "deployment {result}");
    let Some(audit) = &state.audit else { return };
    let (status, error) = match outcome {
        Some(Outcome::Status(s)) => (Some(s), None),
        Some(Outcome::Failed(e)) => (None, Some(e)),
        None => (None, None),
    };
    let payload = serde_json::json!({
        "request_id": call.request_id,
        "upstream": upstream,
        "upstream_model": model,
        "result": result,
        "reason": reason,
        "status": status,
        "error": error,
        "elapsed_ms": started.elapsed().as_millis() as u64,
        "bytes_sent": 0,
    });
    let event = lattice_audit::Event {
        kind: crate::gates::audit::ATTEMPT.into(),
        session: session.into(),
        principal: call.principal.as_ref().map(|p| p.id.clone()).unwrap_or_default(),
        payload: serde_json::to_vec(&payload).unwrap_or_default(),
    };
    let _ = audit.append_lazy(event);
}

/// What every deployment's plan starts from.
struct Prepared<'a> {
    surface: Surface,
    view: &'a CallView<'a>,
    /// As received, or as the PII gate redacted it.
    body: &'a Bytes,
    model_span: std::ops::Range<usize>,
    /// The policy's `model` obligation.
    override_model: Option<&'a str>,
    metered: bool,
}

type Response = http::Response<ResponseBody>;

/// The gates refused the call: recorded, durably, then answered.
#[allow(clippy::too_many_arguments)]
async fn denied(
    state: &State,
    call: &Call<'_>,
    session: &str,
    bytes: &Bytes,
    d: crate::gates::Denial,
    dialect: lattice_providers::Dialect,
    rid: HeaderValue,
    mut log: Box<AccessLog>,
) -> Response {
    // A refused call creates no session, and enters one only if its caller may write to it
    // (owns it, or the policy shared it): a bad key or a denied call cannot claim a session id
    // first, nor put records into another's. Nor is the session echoed.
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
    if let Some(audit) = &state.audit {
        let event = crate::gates::audit::decision(call, session, bytes, Some(&d), None, None);
        if let Err(e) = audit.append(event).await {
            return audit_refused(&e, dialect, rid, log);
        }
    }
    reject(Rejection::Denied(d), dialect, rid, log)
}

/// Phase 3, for one deployment: the name it is sent under, and the body it gets.
fn plan(state: &State, p: &Prepared<'_>, deployment: &Arc<Deployment>) -> Result<Plan, Rejection> {
    let (surface, view) = (p.surface, p.view);
    let route = deployment.clone();
    // The name the upstream gets: the route's rename, else the policy's override, else as asked.
    let send_model: Option<Box<str>> = route
        .upstream_model
        .clone()
        .or_else(|| p.override_model.map(Into::into));
    let client = surface.dialect();
    if !route.upstream.speaks(client) {
        return translated(state, route, surface, p.body, view, send_model);
    }
    let ask_usage = p.metered && surface == Surface::ChatCompletions && view.stream && !view.include_usage;
    if client == Dialect::Gemini
        && matches!(route.upstream.target, crate::upstream::Target::Http(_))
        && !crate::upstream::path_safe_model(send_model.as_deref().unwrap_or(&view.model))
    {
        return Err(Rejection::TranslationInvalid(
            "a Gemini model name is letters, digits, '-', '_' and '.' (it goes in the URL)".into(),
        ));
    }
    let body = if matches!(route.upstream.target, crate::upstream::Target::Http(_)) {
        let body = match send_model.as_deref() {
            // Gemini's model is in its URL, not the body.
            Some(m) if m != view.model && client != Dialect::Gemini => {
                splice_model(p.body, p.model_span.clone(), m)
            }
            _ => p.body.clone(),
        };
        if ask_usage { with_include_usage(body) } else { body }
    } else {
        p.body.clone()
    };
    Ok(Plan {
        deployment: route,
        send_model,
        body,
        ask_usage,
        surface,
        translation: None,
    })
}

/// A call to an upstream of another dialect: its body translated through the canonical model
/// (`lattice_providers::translate`), refused when it names what the target cannot carry and
/// `[translation]` does not let it be dropped.
fn translated(
    state: &State,
    route: Arc<Deployment>,
    surface: Surface,
    body: &[u8],
    view: &CallView<'_>,
    send_model: Option<Box<str>>,
) -> Result<Plan, Rejection> {
    let from = surface.dialect();
    let to = route.upstream.dialect_for(from);
    let target = match (surface, to) {
        (s, _) if !s.is_chat() => {
            return Err(Rejection::DialectMismatch {
                model: view.model.to_string(),
                upstream: route.upstream.name.clone(),
            });
        }
        (_, Dialect::OpenAi) => Surface::ChatCompletions,
        (_, Dialect::Anthropic) => Surface::Messages,
        (_, Dialect::Gemini) if view.stream => Surface::StreamGenerateContent,
        (_, Dialect::Gemini) => Surface::GenerateContent,
        (_, Dialect::Ollama) => Surface::OllamaChat,
    };
    let model = send_model.as_deref().unwrap_or(&view.model);
    if to == Dialect::Gemini && !crate::upstream::path_safe_model(model) {
        return Err(Rejection::TranslationInvalid(
            "a Gemini model name is letters, digits, '-', '_' and '.' (it goes in the URL)".into(),
        ));
    }
    let t = lattice_providers::translate::request(from, to, body, model, view.stream, &state.translation)
        .map_err(|e| match e {
            lattice_providers::translate::TranslateError::Invalid(e) => Rejection::TranslationInvalid(e.0),
            lattice_providers::translate::TranslateError::Refused(refused) => Rejection::Untranslatable {
                upstream: route.upstream.name.clone(),
                refused,
            },
        })?;
    Ok(Plan {
        deployment: route,
        send_model,
        body: Bytes::from(t.body),
        // A translated OpenAI stream always asks for its usage; the transcoder decides what the
        // client sees.
        ask_usage: false,
        surface: target,
        translation: Some(Translation {
            from,
            to,
            stream_usage: t.stream_usage,
            dropped: t.dropped,
        }),
    })
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
}
