//! Anthropic Messages streams (`message_start`, `content_block_*`, `message_delta`,
//! `message_stop`, `ping`, `error`) <-> canonical stream events, one event at a time.

use bytes::BytesMut;
use serde_json::{Value, json};

use super::response::{finish_name, finish_of, usage_json, usage_of};
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

    /// One SSE event's data (its `type` names it; the `event:` line repeats it).
    pub fn data(&mut self, data: &str, out: &mut Vec<Event>) -> Result<(), StreamError> {
        let v: Value = serde_json::from_str(data)
            .map_err(|e| StreamError::Malformed(format!("an event that is not JSON: {e}")))?;
        let ty = v.get("type").and_then(Value::as_str).unwrap_or("");
        if self.done {
            return Err(StreamError::Malformed(format!("`{ty}` after message_stop")));
        }
        if !self.started && !matches!(ty, "message_start" | "ping" | "error") {
            return Err(StreamError::Malformed(format!("`{ty}` before message_start")));
        }
        let index = || v.get("index").and_then(Value::as_u64).map(|i| i as usize);
        match ty {
            "ping" => {}
            "error" => {
                let e = v.get("error").unwrap_or(&Value::Null);
                return Err(StreamError::Upstream(super::error_of(0, e)));
            }
            "message_start" => {
                let m = v.get("message").unwrap_or(&Value::Null);
                self.started = true;
                out.push(Event::Start {
                    id: m.get("id").and_then(Value::as_str).unwrap_or("").into(),
                    model: m.get("model").and_then(Value::as_str).unwrap_or("").into(),
                    usage: m.get("usage").map(usage_of),
                });
            }
            "content_block_start" => {
                let i = index().ok_or_else(|| StreamError::Malformed("a block without an index".into()))?;
                if i != self.next {
                    return Err(StreamError::Malformed(format!("block {i} opened out of order")));
                }
                let b = v.get("content_block").unwrap_or(&Value::Null);
                let part = match b.get("type").and_then(Value::as_str) {
                    Some("text") => PartStart::Text,
                    Some("tool_use") => PartStart::ToolCall {
                        id: b.get("id").and_then(Value::as_str).unwrap_or("").into(),
                        name: b.get("name").and_then(Value::as_str).unwrap_or("").into(),
                    },
                    Some("thinking") => PartStart::Thinking,
                    Some("redacted_thinking") => PartStart::RedactedThinking {
                        data: b.get("data").and_then(Value::as_str).unwrap_or("").into(),
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
                if let Some(t) = b.get("text").and_then(Value::as_str).filter(|t| !t.is_empty()) {
                    out.push(Event::Delta {
                        index: i,
                        delta: Delta::Text(t.into()),
                    });
                }
            }
            "content_block_delta" => {
                let i = index().filter(|i| self.open.contains(i));
                let i =
                    i.ok_or_else(|| StreamError::Malformed("a delta for a block that is not open".into()))?;
                let d = v.get("delta").unwrap_or(&Value::Null);
                let s = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                let delta = match d.get("type").and_then(Value::as_str) {
                    Some("text_delta") => Delta::Text(s("text")),
                    Some("input_json_delta") => Delta::Arguments(s("partial_json")),
                    Some("thinking_delta") => Delta::Thinking(s("thinking")),
                    Some("signature_delta") => Delta::Signature(s("signature")),
                    other => {
                        return Err(StreamError::Unknown(format!("delta `{}`", other.unwrap_or("?"))));
                    }
                };
                let empty = matches!(&delta, Delta::Text(t) | Delta::Arguments(t) | Delta::Thinking(t) if t.is_empty());
                if !empty {
                    out.push(Event::Delta { index: i, delta });
                }
            }
            "content_block_stop" => {
                let i =
                    index().ok_or_else(|| StreamError::Malformed("a block stop without an index".into()))?;
                self.open.retain(|o| *o != i);
                out.push(Event::PartStop { index: i });
            }
            "message_delta" => {
                let d = v.get("delta").unwrap_or(&Value::Null);
                for index in self.open.drain(..) {
                    out.push(Event::PartStop { index });
                }
                out.push(Event::Finish {
                    finish: d.get("stop_reason").and_then(Value::as_str).map(finish_of),
                    stop_sequence: d.get("stop_sequence").and_then(Value::as_str).map(Into::into),
                    usage: v.get("usage").map(usage_of),
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

/// Writes canonical events as an Anthropic stream.
#[derive(Debug, Default)]
pub struct Encoder {
    start_usage: Option<Usage>,
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder::default()
    }

    pub fn event(&mut self, e: &Event, out: &mut BytesMut) {
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
                let u = crate::openai::stream::merge(self.start_usage, *usage);
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
