//! Gemini `GenerateContentResponse` answers <-> the canonical response.

use serde_json::{Value, json};

use super::{field, finish_name, finish_of, usage_json, usage_of};
use crate::canonical::{Finish, Part, Response, Text};
use crate::codec::{DecodeError, bad};

/// The parts of one candidate's content, canonically (calls without an id get `call_<n>`).
pub fn parts_of(content: &Value, calls: &mut usize) -> Result<Vec<Part>, DecodeError> {
    let mut parts = Vec::new();
    for p in content
        .get("parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let signature = field(p, "thoughtSignature", "thought_signature").and_then(Value::as_str);
        if let Some(t) = p.get("text").and_then(Value::as_str) {
            if p.get("thought").and_then(Value::as_bool) == Some(true) {
                parts.push(Part::Thinking {
                    text: t.into(),
                    signature: signature.map(Into::into),
                });
            } else {
                parts.push(Part::Text(Text {
                    text: t.into(),
                    cache: None,
                }));
            }
        } else if let Some(f) = field(p, "functionCall", "function_call") {
            *calls += 1;
            parts.push(Part::ToolCall {
                id: match f.get("id").and_then(Value::as_str) {
                    Some(id) if !id.is_empty() => id.into(),
                    _ => format!("call_{calls}"),
                },
                name: f.get("name").and_then(Value::as_str).unwrap_or("").into(),
                arguments: f.get("args").map_or_else(|| "{}".into(), Value::to_string),
            });
        } else {
            let kind = p
                .as_object()
                .and_then(|o| o.keys().next())
                .map_or("?", String::as_str);
            return Err(bad(format!("an answer part `{kind}` cannot be translated")));
        }
    }
    Ok(parts)
}

pub fn decode(body: &[u8]) -> Result<Response, DecodeError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
    if !v.is_object() {
        return Err(bad("an answer that is not a GenerateContentResponse"));
    }
    let mut calls = 0;
    let candidates = v.get("candidates").and_then(Value::as_array);
    if candidates.is_some_and(|c| c.len() > 1) {
        // One answer per call: a second candidate would go unread (and unchecked).
        return Err(bad("an answer with more than one candidate (candidateCount > 1)"));
    }
    let (parts, finish) = match candidates.and_then(|c| c.first()) {
        Some(c)
            if let Some(why) = field(c, "finishReason", "finish_reason")
                .and_then(Value::as_str)
                .and_then(super::failed_call) =>
        {
            return Err(bad(why));
        }
        Some(c) => (
            parts_of(c.get("content").unwrap_or(&Value::Null), &mut calls)?,
            field(c, "finishReason", "finish_reason")
                .and_then(Value::as_str)
                .map(finish_of),
        ),
        // No candidate: the prompt itself was blocked.
        None if field(&v, "promptFeedback", "prompt_feedback").is_some() => {
            (Vec::new(), Some(Finish::ContentFilter))
        }
        None => return Err(bad("an answer with no candidates")),
    };
    let finish = match finish {
        Some(Finish::EndTurn) | None if calls > 0 => Some(Finish::ToolUse),
        f => f,
    };
    let text = |camel: &str, snake: &str| {
        field(&v, camel, snake)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    Ok(Response {
        id: text("responseId", "response_id"),
        model: text("modelVersion", "model_version"),
        parts,
        finish,
        stop_sequence: None,
        usage: field(&v, "usageMetadata", "usage_metadata").map(usage_of),
        created: None,
    })
}

/// A part as Gemini writes it in an answer; `None` for what it has no part for.
pub fn part_json(p: &Part) -> Option<Value> {
    Some(match p {
        Part::Text(t) => json!({"text": t.text}),
        Part::ToolCall { id, name, arguments } => {
            let args = crate::whole::arguments_object(arguments).unwrap_or_else(|| json!({}));
            json!({"functionCall": {"id": id, "name": name, "args": args}})
        }
        Part::Thinking { text, signature } => {
            let mut v = json!({"text": text, "thought": true});
            if let Some(s) = signature {
                v["thoughtSignature"] = s.clone().into();
            }
            v
        }
        _ => return None,
    })
}

pub fn encode(r: &Response) -> Vec<u8> {
    let parts: Vec<Value> = r.parts.iter().filter_map(part_json).collect();
    let mut v = json!({
        "candidates": [{
            "content": {"role": "model", "parts": parts},
            "finishReason": r.finish.map(finish_name).unwrap_or("STOP"),
            "index": 0,
        }],
        "usageMetadata": usage_json(&r.usage.unwrap_or_default()),
        "modelVersion": r.model,
    });
    if !r.id.is_empty() {
        v["responseId"] = r.id.clone().into();
    }
    serde_json::to_vec(&v).unwrap_or_default()
}
