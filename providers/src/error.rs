//! Upstream errors across dialects: one vocabulary of kinds ([`ErrorKind`]) with the status
//! each implies, so an error is re-expressed in the client's dialect with the status and type
//! its SDK acts on (retrying overloads and rate limits, not bad requests).

use crate::Dialect;
use crate::canonical::{ApiError, ErrorKind};

pub fn kind_of_status(status: u16) -> ErrorKind {
    match status {
        400 | 422 => ErrorKind::InvalidRequest,
        401 => ErrorKind::Authentication,
        403 => ErrorKind::Permission,
        404 => ErrorKind::NotFound,
        413 => ErrorKind::TooLarge,
        429 => ErrorKind::RateLimit,
        503 | 529 => ErrorKind::Overloaded,
        _ => ErrorKind::Api,
    }
}

pub fn status_of_kind(kind: ErrorKind) -> u16 {
    match kind {
        ErrorKind::InvalidRequest => 400,
        ErrorKind::Authentication => 401,
        ErrorKind::Permission => 403,
        ErrorKind::NotFound => 404,
        ErrorKind::TooLarge => 413,
        ErrorKind::RateLimit => 429,
        ErrorKind::Overloaded => 503,
        ErrorKind::Api => 500,
    }
}

/// A machine-readable code for OpenAI's `code` field.
pub fn code_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidRequest => "invalid_request",
        ErrorKind::Authentication => "invalid_api_key",
        ErrorKind::Permission => "permission_denied",
        ErrorKind::NotFound => "not_found",
        ErrorKind::TooLarge => "request_too_large",
        ErrorKind::RateLimit => "rate_limit_exceeded",
        ErrorKind::Overloaded => "overloaded",
        ErrorKind::Api => "upstream_error",
    }
}

/// Reads an upstream's error answer (`status`, `body` in `dialect`); a body in no known shape
/// keeps the status and a fixed message (an upstream's raw body is not passed on).
pub fn decode(dialect: Dialect, status: u16, body: &[u8]) -> ApiError {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    // Every dialect puts its error under `error` (Ollama's is a string).
    match (dialect, v.get("error")) {
        (Dialect::OpenAi, Some(e)) if e.is_object() => crate::openai::error_of(status, e),
        (Dialect::Anthropic, Some(e)) if e.is_object() => crate::anthropic::error_of(status, e),
        (Dialect::Gemini, Some(e)) if e.is_object() => crate::gemini::error_of(status, e),
        (Dialect::Ollama, Some(e)) if e.is_string() => crate::ollama::error_of(status, e),
        _ => ApiError {
            status,
            kind: kind_of_status(status),
            message: format!("the upstream answered {status}"),
        },
    }
}

/// An error object's `kind` (from its dialect's `type`, else the status) with `status` (0: the
/// one the kind implies) and its message.
pub fn api_error(status: u16, kind: Option<ErrorKind>, e: &serde_json::Value) -> ApiError {
    let kind = kind.unwrap_or_else(|| kind_of_status(status));
    ApiError {
        status: if status == 0 { status_of_kind(kind) } else { status },
        kind,
        message: e
            .get("message")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("the upstream failed")
            .into(),
    }
}

/// An error body (and status) in `dialect`.
pub fn encode(dialect: Dialect, e: &ApiError) -> (u16, Vec<u8>) {
    match dialect {
        Dialect::OpenAi => crate::openai::encode_error(e),
        Dialect::Anthropic => crate::anthropic::encode_error(e),
        Dialect::Gemini => crate::gemini::encode_error(e),
        Dialect::Ollama => crate::ollama::encode_error(e),
    }
}
