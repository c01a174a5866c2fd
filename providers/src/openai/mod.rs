//! The OpenAI Chat Completions dialect: requests, answers, streams and errors as the canonical
//! model sees them. (The bytes of a same-dialect call pass through untouched; these codecs run
//! only when a call is translated.)

pub mod request;
pub mod response;
pub mod stream;

use serde_json::{Value, json};

use crate::canonical::{ApiError, ErrorKind};

/// An OpenAI error object (`{"message","type","code"}`) answered with `status`.
pub fn error_of(status: u16, e: &Value) -> ApiError {
    let kind = match e.get("type").and_then(Value::as_str) {
        Some("invalid_request_error") => Some(ErrorKind::InvalidRequest),
        Some("authentication_error") => Some(ErrorKind::Authentication),
        Some("permission_error") => Some(ErrorKind::Permission),
        Some("not_found_error") => Some(ErrorKind::NotFound),
        Some("rate_limit_exceeded" | "rate_limit_error" | "insufficient_quota") => Some(ErrorKind::RateLimit),
        Some("service_unavailable" | "overloaded_error") => Some(ErrorKind::Overloaded),
        _ => None,
    };
    crate::error::api_error(status, kind, e)
}

/// The error `type` OpenAI's SDKs expect for a kind.
pub fn type_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidRequest | ErrorKind::NotFound | ErrorKind::TooLarge => "invalid_request_error",
        ErrorKind::Authentication => "authentication_error",
        ErrorKind::Permission => "permission_error",
        ErrorKind::RateLimit => "rate_limit_exceeded",
        ErrorKind::Overloaded => "service_unavailable",
        ErrorKind::Api => "api_error",
    }
}

/// An error body and status for an OpenAI client. Anthropic's 529 (overloaded) becomes 503,
/// which OpenAI's SDKs retry.
pub fn encode_error(e: &ApiError) -> (u16, Vec<u8>) {
    let status = if e.status == 529 { 503 } else { e.status };
    let v = json!({"error": {"message": e.message, "type": type_name(e.kind), "param": null,
                             "code": crate::error::code_name(e.kind)}});
    (status, serde_json::to_vec(&v).unwrap_or_default())
}
