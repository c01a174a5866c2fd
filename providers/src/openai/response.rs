//! OpenAI Chat Completions answers (`chat.completion`) <-> the canonical response, and the
//! usage and finish-reason vocabularies both directions share with the stream codec.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::canonical::{Finish, Part, Response, Usage};
use crate::codec::{DecodeError, bad, plain_text, unix_now};

/// Decodes a `chat.completion` (its first choice: translated calls ask for one), read into
/// structs that borrow from `body` (no JSON tree).
pub fn decode(body: &[u8]) -> Result<Response, DecodeError> {
    let v: WireCompletionIn<'_> =
        serde_json::from_slice(body).map_err(|e| bad(format!("not a chat.completion: {e}")))?;
    let choice = v
        .choices
        .into_iter()
        .next()
        .ok_or_else(|| bad("a chat.completion without choices"))?;
    let msg = choice.message.unwrap_or_default();
    let owned = |t: Option<Cow<'_, str>>| t.map(Cow::into_owned).unwrap_or_default();
    let mut parts = Vec::new();
    if let Some(t) = msg.reasoning_content.filter(|t| !t.is_empty()) {
        parts.push(Part::Thinking {
            text: t.into_owned(),
            signature: None,
        });
    }
    // Compatible servers send `content` as a string, null, or (some) an array of parts: only a
    // string is text here, as before.
    if let Some(text) = msg
        .content
        .map(|r| plain_text(r, "content"))
        .transpose()?
        .flatten()
        && !text.is_empty()
    {
        parts.push(Part::Text(crate::canonical::Text { text, cache: None }));
    }
    let refused = msg.refusal.is_some();
    if let Some(r) = msg.refusal {
        parts.push(Part::Text(crate::canonical::Text {
            text: r.into_owned(),
            cache: None,
        }));
    }
    for c in msg.tool_calls.into_iter().flatten() {
        let f = c.function.unwrap_or_default();
        parts.push(Part::ToolCall {
            id: owned(c.id),
            name: owned(f.name),
            // The arguments as the model wrote them: JSON text in a string, or (from some
            // compatible servers) the object itself.
            arguments: match f.arguments {
                None => "{}".into(),
                Some(raw) => plain_text(raw, "arguments")?.unwrap_or_else(|| raw.get().to_owned()),
            },
        });
    }
    Ok(Response {
        id: owned(v.id),
        model: owned(v.model),
        parts,
        finish: match choice.finish_reason.as_deref() {
            _ if refused => Some(Finish::ContentFilter),
            Some(f) => Some(finish_of(f)),
            None => None,
        },
        stop_sequence: None,
        usage: v.usage.map(Into::into),
        created: v.created,
    })
}

#[derive(Deserialize)]
struct WireCompletionIn<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    created: Option<u64>,
    #[serde(borrow, default)]
    choices: Vec<WireChoiceIn<'a>>,
    usage: Option<WireUsageIn>,
}

#[derive(Deserialize)]
struct WireChoiceIn<'a> {
    #[serde(borrow)]
    message: Option<WireMessageIn<'a>>,
    #[serde(borrow)]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
struct WireMessageIn<'a> {
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    tool_calls: Option<Vec<WireCallIn<'a>>>,
}

#[derive(Deserialize)]
struct WireCallIn<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    function: Option<WireFunctionIn<'a>>,
}

#[derive(Deserialize, Default)]
struct WireFunctionIn<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    arguments: Option<&'a RawValue>,
}

/// OpenAI's usage object as an answer carries it.
#[derive(Deserialize)]
struct WireUsageIn {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    prompt_tokens_details: Option<CachedIn>,
    completion_tokens_details: Option<ReasoningIn>,
    cache_creation_input_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct CachedIn {
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct ReasoningIn {
    reasoning_tokens: Option<u64>,
}

impl From<WireUsageIn> for Usage {
    fn from(u: WireUsageIn) -> Usage {
        let prompt = u.prompt_tokens.unwrap_or(0);
        let cached = u.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0);
        let cache_write = u.cache_creation_input_tokens.unwrap_or(0);
        Usage {
            input: prompt.saturating_sub(cached).saturating_sub(cache_write),
            output: u.completion_tokens.unwrap_or(0),
            cached_input: cached,
            cache_write,
            reasoning: u
                .completion_tokens_details
                .and_then(|d| d.reasoning_tokens)
                .unwrap_or(0),
        }
    }
}

pub fn finish_of(reason: &str) -> Finish {
    match reason {
        "length" => Finish::MaxTokens,
        "tool_calls" | "function_call" => Finish::ToolUse,
        "content_filter" => Finish::ContentFilter,
        _ => Finish::EndTurn,
    }
}

pub fn finish_name(f: Finish) -> &'static str {
    match f {
        Finish::EndTurn | Finish::StopSequence | Finish::PauseTurn => "stop",
        Finish::MaxTokens | Finish::ContextWindow => "length",
        Finish::ToolUse => "tool_calls",
        Finish::ContentFilter => "content_filter",
    }
}

/// OpenAI usage: `prompt_tokens` includes cached tokens, `completion_tokens` reasoning ones.
pub fn usage_of(u: &Value) -> Usage {
    let n = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
    let prompt = n(u.get("prompt_tokens"));
    let cached = n(u.pointer("/prompt_tokens_details/cached_tokens"));
    let cache_write = n(u.get("cache_creation_input_tokens"));
    Usage {
        input: prompt.saturating_sub(cached).saturating_sub(cache_write),
        output: n(u.get("completion_tokens")),
        cached_input: cached,
        cache_write,
        reasoning: n(u.pointer("/completion_tokens_details/reasoning_tokens")),
    }
}

/// OpenAI's usage object, written from the canonical counts.
#[derive(Serialize)]
pub(super) struct WireUsage {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
    prompt_tokens_details: CachedTokens,
    completion_tokens_details: ReasoningTokens,
    /// What caching gateways add for Anthropic's cache writes (OpenAI has no such field).
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_creation_input_tokens: Option<u64>,
}

#[derive(Serialize)]
struct CachedTokens {
    cached_tokens: u64,
}

#[derive(Serialize)]
struct ReasoningTokens {
    reasoning_tokens: u64,
}

impl From<&Usage> for WireUsage {
    fn from(u: &Usage) -> WireUsage {
        let prompt = u.prompt();
        WireUsage {
            prompt_tokens: prompt,
            completion_tokens: u.output,
            total_tokens: prompt.saturating_add(u.output),
            prompt_tokens_details: CachedTokens {
                cached_tokens: u.cached_input,
            },
            completion_tokens_details: ReasoningTokens {
                reasoning_tokens: u.reasoning,
            },
            cache_creation_input_tokens: (u.cache_write > 0).then_some(u.cache_write),
        }
    }
}

pub fn usage_json(u: &Usage) -> Value {
    serde_json::to_value(WireUsage::from(u)).unwrap_or_default()
}

/// Encodes a canonical response as a `chat.completion`. Reasoning goes in `reasoning_content`
/// and, with its signatures, in `thinking_blocks`, which clients send back on the next turn.
/// Written from typed structs straight to bytes (no JSON tree).
pub fn encode(r: &Response) -> Vec<u8> {
    let mut text = String::new();
    let mut calls = Vec::new();
    let mut reasoning = String::new();
    let mut blocks = Vec::new();
    for p in &r.parts {
        match p {
            Part::Text(t) => text.push_str(&t.text),
            Part::ToolCall { id, name, arguments } => calls.push(WireCall {
                id,
                ty: "function",
                function: WireFunction { name, arguments },
            }),
            Part::Thinking { text: t, signature } => {
                reasoning.push_str(t);
                blocks.push(WireThinking::Thinking {
                    thinking: t,
                    signature: signature.as_deref(),
                });
            }
            Part::RedactedThinking { data } => blocks.push(WireThinking::Redacted { data }),
            _ => {}
        }
    }
    let has_blocks = !blocks.is_empty();
    let out = WireCompletion {
        id: &r.id,
        object: "chat.completion",
        created: r.created.unwrap_or_else(unix_now),
        model: &r.model,
        choices: [WireChoice {
            index: 0,
            message: WireMessage {
                role: "assistant",
                content: (!text.is_empty() || calls.is_empty()).then_some(&text),
                refusal: (),
                tool_calls: calls,
                reasoning_content: has_blocks.then_some(&reasoning),
                thinking_blocks: blocks,
            },
            logprobs: (),
            finish_reason: r.finish.map(finish_name).unwrap_or("stop"),
        }],
        usage: r.usage.as_ref().map(WireUsage::from),
    };
    serde_json::to_vec(&out).unwrap_or_default()
}

#[derive(Serialize)]
struct WireCompletion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: [WireChoice<'a>; 1],
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<WireUsage>,
}

#[derive(Serialize)]
struct WireChoice<'a> {
    index: u32,
    message: WireMessage<'a>,
    logprobs: (),
    finish_reason: &'static str,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: Option<&'a String>,
    refusal: (),
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    thinking_blocks: Vec<WireThinking<'a>>,
}

#[derive(Serialize)]
struct WireCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    ty: &'static str,
    function: WireFunction<'a>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
#[serde(tag = "type")]
enum WireThinking<'a> {
    #[serde(rename = "thinking")]
    Thinking {
        thinking: &'a str,
        signature: Option<&'a str>,
    },
    #[serde(rename = "redacted_thinking")]
    Redacted { data: &'a str },
}
