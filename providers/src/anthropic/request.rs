//! Anthropic Messages requests (`POST /v1/messages`) <-> the canonical request.

use serde_json::{Map, Value, json};

use crate::canonical::{
    Losses, Message, OutputFormat, Part, Reasoning, Request, Role, Source, Text, Tool, ToolChoice,
};
use crate::codec::{DecodeError, bad, cache_of, cache_value, opt_f64, opt_str, opt_u64, text_of};

/// `max_tokens` is required by Anthropic; a translated call that gives none gets this.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

pub fn decode(body: &[u8], losses: &mut Losses) -> Result<Request, DecodeError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
    let Value::Object(top) = v else {
        return Err(bad("the body must be a JSON object"));
    };
    let mut r = Request::default();
    for (key, value) in &top {
        match key.as_str() {
            "model" => r.model = text_of(value, "model")?,
            "system" => {
                r.system = match value {
                    Value::Null => Vec::new(),
                    Value::String(s) => vec![Text {
                        text: s.clone(),
                        cache: None,
                    }],
                    Value::Array(blocks) => blocks
                        .iter()
                        .map(|b| {
                            Ok(Text {
                                text: text_of(b.get("text").unwrap_or(&Value::Null), "system[].text")?,
                                cache: cache_of(b),
                            })
                        })
                        .collect::<Result<_, DecodeError>>()?,
                    _ => return Err(bad("`system` must be a string or an array of text blocks")),
                }
            }
            "messages" => decode_messages(value, &mut r, losses)?,
            "tools" => r.tools = decode_tools(value, losses)?,
            "tool_choice" => {
                let (choice, parallel) = decode_tool_choice(value)?;
                r.tool_choice = choice;
                r.parallel_tool_calls = parallel;
            }
            "stop_sequences" => {
                r.stop = match value {
                    Value::Null => Vec::new(),
                    Value::Array(a) => a
                        .iter()
                        .map(|s| text_of(s, "stop_sequences[]"))
                        .collect::<Result<_, _>>()?,
                    _ => return Err(bad("`stop_sequences` must be an array of strings")),
                }
            }
            "temperature" => r.temperature = opt_f64(value, key)?,
            "top_p" => r.top_p = opt_f64(value, key)?,
            "top_k" => r.top_k = opt_u64(value, key)?,
            "max_tokens" => r.max_tokens = opt_u64(value, key)?,
            "stream" => {
                r.stream = value.as_bool().unwrap_or(false);
                r.stream_usage = r.stream;
            }
            "metadata" => {
                r.user = value
                    .get("user_id")
                    .map(|u| opt_str(u, "metadata.user_id"))
                    .transpose()?
                    .flatten()
            }
            "thinking" => match value.get("type").and_then(Value::as_str) {
                Some("enabled") => {
                    r.reasoning = Some(Reasoning {
                        budget_tokens: value.get("budget_tokens").and_then(Value::as_u64),
                        effort: None,
                    })
                }
                Some("disabled") | None => {}
                Some(other) => return Err(bad(format!("`thinking.type` `{other}` is not known"))),
            },
            "output_format" => {
                if value.get("type").and_then(Value::as_str) == Some("json_schema") {
                    r.output = Some(OutputFormat::JsonSchema {
                        name: "output".into(),
                        schema: value.get("schema").cloned().unwrap_or(Value::Null),
                        strict: Some(true),
                    });
                }
            }
            "service_tier" | "context_management" => {
                if !value.is_null() {
                    losses.hint(key.as_str(), "an Anthropic-only setting, not sent");
                }
            }
            other => losses.meaning(other, "a field this gateway does not translate"),
        }
    }
    if r.model.is_empty() {
        return Err(bad("`model` is required"));
    }
    Ok(r)
}

fn decode_messages(value: &Value, r: &mut Request, losses: &mut Losses) -> Result<(), DecodeError> {
    let Value::Array(list) = value else {
        return Err(bad("`messages` must be an array"));
    };
    for (i, m) in list.iter().enumerate() {
        let role = match m.get("role").and_then(Value::as_str) {
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            other => {
                return Err(bad(format!(
                    "messages[{i}]: unknown role `{}`",
                    other.unwrap_or("")
                )));
            }
        };
        let parts = match m.get("content") {
            Some(Value::String(s)) => vec![Part::Text(Text {
                text: s.clone(),
                cache: None,
            })],
            Some(Value::Array(blocks)) => blocks
                .iter()
                .map(|b| block(b, i, losses))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .flatten()
                .collect(),
            _ => return Err(bad(format!("messages[{i}].content must be a string or an array"))),
        };
        match r.messages.last_mut() {
            Some(last) if last.role == role => last.parts.extend(parts),
            _ => r.messages.push(Message { role, parts }),
        }
    }
    Ok(())
}

fn source(b: &Value, i: usize) -> Result<Source, DecodeError> {
    let s = b.get("source").unwrap_or(&Value::Null);
    match s.get("type").and_then(Value::as_str) {
        Some("base64") => Ok(Source::Base64 {
            media_type: text_of(s.get("media_type").unwrap_or(&Value::Null), "source.media_type")?,
            data: text_of(s.get("data").unwrap_or(&Value::Null), "source.data")?,
        }),
        Some("url") => Ok(Source::Url(text_of(
            s.get("url").unwrap_or(&Value::Null),
            "source.url",
        )?)),
        other => Err(bad(format!(
            "messages[{i}]: a source of type `{}` cannot be translated (use base64 or url)",
            other.unwrap_or("?")
        ))),
    }
}

fn block(b: &Value, i: usize, losses: &mut Losses) -> Result<Option<Part>, DecodeError> {
    let cache = cache_of(b);
    let ty = b.get("type").and_then(Value::as_str).unwrap_or("");
    Ok(Some(match ty {
        "text" => {
            if b.get("citations").is_some_and(|c| !c.is_null()) {
                losses.hint("content[].citations", "citations are not replayed");
            }
            Part::Text(Text {
                text: text_of(b.get("text").unwrap_or(&Value::Null), "content[].text")?,
                cache,
            })
        }
        "image" => Part::Image {
            source: source(b, i)?,
            cache,
        },
        "document" => Part::Document {
            source: source(b, i)?,
            name: b.get("title").and_then(Value::as_str).map(Into::into),
            cache,
        },
        "tool_use" => Part::ToolCall {
            id: text_of(b.get("id").unwrap_or(&Value::Null), "tool_use.id")?,
            name: text_of(b.get("name").unwrap_or(&Value::Null), "tool_use.name")?,
            arguments: b.get("input").map_or_else(|| "{}".into(), Value::to_string),
        },
        "tool_result" => {
            let content = match b.get("content") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::String(s)) => vec![Part::Text(Text {
                    text: s.clone(),
                    cache: None,
                })],
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|x| block(x, i, losses))
                    .collect::<Result<Vec<_>, _>>()?
                    .into_iter()
                    .flatten()
                    .collect(),
                Some(_) => return Err(bad("`tool_result.content` must be a string or an array")),
            };
            Part::ToolResult {
                id: text_of(
                    b.get("tool_use_id").unwrap_or(&Value::Null),
                    "tool_result.tool_use_id",
                )?,
                content,
                is_error: b.get("is_error").and_then(Value::as_bool).unwrap_or(false),
                cache,
            }
        }
        "thinking" => Part::Thinking {
            text: b.get("thinking").and_then(Value::as_str).unwrap_or("").into(),
            signature: b.get("signature").and_then(Value::as_str).map(Into::into),
        },
        "redacted_thinking" => Part::RedactedThinking {
            data: b.get("data").and_then(Value::as_str).unwrap_or("").into(),
        },
        other => {
            losses.meaning(
                format!("content[].type={other}"),
                "a block of this type cannot be translated",
            );
            return Ok(None);
        }
    }))
}

fn decode_tools(value: &Value, losses: &mut Losses) -> Result<Vec<Tool>, DecodeError> {
    let Value::Array(list) = value else {
        return Err(bad("`tools` must be an array"));
    };
    let mut tools = Vec::with_capacity(list.len());
    for t in list {
        match t.get("type").and_then(Value::as_str) {
            None | Some("custom") => tools.push(Tool {
                name: text_of(t.get("name").unwrap_or(&Value::Null), "tools[].name")?,
                description: t.get("description").and_then(Value::as_str).map(Into::into),
                parameters: t
                    .get("input_schema")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                strict: t.get("strict").and_then(Value::as_bool),
                cache: cache_of(t),
            }),
            Some(server) => losses.meaning(
                format!("tools[].type={server}"),
                "Anthropic's server tools run only on Anthropic",
            ),
        }
    }
    Ok(tools)
}

fn decode_tool_choice(value: &Value) -> Result<(Option<ToolChoice>, Option<bool>), DecodeError> {
    if value.is_null() {
        return Ok((None, None));
    }
    let parallel = value
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        .map(|d| !d);
    let choice = match value.get("type").and_then(Value::as_str) {
        Some("auto") => ToolChoice::Auto,
        Some("any") => ToolChoice::Required,
        Some("none") => ToolChoice::None,
        Some("tool") => ToolChoice::Tool(text_of(
            value.get("name").unwrap_or(&Value::Null),
            "tool_choice.name",
        )?),
        _ => return Err(bad("`tool_choice.type` must be auto, any, tool or none")),
    };
    Ok((Some(choice), parallel))
}

/// Tool-use ids Anthropic accepts: `^[a-zA-Z0-9_-]+$`. Others are mapped, the same way in every
/// turn (so a call and its result still match): invalid characters become `_`, with a hash of
/// the original appended so two ids cannot collide.
pub fn tool_id(id: &str) -> String {
    if !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return id.into();
    }
    let clean: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{clean}_{hash:016x}")
}

pub fn encode(r: &Request, losses: &mut Losses) -> Result<Vec<u8>, DecodeError> {
    let mut top = Map::new();
    top.insert("model".into(), r.model.clone().into());
    top.insert(
        "max_tokens".into(),
        r.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS).into(),
    );
    if !r.system.is_empty() {
        let blocks: Vec<Value> = r.system.iter().map(text_block).collect();
        top.insert("system".into(), blocks.into());
    }
    let mut messages: Vec<Value> = Vec::new();
    for m in &r.messages {
        let mut content = Vec::new();
        // Tool results lead a user turn; thinking leads an assistant turn.
        let mut ordered: Vec<&Part> = m.parts.iter().collect();
        ordered.sort_by_key(|p| match p {
            Part::ToolResult { .. } | Part::Thinking { .. } | Part::RedactedThinking { .. } => 0,
            _ => 1,
        });
        for p in ordered {
            if let Some(b) = encode_part(p, losses)? {
                content.push(b);
            }
        }
        if content.is_empty() {
            continue;
        }
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        match messages.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(c) = last["content"].as_array_mut() {
                    c.extend(content);
                }
            }
            _ => messages.push(json!({"role": role, "content": content})),
        }
    }
    top.insert("messages".into(), messages.into());
    if !r.tools.is_empty() {
        let tools: Vec<Value> = r
            .tools
            .iter()
            .map(|t| {
                let mut v = json!({"name": t.name, "input_schema": t.parameters});
                if let Some(d) = &t.description {
                    v["description"] = d.clone().into();
                }
                if t.strict.is_some() {
                    losses.hint(
                        "tools[].function.strict",
                        "Anthropic does not take strict tool schemas",
                    );
                }
                if let Some(c) = &t.cache {
                    v["cache_control"] = cache_value(c);
                }
                v
            })
            .collect();
        top.insert("tools".into(), tools.into());
    }
    let no_parallel = r.parallel_tool_calls == Some(false) && !r.tools.is_empty();
    let choice = match &r.tool_choice {
        None if no_parallel => Some(json!({"type": "auto"})),
        None => None,
        Some(ToolChoice::Auto) => Some(json!({"type": "auto"})),
        Some(ToolChoice::None) => Some(json!({"type": "none"})),
        Some(ToolChoice::Required) => Some(json!({"type": "any"})),
        Some(ToolChoice::Tool(n)) => Some(json!({"type": "tool", "name": n})),
    };
    if let Some(mut c) = choice {
        if no_parallel && c["type"] != "none" {
            c["disable_parallel_tool_use"] = true.into();
        }
        top.insert("tool_choice".into(), c);
    }
    if !r.stop.is_empty() {
        top.insert("stop_sequences".into(), r.stop.clone().into());
    }
    if let Some(t) = r.temperature {
        top.insert("temperature".into(), t.into());
    }
    if let Some(p) = r.top_p {
        top.insert("top_p".into(), p.into());
    }
    if let Some(k) = r.top_k {
        top.insert("top_k".into(), k.into());
    }
    if r.stream {
        top.insert("stream".into(), true.into());
    }
    if r.output.is_some() {
        losses.meaning(
            "response_format",
            "Anthropic has no JSON mode on this surface; the answer would not be held to it",
        );
    }
    if let Some(reasoning) = &r.reasoning {
        let budget = match (reasoning.budget_tokens, reasoning.effort.as_deref()) {
            (Some(b), _) => Some(b),
            (None, Some("minimal" | "none")) => None,
            (None, Some(e)) => {
                losses.hint(
                    "reasoning_effort",
                    "approximated by a thinking budget (low 2048, medium 8192, high 16384 tokens)",
                );
                Some(match e {
                    "low" => 2048,
                    "medium" => 8192,
                    _ => 16384,
                })
            }
            (None, None) => None,
        };
        if let Some(b) = budget {
            top.insert("thinking".into(), json!({"type": "enabled", "budget_tokens": b}));
            // The budget must fit under max_tokens.
            let max = r.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
            if max <= b {
                top.insert("max_tokens".into(), (b + DEFAULT_MAX_TOKENS).into());
            }
        }
    }
    if r.seed.is_some() {
        losses.meaning("seed", "Anthropic has no sampling seed");
    }
    if let Some(u) = &r.user {
        top.insert("metadata".into(), json!({"user_id": u}));
    }
    serde_json::to_vec(&Value::Object(top)).map_err(|e| bad(e.to_string()))
}

fn text_block(t: &Text) -> Value {
    let mut v = json!({"type": "text", "text": t.text});
    if let Some(c) = &t.cache {
        v["cache_control"] = cache_value(c);
    }
    v
}

fn source_value(s: &Source) -> Value {
    match s {
        Source::Base64 { media_type, data } => {
            json!({"type": "base64", "media_type": media_type, "data": data})
        }
        Source::Url(u) => json!({"type": "url", "url": u}),
    }
}

fn encode_part(p: &Part, losses: &mut Losses) -> Result<Option<Value>, DecodeError> {
    let with_cache = |mut v: Value, c: &Option<crate::canonical::Cache>| {
        if let Some(c) = c {
            v["cache_control"] = cache_value(c);
        }
        v
    };
    Ok(Some(match p {
        Part::Text(t) if t.text.is_empty() => return Ok(None),
        Part::Text(t) => text_block(t),
        Part::Image { source, cache } => {
            with_cache(json!({"type": "image", "source": source_value(source)}), cache)
        }
        Part::Document { source, name, cache } => {
            let mut v = json!({"type": "document", "source": source_value(source)});
            if let Some(n) = name {
                v["title"] = n.clone().into();
            }
            with_cache(v, cache)
        }
        Part::ToolCall { id, name, arguments } => {
            let input: Value = match serde_json::from_str(arguments) {
                Ok(v @ Value::Object(_)) => v,
                _ if arguments.trim().is_empty() => json!({}),
                _ => {
                    return Err(bad(format!(
                        "the arguments of tool call `{id}` are not a JSON object"
                    )));
                }
            };
            json!({"type": "tool_use", "id": tool_id(id), "name": name, "input": input})
        }
        Part::ToolResult {
            id,
            content,
            is_error,
            cache,
        } => {
            let inner: Vec<Value> = content
                .iter()
                .map(|c| encode_part(c, losses))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .flatten()
                .collect();
            let mut v = json!({"type": "tool_result", "tool_use_id": tool_id(id), "content": inner});
            if *is_error {
                v["is_error"] = true.into();
            }
            with_cache(v, cache)
        }
        Part::Thinking { text, signature } => match signature {
            Some(s) => json!({"type": "thinking", "thinking": text, "signature": s}),
            None => {
                losses.hint(
                    "reasoning_content",
                    "reasoning without a signature cannot be replayed to Anthropic",
                );
                return Ok(None);
            }
        },
        Part::RedactedThinking { data } => json!({"type": "redacted_thinking", "data": data}),
    }))
}
