//! The sessions API: `GET /v1/sessions/{id}/events` (a session's records, in order) and
//! `POST /v1/sessions/{id}/compactions` (a boundary, recorded). Reads are themselves recorded.
//!
//! Owns: who may read or mark a session (its owner, an admin, or a delegate for its own
//! records). Must not touch: the call path (`crate::llm`), which writes sessions.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use lattice_providers::Dialect;

use crate::body::{AccessLog, ResponseBody};
use crate::gates::{ConnInfo, Principal};
use crate::reply::{Rejection, plain, refusal, reject};
use crate::state::State;

/// The largest compaction note a client may send.
pub(crate) const MAX_COMPACTION: u64 = 64 * 1024;

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
pub(crate) async fn events(
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
pub(crate) async fn compaction(
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
pub(crate) async fn record_read(
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
