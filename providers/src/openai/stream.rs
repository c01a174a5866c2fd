//! OpenAI Chat Completions streams (`chat.completion.chunk` events, ended by `[DONE]`) <->
//! canonical stream events, one event at a time.

use bytes::BytesMut;
use serde_json::{Value, json};

use super::response::{finish_name, finish_of, usage_json, usage_of};
use crate::canonical::{Delta, Event, Finish, PartStart, Usage};
use crate::codec::unix_now;
use crate::stream::StreamError;

/// Reads an OpenAI stream into canonical events.
#[derive(Debug, Default)]
pub struct Decoder {
    started: bool,
    next: usize,
    text: Option<usize>,
    thinking: Option<usize>,
    /// OpenAI's tool-call index -> the part's index.
    tools: Vec<(u64, usize)>,
    open: Vec<usize>,
    finish: Option<Finish>,
    finished: bool,
    usage: Option<Usage>,
    done: bool,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Whether `[DONE]` has been read.
    pub fn done(&self) -> bool {
        self.done
    }

    /// One SSE `data:` payload.
    pub fn data(&mut self, data: &str, out: &mut Vec<Event>) -> Result<(), StreamError> {
        if self.done {
            return Err(StreamError::Malformed("data after [DONE]".into()));
        }
        if data.trim() == "[DONE]" {
            self.close(out);
            if !self.finished {
                self.finished = true;
                out.push(Event::Finish {
                    finish: self.finish,
                    stop_sequence: None,
                    usage: self.usage,
                });
            }
            out.push(Event::Stop);
            self.done = true;
            return Ok(());
        }
        let v: Value = serde_json::from_str(data)
            .map_err(|e| StreamError::Malformed(format!("a chunk that is not JSON: {e}")))?;
        if let Some(e) = v.get("error") {
            return Err(StreamError::Upstream(super::error_of(0, e)));
        }
        if !self.started {
            self.started = true;
            out.push(Event::Start {
                id: v.get("id").and_then(Value::as_str).unwrap_or("").into(),
                model: v.get("model").and_then(Value::as_str).unwrap_or("").into(),
                usage: None,
            });
        }
        let choices = v.get("choices").and_then(Value::as_array);
        for c in choices.into_iter().flatten() {
            if c.get("index").and_then(Value::as_u64).unwrap_or(0) != 0 {
                return Err(StreamError::Malformed("a second choice (n > 1)".into()));
            }
            if self.finish.is_some() {
                return Err(StreamError::Malformed("content after the finish reason".into()));
            }
            let d = c.get("delta").unwrap_or(&Value::Null);
            if let Some(t) = d
                .get("reasoning_content")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                let i = self.part(PartKind::Thinking, out);
                out.push(Event::Delta {
                    index: i,
                    delta: Delta::Thinking(t.into()),
                });
            }
            for key in ["content", "refusal"] {
                if let Some(t) = d.get(key).and_then(Value::as_str).filter(|t| !t.is_empty()) {
                    let i = self.part(PartKind::Text, out);
                    out.push(Event::Delta {
                        index: i,
                        delta: Delta::Text(t.into()),
                    });
                }
            }
            for tc in d
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let oi = tc.get("index").and_then(Value::as_u64).unwrap_or(0);
                let f = tc.get("function").unwrap_or(&Value::Null);
                let index = match self.tools.iter().find(|(o, _)| *o == oi) {
                    Some((_, i)) if self.open.contains(i) => *i,
                    Some(_) => {
                        return Err(StreamError::Malformed(
                            "arguments for a tool call that another part already followed".into(),
                        ));
                    }
                    None => {
                        let id = tc.get("id").and_then(Value::as_str).unwrap_or("");
                        let name = f.get("name").and_then(Value::as_str).unwrap_or("");
                        if id.is_empty() || name.is_empty() {
                            return Err(StreamError::Malformed(
                                "a tool call without its id and name".into(),
                            ));
                        }
                        let i = self.open_part(
                            PartStart::ToolCall {
                                id: id.into(),
                                name: name.into(),
                            },
                            out,
                        );
                        self.tools.push((oi, i));
                        i
                    }
                };
                if let Some(a) = f
                    .get("arguments")
                    .and_then(Value::as_str)
                    .filter(|a| !a.is_empty())
                {
                    out.push(Event::Delta {
                        index,
                        delta: Delta::Arguments(a.into()),
                    });
                }
            }
            if let Some(f) = c.get("finish_reason").and_then(Value::as_str) {
                self.finish = Some(finish_of(f));
                self.close(out);
            }
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(usage_of(u));
            if self.finish.is_some() && !self.finished {
                self.finished = true;
                out.push(Event::Finish {
                    finish: self.finish,
                    stop_sequence: None,
                    usage: self.usage,
                });
            }
        }
        Ok(())
    }

    fn part(&mut self, kind: PartKind, out: &mut Vec<Event>) -> usize {
        let slot = match kind {
            PartKind::Text => self.text,
            PartKind::Thinking => self.thinking,
        };
        // Text after a tool call (or reasoning after text) is a new part: parts are sequential.
        if let Some(i) = slot.filter(|i| self.open.contains(i)) {
            return i;
        }
        let i = self.open_part(
            match kind {
                PartKind::Text => PartStart::Text,
                PartKind::Thinking => PartStart::Thinking,
            },
            out,
        );
        match kind {
            PartKind::Text => self.text = Some(i),
            PartKind::Thinking => self.thinking = Some(i),
        }
        i
    }

    /// Opens the next part, closing the one before: parts are sequential, as in every
    /// dialect's stream (an Anthropic client expects a block to end before the next starts).
    fn open_part(&mut self, part: PartStart, out: &mut Vec<Event>) -> usize {
        self.close(out);
        let i = self.next;
        self.next += 1;
        self.open.push(i);
        out.push(Event::PartStart { index: i, part });
        i
    }

    fn close(&mut self, out: &mut Vec<Event>) {
        for index in self.open.drain(..) {
            out.push(Event::PartStop { index });
        }
    }
}

enum PartKind {
    Text,
    Thinking,
}

/// Writes canonical events as an OpenAI stream.
#[derive(Debug)]
pub struct Encoder {
    id: String,
    model: String,
    created: u64,
    /// The client asked for usage (`stream_options.include_usage`).
    usage: bool,
    start_usage: Option<Usage>,
    /// A part's index -> its tool-call index (in order of appearance).
    tools: Vec<(usize, usize)>,
}

impl Encoder {
    pub fn new(usage: bool) -> Encoder {
        Encoder {
            id: String::new(),
            model: String::new(),
            created: unix_now(),
            usage,
            start_usage: None,
            tools: Vec::new(),
        }
    }

    pub fn event(&mut self, e: &Event, out: &mut BytesMut) {
        match e {
            Event::Start { id, model, usage } => {
                self.id = if id.is_empty() {
                    "chatcmpl-lattice".into()
                } else {
                    id.clone()
                };
                self.model = model.clone();
                self.start_usage = *usage;
                self.chunk(json!({"role": "assistant", "content": ""}), None, out);
            }
            Event::PartStart { index, part } => match part {
                PartStart::ToolCall { id, name } => {
                    let n = self.tools.len();
                    self.tools.push((*index, n));
                    let call = json!({"index": n, "id": id, "type": "function",
                                      "function": {"name": name, "arguments": ""}});
                    self.chunk(json!({"tool_calls": [call]}), None, out);
                }
                PartStart::RedactedThinking { data } => {
                    let b = json!([{"type": "redacted_thinking", "data": data}]);
                    self.chunk(json!({"thinking_blocks": b}), None, out);
                }
                PartStart::Text | PartStart::Thinking => {}
            },
            Event::Delta { index, delta } => {
                let d = match delta {
                    Delta::Text(t) => json!({"content": t}),
                    Delta::Thinking(t) => json!({"reasoning_content": t}),
                    Delta::Signature(s) => {
                        json!({"thinking_blocks": [{"type": "thinking", "thinking": "", "signature": s}]})
                    }
                    Delta::Arguments(a) => {
                        let n = self.tools.iter().find(|(i, _)| i == index).map_or(0, |(_, n)| *n);
                        json!({"tool_calls": [{"index": n, "function": {"arguments": a}}]})
                    }
                };
                self.chunk(d, None, out);
            }
            Event::PartStop { .. } => {}
            Event::Finish { finish, usage, .. } => {
                let reason = finish.map(finish_name).unwrap_or("stop");
                self.chunk(json!({}), Some(reason), out);
                if self.usage {
                    let u = merge(self.start_usage, *usage);
                    let v = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                   "model": self.model, "choices": [], "usage": usage_json(&u)});
                    crate::sse::write(out, None, &v.to_string());
                }
            }
            Event::Stop => crate::sse::write(out, None, "[DONE]"),
        }
    }

    /// An error event: what OpenAI's SDKs raise on (`{"error":{...}}` in a chunk).
    pub fn error(&mut self, e: &crate::canonical::ApiError, out: &mut BytesMut) {
        let v = json!({"error": {"message": e.message, "type": super::type_name(e.kind), "param": null,
                                 "code": null}});
        crate::sse::write(out, None, &v.to_string());
    }

    fn chunk(&self, delta: Value, finish: Option<&str>, out: &mut BytesMut) {
        let v = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                       "model": self.model,
                       "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        crate::sse::write(out, None, &v.to_string());
    }
}

/// The final usage: the start's input counts, updated by the end's where it reports them.
pub fn merge(start: Option<Usage>, end: Option<Usage>) -> Usage {
    match (start, end) {
        (Some(s), Some(e)) => Usage {
            input: if e.input > 0 { e.input } else { s.input },
            cached_input: if e.cached_input > 0 {
                e.cached_input
            } else {
                s.cached_input
            },
            cache_write: if e.cache_write > 0 {
                e.cache_write
            } else {
                s.cache_write
            },
            output: e.output,
            reasoning: e.reasoning,
        },
        (s, e) => e.or(s).unwrap_or_default(),
    }
}
