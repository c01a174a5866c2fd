//! The Gemini API dialect (Google AI, `generativelanguage.googleapis.com/v1beta`):
//! `models/{model}:generateContent`, `:streamGenerateContent?alt=sse` and `:countTokens`.
//! The model and whether the call streams are in the URL, not the body. Requests, answers,
//! streams and errors as the canonical model sees them; same-dialect calls pass through
//! untouched.

pub mod request;
pub mod response;
pub mod stream;

use serde_json::{Value, json};

use crate::canonical::{ApiError, ErrorKind, Finish, Usage};

/// A google.rpc error object (`{"code","message","status"}`) answered with `status`.
pub fn error_of(status: u16, e: &Value) -> ApiError {
    let kind = match e.get("status").and_then(Value::as_str) {
        Some("INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE") => Some(ErrorKind::InvalidRequest),
        Some("UNAUTHENTICATED") => Some(ErrorKind::Authentication),
        Some("PERMISSION_DENIED") => Some(ErrorKind::Permission),
        Some("NOT_FOUND") => Some(ErrorKind::NotFound),
        Some("RESOURCE_EXHAUSTED") => Some(ErrorKind::RateLimit),
        Some("UNAVAILABLE") => Some(ErrorKind::Overloaded),
        Some("INTERNAL" | "DEADLINE_EXCEEDED" | "UNKNOWN") => Some(ErrorKind::Api),
        _ => None,
    };
    let status = match status {
        0 => e.get("code").and_then(Value::as_u64).map_or(0, |c| c as u16),
        s => s,
    };
    crate::error::api_error(status, kind, e)
}

/// The google.rpc status name Google's SDKs read for a kind.
pub fn status_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidRequest | ErrorKind::TooLarge => "INVALID_ARGUMENT",
        ErrorKind::Authentication => "UNAUTHENTICATED",
        ErrorKind::Permission => "PERMISSION_DENIED",
        ErrorKind::NotFound => "NOT_FOUND",
        ErrorKind::RateLimit => "RESOURCE_EXHAUSTED",
        ErrorKind::Overloaded => "UNAVAILABLE",
        ErrorKind::Api => "INTERNAL",
    }
}

pub fn error_json(status: u16, e: &ApiError) -> Value {
    json!({"error": {"code": status, "message": e.message, "status": status_name(e.kind)}})
}

/// An error body and status for a Gemini client. Anthropic's 529 becomes 503 `UNAVAILABLE`,
/// which Google's SDKs retry.
pub fn encode_error(e: &ApiError) -> (u16, Vec<u8>) {
    let status = if e.status == 529 { 503 } else { e.status };
    (
        status,
        serde_json::to_vec(&error_json(status, e)).unwrap_or_default(),
    )
}

/// A `finishReason` that says the model's tool call failed (`MALFORMED_FUNCTION_CALL`, ...):
/// no finish reason of another dialect says so, and "stop" would hide it, so the answer is
/// refused with this message.
pub fn failed_call(reason: &str) -> Option<String> {
    matches!(
        reason,
        "MALFORMED_FUNCTION_CALL" | "UNEXPECTED_TOOL_CALL" | "TOO_MANY_TOOL_CALLS"
    )
    .then(|| {
        format!("the model's tool call failed (Gemini finishReason {reason}); no other dialect can say so")
    })
}

/// `finishReason` -> canonical. `STOP` after function calls is a tool-use finish; the callers
/// that see the calls decide that.
pub fn finish_of(reason: &str) -> Finish {
    match reason {
        "MAX_TOKENS" => Finish::MaxTokens,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY"
        | "LANGUAGE" => Finish::ContentFilter,
        _ => Finish::EndTurn,
    }
}

pub fn finish_name(f: Finish) -> &'static str {
    match f {
        Finish::MaxTokens | Finish::ContextWindow => "MAX_TOKENS",
        Finish::ContentFilter => "SAFETY",
        Finish::EndTurn | Finish::StopSequence | Finish::ToolUse | Finish::PauseTurn => "STOP",
    }
}

/// `usageMetadata`: `promptTokenCount` includes the cached tokens; `candidatesTokenCount`
/// excludes the thoughts, counted in `thoughtsTokenCount`.
pub fn usage_of(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cached = n("cachedContentTokenCount");
    let thoughts = n("thoughtsTokenCount");
    Usage {
        input: n("promptTokenCount").saturating_sub(cached),
        output: n("candidatesTokenCount").saturating_add(thoughts),
        cached_input: cached,
        cache_write: 0,
        reasoning: thoughts,
    }
}

pub fn usage_json(u: &Usage) -> Value {
    let candidates = u.output.saturating_sub(u.reasoning);
    let mut v = json!({
        "promptTokenCount": u.prompt(),
        "candidatesTokenCount": candidates,
        "totalTokenCount": u.prompt().saturating_add(u.output),
    });
    if u.cached_input > 0 {
        v["cachedContentTokenCount"] = u.cached_input.into();
    }
    if u.reasoning > 0 {
        v["thoughtsTokenCount"] = u.reasoning.into();
    }
    v
}

/// Reads a field by its camelCase name (as the REST reference and Google's SDKs write it) or
/// its snake_case twin (which the API accepts too).
pub(crate) fn field<'a>(v: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    v.get(camel).or_else(|| v.get(snake)).filter(|v| !v.is_null())
}
