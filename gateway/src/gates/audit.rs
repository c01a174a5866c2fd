//! The audit gate: what the durable log records of every call (the log itself is
//! `lattice-audit`; its format is `audit/FORMAT.md`).
//!
//! It is not in the check list of [`super::Pipeline`] because it wraps Execute rather than
//! deciding before it. Two records per call:
//!
//! - `call.decision`, once the gates have decided: who called (principal id, kind, user, team),
//!   what (surface, model, upstream, stream, tools), the decision (allowed, or the denying gate,
//!   code and reasons) with the policy bundle's SHA-256, and the SHA-256 of the request body (a
//!   hash, not a copy). It must be durable before the call's response is sent: for an allowed
//!   call the append is issued before the upstream request and awaited after its answer, so the
//!   `fdatasync` overlaps the model's latency; a denial waits for it before answering.
//! - `call.end`, when the response ends or the client goes away (written by the access record's
//!   `Drop`, so no exit path escapes it): status, the error's origin, latency, bytes, outcome,
//!   and the SHA-256 of the response body as sent.
//!   Requests refused before the gates (malformed, too large, too slow) have only this record.
//!
//! No credential is ever part of a record: the principal is named by its id.

use std::sync::Arc;

use lattice_audit::{AuditLog, Event, Record};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Call, Denial, Principal};

pub use lattice_audit::log::{CALL_DECISION as DECISION, CALL_END as END};

/// A deployment a call tried that failed, or skipped (failover), between its decision and its end.
pub const ATTEMPT: &str = "call.attempt";

#[derive(Serialize)]
struct Who<'a> {
    id: &'a str,
    kind: &'static str,
    user: &'a str,
    team: &'a str,
}

#[derive(Serialize)]
struct DecisionPayload<'a> {
    request_id: &'a str,
    surface: &'static str,
    model: &'a str,
    /// The model sent upstream, when a route or a policy renamed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<&'a str>,
    /// The client's dialect, and the upstream's when the call was translated to it.
    dialect: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream_dialect: Option<&'static str>,
    /// Fields translation dropped (the target cannot carry them).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    dropped: &'a [String],
    stream: bool,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tools: &'a [std::borrow::Cow<'a, str>],
    principal: Option<Who<'a>>,
    allow: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    gate: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasons: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy_sha256: Option<&'a str>,
    request_sha256: &'a str,
    /// What the PII gate found, by kind, and what it did (never the values).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pii: &'a [crate::content::Finding],
    /// Tools the tool gate took out of the request.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tools_removed: &'a [Box<str>],
    /// The worst case reserved on the call's budgets (the ledger's durable half).
    #[serde(skip_serializing_if = "Option::is_none")]
    budget: Option<crate::budget::Reserved<'a>>,
}

fn who(p: &Option<Arc<Principal>>) -> Option<Who<'_>> {
    p.as_deref().map(|p| Who {
        id: &p.id,
        kind: p.kind,
        user: &p.user,
        team: &p.team,
    })
}

/// Where an allowed call goes: the upstream, the model name it gets when renamed, the dialect
/// it was translated to (if it was) and the fields translation dropped.
pub struct Sent<'a> {
    pub upstream: &'a str,
    pub model: Option<&'a str>,
    pub translated_to: Option<lattice_providers::Dialect>,
    pub dropped: &'a [String],
}

/// The `call.decision` event of a call the gates have decided: `denial` when they refused it,
/// else the upstream (and the model it gets) it goes to.
pub fn decision(
    call: &Call<'_>,
    session: &str,
    body: &[u8],
    denial: Option<&Denial>,
    sent: Option<&Sent<'_>>,
    reservation: Option<&crate::budget::Reservation>,
) -> Event {
    let mut hex = [0u8; 64];
    let request_sha256 = crate::hex::encode_into(&Sha256::digest(body), &mut hex);
    let payload = DecisionPayload {
        request_id: call.request_id,
        surface: call.view.surface.name(),
        model: &call.view.model,
        upstream_model: sent.and_then(|s| s.model),
        upstream: sent.map(|s| s.upstream),
        dialect: call.view.surface.dialect().as_str(),
        upstream_dialect: sent.and_then(|s| s.translated_to).map(|d| d.as_str()),
        dropped: sent.map_or(&[][..], |s| s.dropped),
        stream: call.view.stream,
        tools: &call.view.tools,
        principal: who(&call.principal),
        allow: denial.is_none(),
        gate: denial.map(|d| d.gate),
        code: denial.map(|d| d.code),
        reasons: denial.map(|d| d.message.as_ref()),
        policy_sha256: call.policy_sha256.as_deref(),
        request_sha256,
        pii: &call.pii_findings,
        tools_removed: &call.tools_removed,
        budget: reservation.map(|r| r.record()),
    };
    Event {
        kind: DECISION.into(),
        session: session.into(),
        principal: call.principal.as_ref().map(|p| p.id.clone()).unwrap_or_default(),
        // Serialising plain strings and numbers cannot fail.
        payload: serde_json::to_vec(&payload).unwrap_or_default(),
    }
}

/// The `call.end` record, for [`crate::body::AccessLog`]'s `Drop`: the access record's fields,
/// and the hash of the response body as sent.
#[derive(Serialize)]
pub struct EndPayload<'a> {
    #[serde(flatten)]
    pub access: &'a crate::telemetry::AccessRecord<'a>,
    /// The SHA-256 of the response body as sent (what reached the client, when it hung up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_sha256: Option<&'a str>,
    /// The call's settlement: usage, how it was known, and what was charged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spend: Option<&'a crate::budget::Settlement>,
    /// What the response filter found in the answer and did (PII by kind, tool calls removed,
    /// an answer stopped); never a value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<&'a crate::content::filter::Report>,
}

/// Appends the `call.end` event lazily: the response is already on its way, and this record
/// needs no sync of its own (it is synced with the next decision record, or within the
/// `sync_interval`). A crash may lose the last moment's end records, never a decision.
pub fn end(log: &AuditLog, session: &str, principal: &str, payload: &EndPayload<'_>) {
    let event = Event {
        kind: END.into(),
        session: session.into(),
        principal: principal.into(),
        payload: serde_json::to_vec(payload).unwrap_or_default(),
    };
    // A failure has poisoned the log; the next call is refused with 503.
    let _ = log.append_lazy(event);
}

/// A record as JSON, for `lattice audit tail|export` and the sessions API: its place in the
/// chain, its fields, and its payload embedded as JSON (as a string if it is not JSON).
pub fn record_json(r: &Record) -> serde_json::Value {
    let payload = serde_json::from_slice::<serde_json::Value>(&r.event.payload).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&r.event.payload).into_owned())
    });
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(r.time_ns);
    serde_json::json!({
        "seq": r.seq,
        "time": humantime::format_rfc3339_micros(time).to_string(),
        "kind": r.event.kind,
        "session": r.event.session,
        "principal": r.event.principal,
        "payload": payload,
        "hash": crate::hex::encode(&r.hash),
    })
}
