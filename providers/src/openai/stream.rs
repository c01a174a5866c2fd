//! OpenAI Chat Completions streams (`chat.completion.chunk` events, ended by `[DONE]`) <->
//! canonical stream events, one event at a time.

use bytes::BytesMut;
use serde::Deserialize;
use serde_json::value::RawValue;
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
        let chunk: Chunk<'_> = serde_json::from_str(data).map_err(|e| {
            StreamError::Malformed(format!("a chunk not in the shape of chat.completion.chunk: {e}"))
        })?;
        if let Some(e) = chunk.error {
            let e: Value = serde_json::from_str(e.get()).unwrap_or_default();
            return Err(StreamError::Upstream(super::error_of(0, &e)));
        }
        if !self.started {
            self.started = true;
            let text = |r: Option<&RawValue>| {
                r.and_then(|r| serde_json::from_str::<String>(r.get()).ok())
                    .unwrap_or_default()
            };
            out.push(Event::Start {
                id: text(chunk.id),
                model: text(chunk.model),
                usage: None,
            });
        }
        for c in chunk.choices.into_iter().flatten() {
            if c.index != 0 {
                return Err(StreamError::Malformed("a second choice (n > 1)".into()));
            }
            if self.finish.is_some() {
                return Err(StreamError::Malformed("content after the finish reason".into()));
            }
            let d = c.delta.unwrap_or_default();
            if let Some(t) = d.reasoning_content.filter(|t| !t.is_empty()) {
                let i = self.part(PartKind::Thinking, out);
                out.push(Event::Delta {
                    index: i,
                    delta: Delta::Thinking(t),
                });
            }
            for t in [d.content, d.refusal]
                .into_iter()
                .flatten()
                .filter(|t| !t.is_empty())
            {
                let i = self.part(PartKind::Text, out);
                out.push(Event::Delta {
                    index: i,
                    delta: Delta::Text(t),
                });
            }
            for tc in d.tool_calls.into_iter().flatten() {
                let oi = tc.index;
                let f = tc.function.unwrap_or_default();
                let index = match self.tools.iter().find(|(o, _)| *o == oi) {
                    Some((_, i)) if self.open.contains(i) => *i,
                    Some(_) => {
                        return Err(StreamError::Malformed(
                            "arguments for a tool call that another part already followed".into(),
                        ));
                    }
                    None => {
                        let id = tc.id.filter(|i| !i.is_empty());
                        let name = f.name.filter(|n| !n.is_empty());
                        let (Some(id), Some(name)) = (id, name) else {
                            return Err(StreamError::Malformed(
                                "a tool call without its id and name".into(),
                            ));
                        };
                        let i = self.open_part(PartStart::ToolCall { id, name }, out);
                        self.tools.push((oi, i));
                        i
                    }
                };
                if let Some(a) = f.arguments.filter(|a| !a.is_empty()) {
                    out.push(Event::Delta {
                        index,
                        delta: Delta::Arguments(a),
                    });
                }
            }
            if let Some(f) = c.finish_reason {
                self.finish = Some(finish_of(f));
                self.close(out);
            }
        }
        if let Some(u) = chunk.usage {
            let u: Value = serde_json::from_str(u.get()).unwrap_or_default();
            self.usage = Some(usage_of(&u));
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

/// A `chat.completion.chunk`, read without a JSON tree; ids and usage are kept raw until needed.
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    model: Option<&'a RawValue>,
    #[serde(borrow, default)]
    choices: Option<Vec<Choice<'a>>>,
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default)]
    index: u64,
    #[serde(default)]
    delta: Option<ChoiceDelta>,
    #[serde(borrow, default)]
    finish_reason: Option<&'a str>,
}

#[derive(Deserialize, Default)]
struct ChoiceDelta {
    content: Option<String>,
    reasoning_content: Option<String>,
    refusal: Option<String>,
    tool_calls: Option<Vec<ToolDelta>>,
}

#[derive(Deserialize)]
struct ToolDelta {
    #[serde(default)]
    index: u64,
    id: Option<String>,
    function: Option<FnDelta>,
}

#[derive(Deserialize, Default)]
struct FnDelta {
    name: Option<String>,
    arguments: Option<String>,
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
    /// `data: {"id":..,"object":"chat.completion.chunk","created":..,"model":..,"choices":[{"index":0,"delta":`
    head: Vec<u8>,
    scratch: Vec<u8>,
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
            head: Vec::new(),
            scratch: Vec::new(),
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
                let h = &mut self.head;
                h.clear();
                h.extend_from_slice(b"data: {\"id\":");
                crate::codec::push_json_str(h, &self.id);
                h.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
                crate::codec::push_u64(h, self.created);
                h.extend_from_slice(b",\"model\":");
                crate::codec::push_json_str(h, &self.model);
                h.extend_from_slice(b",\"choices\":[{\"index\":0,\"delta\":");
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
                // The hot path: written directly, no JSON tree.
                let mut d = std::mem::take(&mut self.scratch);
                d.clear();
                match delta {
                    Delta::Text(t) => {
                        d.extend_from_slice(b"{\"content\":");
                        crate::codec::push_json_str(&mut d, t);
                        d.push(b'}');
                    }
                    Delta::Thinking(t) => {
                        d.extend_from_slice(b"{\"reasoning_content\":");
                        crate::codec::push_json_str(&mut d, t);
                        d.push(b'}');
                    }
                    Delta::Signature(s) => {
                        d.extend_from_slice(
                            b"{\"thinking_blocks\":[{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":",
                        );
                        crate::codec::push_json_str(&mut d, s);
                        d.extend_from_slice(b"}]}");
                    }
                    Delta::Arguments(a) => {
                        let n = self.tools.iter().find(|(i, _)| i == index).map_or(0, |(_, n)| *n);
                        d.extend_from_slice(b"{\"tool_calls\":[{\"index\":");
                        crate::codec::push_u64(&mut d, n as u64);
                        d.extend_from_slice(b",\"function\":{\"arguments\":");
                        crate::codec::push_json_str(&mut d, a);
                        d.extend_from_slice(b"}}]}");
                    }
                }
                self.raw_chunk(&d, None, out);
                self.scratch = d;
            }
            Event::PartStop { .. } => {}
            Event::Finish { finish, usage, .. } => {
                let reason = finish.map(finish_name).unwrap_or("stop");
                self.chunk(json!({}), Some(reason), out);
                if self.usage {
                    let u = Usage::merge(self.start_usage, *usage);
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
        self.raw_chunk(delta.to_string().as_bytes(), finish, out);
    }

    /// One chunk whose delta is the JSON `delta`.
    fn raw_chunk(&self, delta: &[u8], finish: Option<&str>, out: &mut BytesMut) {
        out.extend_from_slice(&self.head);
        out.extend_from_slice(delta);
        out.extend_from_slice(b",\"logprobs\":null,\"finish_reason\":");
        match finish {
            Some(f) => {
                out.extend_from_slice(b"\"");
                out.extend_from_slice(f.as_bytes());
                out.extend_from_slice(b"\"");
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b"}]}\n\n");
    }
}
