//! The wire dialects and their error bodies.
//!
//! Error bodies follow what the official SDKs parse into typed exceptions:
//! OpenAI `{"error":{"message","type","param","code"}}` and
//! Anthropic `{"type":"error","error":{"type","message"}}`.

use bytes::Bytes;
use http::StatusCode;
use serde::Serialize;

/// A client- or upstream-facing API dialect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    OpenAi,
    Anthropic,
    /// Google's Gemini API (`generateContent`).
    Gemini,
    /// Ollama's native `/api/chat`.
    Ollama,
}

impl Dialect {
    pub const ALL: [Dialect; 4] = [
        Dialect::OpenAi,
        Dialect::Anthropic,
        Dialect::Gemini,
        Dialect::Ollama,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::OpenAi => "openai",
            Dialect::Anthropic => "anthropic",
            Dialect::Gemini => "gemini",
            Dialect::Ollama => "ollama",
        }
    }
}

/// The error `type` an OpenAI client expects for a status.
fn openai_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 404 | 408 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_exceeded",
        503 => "service_unavailable",
        _ => "api_error",
    }
}

/// The error `type` an Anthropic client expects for a status
/// (see Anthropic's "Errors" reference: one type per status).
fn anthropic_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 408 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

#[derive(Serialize)]
struct OpenAiError<'a> {
    error: OpenAiErrorInner<'a>,
}

#[derive(Serialize)]
struct OpenAiErrorInner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

#[derive(Serialize)]
struct AnthropicError<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: AnthropicErrorInner<'a>,
}

#[derive(Serialize)]
struct AnthropicErrorInner<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

/// Renders an error body in `dialect`. `code` is the machine-readable code (OpenAI's `code`
/// field, e.g. `model_not_found`); Anthropic has no such field, so it only shapes the message
/// there. The message must never contain a credential: callers pass fixed or sanitised text.
pub fn error_body(dialect: Dialect, status: StatusCode, code: &str, message: &str) -> Bytes {
    let out = match dialect {
        Dialect::OpenAi => serde_json::to_vec(&OpenAiError {
            error: OpenAiErrorInner {
                message,
                kind: openai_type(status),
                param: None,
                code: Some(code),
            },
        }),
        Dialect::Anthropic => serde_json::to_vec(&AnthropicError {
            kind: "error",
            error: AnthropicErrorInner {
                kind: anthropic_type(status),
                message,
            },
        }),
        // google.rpc status: `{"error":{"code","message","status"}}`; the code rides in the
        // message, as Google's own errors name their reason there.
        Dialect::Gemini => {
            let e = crate::canonical::ApiError {
                status: status.as_u16(),
                kind: crate::error::kind_of_status(status.as_u16()),
                message: format!("{message} ({code})"),
            };
            Ok(crate::gemini::encode_error(&e).1)
        }
        Dialect::Ollama => serde_json::to_vec(&serde_json::json!({ "error": message })),
    };
    // Serialising plain strings into a Vec cannot fail; keep a valid body even so.
    Bytes::from(out.unwrap_or_else(|_| br#"{"error":{"message":"internal error"}}"#.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_error_shape() {
        let b = error_body(
            Dialect::OpenAi,
            StatusCode::NOT_FOUND,
            "model_not_found",
            "no \"x\"",
        );
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["message"], "no \"x\"");
        assert!(v["error"]["param"].is_null());
    }

    #[test]
    fn anthropic_error_shape() {
        let b = error_body(
            Dialect::Anthropic,
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "too big",
        );
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "request_too_large");
        assert_eq!(v["error"]["message"], "too big");
    }
}
