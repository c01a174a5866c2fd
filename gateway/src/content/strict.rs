//! One reading of JSON for every content rule: a body a content gate reads must parse one way
//! only, or it is not forwarded.
//!
//! The call view skips what it does not need without looking inside it, and upstreams' parsers
//! differ: some keep the first of two equal keys, some the last; some take `1e999` as infinity,
//! a lone surrogate escape (`\ud800`) or a byte that is not UTF-8 as a replacement character.
//! A scanner that reads a body differently from the upstream (or gives up on it and lets it
//! pass) is a bypass. So before a content rule reads a body, it is checked here, by the same
//! parser (serde_json) the rules then use, with duplicate keys refused at every level: what
//! passes is exactly what the rules scan, and what does not is refused (requests: 400 in the
//! client's dialect; answers: 502 `answer_unscanned`).
//!
//! The check builds nothing but each object's key list; it refuses: text that is not JSON or
//! has trailing bytes, bytes that are not UTF-8, lone surrogates, numbers beyond `f64`, nesting
//! deeper than 128 levels (serde_json's limit, where the rules would fail), and duplicate keys.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Why a body cannot be read as the content rules read it (a parser's message, with position).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable(pub String);

impl fmt::Display for Unreadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks that `body` is JSON the content rules read one way only.
pub fn check(body: &[u8]) -> Result<(), Unreadable> {
    let mut d = serde_json::Deserializer::from_slice(body);
    Check
        .deserialize(&mut d)
        .and_then(|()| d.end())
        .map_err(|e| Unreadable(e.to_string()))
}

/// Parses `body` into a value, as [`check`] reads it (one pass: what the filter uses on answers
/// and stream events, instead of `serde_json::from_slice`, which keeps the last of two keys).
pub fn parse(body: &[u8]) -> Result<Value, Unreadable> {
    let mut d = serde_json::Deserializer::from_slice(body);
    Build
        .deserialize(&mut d)
        .and_then(|v| d.end().map(|()| v))
        .map_err(|e| Unreadable(e.to_string()))
}

/// Whether `body` is meant as JSON (its first byte past white space opens an object or array):
/// such a body that does not parse is refused, not scanned as text.
pub fn looks_like_json(body: &[u8]) -> bool {
    matches!(body.iter().find(|b| !b.is_ascii_whitespace()), Some(b'{' | b'['))
}

/// Builds a `Value`, refusing duplicate keys.
struct Build;

impl<'de> DeserializeSeed<'de> for Build {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(Build)
    }
}

impl<'de> Visitor<'de> for Build {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(n)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number that is not finite"))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(v) = seq.next_element_seed(Build)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
            let v = map.next_value_seed(Build)?;
            if out.contains_key(k.as_ref()) {
                return Err(de::Error::custom(format_args!("duplicate key {:?}", k.as_ref())));
            }
            out.insert(k.into_owned(), v);
        }
        Ok(Value::Object(out))
    }
}

/// Walks a value, keeping nothing but the keys of the object being read.
struct Check;

impl<'de> DeserializeSeed<'de> for Check {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(Check)
    }
}

/// An object key, borrowed from the body unless it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Objects with more keys than this are checked with a hash set instead of a scan.
const SCAN_KEYS: usize = 16;

impl<'de> Visitor<'de> for Check {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Check)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys: Vec<Cow<'de, str>> = Vec::new();
        let mut many: Option<HashSet<Cow<'de, str>>> = None;
        while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
            let repeated = match &mut many {
                Some(set) => !set.insert(k.clone()),
                None => keys.contains(&k),
            };
            if repeated {
                return Err(de::Error::custom(format_args!("duplicate key {:?}", k.as_ref())));
            }
            if many.is_none() {
                keys.push(k);
                if keys.len() > SCAN_KEYS {
                    many = Some(keys.drain(..).collect());
                }
            }
            map.next_value_seed(Check)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_parses_one_way_passes() {
        for ok in [
            &br#"{"model":"m","messages":[{"role":"user","content":"hi \u00e9 \ud83d\ude00"}]}"#[..],
            br#"[1, -2, 3.5e10, true, null, "x", {"a":{"a":1}}]"#,
            br#"{"k0":0,"k1":1,"k2":2,"k3":3,"k4":4,"k5":5,"k6":6,"k7":7,"k8":8,"k9":9,"k10":10,"k11":11,"k12":12,"k13":13,"k14":14,"k15":15,"k16":16,"k17":17}"#,
        ] {
            assert_eq!(check(ok), Ok(()), "{}", String::from_utf8_lossy(ok));
        }
    }

    #[test]
    fn what_parsers_read_differently_is_refused() {
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(300), "]".repeat(300));
        let many = format!(
            "{{{}, \"k3\":0}}",
            (0..40)
                .map(|i| format!("\"k{i}\":0"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("lone surrogate", br#"{"content":"\ud800"}"#.to_vec()),
            ("lone trailing surrogate", br#"{"content":"a\udc00b"}"#.to_vec()),
            ("huge number", br#"{"n":1e999,"content":"x"}"#.to_vec()),
            ("not UTF-8", b"{\"content\":\"\xff\"}".to_vec()),
            ("deep nesting", deep.into_bytes()),
            (
                "duplicate key",
                br#"{"content":"secret","content":"hi"}"#.to_vec(),
            ),
            (
                "nested duplicate",
                br#"{"messages":[{"role":"user","role":"system"}]}"#.to_vec(),
            ),
            ("escaped duplicate", br#"{"content":1,"cont\u0065nt":2}"#.to_vec()),
            ("duplicate among many", many.into_bytes()),
            ("trailing bytes", br#"{"a":1} {"a":2}"#.to_vec()),
            ("not JSON", b"content=hi".to_vec()),
        ];
        for (what, body) in cases {
            assert!(check(&body).is_err(), "{what} passed");
            assert!(parse(&body).is_err(), "{what} parsed");
        }
    }

    #[test]
    fn parse_builds_what_serde_json_builds() {
        let body = br#"{"a":[1,-2,3.5,true,null,"x\u00e9"],"b":{"c":{}},"d":18446744073709551615}"#;
        assert_eq!(
            parse(body).unwrap(),
            serde_json::from_slice::<Value>(body).unwrap()
        );
        assert!(
            looks_like_json(
                b" 
{"
            ) && looks_like_json(b"[")
                && !looks_like_json(b"<html>")
        );
    }
}
