//! Ollama `/api/chat` requests <-> the canonical request. Ollama streams unless the body says
//! `"stream": false`; its tool calls carry no ids, so ids are made up on the way in and a
//! `tool` message's `tool_name` finds its call, first unanswered first.

use serde_json::{Map, Value, json};

use crate::canonical::{
    Losses, Message, OutputFormat, Part, Reasoning, Request, Role, Source, Text, Tool, ToolChoice,
};
use crate::codec::{DecodeError, bad, opt_f64, opt_u64, text_of};

/// The media type of a base64 image, from its first bytes (Ollama's `images` name none).
pub fn image_type(data: &str) -> &'static str {
    match data.as_bytes().get(..4) {
        Some(b"/9j/") => "image/jpeg",
        Some(b"R0lG") => "image/gif",
        Some(b"UklG") => "image/webp",
        _ => "image/png",
    }
}

pub fn decode(body: &[u8], losses: &mut Losses) -> Result<Request, DecodeError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
    let Value::Object(top) = v else {
        return Err(bad("the body must be a JSON object"));
    };
    let mut r = Request {
        stream: true,
        stream_usage: true,
        ..Request::default()
    };
    for (key, value) in &top {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model" => r.model = text_of(value, "model")?,
            "stream" => r.stream = value.as_bool().ok_or_else(|| bad("`stream` must be a boolean"))?,
            "messages" => decode_messages(value, &mut r)?,
            "tools" => {
                for t in value.as_array().ok_or_else(|| bad("`tools` must be an array"))? {
                    let f = t.get("function").unwrap_or(&Value::Null);
                    r.tools.push(Tool {
                        name: text_of(f.get("name").unwrap_or(&Value::Null), "tools[].function.name")?,
                        description: f.get("description").and_then(Value::as_str).map(Into::into),
                        parameters: f
                            .get("parameters")
                            .cloned()
                            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                        strict: None,
                        cache: None,
                    });
                }
            }
            "format" => {
                r.output = match value {
                    Value::String(s) if s == "json" => Some(OutputFormat::JsonObject),
                    Value::String(s) if s.is_empty() => None,
                    Value::Object(_) => Some(OutputFormat::JsonSchema {
                        name: "output".into(),
                        schema: value.clone(),
                        strict: None,
                    }),
                    _ => return Err(bad("`format` must be \"json\" or a JSON schema")),
                }
            }
            "options" => {
                let Value::Object(o) = value else {
                    return Err(bad("`options` must be an object"));
                };
                for (k, v) in o {
                    if v.is_null() {
                        continue;
                    }
                    match k.as_str() {
                        "temperature" => r.temperature = opt_f64(v, "options.temperature")?,
                        "top_p" => r.top_p = opt_f64(v, "options.top_p")?,
                        "top_k" => r.top_k = opt_u64(v, "options.top_k")?,
                        // -1: no limit.
                        "num_predict" => r.max_tokens = v.as_u64(),
                        "seed" => {
                            r.seed = Some(
                                v.as_i64()
                                    .ok_or_else(|| bad("`options.seed` must be an integer"))?,
                            )
                        }
                        "stop" => {
                            r.stop = v
                                .as_array()
                                .ok_or_else(|| bad("`options.stop` must be an array"))?
                                .iter()
                                .map(|s| text_of(s, "options.stop[]"))
                                .collect::<Result<_, _>>()?
                        }
                        "num_ctx" | "num_gpu" | "num_thread" | "num_batch" | "use_mmap" | "low_vram" => {
                            losses.hint(format!("options.{k}"), "a local runtime setting, not sent")
                        }
                        other => losses.meaning(
                            format!("options.{other}"),
                            "a sampling option the target does not take",
                        ),
                    }
                }
            }
            "think" => {
                r.reasoning = match value {
                    Value::Bool(false) => None,
                    Value::Bool(true) => Some(Reasoning {
                        budget_tokens: None,
                        effort: Some("medium".into()),
                    }),
                    Value::String(level) => Some(Reasoning {
                        budget_tokens: None,
                        effort: Some(level.clone()),
                    }),
                    _ => return Err(bad("`think` must be a boolean or low, medium, high")),
                }
            }
            "keep_alive" => losses.hint("keep_alive", "how long Ollama keeps a model loaded, not sent"),
            other => losses.meaning(other, "a field this gateway does not translate"),
        }
    }
    if r.model.is_empty() {
        return Err(bad("`model` is required"));
    }
    Ok(r)
}

/// `messages`: system text into the instructions; tool calls get made-up ids, and a `tool`
/// message's `tool_name` (or `tool_call_id`) finds its call, first unanswered first.
fn decode_messages(value: &Value, r: &mut Request) -> Result<(), DecodeError> {
    let mut next_call = 0usize;
    let mut open: Vec<(String, String)> = Vec::new();
    let Value::Array(list) = value else {
        return Err(bad("`messages` must be an array"));
    };
    for (i, m) in list.iter().enumerate() {
        let content = m.get("content").and_then(Value::as_str).unwrap_or("");
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let mut parts = Vec::new();
        let role = match role {
            "system" => {
                r.system.push(Text {
                    text: content.into(),
                    cache: None,
                });
                continue;
            }
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => {
                let name = m.get("tool_name").and_then(Value::as_str).unwrap_or("");
                let by_id = m.get("tool_call_id").and_then(Value::as_str);
                let at = match by_id {
                    Some(id) => open.iter().position(|(o, _)| o == id),
                    None => open.iter().position(|(_, n)| n == name),
                };
                let Some(at) = at.or(if name.is_empty() && !open.is_empty() {
                    Some(0)
                } else {
                    None
                }) else {
                    return Err(bad(format!(
                        "messages[{i}]: a tool message that answers no earlier tool call"
                    )));
                };
                let (id, _) = open.remove(at);
                parts.push(Part::ToolResult {
                    id,
                    content: vec![Part::Text(Text {
                        text: content.into(),
                        cache: None,
                    })],
                    is_error: false,
                    cache: None,
                });
                Role::User
            }
            other => return Err(bad(format!("messages[{i}]: unknown role `{other}`"))),
        };
        if let Some(t) = m
            .get("thinking")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            parts.push(Part::Thinking {
                text: t.into(),
                signature: None,
            });
        }
        if !content.is_empty() && !matches!(parts.first(), Some(Part::ToolResult { .. })) {
            parts.push(Part::Text(Text {
                text: content.into(),
                cache: None,
            }));
        }
        for img in m.get("images").and_then(Value::as_array).into_iter().flatten() {
            let data = text_of(img, "images[]")?;
            parts.push(Part::Image {
                source: Source::Base64 {
                    media_type: image_type(&data).into(),
                    data,
                },
                cache: None,
            });
        }
        for tc in m
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let f = tc.get("function").unwrap_or(&Value::Null);
            let name = text_of(
                f.get("name").unwrap_or(&Value::Null),
                "tool_calls[].function.name",
            )?;
            let id = match tc.get("id").and_then(Value::as_str) {
                Some(id) if !id.is_empty() => id.to_string(),
                _ => {
                    next_call += 1;
                    format!("call_{next_call}_{name}")
                }
            };
            open.push((id.clone(), name.clone()));
            let arguments = match f.get("arguments") {
                None | Some(Value::Null) => "{}".into(),
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
            };
            parts.push(Part::ToolCall { id, name, arguments });
        }
        match r.messages.last_mut() {
            Some(last) if last.role == role => last.parts.extend(parts),
            _ => r.messages.push(Message { role, parts }),
        }
    }
    Ok(())
}

pub fn encode(r: &Request, losses: &mut Losses) -> Result<Vec<u8>, DecodeError> {
    let mut top = Map::new();
    top.insert("model".into(), r.model.clone().into());
    let mut messages = Vec::new();
    if !r.system.is_empty() {
        let text: Vec<&str> = r.system.iter().map(|t| t.text.as_str()).collect();
        messages.push(json!({"role": "system", "content": text.join("\n\n")}));
    }
    let mut names: Vec<(&str, &str)> = Vec::new();
    for m in &r.messages {
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        let mut content = String::new();
        let mut thinking = String::new();
        let mut images = Vec::new();
        let mut calls = Vec::new();
        let mut results = Vec::new();
        for p in &m.parts {
            match p {
                Part::Text(t) => {
                    if t.cache.is_some() {
                        losses.hint("cache_control", "Ollama keeps its own prompt cache");
                    }
                    // One message's text blocks are one string in Ollama: kept apart as
                    // paragraphs.
                    if !content.is_empty() {
                        content.push_str("\n\n");
                    }
                    content.push_str(&t.text)
                }
                Part::Image { source, .. } => match source {
                    Source::Base64 { data, .. } => images.push(Value::from(data.as_str())),
                    Source::Url(_) => {
                        losses.meaning("image_url", "Ollama takes images inline only, not by URL")
                    }
                },
                Part::Document { .. } => losses.meaning("document", "Ollama takes no documents"),
                Part::ToolCall { id, name, arguments } => {
                    names.push((id, name));
                    let Some(args) = crate::whole::arguments_object(arguments) else {
                        return Err(bad(format!(
                            "the arguments of tool call `{id}` are not a JSON object"
                        )));
                    };
                    calls.push(json!({"function": {"name": name, "arguments": args}}));
                }
                Part::ToolResult { id, content: c, .. } => {
                    let Some(&(_, name)) = names.iter().find(|(i, _)| i == id) else {
                        return Err(bad(format!(
                            "the tool result `{id}` answers no earlier tool call"
                        )));
                    };
                    let mut text = String::new();
                    for part in c {
                        match part {
                            Part::Text(t) => text.push_str(&t.text),
                            _ => losses.meaning(
                                "tool_result.content[].image",
                                "Ollama tool results carry text only",
                            ),
                        }
                    }
                    results.push(json!({"role": "tool", "content": text, "tool_name": name}));
                }
                Part::Thinking { text, .. } => thinking.push_str(text),
                Part::RedactedThinking { .. } => losses.hint(
                    "redacted_thinking",
                    "encrypted reasoning replays only to its provider",
                ),
            }
        }
        messages.extend(results);
        if content.is_empty() && images.is_empty() && calls.is_empty() && thinking.is_empty() {
            continue;
        }
        let mut msg = json!({"role": role, "content": content});
        if !thinking.is_empty() {
            msg["thinking"] = thinking.into();
        }
        if !images.is_empty() {
            msg["images"] = images.into();
        }
        if !calls.is_empty() {
            msg["tool_calls"] = calls.into();
        }
        messages.push(msg);
    }
    top.insert("messages".into(), messages.into());
    top.insert("stream".into(), r.stream.into());
    let tools_offered = !matches!(r.tool_choice, Some(ToolChoice::None));
    if !r.tools.is_empty() && tools_offered {
        let tools: Vec<Value> = r
            .tools
            .iter()
            .map(|t| {
                let mut f = json!({"name": t.name, "parameters": t.parameters});
                if let Some(d) = &t.description {
                    f["description"] = d.clone().into();
                }
                json!({"type": "function", "function": f})
            })
            .collect();
        top.insert("tools".into(), tools.into());
    }
    match &r.tool_choice {
        Some(ToolChoice::Required | ToolChoice::Tool(_)) => {
            losses.meaning("tool_choice", "Ollama cannot be made to call a tool")
        }
        // "none" is said by not offering the tools.
        None | Some(ToolChoice::Auto | ToolChoice::None) => {}
    }
    if r.parallel_tool_calls == Some(false) && !r.tools.is_empty() {
        losses.meaning(
            "parallel_tool_calls",
            "Ollama cannot be held to one call per turn",
        );
    }
    match &r.output {
        None => {}
        Some(OutputFormat::JsonObject) => {
            top.insert("format".into(), "json".into());
        }
        Some(OutputFormat::JsonSchema { schema, .. }) => {
            top.insert("format".into(), schema.clone());
        }
    }
    let mut o = Map::new();
    if let Some(t) = r.temperature {
        o.insert("temperature".into(), t.into());
    }
    if let Some(p) = r.top_p {
        o.insert("top_p".into(), p.into());
    }
    if let Some(k) = r.top_k {
        o.insert("top_k".into(), k.into());
    }
    if let Some(m) = r.max_tokens {
        o.insert("num_predict".into(), m.into());
    }
    if !r.stop.is_empty() {
        o.insert("stop".into(), r.stop.clone().into());
    }
    if let Some(seed) = r.seed {
        o.insert("seed".into(), seed.into());
    }
    if !o.is_empty() {
        top.insert("options".into(), Value::Object(o));
    }
    if let Some(reasoning) = &r.reasoning {
        let think = match (reasoning.effort.as_deref(), reasoning.budget_tokens) {
            // Thinking models think unless told not to.
            (Some("minimal" | "none"), _) => Some(false.into()),
            (Some(e @ ("low" | "medium" | "high")), _) => Some(Value::from(e)),
            (_, Some(_)) => {
                losses.hint(
                    "thinking.budget_tokens",
                    "approximated: Ollama thinks without a budget",
                );
                Some(true.into())
            }
            _ => Some(true.into()),
        };
        if let Some(t) = think {
            top.insert("think".into(), t);
        }
    }
    if r.user.is_some() {
        losses.hint("user", "Ollama takes no end-user id");
    }
    serde_json::to_vec(&Value::Object(top)).map_err(|e| bad(e.to_string()))
}
