//! Ollama's native chat dialect: `POST /api/chat` (NDJSON streams, streaming unless
//! `"stream": false`) and `GET /api/tags`. Requests, answers, streams and errors as the
//! canonical model sees them; same-dialect calls pass through untouched.

pub mod request;
pub mod response;
pub mod stream;

use serde_json::{Value, json};

use crate::canonical::{ApiError, Finish, Usage};

/// Ollama's errors are `{"error": "<message>"}`; the status says the kind.
pub fn error_of(status: u16, e: &Value) -> ApiError {
    let message = match e {
        Value::String(s) => s.clone(),
        v => v
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("the upstream failed")
            .into(),
    };
    let status = if status == 0 { 500 } else { status };
    ApiError {
        status,
        kind: crate::error::kind_of_status(status),
        message,
    }
}

pub fn error_json(e: &ApiError) -> Value {
    json!({"error": e.message})
}

/// An error body and status for an Ollama client (529 becomes 503, which its SDK reports as
/// a retryable `ResponseError`).
pub fn encode_error(e: &ApiError) -> (u16, Vec<u8>) {
    let status = if e.status == 529 { 503 } else { e.status };
    (status, serde_json::to_vec(&error_json(e)).unwrap_or_default())
}

pub fn finish_of(reason: &str) -> Finish {
    match reason {
        "length" => Finish::MaxTokens,
        _ => Finish::EndTurn,
    }
}

pub fn finish_name(f: Finish) -> &'static str {
    match f {
        Finish::MaxTokens | Finish::ContextWindow => "length",
        _ => "stop",
    }
}

/// `prompt_eval_count` counts the whole prompt (Ollama reports no cache split);
/// `eval_count` the answer.
pub fn usage_of(v: &Value) -> Usage {
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input: n("prompt_eval_count"),
        output: n("eval_count"),
        ..Usage::default()
    }
}

/// The closing fields of an answer: the reason, the counts, and durations (which a translated
/// answer does not know, so zero).
pub fn done_fields(v: &mut Value, finish: Option<Finish>, u: &Usage) {
    v["done"] = true.into();
    v["done_reason"] = finish.map(finish_name).unwrap_or("stop").into();
    v["total_duration"] = 0.into();
    v["load_duration"] = 0.into();
    v["prompt_eval_count"] = u.prompt().into();
    v["prompt_eval_duration"] = 0.into();
    v["eval_count"] = u.output.into();
    v["eval_duration"] = 0.into();
}

/// RFC 3339 UTC now, as Ollama writes `created_at`.
pub fn created_at() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
