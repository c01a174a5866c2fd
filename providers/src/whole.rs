//! Streams whose chunks carry whole parts (Gemini's `GenerateContentResponse` chunks, Ollama's
//! NDJSON lines): text and thinking arrive as pieces, a tool call arrives whole. The
//! [`Assembler`] turns such chunks into canonical events: consecutive pieces of one kind are one
//! part, a tool call is a part of its own with its arguments as one delta.

use crate::canonical::{Delta, Event, Finish, PartStart, Usage};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Thinking,
}

#[derive(Debug, Default)]
pub struct Assembler {
    started: bool,
    next: usize,
    open: Option<(usize, Kind)>,
    calls: usize,
    finished: bool,
}

impl Assembler {
    pub fn started(&self) -> bool {
        self.started
    }

    pub fn finished(&self) -> bool {
        self.finished
    }

    /// How many tool calls the answer has made so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// The stream's first event (once).
    pub fn start(&mut self, id: String, model: String, usage: Option<Usage>, out: &mut Vec<Event>) {
        if !self.started {
            self.started = true;
            out.push(Event::Start { id, model, usage });
        }
    }

    fn part(&mut self, kind: Kind, out: &mut Vec<Event>) -> usize {
        if let Some((i, k)) = self.open
            && k == kind
        {
            return i;
        }
        self.close(out);
        let i = self.next;
        self.next += 1;
        let part = match kind {
            Kind::Text => PartStart::Text,
            Kind::Thinking => PartStart::Thinking,
        };
        out.push(Event::PartStart { index: i, part });
        self.open = Some((i, kind));
        i
    }

    fn close(&mut self, out: &mut Vec<Event>) {
        if let Some((index, _)) = self.open.take() {
            out.push(Event::PartStop { index });
        }
    }

    pub fn text(&mut self, text: String, out: &mut Vec<Event>) {
        if !text.is_empty() {
            let index = self.part(Kind::Text, out);
            out.push(Event::Delta {
                index,
                delta: Delta::Text(text),
            });
        }
    }

    pub fn thinking(&mut self, text: String, out: &mut Vec<Event>) {
        if !text.is_empty() {
            let index = self.part(Kind::Thinking, out);
            out.push(Event::Delta {
                index,
                delta: Delta::Thinking(text),
            });
        }
    }

    /// A signature for the thinking just read (a thinking part is opened if none is).
    pub fn signature(&mut self, signature: String, out: &mut Vec<Event>) {
        if !signature.is_empty() {
            let index = self.part(Kind::Thinking, out);
            out.push(Event::Delta {
                index,
                delta: Delta::Signature(signature),
            });
        }
    }

    /// A whole tool call: its own part, its arguments (JSON text) in one delta.
    pub fn tool_call(&mut self, id: String, name: String, arguments: String, out: &mut Vec<Event>) {
        self.close(out);
        let index = self.next;
        self.next += 1;
        self.calls += 1;
        out.push(Event::PartStart {
            index,
            part: PartStart::ToolCall { id, name },
        });
        out.push(Event::Delta {
            index,
            delta: Delta::Arguments(arguments),
        });
        out.push(Event::PartStop { index });
    }

    /// The answer has ended. These dialects say "stop" when the model called tools; canonically
    /// that is a tool-use finish.
    pub fn finish(&mut self, finish: Option<Finish>, usage: Option<Usage>, out: &mut Vec<Event>) {
        if self.finished {
            return;
        }
        self.close(out);
        self.finished = true;
        let finish = match finish {
            Some(Finish::EndTurn) | None if self.calls > 0 => Some(Finish::ToolUse),
            f => f,
        };
        out.push(Event::Finish {
            finish,
            stop_sequence: None,
            usage,
        });
        out.push(Event::Stop);
    }
}

/// The encoder's side: a tool call's arguments, gathered from its deltas until its part closes.
#[derive(Debug, Default)]
pub struct PendingCalls {
    calls: Vec<(usize, String, String, String)>,
}

impl PendingCalls {
    pub fn open(&mut self, index: usize, id: &str, name: &str) {
        self.calls.push((index, id.into(), name.into(), String::new()));
    }

    /// Appends to the call of part `index`; false when `index` is not a tool call.
    pub fn append(&mut self, index: usize, piece: &str) -> bool {
        match self.calls.iter_mut().find(|c| c.0 == index) {
            Some(c) => {
                c.3.push_str(piece);
                true
            }
            None => false,
        }
    }

    /// The call of part `index`, when it is one: (id, name, arguments).
    pub fn close(&mut self, index: usize) -> Option<(String, String, String)> {
        let at = self.calls.iter().position(|c| c.0 == index)?;
        let (_, id, name, args) = self.calls.swap_remove(at);
        Some((id, name, args))
    }
}

/// Why a tool call cannot be written for a client whose dialect takes arguments as an object.
pub fn not_an_object(name: &str, client: &str) -> String {
    format!(
        "the arguments the model wrote for tool `{name}` are not a JSON object, the only form {client} takes them in"
    )
}

/// A tool call's arguments as a JSON object (the dialects that take calls whole want an
/// object, not text); arguments that are not one become `{}` only when empty.
pub fn arguments_object(arguments: &str) -> Option<serde_json::Value> {
    match serde_json::from_str(arguments) {
        Ok(v @ serde_json::Value::Object(_)) => Some(v),
        _ if arguments.trim().is_empty() => Some(serde_json::json!({})),
        _ => None,
    }
}
