//! The built-in deterministic `mock` provider, so model `demo` answers with no key and no network.
//!
//! Owns: the mock's replies on every [`Surface`] (OpenAI chat completions and embeddings,
//! Anthropic messages and count_tokens, streams included), shaped exactly as the official SDKs
//! parse them, and the [`MockBody`] that sends them one SSE event per data frame so the gateway's
//! streaming path runs for real. Must not touch: sockets, routing, policy or configuration; the
//! gateway decides when the mock answers and sends the reply on.
//!
//! Every reply is a pure function of the request body, except `created` (the wall clock):
//! - **A token is a whitespace-separated word.** Input tokens are the words of all text in the
//!   request (Anthropic `system` and the text of every message), at least 1; output tokens are
//!   the words of the reply; an embedding input given as token ids counts one token per id.
//! - The reply is `Hello from the Lattice mock provider. You said: ` and the first 16 words of
//!   the last user message (or `(nothing)`), cut to `max_tokens` words when that is fewer, in
//!   which case the finish reason is `length` (OpenAI) / `max_tokens` (Anthropic).
//! - Ids carry a hash of the request body; each embedding is a unit vector seeded by a hash of
//!   its input.
//! - **Tool calls:** when the request offers tools, each word `call:NAME` of the last user
//!   message makes the reply call tool `NAME` with arguments `{}`, after its text (whether or
//!   not `NAME` was offered: a model can call what it was not given, and the gateway must cope).
//!   The finish reason is then `tool_calls` / `tool_use`; calls add no tokens.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::time::{Instant, Sleep};

use crate::Dialect;
use crate::dialect::error_body;
use crate::view::{CallView, Surface};

const GREETING: &str = "Hello from the Lattice mock provider. You said:";
const ECHO_WORDS: usize = 16;
const DEFAULT_DIMENSIONS: u64 = 8;
const MAX_DIMENSIONS: u64 = 4096;
const JSON: &str = "application/json";
const EVENT_STREAM: &str = "text/event-stream";
const NDJSON: &str = "application/x-ndjson";

/// How the mock behaves beyond its content.
#[derive(Clone, Debug, Default)]
pub struct MockOptions {
    /// Pause before each streamed event after the first. Needs a Tokio runtime with time
    /// enabled when the body is polled; with no runtime at all the events are not delayed.
    pub chunk_delay: Option<Duration>,
}

/// A complete mock response: status, `Content-Type` and body.
#[derive(Debug)]
pub struct MockReply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: MockBody,
}

/// Answers one call. `view` was parsed from `body` by [`crate::view::parse`]; `body` is the raw
/// request JSON. Never panics: a body the mock cannot read gets a 400 in the caller's dialect.
pub fn respond(view: &CallView<'_>, body: &[u8], opts: &MockOptions) -> MockReply {
    let reply = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(req)) => match view.surface {
            Surface::ChatCompletions => {
                read_prompt(&req, Dialect::OpenAi).map(|p| chat(view, body, &p, opts))
            }
            Surface::Messages => {
                read_prompt(&req, Dialect::Anthropic).map(|p| messages(view, body, &p, opts))
            }
            Surface::CountTokens => read_prompt(&req, Dialect::Anthropic)
                .map(|p| json_reply(&json!({"input_tokens": p.input_tokens}))),
            Surface::Embeddings => embeddings(view, &req),
            Surface::GenerateContent | Surface::StreamGenerateContent | Surface::OllamaChat => {
                via_chat(view, body, opts)
            }
            Surface::GeminiCountTokens => gemini_count(view, &req),
        },
        _ => Err("the request body must be a JSON object".to_owned()),
    };
    reply.unwrap_or_else(|message| {
        let status = StatusCode::BAD_REQUEST;
        let body = error_body(view.surface.dialect(), status, "invalid_request", &message);
        MockReply {
            status,
            content_type: JSON,
            body: MockBody::full(body),
        }
    })
}

/// Gemini and Ollama: the chat answer, reached through the translator as an upstream of
/// another dialect would be, so these surfaces answer by the same rules (words, `call:NAME`,
/// `max_tokens`) in their own shapes. Nothing is refused: the mock reads what it can.
fn via_chat(view: &CallView<'_>, body: &[u8], opts: &MockOptions) -> Result<MockReply, String> {
    use crate::translate::{Rules, TranslateError};
    let to = view.surface.dialect();
    let rules = Rules {
        unsupported: crate::canonical::Disposition::Drop,
        fields: Vec::new(),
    };
    let stream = view.stream || view.surface.streams();
    let t = crate::translate::request(to, Dialect::OpenAi, body, &view.model, stream, &rules).map_err(
        |e| match e {
            TranslateError::Invalid(e) => e.0,
            TranslateError::Refused(l) => {
                format!("cannot read {}", l.first().map_or("", |l| l.field.as_str()))
            }
        },
    )?;
    let chat_view = crate::view::parse(Surface::ChatCompletions, &t.body).map_err(|e| e.to_string())?;
    let chat_view = CallView {
        include_usage: true,
        ..chat_view
    };
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(&t.body) else {
        return Err("the request could not be read".into());
    };
    let prompt = read_prompt(&req, Dialect::OpenAi)?;
    let reply = chat(&chat_view, &t.body, &prompt, opts);
    Ok(in_dialect(reply, to))
}

/// Gemini `countTokens`: the prompt's words (of `contents`, or of a whole
/// `generateContentRequest`), as `totalTokens`.
fn gemini_count(view: &CallView<'_>, req: &Map<String, Value>) -> Result<MockReply, String> {
    use crate::translate::Rules;
    let inner = req
        .get("generateContentRequest")
        .or_else(|| req.get("generate_content_request"))
        .cloned()
        .unwrap_or_else(|| Value::Object(req.clone()));
    let rules = Rules {
        unsupported: crate::canonical::Disposition::Drop,
        fields: Vec::new(),
    };
    let body = serde_json::to_vec(&inner).map_err(|e| e.to_string())?;
    let t = crate::translate::request(
        Dialect::Gemini,
        Dialect::OpenAi,
        &body,
        &view.model,
        false,
        &rules,
    )
    .map_err(|_| "the request could not be read".to_string())?;
    let Ok(Value::Object(chat)) = serde_json::from_slice::<Value>(&t.body) else {
        return Err("the request could not be read".into());
    };
    let prompt = read_prompt(&chat, Dialect::OpenAi)?;
    Ok(json_reply(&json!({"totalTokens": prompt.input_tokens})))
}

/// A chat reply re-expressed in `to`: a stream event by event, a JSON answer whole.
fn in_dialect(reply: MockReply, to: Dialect) -> MockReply {
    let MockBody {
        frames,
        streaming,
        delay,
        ..
    } = reply.body;
    if streaming && reply.status.is_success() {
        let mut t = crate::stream::Transcoder::new(Dialect::OpenAi, to, true);
        let mut out: Vec<Bytes> = frames
            .iter()
            .map(|f| t.feed(f))
            .filter(|b| !b.is_empty())
            .collect();
        let last = t.finish();
        if !last.is_empty() {
            out.push(last);
        }
        let content_type = if to == Dialect::Ollama {
            NDJSON
        } else {
            EVENT_STREAM
        };
        return MockReply {
            status: reply.status,
            content_type,
            body: MockBody::new(out, true, delay),
        };
    }
    let whole: Vec<u8> = frames.iter().flat_map(|f| f.iter().copied()).collect();
    let (status, body) = if reply.status.is_success() {
        match crate::translate::response(Dialect::OpenAi, to, &whole) {
            Ok(b) => (reply.status, b),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                error_body(to, StatusCode::INTERNAL_SERVER_ERROR, "mock_error", &e.0).to_vec(),
            ),
        }
    } else {
        let (s, b) = crate::translate::error(Dialect::OpenAi, to, reply.status.as_u16(), &whole);
        (StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_REQUEST), b)
    };
    MockReply {
        status,
        content_type: JSON,
        body: MockBody::full(Bytes::from(body)),
    }
}

/// What the mock reads of a conversation.
struct Prompt {
    input_tokens: u64,
    last_user: Option<String>,
    /// Tools to call: `call:NAME` words of the last user message, when tools are offered.
    calls: Vec<String>,
}

fn read_prompt(req: &Map<String, Value>, dialect: Dialect) -> Result<Prompt, String> {
    let mut words = 0;
    if dialect == Dialect::Anthropic
        && let Some(system) = req.get("system")
    {
        let text = content_text(system).ok_or("\"system\" must be a string or an array of text blocks")?;
        words += count_words(&text);
    }
    let Some(Value::Array(list)) = req.get("messages") else {
        return Err("\"messages\" must be an array of messages".to_owned());
    };
    let mut last_user = None;
    for (i, message) in list.iter().enumerate() {
        let Value::Object(message) = message else {
            return Err(format!("messages[{i}] must be an object"));
        };
        let text = content_text(message.get("content").unwrap_or(&Value::Null))
            .ok_or_else(|| format!("messages[{i}].content must be a string or an array of content parts"))?;
        words += count_words(&text);
        if message.get("role").and_then(Value::as_str) == Some("user") {
            last_user = Some(text);
        }
    }
    let offered = req
        .get("tools")
        .and_then(Value::as_array)
        .is_some_and(|t| !t.is_empty());
    let calls = match (&last_user, offered) {
        (Some(text), true) => text
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("call:"))
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    };
    Ok(Prompt {
        input_tokens: words.max(1),
        calls,
        last_user,
    })
}

/// The text of a `content` (or `system`) value: a string, or the `text` of its `"type":"text"`
/// parts; other parts (images, tool calls, tool results) carry none. `None` when malformed.
fn content_text(content: &Value) -> Option<String> {
    match content {
        Value::Null => Some(String::new()),
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for part in parts {
                let part = part.as_object()?;
                if part.get("type").and_then(Value::as_str) == Some("text") {
                    out.push_str(part.get("text")?.as_str()?);
                    out.push('\n');
                }
            }
            Some(out)
        }
        _ => None,
    }
}

fn count_words(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// The reply's words after any `max_tokens` cut.
struct Reply {
    words: Vec<String>,
    truncated: bool,
}

impl Reply {
    fn new(prompt: &Prompt, max_tokens: Option<u64>) -> Self {
        let said: Vec<&str> = prompt
            .last_user
            .as_deref()
            .unwrap_or("")
            .split_whitespace()
            .take(ECHO_WORDS)
            .collect();
        let said = if said.is_empty() {
            "(nothing)".to_owned()
        } else {
            said.join(" ")
        };
        let mut words: Vec<String> = format!("{GREETING} {said}")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let keep = max_tokens.map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
        let truncated = keep < words.len();
        words.truncate(keep);
        Reply { words, truncated }
    }

    fn text(&self) -> String {
        self.words.join(" ")
    }

    fn tokens(&self) -> u64 {
        self.words.len() as u64
    }

    /// Streamed pieces: one per word, later ones with a leading space, so they concatenate to
    /// [`Reply::text`].
    fn deltas(&self) -> impl Iterator<Item = String> + '_ {
        self.words
            .iter()
            .enumerate()
            .map(|(i, w)| if i == 0 { w.clone() } else { format!(" {w}") })
    }
}

fn chat(view: &CallView<'_>, body: &[u8], prompt: &Prompt, opts: &MockOptions) -> MockReply {
    let reply = Reply::new(prompt, view.max_tokens);
    let id = format!("chatcmpl-mock-{:016x}", fnv1a(body.iter().copied()));
    let (created, model) = (unix_now(), view.model.as_ref());
    let calls = &prompt.calls;
    let finish = match (reply.truncated, calls.is_empty()) {
        (true, _) => "length",
        (false, false) => "tool_calls",
        (false, true) => "stop",
    };
    let (input, output) = (prompt.input_tokens, reply.tokens());
    let usage = json!({"prompt_tokens": input, "completion_tokens": output, "total_tokens": input + output});
    let call_id = |i: usize| format!("call_mock_{i}");
    if !view.stream {
        let mut message = json!({"role": "assistant", "content": reply.text(), "refusal": null});
        if !calls.is_empty() {
            message["tool_calls"] = calls
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    json!({"id": call_id(i), "type": "function", "function": {"name": name, "arguments": "{}"}})
                })
                .collect();
        }
        return json_reply(&json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": finish,
            }],
            "usage": usage,
            "system_fingerprint": null,
        }));
    }
    let chunk = |choices: Value, usage: Option<Value>| {
        let mut chunk = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "system_fingerprint": null, "choices": choices,
        });
        if let (Value::Object(fields), Some(usage)) = (&mut chunk, usage) {
            fields.insert("usage".to_owned(), usage);
        }
        sse(None, &chunk)
    };
    // With include_usage, OpenAI marks every content chunk `"usage": null`.
    let delta = |delta: Value, finish: Value| {
        let choice = json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]);
        chunk(choice, view.include_usage.then_some(Value::Null))
    };
    let mut events = vec![delta(json!({"role": "assistant", "content": ""}), Value::Null)];
    events.extend(reply.deltas().map(|d| delta(json!({"content": d}), Value::Null)));
    for (i, name) in calls.iter().enumerate() {
        let start = json!({"index": i, "id": call_id(i), "type": "function", "function": {"name": name, "arguments": ""}});
        events.push(delta(json!({"tool_calls": [start]}), Value::Null));
        let args = json!({"index": i, "function": {"arguments": "{}"}});
        events.push(delta(json!({"tool_calls": [args]}), Value::Null));
    }
    events.push(delta(json!({}), json!(finish)));
    if view.include_usage {
        events.push(chunk(json!([]), Some(usage)));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    sse_reply(events, opts)
}

fn messages(view: &CallView<'_>, body: &[u8], prompt: &Prompt, opts: &MockOptions) -> MockReply {
    let reply = Reply::new(prompt, view.max_tokens);
    let id = format!("msg_mock_{:016x}", fnv1a(body.iter().copied()));
    let calls = &prompt.calls;
    let stop = match (reply.truncated, calls.is_empty()) {
        (true, _) => "max_tokens",
        (false, false) => "tool_use",
        (false, true) => "end_turn",
    };
    let tool_use = |i: usize, name: &str| json!({"type": "tool_use", "id": format!("toolu_mock_{i}"), "name": name, "input": {}});
    let message = |content: Value, stop_reason: Value, output_tokens: u64| {
        json!({
            "id": id, "type": "message", "role": "assistant", "model": view.model.as_ref(),
            "content": content, "stop_reason": stop_reason, "stop_sequence": null,
            "usage": {"input_tokens": prompt.input_tokens, "output_tokens": output_tokens},
        })
    };
    if !view.stream {
        let mut content = vec![json!({"type": "text", "text": reply.text()})];
        content.extend(calls.iter().enumerate().map(|(i, n)| tool_use(i, n)));
        return json_reply(&message(Value::Array(content), json!(stop), reply.tokens()));
    }
    let event = |name: &str, data: Value| sse(Some(name), &data);
    let mut events = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": message(json!([]), Value::Null, 1)}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    events.extend(reply.deltas().map(|text| {
        let delta =
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}});
        event("content_block_delta", delta)
    }));
    events.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    for (i, name) in calls.iter().enumerate() {
        let index = i + 1;
        let start =
            json!({"type": "content_block_start", "index": index, "content_block": tool_use(i, name)});
        events.push(event("content_block_start", start));
        let delta = json!({"type": "content_block_delta", "index": index,
                           "delta": {"type": "input_json_delta", "partial_json": "{}"}});
        events.push(event("content_block_delta", delta));
        events.push(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
    }
    events.push(event(
        "message_delta",
        json!({
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": null},
            "usage": {"output_tokens": reply.tokens()},
        }),
    ));
    events.push(event("message_stop", json!({"type": "message_stop"})));
    sse_reply(events, opts)
}

// Typed structs rather than `json!`, so each f32 is written in its own shortest form.
#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<EmbeddingItem>,
    model: &'a str,
    usage: Value,
}

#[derive(Serialize)]
struct EmbeddingItem {
    object: &'static str,
    index: usize,
    embedding: Embedding,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Embedding {
    Float(Vec<f32>),
    Base64(String),
}

fn embeddings(view: &CallView<'_>, req: &Map<String, Value>) -> Result<MockReply, String> {
    let inputs = embedding_inputs(req.get("input"))?;
    let dimensions = match req.get("dimensions") {
        None | Some(Value::Null) => DEFAULT_DIMENSIONS,
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => n.min(MAX_DIMENSIONS),
            _ => return Err("\"dimensions\" must be a positive integer".to_owned()),
        },
    };
    let base64 = match req.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(v) => match v.as_str() {
            Some("float") => false,
            Some("base64") => true,
            _ => return Err("\"encoding_format\" must be \"float\" or \"base64\"".to_owned()),
        },
    };
    let data = inputs
        .iter()
        .enumerate()
        .map(|(index, &(seed, _))| {
            let vector = unit_vector(seed, dimensions);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                Embedding::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                Embedding::Float(vector)
            };
            EmbeddingItem {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    let tokens = inputs.iter().map(|&(_, tokens)| tokens).sum::<u64>().max(1);
    let usage = json!({"prompt_tokens": tokens, "total_tokens": tokens});
    Ok(json_reply(&EmbeddingList {
        object: "list",
        data,
        model: view.model.as_ref(),
        usage,
    }))
}

/// Each embedding input as (hash seed, token count).
fn embedding_inputs(input: Option<&Value>) -> Result<Vec<(u64, u64)>, String> {
    let shape = || {
        "\"input\" must be a string, an array of strings, an array of token ids or an array of token id arrays"
            .to_owned()
    };
    let text = |s: &str| (fnv1a(s.bytes()), count_words(s));
    let ids = |ids: &[Value]| -> Option<(u64, u64)> {
        let ids = ids.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>()?;
        Some((
            fnv1a(ids.iter().flat_map(|id| id.to_le_bytes())),
            ids.len() as u64,
        ))
    };
    match input {
        Some(Value::String(s)) => Ok(vec![text(s)]),
        Some(Value::Array(items)) if !items.is_empty() => {
            if items.iter().all(Value::is_string) {
                Ok(items.iter().filter_map(Value::as_str).map(text).collect())
            } else if items.iter().all(Value::is_number) {
                ids(items).map(|one| vec![one]).ok_or_else(shape)
            } else {
                items
                    .iter()
                    .map(|item| item.as_array().and_then(|a| ids(a)))
                    .collect::<Option<_>>()
                    .ok_or_else(shape)
            }
        }
        _ => Err(shape()),
    }
}

/// A deterministic unit-length vector: splitmix64 samples in [-1, 1), normalised.
fn unit_vector(seed: u64, dimensions: u64) -> Vec<f32> {
    let mut state = seed;
    let raw: Vec<f64> = (0..dimensions)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt();
    if norm > 0.0 {
        raw.iter().map(|x| (x / norm) as f32).collect()
    } else {
        // Every sample exactly zero: astronomically unlikely, but still answer a unit vector.
        let mut unit = vec![0.0; raw.len()];
        if let Some(first) = unit.first_mut() {
            *first = 1.0;
        }
        unit
    }
}

/// 64-bit FNV-1a: stable across runs and platforms, unlike `std`'s `DefaultHasher`.
fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn to_json(value: &impl Serialize) -> Vec<u8> {
    // Serialising a `Value` or our plain structs into a Vec cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn json_reply(value: &impl Serialize) -> MockReply {
    let body = MockBody::full(Bytes::from(to_json(value)));
    MockReply {
        status: StatusCode::OK,
        content_type: JSON,
        body,
    }
}

/// One SSE event; compact JSON never contains a newline, so `data` is a single line.
fn sse(event: Option<&str>, data: &Value) -> Bytes {
    let mut out = bytes::BytesMut::new();
    crate::sse::write(&mut out, event, &data.to_string());
    out.freeze()
}

fn sse_reply(events: Vec<Bytes>, opts: &MockOptions) -> MockReply {
    let body = MockBody::new(events, true, opts.chunk_delay);
    MockReply {
        status: StatusCode::OK,
        content_type: EVENT_STREAM,
        body,
    }
}

/// The mock's response body: prepared frames, sent one per poll, optionally paced.
#[derive(Debug)]
pub struct MockBody {
    frames: VecDeque<Bytes>,
    remaining: u64,
    streaming: bool,
    delay: Option<Duration>,
    sleep: Option<Pin<Box<Sleep>>>,
    waiting: bool,
    sent_any: bool,
}

impl MockBody {
    fn full(bytes: Bytes) -> Self {
        MockBody::new(vec![bytes], false, None)
    }

    fn new(frames: Vec<Bytes>, streaming: bool, delay: Option<Duration>) -> Self {
        let remaining = frames.iter().map(|f| f.len() as u64).sum();
        let frames = frames.into();
        MockBody {
            frames,
            remaining,
            streaming,
            delay,
            sleep: None,
            waiting: false,
            sent_any: false,
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.frames.is_empty() {
            return Poll::Ready(None);
        }
        // Creating a Sleep outside a Tokio runtime panics; there, send undelayed.
        let runtime = tokio::runtime::Handle::try_current().is_ok();
        if let Some(delay) = this.delay.filter(|_| this.sent_any && runtime) {
            if !this.waiting {
                match (&mut this.sleep, Instant::now().checked_add(delay)) {
                    (Some(sleep), Some(deadline)) => sleep.as_mut().reset(deadline),
                    (slot, _) => *slot = Some(Box::pin(tokio::time::sleep(delay))),
                }
                this.waiting = true;
            }
            if let Some(sleep) = &mut this.sleep
                && sleep.as_mut().poll(cx).is_pending()
            {
                return Poll::Pending;
            }
            this.waiting = false;
        }
        let Some(frame) = this.frames.pop_front() else {
            return Poll::Ready(None);
        };
        this.sent_any = true;
        this.remaining = this.remaining.saturating_sub(frame.len() as u64);
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        // An exact hint on a stream would make hyper send Content-Length instead of chunks.
        if self.streaming {
            let mut hint = SizeHint::new();
            hint.set_lower(self.remaining);
            hint
        } else {
            SizeHint::with_exact(self.remaining)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::task::Waker;

    use http_body_util::BodyExt;

    use super::*;
    use crate::view::parse;

    fn call(surface: Surface, body: &str) -> MockReply {
        call_with(surface, body, &MockOptions::default())
    }

    fn call_with(surface: Surface, body: &str, opts: &MockOptions) -> MockReply {
        respond(
            &parse(surface, body.as_bytes()).expect("valid view"),
            body.as_bytes(),
            opts,
        )
    }

    async fn frames(reply: MockReply) -> Vec<String> {
        let mut body = reply.body;
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().expect("data frame");
            out.push(String::from_utf8(data.to_vec()).unwrap());
        }
        assert!(body.is_end_stream());
        out
    }

    async fn json_of(reply: MockReply) -> Value {
        assert_eq!(reply.content_type, JSON);
        let frames = frames(reply).await;
        assert_eq!(frames.len(), 1, "a JSON reply is one frame");
        serde_json::from_str(&frames[0]).unwrap()
    }

    /// The `data:` JSON of each OpenAI stream event, checking one event per frame and `[DONE]` last.
    async fn openai_chunks(reply: MockReply) -> Vec<Value> {
        assert_eq!(reply.content_type, EVENT_STREAM);
        let mut frames = frames(reply).await;
        assert_eq!(frames.pop().as_deref(), Some("data: [DONE]\n\n"));
        frames
            .iter()
            .map(|f| {
                assert_eq!(f.matches("data: ").count(), 1, "one event per frame: {f}");
                serde_json::from_str(f.strip_prefix("data: ").unwrap().strip_suffix("\n\n").unwrap()).unwrap()
            })
            .collect()
    }

    /// (event name, data) of each Anthropic stream event.
    async fn anthropic_events(reply: MockReply) -> Vec<(String, Value)> {
        assert_eq!(reply.content_type, EVENT_STREAM);
        let frames = frames(reply).await;
        frames
            .iter()
            .map(|f| {
                let (name, data) = f.strip_suffix("\n\n").unwrap().split_once("\ndata: ").unwrap();
                let name = name.strip_prefix("event: ").unwrap().to_owned();
                let data: Value = serde_json::from_str(data).unwrap();
                assert_eq!(data["type"], name.as_str());
                (name, data)
            })
            .collect()
    }

    const CHAT: &str = r#"{"model":"demo","messages":[
        {"role":"system","content":"Be brief."},
        {"role":"user","content":[{"type":"text","text":"first question"},{"type":"image_url","image_url":{"url":"x"}}]},
        {"role":"assistant","content":null},
        {"role":"user","content":"what  is\nthe time?"}]"#;
    const EXPECTED: &str = "Hello from the Lattice mock provider. You said: what is the time?";

    fn chat_body(extra: &str) -> String {
        format!("{CHAT}{extra}}}")
    }

    #[tokio::test]
    async fn offered_tools_are_called_when_the_user_says_call_name() {
        let tools = r#""tools":[{"type":"function","function":{"name":"web_search"}}]"#;
        let body = |stream: bool| {
            format!(
                r#"{{"model":"demo","stream":{stream},{tools},"messages":[{{"role":"user","content":"please call:web_search call:shell"}}]}}"#
            )
        };
        let v = json_of(call(Surface::ChatCompletions, &body(false))).await;
        let names: Vec<&str> = v["choices"][0]["message"]["tool_calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["function"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["web_search", "shell"]);
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        let chunks = openai_chunks(call(Surface::ChatCompletions, &body(true))).await;
        let started: Vec<(u64, &str)> = chunks
            .iter()
            .filter_map(|c| c.pointer("/choices/0/delta/tool_calls/0"))
            .filter_map(|t| Some((t["index"].as_u64()?, t.pointer("/function/name")?.as_str()?)))
            .collect();
        assert_eq!(started, [(0, "web_search"), (1, "shell")]);

        let anthropic = |stream: bool| {
            format!(
                r#"{{"model":"demo","max_tokens":50,"stream":{stream},"tools":[{{"name":"web_search","input_schema":{{}}}}],"messages":[{{"role":"user","content":"call:web_search"}}]}}"#
            )
        };
        let v = json_of(call(Surface::Messages, &anthropic(false))).await;
        assert_eq!(v["content"][1]["type"], "tool_use");
        assert_eq!(v["content"][1]["name"], "web_search");
        assert_eq!(v["stop_reason"], "tool_use");
        let events = anthropic_events(call(Surface::Messages, &anthropic(true))).await;
        let starts: Vec<&Value> = events
            .iter()
            .filter(|(n, _)| n == "content_block_start")
            .map(|(_, d)| d)
            .collect();
        assert_eq!(starts[1]["index"], 1);
        assert_eq!(starts[1]["content_block"]["name"], "web_search");

        // Without tools offered, `call:` is just a word.
        let plain = r#"{"model":"demo","messages":[{"role":"user","content":"call:shell"}]}"#;
        let v = json_of(call(Surface::ChatCompletions, plain)).await;
        assert!(v["choices"][0]["message"].get("tool_calls").is_none());
    }

    #[tokio::test]
    async fn chat_reply_shape_and_usage() {
        let reply = call(Surface::ChatCompletions, &chat_body(""));
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body.size_hint().exact(), Some(reply.body.remaining));
        let v = json_of(reply).await;
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-mock-"));
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "demo");
        assert!(v["created"].as_u64().unwrap() > 1_700_000_000);
        let choice = &v["choices"][0];
        assert_eq!(
            choice["message"],
            json!({"role": "assistant", "content": EXPECTED, "refusal": null})
        );
        assert_eq!(choice["finish_reason"], "stop");
        assert!(choice["logprobs"].is_null() && v["system_fingerprint"].is_null());
        // "Be brief." + "first question" + "what is the time?" = 2 + 2 + 4 words.
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": 8, "completion_tokens": 12, "total_tokens": 20})
        );
        let again = json_of(call(Surface::ChatCompletions, &chat_body(""))).await;
        assert_eq!(again["id"], v["id"], "ids depend only on the body");
    }

    #[tokio::test]
    async fn chat_stream_deltas_rebuild_the_text() {
        let chunks = openai_chunks(call(Surface::ChatCompletions, &chat_body(r#","stream":true"#))).await;
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, EXPECTED);
        assert_eq!(chunks.len(), 1 + 12 + 1, "role, one per word, finish");
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"][0]["delta"], json!({}));
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        for c in &chunks {
            assert_eq!(c["object"], "chat.completion.chunk");
            assert!(c.get("usage").is_none(), "no usage field without include_usage");
        }
        assert!(
            chunks[..chunks.len() - 1]
                .iter()
                .all(|c| c["choices"][0]["finish_reason"].is_null())
        );
    }

    #[tokio::test]
    async fn include_usage_adds_one_usage_chunk_before_done() {
        let body = chat_body(r#","stream":true,"stream_options":{"include_usage":true}"#);
        let chunks = openai_chunks(call(Surface::ChatCompletions, &body)).await;
        let (usage, content) = chunks.split_last().unwrap();
        assert!(
            content
                .iter()
                .all(|c| c["usage"].is_null() && c.get("usage").is_some())
        );
        assert!(
            content
                .iter()
                .all(|c| c["choices"].as_array().unwrap().len() == 1)
        );
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(
            usage["usage"],
            json!({"prompt_tokens": 8, "completion_tokens": 12, "total_tokens": 20})
        );
    }

    #[tokio::test]
    async fn max_tokens_truncates_in_both_dialects() {
        let v = json_of(call(
            Surface::ChatCompletions,
            &chat_body(r#","max_completion_tokens":3"#),
        ))
        .await;
        assert_eq!(v["choices"][0]["message"]["content"], "Hello from the");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["completion_tokens"], 3);
        let v = json_of(call(Surface::ChatCompletions, &chat_body(r#","max_tokens":12"#))).await;
        assert_eq!(
            v["choices"][0]["finish_reason"], "stop",
            "exactly enough is not a cut"
        );

        let body =
            r#"{"model":"demo","max_tokens":2,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let events = anthropic_events(call(Surface::Messages, body)).await;
        let text: String = events
            .iter()
            .filter_map(|(_, d)| d["delta"]["text"].as_str())
            .collect();
        assert_eq!(text, "Hello from");
        let (_, delta) = events.iter().find(|(n, _)| n == "message_delta").unwrap();
        assert_eq!(delta["delta"]["stop_reason"], "max_tokens");
        assert_eq!(delta["usage"]["output_tokens"], 2);
    }

    #[tokio::test]
    async fn anthropic_message_and_event_order() {
        let body = r#"{"model":"demo","max_tokens":100,"system":[{"type":"text","text":"You are terse."}],
            "messages":[{"role":"user","content":[{"type":"text","text":"ping me"}]}]"#;
        let v = json_of(call(Surface::Messages, &format!("{body}}}"))).await;
        let text = "Hello from the Lattice mock provider. You said: ping me";
        assert!(v["id"].as_str().unwrap().starts_with("msg_mock_"));
        assert_eq!(
            v,
            json!({"id": v["id"], "type": "message", "role": "assistant", "model": "demo",
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": null,
                "usage": {"input_tokens": 5, "output_tokens": 10}})
        );

        let events = anthropic_events(call(Surface::Messages, &format!(r#"{body},"stream":true}}"#))).await;
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        let mut expected = vec!["message_start", "content_block_start", "ping"];
        expected.extend(["content_block_delta"; 10]);
        expected.extend(["content_block_stop", "message_delta", "message_stop"]);
        assert_eq!(names, expected);
        let start = &events[0].1["message"];
        assert_eq!(start["content"], json!([]));
        assert!(start["stop_reason"].is_null());
        assert_eq!(start["usage"], json!({"input_tokens": 5, "output_tokens": 1}));
        assert_eq!(events[1].1["content_block"], json!({"type": "text", "text": ""}));
        let streamed: String = events
            .iter()
            .filter_map(|(_, d)| d["delta"]["text"].as_str())
            .collect();
        assert_eq!(streamed, text);
        assert_eq!(
            events[14].1["delta"],
            json!({"stop_reason": "end_turn", "stop_sequence": null})
        );
        assert_eq!(events[14].1["usage"], json!({"output_tokens": 10}));
    }

    fn embedding_vectors(v: &Value) -> Vec<Vec<f32>> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| match &item["embedding"] {
                Value::String(b64) => base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                floats => serde_json::from_value(floats.clone()).unwrap(),
            })
            .collect()
    }

    #[tokio::test]
    async fn embeddings_float_and_base64_agree() {
        let body = r#"{"model":"demo","input":["a cat","a dog"],"stream":true"#;
        let float = json_of(call(Surface::Embeddings, &format!("{body}}}"))).await;
        let b64 = json_of(call(
            Surface::Embeddings,
            &format!(r#"{body},"encoding_format":"base64"}}"#),
        ))
        .await;
        assert_eq!(float["object"], "list");
        assert_eq!(float["model"], "demo");
        assert_eq!(float["usage"], json!({"prompt_tokens": 4, "total_tokens": 4}));
        assert_eq!(float["data"][1]["object"], "embedding");
        assert_eq!(float["data"][1]["index"], 1);
        assert!(b64["data"][0]["embedding"].is_string());
        let vectors = embedding_vectors(&float);
        assert_eq!(vectors, embedding_vectors(&b64));
        assert_ne!(vectors[0], vectors[1]);
        for v in &vectors {
            assert_eq!(v.len(), 8);
            let norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
            assert!((norm - 1.0).abs() < 1e-6, "unit length, got {norm}");
        }
        let single = json_of(call(Surface::Embeddings, r#"{"model":"demo","input":"a dog"}"#)).await;
        assert_eq!(
            embedding_vectors(&single)[0],
            vectors[1],
            "deterministic per input"
        );
    }

    #[tokio::test]
    async fn embeddings_dimensions_and_token_inputs() {
        let v = json_of(call(
            Surface::Embeddings,
            r#"{"model":"demo","input":[1,2,3],"dimensions":5}"#,
        ))
        .await;
        assert_eq!(embedding_vectors(&v)[0].len(), 5);
        assert_eq!(v["usage"]["prompt_tokens"], 3);
        let v = json_of(call(
            Surface::Embeddings,
            r#"{"model":"demo","input":[[1],[2,3]],"dimensions":99999}"#,
        ))
        .await;
        let vectors = embedding_vectors(&v);
        assert_eq!(vectors.len(), 2);
        assert_eq!(vectors[0].len(), 4096, "dimensions are capped");
        for bad in [
            r#""dimensions":0"#,
            r#""input":[]"#,
            r#""input":["a",1]"#,
            r#""encoding_format":"hex""#,
        ] {
            let body = format!(r#"{{"model":"demo","input":"x",{bad}}}"#);
            assert_eq!(
                call(Surface::Embeddings, &body).status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn count_tokens_counts_words() {
        let body = r#"{"model":"demo","stream":true,"system":"one two","messages":[{"role":"user","content":"three four five"}]}"#;
        assert_eq!(
            json_of(call(Surface::CountTokens, body)).await,
            json!({"input_tokens": 5})
        );
        let empty = r#"{"model":"demo","messages":[{"role":"user","content":[]}]}"#;
        assert_eq!(
            json_of(call(Surface::CountTokens, empty)).await,
            json!({"input_tokens": 1}),
            "at least 1"
        );
        let v = json_of(call(Surface::Messages, empty)).await;
        assert_eq!(
            v["content"][0]["text"],
            "Hello from the Lattice mock provider. You said: (nothing)"
        );
    }

    #[tokio::test]
    async fn bad_input_is_a_400_in_the_callers_dialect() {
        let reply = call(
            Surface::ChatCompletions,
            r#"{"model":"demo","messages":{"role":"user"}}"#,
        );
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        let v = json_of(reply).await;
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "invalid_request");
        assert!(v["error"]["message"].as_str().unwrap().contains("messages"));

        let v = json_of(call(
            Surface::Messages,
            r#"{"model":"demo","messages":[{"role":"user","content":7}]}"#,
        ))
        .await;
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("messages[0].content")
        );

        let view = CallView {
            surface: Surface::CountTokens,
            model: "demo".into(),
            model_span: 0..0,
            stream: true,
            include_usage: false,
            max_tokens: None,
            choices: 1,
            tools: Vec::new(),
        };
        for body in [&b"[1]"[..], b"\"text\"", b"{not json", b""] {
            let reply = respond(&view, body, &MockOptions::default());
            assert_eq!(reply.status, StatusCode::BAD_REQUEST);
            assert_eq!(
                json_of(reply).await["error"]["message"],
                "the request body must be a JSON object"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn chunk_delay_holds_back_later_events() {
        let delay = Duration::from_millis(50);
        let opts = MockOptions {
            chunk_delay: Some(delay),
        };
        let body = r#"{"model":"demo","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let mut reply = call_with(Surface::Messages, body, &opts);
        let first = reply.body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(first.starts_with(b"event: message_start\n"));

        let mut cx = Context::from_waker(Waker::noop());
        let mut poll = |body: &mut MockBody| Pin::new(body).poll_frame(&mut cx).is_ready();
        assert!(!poll(&mut reply.body), "the second event waits");
        tokio::time::advance(delay - Duration::from_millis(1)).await;
        assert!(!poll(&mut reply.body), "still waiting just before the delay");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(poll(&mut reply.body), "sent once the delay has passed");
        assert!(!poll(&mut reply.body), "and the next one waits again");

        let started = Instant::now();
        let rest = frames(call_with(Surface::Messages, body, &opts)).await;
        assert!(started.elapsed() >= delay * (rest.len() as u32 - 1));
    }

    #[test]
    fn body_is_send_sync_unpin() {
        fn check<T: Send + Sync + Unpin + 'static>() {}
        check::<MockBody>();
        check::<MockReply>();
    }
}
