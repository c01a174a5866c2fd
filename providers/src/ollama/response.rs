//! Ollama `/api/chat` answers (`"done": true`) <-> the canonical response.

use serde_json::{Value, json};

use super::{finish_of, usage_of};
use crate::canonical::{Finish, Part, Response, Text};
use crate::codec::{DecodeError, bad};

/// The parts of an answer's `message`, canonically (calls get `call_<n>` ids, counted by
/// `calls` across a stream's lines).
pub fn parts_of(message: &Value, calls: &mut usize) -> Result<Vec<Part>, DecodeError> {
    let mut parts = Vec::new();
    if let Some(t) = message
        .get("thinking")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        parts.push(Part::Thinking {
            text: t.into(),
            signature: None,
        });
    }
    if let Some(t) = message
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        parts.push(Part::Text(Text {
            text: t.into(),
            cache: None,
        }));
    }
    for tc in message
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let f = tc
            .get("function")
            .ok_or_else(|| bad("a tool call without its function"))?;
        *calls += 1;
        parts.push(Part::ToolCall {
            id: match tc.get("id").and_then(Value::as_str) {
                Some(id) if !id.is_empty() => id.into(),
                _ => format!("call_{calls}"),
            },
            name: f.get("name").and_then(Value::as_str).unwrap_or("").into(),
            arguments: match f.get("arguments") {
                Some(Value::String(s)) => s.clone(),
                Some(v @ Value::Object(_)) => v.to_string(),
                _ => "{}".into(),
            },
        });
    }
    Ok(parts)
}

pub fn decode(body: &[u8]) -> Result<Response, DecodeError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
    if v.get("done").and_then(Value::as_bool) != Some(true) {
        return Err(bad("an answer that is not a finished chat response"));
    }
    let mut calls = 0;
    let parts = parts_of(v.get("message").unwrap_or(&Value::Null), &mut calls)?;
    let finish = v.get("done_reason").and_then(Value::as_str).map(finish_of);
    let finish = match finish {
        Some(Finish::EndTurn) | None if calls > 0 => Some(Finish::ToolUse),
        f => f,
    };
    Ok(Response {
        id: String::new(),
        model: v.get("model").and_then(Value::as_str).unwrap_or("").into(),
        parts,
        finish,
        stop_sequence: None,
        usage: Some(usage_of(&v)),
        created: None,
    })
}

/// An answer's `message` from canonical parts.
pub fn message_json(parts: &[Part]) -> Value {
    let mut content = String::new();
    let mut thinking = String::new();
    let mut calls = Vec::new();
    for p in parts {
        match p {
            Part::Text(t) => content.push_str(&t.text),
            Part::Thinking { text, .. } => thinking.push_str(text),
            Part::ToolCall { name, arguments, .. } => {
                let args = crate::whole::arguments_object(arguments).unwrap_or_else(|| json!({}));
                calls.push(json!({"function": {"name": name, "arguments": args}}));
            }
            _ => {}
        }
    }
    let mut m = json!({"role": "assistant", "content": content});
    if !thinking.is_empty() {
        m["thinking"] = thinking.into();
    }
    if !calls.is_empty() {
        m["tool_calls"] = calls.into();
    }
    m
}

pub fn encode(r: &Response) -> Vec<u8> {
    let mut v = json!({
        "model": r.model,
        "created_at": super::created_at(),
        "message": message_json(&r.parts),
    });
    super::done_fields(&mut v, r.finish, &r.usage.unwrap_or_default());
    serde_json::to_vec(&v).unwrap_or_default()
}
