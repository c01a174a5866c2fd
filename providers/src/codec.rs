//! What every dialect's codec shares: the error a body that cannot be translated gets, and
//! small readers of JSON values.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

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

/// A JSON object's members, each value left unparsed (borrowed from `body`), sorted by key as
/// a `Value`'s map would iterate them. A key given twice is refused: which of the two a
/// provider would read is not ours to guess.
pub fn fields(body: &[u8]) -> Result<Vec<(Cow<'_, str>, &RawValue)>, DecodeError> {
    let Fields(mut fields) =
        serde_json::from_slice(body).map_err(|e| match body.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => bad(format!("not a JSON object: {e}")),
            _ => bad("the body must be a JSON object"),
        })?;
    fields.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    if let Some(w) = fields.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(bad(format!("`{}` is given twice", w[0].0)));
    }
    Ok(fields)
}

/// A member's value as a tree, for the readers that walk one.
pub fn tree(raw: &RawValue) -> Result<Value, DecodeError> {
    serde_json::from_str(raw.get()).map_err(|e| bad(format!("not JSON: {e}")))
}

/// A member's value when it is a JSON string (a message's plain-text content, say), read
/// without a tree; `None` for any other value.
pub fn plain_text(raw: &RawValue, field: &str) -> Result<Option<String>, DecodeError> {
    if !raw.get().starts_with('"') {
        return Ok(None);
    }
    serde_json::from_str(raw.get())
        .map(Some)
        .map_err(|e| bad(format!("`{field}`: {e}")))
}

struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

/// A key, borrowed when it has no escapes.
#[derive(Deserialize)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(Key(k)) = map.next_key()? {
                    out.push((k, map.next_value()?));
                }
                Ok(Fields(out))
            }
        }
        d.deserialize_map(Members)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_come_sorted_and_unparsed() {
        let f = fields(br#"{"b": [1, {"x": 2}], "a": "t\u0065xt", "c\u0041": null}"#).unwrap();
        let keys: Vec<&str> = f.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(keys, ["a", "b", "cA"]);
        assert_eq!(f[1].1.get(), r#"[1, {"x": 2}]"#);
        assert_eq!(tree(f[0].1).unwrap(), Value::String("text".into()));
    }

    #[test]
    fn a_key_given_twice_is_refused_however_it_is_spelled() {
        for body in [
            &br#"{"model": "a", "model": "b"}"#[..],
            br#"{"model": "a", "mod\u0065l": "b"}"#,
            br#"{"x": 1, "model": "a", "y": 2, "model": "a"}"#,
        ] {
            let e = fields(body).unwrap_err();
            assert!(e.0.contains("`model` is given twice"), "{e}");
        }
    }

    #[test]
    fn what_is_not_an_object_is_refused() {
        for body in [&b"[]"[..], b"\"x\"", b"{\"a\": 1", b"{} {}", b"", b"{\"a\": 1,}"] {
            assert!(fields(body).is_err(), "{:?}", String::from_utf8_lossy(body));
        }
    }
}
