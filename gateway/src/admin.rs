//! Reports for operators: `GET /admin/spend` (spend from the audit log) and who may read
//! spend and metrics (the roles `admin` and `finance`).
//!
//! Must not touch: the call path (`crate::llm`).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use lattice_providers::Dialect;

use crate::body::{AccessLog, ResponseBody};
use crate::gates::{ConnInfo, Principal};
use crate::reply::{Rejection, plain, refusal, reject};
use crate::sessions::record_read;
use crate::state::State;

/// The caller of a spend endpoint, if it may read spend: a principal with the role `admin`,
/// `finance` or `also` (when not empty); anyone when no identity method is configured.
pub(crate) fn finance_caller(
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
pub(crate) async fn spend_report(
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
