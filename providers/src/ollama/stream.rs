//! Ollama streams (NDJSON: one chat response per line, the last with `"done": true` and the
//! counts) <-> canonical events.

use bytes::BytesMut;
use serde_json::{Value, json};

use super::{finish_of, usage_of};
use crate::canonical::{ApiError, Delta, Event, Part, PartStart, Usage};
use crate::stream::StreamError;
use crate::whole::{Assembler, PendingCalls};

#[derive(Debug, Default)]
pub struct Decoder {
    parts: Assembler,
    calls: usize,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// One line.
    pub fn line(&mut self, line: &str, out: &mut Vec<Event>) -> Result<(), StreamError> {
        let v: Value = serde_json::from_str(line)
            .map_err(|e| StreamError::Malformed(format!("a line that is not JSON: {e}")))?;
        if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
            return Err(StreamError::Upstream(super::error_of(0, e)));
        }
        if self.parts.finished() {
            return Err(StreamError::Malformed("a line after `done`".into()));
        }
        let model = v.get("model").and_then(Value::as_str).unwrap_or("").to_string();
        self.parts.start(String::new(), model, None, out);
        let message = v.get("message").unwrap_or(&Value::Null);
        let parts =
            super::response::parts_of(message, &mut self.calls).map_err(|e| StreamError::Malformed(e.0))?;
        for p in parts {
            match p {
                Part::Thinking { text, .. } => self.parts.thinking(text, out),
                Part::Text(t) => self.parts.text(t.text, out),
                Part::ToolCall { id, name, arguments } => self.parts.tool_call(id, name, arguments, out),
                _ => {}
            }
        }
        match v.get("done").and_then(Value::as_bool) {
            Some(true) => {
                let finish = v.get("done_reason").and_then(Value::as_str).map(finish_of);
                self.parts.finish(finish, Some(usage_of(&v)), out);
            }
            Some(false) => {}
            None => return Err(StreamError::Malformed("a line without `done`".into())),
        }
        Ok(())
    }
}

/// Writes canonical events as Ollama NDJSON: text as it comes, a tool call once whole.
#[derive(Debug, Default)]
pub struct Encoder {
    model: String,
    created_at: String,
    start_usage: Option<Usage>,
    calls: PendingCalls,
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder::default()
    }

    fn line(&self, message: Value, out: &mut BytesMut) {
        let v =
            json!({"model": self.model, "created_at": self.created_at, "message": message, "done": false});
        out.extend_from_slice(v.to_string().as_bytes());
        out.extend_from_slice(b"\n");
    }

    /// Writes one event. A tool call whose arguments are not a JSON object cannot be written
    /// (this dialect carries arguments only as an object): the stream fails, never `{}`.
    pub fn event(&mut self, e: &Event, out: &mut BytesMut) -> Result<(), StreamError> {
        match e {
            Event::Start { model, usage, .. } => {
                self.model.clone_from(model);
                self.created_at = super::created_at();
                self.start_usage = *usage;
            }
            Event::PartStart { index, part } => {
                if let PartStart::ToolCall { id, name } = part {
                    self.calls.open(*index, id, name);
                }
            }
            Event::Delta { index, delta } => match delta {
                Delta::Text(t) => self.line(json!({"role": "assistant", "content": t}), out),
                Delta::Thinking(t) => {
                    self.line(json!({"role": "assistant", "content": "", "thinking": t}), out)
                }
                Delta::Signature(_) => {}
                Delta::Arguments(a) => {
                    self.calls.append(*index, a);
                }
            },
            Event::PartStop { index } => {
                if let Some((_, name, args)) = self.calls.close(*index) {
                    let args = crate::whole::arguments_object(&args).ok_or_else(|| {
                        StreamError::Malformed(crate::whole::not_an_object(&name, "Ollama"))
                    })?;
                    let call = json!({"function": {"name": name, "arguments": args}});
                    self.line(
                        json!({"role": "assistant", "content": "", "tool_calls": [call]}),
                        out,
                    );
                }
            }
            Event::Finish { finish, usage, .. } => {
                let u = Usage::merge(self.start_usage, *usage);
                let mut v = json!({"model": self.model, "created_at": self.created_at,
                                   "message": {"role": "assistant", "content": ""}});
                super::done_fields(&mut v, *finish, &u);
                out.extend_from_slice(v.to_string().as_bytes());
                out.extend_from_slice(b"\n");
            }
            Event::Stop => {}
        }
        Ok(())
    }

    /// An error line, as Ollama ends a failed stream.
    pub fn error(&mut self, e: &ApiError, out: &mut BytesMut) {
        out.extend_from_slice(super::error_json(e).to_string().as_bytes());
        out.extend_from_slice(b"\n");
    }
}
