//! What every dialect's codec shares: the error a body that cannot be translated gets, and
//! small readers of JSON values.

use serde_json::{Value, json};

use crate::canonical::Cache;

/// A request or answer a codec cannot read (the client gets 400 `invalid_request_error`, an
/// upstream's answer becomes a 502).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DecodeError {}

pub fn bad(msg: impl Into<String>) -> DecodeError {
    DecodeError(msg.into())
}

/// A required string.
pub fn text_of(v: &Value, field: &str) -> Result<String, DecodeError> {
    v.as_str()
        .map(Into::into)
        .ok_or_else(|| bad(format!("`{field}` must be a string")))
}

pub fn opt_str(v: &Value, field: &str) -> Result<Option<String>, DecodeError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(bad(format!("`{field}` must be a string"))),
    }
}

pub fn opt_f64(v: &Value, field: &str) -> Result<Option<f64>, DecodeError> {
    match v {
        Value::Null => Ok(None),
        v => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| bad(format!("`{field}` must be a number"))),
    }
}

pub fn opt_u64(v: &Value, field: &str) -> Result<Option<u64>, DecodeError> {
    match v {
        Value::Null => Ok(None),
        v => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad(format!("`{field}` must be a non-negative integer"))),
    }
}

/// A block's `cache_control` (`{"type":"ephemeral","ttl":"1h"}`).
pub fn cache_of(v: &Value) -> Option<Cache> {
    let c = v.get("cache_control")?;
    (c.get("type").and_then(Value::as_str) == Some("ephemeral")).then(|| Cache {
        ttl: c.get("ttl").and_then(Value::as_str).map(Into::into),
    })
}

pub fn cache_value(c: &Cache) -> Value {
    match &c.ttl {
        Some(ttl) => json!({"type": "ephemeral", "ttl": ttl}),
        None => json!({"type": "ephemeral"}),
    }
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Appends `s` as a JSON string (quoted and escaped).
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Appends `n` in decimal.
pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    use std::io::Write as _;
    let _ = write!(out, "{n}");
}
