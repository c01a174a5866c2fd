//! Gemini streams (`:streamGenerateContent?alt=sse`: each SSE event a whole
//! `GenerateContentResponse` chunk, the last carrying `finishReason`) <-> canonical events.

use bytes::BytesMut;
use serde_json::{Value, json};

use super::{field, finish_name, finish_of, usage_json, usage_of};
use crate::canonical::{ApiError, Delta, Event, Part, PartStart, Usage};
use crate::stream::StreamError;
use crate::whole::{Assembler, PendingCalls};

#[derive(Debug, Default)]
pub struct Decoder {
    parts: Assembler,
    calls: usize,
    usage: Option<Usage>,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// One SSE event's data: a chunk, or an error object.
    pub fn data(&mut self, data: &str, out: &mut Vec<Event>) -> Result<(), StreamError> {
        let v: Value = serde_json::from_str(data)
            .map_err(|e| StreamError::Malformed(format!("a chunk that is not JSON: {e}")))?;
        if let Some(e) = v.get("error").filter(|e| e.is_object()) {
            return Err(StreamError::Upstream(super::error_of(0, e)));
        }
        if self.parts.finished() {
            return Err(StreamError::Malformed("a chunk after the finish reason".into()));
        }
        let text = |camel: &str, snake: &str| {
            field(&v, camel, snake)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        self.parts.start(
            text("responseId", "response_id"),
            text("modelVersion", "model_version"),
            None,
            out,
        );
        if let Some(u) = field(&v, "usageMetadata", "usage_metadata") {
            self.usage = Some(usage_of(u));
        }
        let candidates = v.get("candidates").and_then(Value::as_array);
        let Some(c) = candidates.and_then(|c| c.first()) else {
            if field(&v, "promptFeedback", "prompt_feedback").is_some() {
                self.parts
                    .finish(Some(crate::canonical::Finish::ContentFilter), self.usage, out);
            }
            return Ok(());
        };
        if candidates.is_some_and(|c| c.len() > 1) {
            return Err(StreamError::Malformed(
                "a second candidate (candidateCount > 1)".into(),
            ));
        }
        let parts = super::response::parts_of(c.get("content").unwrap_or(&Value::Null), &mut self.calls)
            .map_err(|e| StreamError::Unknown(e.0))?;
        for p in parts {
            match p {
                Part::Text(t) => self.parts.text(t.text, out),
                Part::Thinking { text, signature } => {
                    self.parts.thinking(text, out);
                    if let Some(s) = signature {
                        self.parts.signature(s, out);
                    }
                }
                Part::ToolCall { id, name, arguments } => self.parts.tool_call(id, name, arguments, out),
                _ => {}
            }
        }
        if let Some(f) = field(c, "finishReason", "finish_reason").and_then(Value::as_str) {
            if let Some(why) = super::failed_call(f) {
                return Err(StreamError::Upstream(crate::canonical::ApiError {
                    status: 502,
                    kind: crate::canonical::ErrorKind::Api,
                    message: why,
                }));
            }
            self.parts.finish(Some(finish_of(f)), self.usage, out);
        }
        Ok(())
    }
}

/// Writes canonical events as a Gemini stream: text as it comes, a tool call once whole.
#[derive(Debug, Default)]
pub struct Encoder {
    id: String,
    model: String,
    start_usage: Option<Usage>,
    calls: PendingCalls,
    thinking: Vec<usize>,
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder::default()
    }

    fn chunk(&self, parts: Value, finish: Option<&str>, usage: Option<&Usage>, out: &mut BytesMut) {
        let mut c = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        if let Some(f) = finish {
            c["finishReason"] = f.into();
        }
        let mut v = json!({"candidates": [c], "modelVersion": self.model, "responseId": self.id});
        if let Some(u) = usage {
            v["usageMetadata"] = usage_json(u);
        }
        crate::sse::write(out, None, &v.to_string());
    }

    /// Writes one event. A tool call whose arguments are not a JSON object cannot be written
    /// (this dialect carries arguments only as an object): the stream fails, never `{}`.
    pub fn event(&mut self, e: &Event, out: &mut BytesMut) -> Result<(), StreamError> {
        match e {
            Event::Start { id, model, usage } => {
                self.id.clone_from(id);
                self.model.clone_from(model);
                self.start_usage = *usage;
            }
            Event::PartStart { index, part } => match part {
                PartStart::ToolCall { id, name } => self.calls.open(*index, id, name),
                PartStart::Thinking => self.thinking.push(*index),
                PartStart::Text | PartStart::RedactedThinking { .. } => {}
            },
            Event::Delta { index, delta } => match delta {
                Delta::Text(t) => self.chunk(json!([{"text": t}]), None, None, out),
                Delta::Thinking(t) => self.chunk(json!([{"text": t, "thought": true}]), None, None, out),
                Delta::Signature(s) => self.chunk(
                    json!([{"text": "", "thought": true, "thoughtSignature": s}]),
                    None,
                    None,
                    out,
                ),
                Delta::Arguments(a) => {
                    self.calls.append(*index, a);
                }
            },
            Event::PartStop { index } => {
                if let Some((id, name, args)) = self.calls.close(*index) {
                    let args = crate::whole::arguments_object(&args).ok_or_else(|| {
                        StreamError::Malformed(crate::whole::not_an_object(&name, "Gemini"))
                    })?;
                    self.chunk(
                        json!([{"functionCall": {"id": id, "name": name, "args": args}}]),
                        None,
                        None,
                        out,
                    );
                }
            }
            Event::Finish { finish, usage, .. } => {
                let u = Usage::merge(self.start_usage, *usage);
                let reason = finish.map(finish_name).unwrap_or("STOP");
                self.chunk(json!([]), Some(reason), Some(&u), out);
            }
            Event::Stop => {}
        }
        Ok(())
    }

    /// An error object as the last event, as Gemini ends a failed stream.
    pub fn error(&mut self, e: &ApiError, out: &mut BytesMut) {
        let status = if e.status == 529 { 503 } else { e.status };
        crate::sse::write(out, None, &super::error_json(status, e).to_string());
    }
}
