//! Anthropic Messages streams (`message_start`, `content_block_*`, `message_delta`,
//! `message_stop`, `ping`, `error`) <-> canonical stream events, one event at a time.

use bytes::BytesMut;
use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::response::{WireUsage, finish_name, finish_of, usage_json};
use crate::canonical::{ApiError, Delta, Event, PartStart, Usage};
use crate::stream::StreamError;

/// Reads an Anthropic stream into canonical events. Block indices must open in order.
#[derive(Debug, Default)]
pub struct Decoder {
    started: bool,
    next: usize,
    open: Vec<usize>,
    done: bool,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    pub fn done(&self) -> bool {
        self.done
    }

    /// One SSE event's data (its `type` names it; the `event:` line repeats it, and is not
    /// needed). Read into one typed struct, no JSON tree.
    pub fn event(&mut self, data: &str, out: &mut Vec<Event>) -> Result<(), StreamError> {
        if let Some((index, delta)) = compact_delta(data)
            && !self.done
            && self.open.contains(&index)
        {
            if !matches!(&delta, Delta::Text(t) | Delta::Arguments(t) | Delta::Thinking(t) if t.is_empty()) {
                out.push(Event::Delta { index, delta });
            }
            return Ok(());
        }
        let v: Wire<'_> = serde_json::from_str(data)
            .map_err(|e| StreamError::Malformed(format!("an event not in the shape of Anthropic's: {e}")))?;
        let ty: &str = &v.ty;
        if self.done {
            return Err(StreamError::Malformed(format!("`{ty}` after message_stop")));
        }
        if !self.started && !matches!(ty, "message_start" | "ping" | "error") {
            return Err(StreamError::Malformed(format!("`{ty}` before message_start")));
        }
        match ty {
            "ping" => {}
            "error" => {
                let e = v.error.map(|e| e.get()).unwrap_or("null");
                let e: Value = serde_json::from_str(e).unwrap_or_default();
                return Err(StreamError::Upstream(super::error_of(0, &e)));
            }
            "message_start" => {
                let m = v.message.unwrap_or_default();
                self.started = true;
                out.push(Event::Start {
                    id: m.id.unwrap_or_default(),
                    model: m.model.unwrap_or_default(),
                    usage: m.usage.map(Into::into),
                });
            }
            "content_block_start" => {
                let i = v
                    .index
                    .ok_or_else(|| StreamError::Malformed("a block without an index".into()))?;
                if i != self.next {
                    return Err(StreamError::Malformed(format!("block {i} opened out of order")));
                }
                let b = v.content_block.unwrap_or_default();
                let part = match b.ty.as_deref() {
                    Some("text") => PartStart::Text,
                    Some("tool_use") => PartStart::ToolCall {
                        id: b.id.unwrap_or_default(),
                        name: b.name.unwrap_or_default(),
                    },
                    Some("thinking") => PartStart::Thinking,
                    Some("redacted_thinking") => PartStart::RedactedThinking {
                        data: b.data.unwrap_or_default(),
                    },
                    other => {
                        return Err(StreamError::Unknown(format!(
                            "content block `{}`",
                            other.unwrap_or("?")
                        )));
                    }
                };
                self.next += 1;
                self.open.push(i);
                out.push(Event::PartStart { index: i, part });
                // A block may start with text already in it.
                if let Some(t) = b.text.filter(|t| !t.is_empty()) {
                    out.push(Event::Delta {
                        index: i,
                        delta: Delta::Text(t),
                    });
                }
            }
            "content_block_delta" => {
                let i = v.index.filter(|i| self.open.contains(i));
                let i =
                    i.ok_or_else(|| StreamError::Malformed("a delta for a block that is not open".into()))?;
                let d = v.delta.unwrap_or_default();
                let delta = match (d.ty.as_deref(), d.text, d.partial_json, d.thinking, d.signature) {
                    (Some("text_delta"), Some(t), ..) => Delta::Text(t),
                    (Some("input_json_delta"), _, Some(j), ..) => Delta::Arguments(j),
                    (Some("thinking_delta"), _, _, Some(t), _) => Delta::Thinking(t),
                    (Some("signature_delta"), .., Some(s)) => Delta::Signature(s),
                    (other, ..) => {
                        return Err(StreamError::Unknown(format!("delta `{}`", other.unwrap_or("?"))));
                    }
                };
                let empty = matches!(&delta, Delta::Text(t) | Delta::Arguments(t) | Delta::Thinking(t) if t.is_empty());
                if !empty {
                    out.push(Event::Delta { index: i, delta });
                }
            }
            "content_block_stop" => {
                let i = v
                    .index
                    .ok_or_else(|| StreamError::Malformed("a block stop without an index".into()))?;
                self.open.retain(|o| *o != i);
                out.push(Event::PartStop { index: i });
            }
            "message_delta" => {
                let d = v.delta.unwrap_or_default();
                for index in self.open.drain(..) {
                    out.push(Event::PartStop { index });
                }
                out.push(Event::Finish {
                    finish: d.stop_reason.as_deref().map(finish_of),
                    stop_sequence: d.stop_sequence,
                    usage: v.usage.map(Into::into),
                });
            }
            "message_stop" => {
                self.done = true;
                out.push(Event::Stop);
            }
            other => return Err(StreamError::Unknown(format!("event `{other}`"))),
        }
        Ok(())
    }
}

/// The event that is most of every stream, in the exact compact form Anthropic sends it:
/// `{"type":"content_block_delta","index":N,"delta":{"type":"text_delta","text":"..."}}` (or
/// `input_json_delta` / `partial_json`, `thinking_delta` / `thinking`). Only a whole-object
/// match is taken, so the meaning cannot differ from a full parse; anything else (other key
/// order, spaces, more fields) goes the general way.
fn compact_delta(data: &str) -> Option<(usize, Delta)> {
    let rest = data.strip_prefix(r#"{"type":"content_block_delta","index":"#)?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || digits > 9 {
        return None;
    }
    let index: usize = rest[..digits].parse().ok()?;
    let rest = rest[digits..].strip_prefix(r#","delta":{"type":""#)?;
    let (make, rest): (fn(String) -> Delta, &str) =
        if let Some(r) = rest.strip_prefix(r#"text_delta","text":"#) {
            (Delta::Text, r)
        } else if let Some(r) = rest.strip_prefix(r#"input_json_delta","partial_json":"#) {
            (Delta::Arguments, r)
        } else if let Some(r) = rest.strip_prefix(r#"thinking_delta","thinking":"#) {
            (Delta::Thinking, r)
        } else {
            return None;
        };
    let text = rest.strip_suffix("}}")?;
    // Exactly one JSON string, nothing after it.
    let text: String = serde_json::from_str(text).ok()?;
    Some((index, make(text)))
}

/// Every Anthropic stream event, as one struct: the fields of each type are optional here and
/// required by the match above.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    index: Option<usize>,
    message: Option<WireMessage>,
    content_block: Option<WireBlock>,
    delta: Option<WireDelta>,
    usage: Option<WireUsage>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct WireMessage {
    id: Option<String>,
    model: Option<String>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize, Default)]
struct WireBlock {
    #[serde(rename = "type")]
    ty: Option<String>,
    id: Option<String>,
    name: Option<String>,
    text: Option<String>,
    data: Option<String>,
}

#[derive(Deserialize, Default)]
struct WireDelta {
    #[serde(rename = "type")]
    ty: Option<String>,
    text: Option<String>,
    partial_json: Option<String>,
    thinking: Option<String>,
    signature: Option<String>,
    stop_reason: Option<String>,
    stop_sequence: Option<String>,
}

/// Writes canonical events as an Anthropic stream.
#[derive(Debug, Default)]
pub struct Encoder {
    start_usage: Option<Usage>,
    scratch: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder::default()
    }

    pub fn event(&mut self, e: &Event, out: &mut BytesMut) {
        if let Event::Delta { index, delta } = e {
            // The hot path: written directly, no JSON tree.
            let (ty, key, text) = match delta {
                Delta::Text(t) => ("text_delta", "text", t),
                Delta::Arguments(a) => ("input_json_delta", "partial_json", a),
                Delta::Thinking(t) => ("thinking_delta", "thinking", t),
                Delta::Signature(s) => ("signature_delta", "signature", s),
            };
            let b = &mut self.scratch;
            b.clear();
            b.extend_from_slice(
                b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":",
            );
            crate::codec::push_u64(b, *index as u64);
            b.extend_from_slice(b",\"delta\":{\"type\":\"");
            b.extend_from_slice(ty.as_bytes());
            b.extend_from_slice(b"\",\"");
            b.extend_from_slice(key.as_bytes());
            b.extend_from_slice(b"\":");
            crate::codec::push_json_str(b, text);
            b.extend_from_slice(b"}}\n\n");
            out.extend_from_slice(b);
            return;
        }
        let (name, v) = match e {
            Event::Start { id, model, usage } => {
                self.start_usage = *usage;
                let u = usage.unwrap_or_default();
                (
                    "message_start",
                    json!({"type": "message_start", "message": {
                    "id": if id.is_empty() { "msg_lattice" } else { id }, "type": "message", "role": "assistant",
                    "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
                    "usage": usage_json(&u)}}),
                )
            }
            Event::PartStart { index, part } => {
                let block = match part {
                    PartStart::Text => json!({"type": "text", "text": ""}),
                    PartStart::ToolCall { id, name } => {
                        json!({"type": "tool_use", "id": super::request::tool_id(id), "name": name, "input": {}})
                    }
                    PartStart::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
                    PartStart::RedactedThinking { data } => {
                        json!({"type": "redacted_thinking", "data": data})
                    }
                };
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": index, "content_block": block}),
                )
            }
            Event::Delta { index, delta } => {
                let d = match delta {
                    Delta::Text(t) => json!({"type": "text_delta", "text": t}),
                    Delta::Arguments(a) => json!({"type": "input_json_delta", "partial_json": a}),
                    Delta::Thinking(t) => json!({"type": "thinking_delta", "thinking": t}),
                    Delta::Signature(s) => json!({"type": "signature_delta", "signature": s}),
                };
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": index, "delta": d}),
                )
            }
            Event::PartStop { index } => (
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ),
            Event::Finish {
                finish,
                stop_sequence,
                usage,
            } => {
                let u = Usage::merge(self.start_usage, *usage);
                (
                    "message_delta",
                    json!({"type": "message_delta",
                    "delta": {"stop_reason": finish.map(finish_name).unwrap_or("end_turn"), "stop_sequence": stop_sequence},
                    "usage": usage_json(&u)}),
                )
            }
            Event::Stop => ("message_stop", json!({"type": "message_stop"})),
        };
        crate::sse::write(out, Some(name), &v.to_string());
    }

    /// An `error` event, as Anthropic ends a failed stream.
    pub fn error(&mut self, e: &ApiError, out: &mut BytesMut) {
        crate::sse::write(out, Some("error"), &super::error_json(e).to_string());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_compact_delta_reads_as_the_full_parse_and_nothing_else_is_taken() {
        let taken = [
            (
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi \"there\"\n"}}"#,
                0,
                Delta::Text("Hi \"there\"\n".into()),
            ),
            (
                r#"{"type":"content_block_delta","index":12,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}"#,
                12,
                Delta::Arguments("{\"a\":".into()),
            ),
            (
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"thinking_delta","thinking":"hm"}}"#,
                1,
                Delta::Thinking("hm".into()),
            ),
        ];
        for (data, index, delta) in taken {
            assert_eq!(compact_delta(data), Some((index, delta)), "{data}");
        }
        for data in [
            // Another key order, spaces, extra fields, a string that does not end where the object does.
            r#"{"index":0,"type":"content_block_delta","delta":{"type":"text_delta","text":"x"}}"#,
            r#"{"type": "content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x","extra":1}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"},"more":{}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"}}"}}"#,
            r#"{"type":"content_block_delta","index":-1,"delta":{"type":"text_delta","text":"x"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"s"}}"#,
        ] {
            assert_eq!(compact_delta(data), None, "{data}");
        }
        // Whatever it takes, the full parse reads the same.
        let mut d = Decoder::new();
        let mut out = Vec::new();
        d.event(
            r#"{"type":"message_start","message":{"id":"m","model":"x"}}"#,
            &mut out,
        )
        .unwrap();
        d.event(
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            &mut out,
        )
        .unwrap();
        out.clear();
        let data = r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi \"there\"\n"}}"#;
        let fast = compact_delta(data).map(|(i, d)| Event::Delta { index: i, delta: d });
        let v: Wire<'_> = serde_json::from_str(data).unwrap();
        let slow = v.delta.and_then(|d| d.text).map(|t| Event::Delta {
            index: v.index.unwrap(),
            delta: Delta::Text(t),
        });
        assert_eq!(fast, slow);
    }
}
