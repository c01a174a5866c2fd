//! The Anthropic Messages dialect: requests, answers, streams and errors as the canonical model
//! sees them. (The bytes of a same-dialect call pass through untouched; these codecs run only
//! when a call is translated.)

pub mod request;
pub mod response;
pub mod stream;

use serde_json::{Value, json};

use crate::canonical::{ApiError, ErrorKind};

/// An Anthropic error object (`{"type","message"}`) answered with `status`.
pub fn error_of(status: u16, e: &Value) -> ApiError {
    let kind = match e.get("type").and_then(Value::as_str) {
        Some("invalid_request_error") => Some(ErrorKind::InvalidRequest),
        Some("authentication_error") => Some(ErrorKind::Authentication),
        Some("permission_error") => Some(ErrorKind::Permission),
        Some("not_found_error") => Some(ErrorKind::NotFound),
        Some("request_too_large") => Some(ErrorKind::TooLarge),
        Some("rate_limit_error") => Some(ErrorKind::RateLimit),
        Some("overloaded_error") => Some(ErrorKind::Overloaded),
        _ => None,
    };
    crate::error::api_error(status, kind, e)
}

/// The error `type` Anthropic's SDKs expect for a kind.
pub fn type_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidRequest => "invalid_request_error",
        ErrorKind::Authentication => "authentication_error",
        ErrorKind::Permission => "permission_error",
        ErrorKind::NotFound => "not_found_error",
        ErrorKind::TooLarge => "request_too_large",
        ErrorKind::RateLimit => "rate_limit_error",
        ErrorKind::Overloaded => "overloaded_error",
        ErrorKind::Api => "api_error",
    }
}

/// An error body and status for an Anthropic client: an overload is 529, as Anthropic sends it.
pub fn encode_error(e: &ApiError) -> (u16, Vec<u8>) {
    let status = if e.kind == ErrorKind::Overloaded {
        529
    } else {
        e.status
    };
    (status, serde_json::to_vec(&error_json(e)).unwrap_or_default())
}

pub fn error_json(e: &ApiError) -> Value {
    json!({"type": "error", "error": {"type": type_name(e.kind), "message": e.message}})
}
