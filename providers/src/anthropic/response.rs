//! Anthropic Messages answers (`"type":"message"`) <-> the canonical response, and the usage
//! and stop-reason vocabularies both directions share with the stream codec.

use serde_json::{Value, json};

use crate::canonical::{Finish, Part, Response, Text, Usage};
use crate::codec::{DecodeError, bad};

pub fn decode(body: &[u8]) -> Result<Response, DecodeError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
    if v.get("type").and_then(Value::as_str) != Some("message") {
        return Err(bad("an answer that is not a message"));
    }
    let mut parts = Vec::new();
    for b in v.get("content").and_then(Value::as_array).into_iter().flatten() {
        parts.push(match b.get("type").and_then(Value::as_str) {
            Some("text") => Part::Text(Text {
                text: b.get("text").and_then(Value::as_str).unwrap_or("").into(),
                cache: None,
            }),
            Some("tool_use") => Part::ToolCall {
                id: b.get("id").and_then(Value::as_str).unwrap_or("").into(),
                name: b.get("name").and_then(Value::as_str).unwrap_or("").into(),
                arguments: b.get("input").map_or_else(|| "{}".into(), Value::to_string),
            },
            Some("thinking") => Part::Thinking {
                text: b.get("thinking").and_then(Value::as_str).unwrap_or("").into(),
                signature: b.get("signature").and_then(Value::as_str).map(Into::into),
            },
            Some("redacted_thinking") => Part::RedactedThinking {
                data: b.get("data").and_then(Value::as_str).unwrap_or("").into(),
            },
            other => {
                return Err(bad(format!(
                    "a content block of type `{}` cannot be translated",
                    other.unwrap_or("?")
                )));
            }
        });
    }
    Ok(Response {
        id: v.get("id").and_then(Value::as_str).unwrap_or("").into(),
        model: v.get("model").and_then(Value::as_str).unwrap_or("").into(),
        parts,
        finish: v.get("stop_reason").and_then(Value::as_str).map(finish_of),
        stop_sequence: v.get("stop_sequence").and_then(Value::as_str).map(Into::into),
        usage: v.get("usage").map(usage_of),
        created: None,
    })
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

/// Anthropic usage: `input_tokens` excludes cache reads and writes, which are counted apart.
pub fn usage_of(u: &Value) -> Usage {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    Usage {
        input: n("input_tokens"),
        output: n("output_tokens"),
        cached_input: n("cache_read_input_tokens"),
        cache_write: n("cache_creation_input_tokens"),
        reasoning: 0,
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

pub fn encode(r: &Response) -> Vec<u8> {
    let mut content = Vec::new();
    for p in &r.parts {
        match p {
            Part::Text(t) => content.push(json!({"type": "text", "text": t.text})),
            Part::ToolCall { id, name, arguments } => {
                let input: Value = serde_json::from_str(arguments).unwrap_or_else(|_| json!({}));
                content.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
            }
            Part::Thinking { text, signature } => {
                content.push(json!({"type": "thinking", "thinking": text, "signature": signature.as_deref().unwrap_or("")}));
            }
            Part::RedactedThinking { data } => {
                content.push(json!({"type": "redacted_thinking", "data": data}))
            }
            _ => {}
        }
    }
    let v = json!({
        "id": r.id,
        "type": "message",
        "role": "assistant",
        "model": r.model,
        "content": content,
        "stop_reason": r.finish.map(finish_name).unwrap_or("end_turn"),
        "stop_sequence": r.stop_sequence,
        "usage": usage_json(&r.usage.unwrap_or_default()),
    });
    serde_json::to_vec(&v).unwrap_or_default()
}
