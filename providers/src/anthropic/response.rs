//! Anthropic Messages answers (`"type":"message"`) <-> the canonical response, and the usage
//! and stop-reason vocabularies both directions share with the stream codec.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::canonical::{Finish, Part, Response, Text, Usage};
use crate::codec::{DecodeError, bad};

/// Decodes a `message`, read into typed structs that borrow from `body` (no JSON tree).
pub fn decode(body: &[u8]) -> Result<Response, DecodeError> {
    let m: WireMessage<'_> =
        serde_json::from_slice(body).map_err(|e| bad(format!("not an Anthropic message: {e}")))?;
    if m.ty.as_deref() != Some("message") {
        return Err(bad("an answer that is not a message"));
    }
    let mut parts = Vec::with_capacity(m.content.len());
    for b in m.content {
        let text = |t: Option<Cow<'_, str>>| t.map(Cow::into_owned).unwrap_or_default();
        parts.push(match b.ty.as_deref() {
            Some("text") => Part::Text(Text {
                text: text(b.text),
                cache: None,
            }),
            Some("tool_use") => Part::ToolCall {
                id: text(b.id),
                name: text(b.name),
                // The model's JSON as compact text, whatever spacing the upstream used.
                arguments: match b.input {
                    None => "{}".into(),
                    Some(raw) => serde_json::from_str::<Value>(raw.get())
                        .map(|v| v.to_string())
                        .map_err(|e| bad(format!("a tool call's input: {e}")))?,
                },
            },
            Some("thinking") => Part::Thinking {
                text: text(b.thinking),
                signature: b.signature.map(Cow::into_owned),
            },
            Some("redacted_thinking") => Part::RedactedThinking { data: text(b.data) },
            other => {
                return Err(bad(format!(
                    "a content block of type `{}` cannot be translated",
                    other.unwrap_or("?")
                )));
            }
        });
    }
    Ok(Response {
        id: m.id.map(Cow::into_owned).unwrap_or_default(),
        model: m.model.map(Cow::into_owned).unwrap_or_default(),
        parts,
        finish: m.stop_reason.as_deref().map(finish_of),
        stop_sequence: m.stop_sequence.map(Cow::into_owned),
        usage: m.usage.map(Into::into),
        created: None,
    })
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(rename = "type", borrow)]
    ty: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Vec<WireBlock<'a>>,
    #[serde(borrow)]
    stop_reason: Option<Cow<'a, str>>,
    #[serde(borrow)]
    stop_sequence: Option<Cow<'a, str>>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireBlock<'a> {
    #[serde(rename = "type", borrow)]
    ty: Option<Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
    #[serde(borrow)]
    thinking: Option<Cow<'a, str>>,
    #[serde(borrow)]
    signature: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<Cow<'a, str>>,
}

/// Anthropic's usage object, in answers and in stream events.
#[derive(Deserialize)]
pub(super) struct WireUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Usage {
        Usage {
            input: u.input_tokens.unwrap_or(0),
            output: u.output_tokens.unwrap_or(0),
            cached_input: u.cache_read_input_tokens.unwrap_or(0),
            cache_write: u.cache_creation_input_tokens.unwrap_or(0),
            reasoning: 0,
        }
    }
}

pub fn finish_of(reason: &str) -> Finish {
    match reason {
        "max_tokens" => Finish::MaxTokens,
        "stop_sequence" => Finish::StopSequence,
        "tool_use" => Finish::ToolUse,
        "refusal" => Finish::ContentFilter,
        "pause_turn" => Finish::PauseTurn,
        "model_context_window_exceeded" => Finish::ContextWindow,
        _ => Finish::EndTurn,
    }
}

pub fn finish_name(f: Finish) -> &'static str {
    match f {
        Finish::EndTurn => "end_turn",
        Finish::MaxTokens => "max_tokens",
        Finish::StopSequence => "stop_sequence",
        Finish::ToolUse => "tool_use",
        Finish::ContentFilter => "refusal",
        Finish::PauseTurn => "pause_turn",
        Finish::ContextWindow => "model_context_window_exceeded",
    }
}

pub fn usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.input,
        "output_tokens": u.output,
        "cache_creation_input_tokens": u.cache_write,
        "cache_read_input_tokens": u.cached_input,
    })
}

/// Encodes a canonical response as a `message`, written from typed structs (no JSON tree).
/// A tool call's arguments are an object here: `translate::response` refuses others.
pub fn encode(r: &Response) -> Vec<u8> {
    let mut content = Vec::with_capacity(r.parts.len());
    for p in &r.parts {
        content.push(match p {
            Part::Text(t) => WireBlockOut::Text { text: &t.text },
            Part::ToolCall { id, name, arguments } => WireBlockOut::ToolUse {
                id,
                name,
                input: serde_json::from_str(arguments).unwrap_or_else(|_| Value::Object(Default::default())),
            },
            Part::Thinking { text, signature } => WireBlockOut::Thinking {
                thinking: text,
                signature: signature.as_deref().unwrap_or(""),
            },
            Part::RedactedThinking { data } => WireBlockOut::RedactedThinking { data },
            _ => continue,
        });
    }
    let u = r.usage.unwrap_or_default();
    let out = WireMessageOut {
        id: &r.id,
        ty: "message",
        role: "assistant",
        model: &r.model,
        content,
        stop_reason: r.finish.map(finish_name).unwrap_or("end_turn"),
        stop_sequence: r.stop_sequence.as_deref(),
        usage: WireUsageOut {
            input_tokens: u.input,
            output_tokens: u.output,
            cache_creation_input_tokens: u.cache_write,
            cache_read_input_tokens: u.cached_input,
        },
    };
    serde_json::to_vec(&out).unwrap_or_default()
}

#[derive(Serialize)]
struct WireMessageOut<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    ty: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<WireBlockOut<'a>>,
    stop_reason: &'static str,
    stop_sequence: Option<&'a str>,
    usage: WireUsageOut,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlockOut<'a> {
    Text {
        text: &'a str,
    },
    ToolUse {
        id: &'a str,
        name: &'a str,
        input: Value,
    },
    Thinking {
        thinking: &'a str,
        signature: &'a str,
    },
    RedactedThinking {
        data: &'a str,
    },
}

#[derive(Serialize)]
struct WireUsageOut {
    input_tokens: u64,
    output_tokens: u64,
    cache_creation_input_tokens: u64,
    cache_read_input_tokens: u64,
}
