//! OpenAI Chat Completions requests (`POST /v1/chat/completions`) <-> the canonical request.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::canonical::{
    Cache, Losses, Message, OutputFormat, Part, Reasoning, Request, Role, Source, Text, Tool, ToolChoice,
};
use crate::codec::{
    DecodeError, bad, cache_of, fields, opt_f64, opt_str, opt_u64, plain_text, text_of, tree,
};

/// Decodes a Chat Completions request. What has no canonical place is added to `losses`.
pub fn decode(body: &[u8], losses: &mut Losses) -> Result<Request, DecodeError> {
    // Members are read one by one from the body, the conversation into typed structs; only
    // the members that need one are parsed into a tree.
    let top = fields(body)?;
    let mut r = Request::default();
    for (key, raw) in &top {
        let key: &str = key;
        if key == "messages" {
            decode_messages(raw, &mut r, losses)?;
            continue;
        }
        let value = &tree(raw)?;
        match key {
            "model" => r.model = text_of(value, "model")?,
            "tools" => r.tools = decode_tools(value, losses)?,
            "functions" => r.tools.extend(decode_functions(value)?),
            "tool_choice" => r.tool_choice = decode_tool_choice(value)?,
            "function_call" => {
                r.tool_choice = match value {
                    Value::String(s) if s == "auto" => Some(ToolChoice::Auto),
                    Value::String(s) if s == "none" => Some(ToolChoice::None),
                    Value::Object(m) => Some(ToolChoice::Tool(text_of(
                        m.get("name").unwrap_or(&Value::Null),
                        "function_call.name",
                    )?)),
                    _ => return Err(bad("`function_call` must be \"auto\", \"none\" or {\"name\"}")),
                }
            }
            "parallel_tool_calls" => r.parallel_tool_calls = value.as_bool(),
            "stop" => {
                r.stop = match value {
                    Value::Null => Vec::new(),
                    Value::String(s) => vec![s.clone()],
                    Value::Array(a) => a.iter().map(|s| text_of(s, "stop[]")).collect::<Result<_, _>>()?,
                    _ => return Err(bad("`stop` must be a string or an array of strings")),
                }
            }
            "temperature" => r.temperature = opt_f64(value, key)?,
            "top_p" => r.top_p = opt_f64(value, key)?,
            "max_tokens" | "max_completion_tokens" => {
                r.max_tokens = r.max_tokens.max(opt_u64(value, key)?);
            }
            "stream" => r.stream = value.as_bool().unwrap_or(false),
            "stream_options" => {
                r.stream_usage = value
                    .get("include_usage")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
            }
            "response_format" => r.output = decode_response_format(value)?,
            "reasoning_effort" => {
                if let Some(e) = opt_str(value, key)? {
                    r.reasoning = Some(Reasoning {
                        budget_tokens: None,
                        effort: Some(e),
                    });
                }
            }
            "user" => r.user = opt_str(value, key)?,
            "n" => {
                if value.as_u64().is_some_and(|n| n != 1) {
                    losses.meaning("n", "only one answer is generated");
                }
            }
            "logprobs" | "top_logprobs" => {
                if !matches!(value, Value::Null | Value::Bool(false)) {
                    losses.meaning(key, "no log probabilities are returned");
                }
            }
            "presence_penalty" | "frequency_penalty" => {
                if value.as_f64().is_some_and(|p| p != 0.0) {
                    losses.meaning(key, "sampling is not penalised");
                }
            }
            "seed" => {
                r.seed = match value {
                    Value::Null => None,
                    v => Some(v.as_i64().ok_or_else(|| bad("`seed` must be an integer"))?),
                }
            }
            "logit_bias" | "modalities" | "audio" | "prediction" | "web_search_options" => {
                if !value.is_null() {
                    losses.meaning(key, "the target has no such feature");
                }
            }
            // Hints and bookkeeping the target does without.
            "metadata" | "store" | "service_tier" | "prompt_cache_key" | "safety_identifier"
            | "verbosity" => {
                if !value.is_null() {
                    losses.hint(key, "an OpenAI-only setting, not sent");
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

fn decode_messages(raw: &RawValue, r: &mut Request, losses: &mut Losses) -> Result<(), DecodeError> {
    if !raw.get().starts_with('[') {
        return Err(bad("`messages` must be an array"));
    }
    let list: Vec<WireMessage<'_>> =
        serde_json::from_str(raw.get()).map_err(|e| bad(format!("`messages`: {e}")))?;
    for (i, m) in list.iter().enumerate() {
        let role = m.role.as_deref().unwrap_or("");
        match role {
            "system" | "developer" => {
                if !r.messages.is_empty() {
                    losses.meaning(
                        "messages[].role=system",
                        "instructions after the conversation started would move to its start",
                    );
                }
                for t in message_content(m.content, i, losses)? {
                    match t {
                        Part::Text(t) => r.system.push(t),
                        _ => return Err(bad(format!("messages[{i}]: instructions must be text"))),
                    }
                }
            }
            "user" => {
                let parts = message_content(m.content, i, losses)?;
                push(r, Role::User, parts);
            }
            "assistant" => {
                let mut parts = Vec::new();
                let blocks = m.thinking_blocks.map(tree).transpose()?;
                if let Some(Value::Array(blocks)) = &blocks {
                    for b in blocks {
                        match b.get("type").and_then(Value::as_str) {
                            Some("thinking") => parts.push(Part::Thinking {
                                text: b.get("thinking").and_then(Value::as_str).unwrap_or("").into(),
                                signature: b.get("signature").and_then(Value::as_str).map(Into::into),
                            }),
                            Some("redacted_thinking") => parts.push(Part::RedactedThinking {
                                data: b.get("data").and_then(Value::as_str).unwrap_or("").into(),
                            }),
                            _ => return Err(bad(format!("messages[{i}].thinking_blocks: unknown block"))),
                        }
                    }
                } else if let Some(text) = m.reasoning_content.as_deref() {
                    parts.push(Part::Thinking {
                        text: text.into(),
                        signature: None,
                    });
                }
                parts.extend(message_content(m.content, i, losses)?);
                let calls = m.tool_calls.map(tree).transpose()?;
                if let Some(Value::Array(calls)) = &calls {
                    for c in calls {
                        let f = c.get("function").unwrap_or(&Value::Null);
                        parts.push(Part::ToolCall {
                            id: text_of(c.get("id").unwrap_or(&Value::Null), "tool_calls[].id")?,
                            name: text_of(
                                f.get("name").unwrap_or(&Value::Null),
                                "tool_calls[].function.name",
                            )?,
                            arguments: f.get("arguments").and_then(Value::as_str).unwrap_or("{}").into(),
                        });
                    }
                }
                let call = m.function_call.map(tree).transpose()?;
                if let Some(f) = call.as_ref().filter(|f| f.is_object()) {
                    let name = text_of(f.get("name").unwrap_or(&Value::Null), "function_call.name")?;
                    parts.push(Part::ToolCall {
                        id: name.clone(),
                        arguments: f.get("arguments").and_then(Value::as_str).unwrap_or("{}").into(),
                        name,
                    });
                }
                if m.refusal.is_some() {
                    losses.hint("messages[].refusal", "a past refusal is not replayed");
                }
                push(r, Role::Assistant, parts);
            }
            "tool" | "function" => {
                let id = match role {
                    "tool" => text_of(&opt_tree(m.tool_call_id)?, "tool_call_id")?,
                    _ => text_of(&opt_tree(m.name)?, "name")?,
                };
                let content = message_content(m.content, i, losses)?;
                let part = Part::ToolResult {
                    id,
                    content,
                    is_error: false,
                    cache: None,
                };
                push(r, Role::User, vec![part]);
            }
            other => return Err(bad(format!("messages[{i}]: unknown role `{other}`"))),
        }
        if m.name.is_some() {
            losses.hint("messages[].name", "participant names are not sent");
        }
    }
    Ok(())
}

/// One message of `messages`: what the decoder reads, each left unparsed until it is.
#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(borrow)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    thinking_blocks: Option<&'a RawValue>,
    #[serde(borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow)]
    tool_calls: Option<&'a RawValue>,
    #[serde(borrow)]
    function_call: Option<&'a RawValue>,
    #[serde(borrow)]
    refusal: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_call_id: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
}

fn opt_tree(raw: Option<&RawValue>) -> Result<Value, DecodeError> {
    raw.map_or(Ok(Value::Null), tree)
}

/// A message's `content`; a plain string (most of every conversation) without a tree.
fn message_content(raw: Option<&RawValue>, i: usize, losses: &mut Losses) -> Result<Vec<Part>, DecodeError> {
    if let Some(text) = raw
        .map(|r| plain_text(r, "messages[].content"))
        .transpose()?
        .flatten()
    {
        return Ok(vec![Part::Text(Text { text, cache: None })]);
    }
    content_parts(Some(&opt_tree(raw)?), i, losses)
}

/// Appends to the last message when it has the same role (tool results and the user's next
/// words are one user turn), else starts a new one.
fn push(r: &mut Request, role: Role, parts: Vec<Part>) {
    match r.messages.last_mut() {
        Some(last) if last.role == role => last.parts.extend(parts),
        _ => r.messages.push(Message { role, parts }),
    }
}

/// A message's `content`: a string, an array of parts, or null.
fn content_parts(content: Option<&Value>, i: usize, losses: &mut Losses) -> Result<Vec<Part>, DecodeError> {
    match content {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![Part::Text(Text {
            text: s.clone(),
            cache: None,
        })]),
        Some(Value::Array(items)) => items.iter().map(|p| content_part(p, i, losses)).collect(),
        Some(_) => Err(bad(format!("messages[{i}].content must be a string or an array"))),
    }
}

fn content_part(p: &Value, i: usize, losses: &mut Losses) -> Result<Part, DecodeError> {
    let cache = cache_of(p);
    match p.get("type").and_then(Value::as_str) {
        Some("text") => Ok(Part::Text(Text {
            text: text_of(p.get("text").unwrap_or(&Value::Null), "content[].text")?,
            cache,
        })),
        Some("image_url") => {
            let img = p.get("image_url").unwrap_or(&Value::Null);
            let url = text_of(img.get("url").unwrap_or(&Value::Null), "content[].image_url.url")?;
            if img
                .get("detail")
                .and_then(Value::as_str)
                .is_some_and(|d| d != "auto")
            {
                losses.hint(
                    "messages[].content[].image_url.detail",
                    "the target picks the detail",
                );
            }
            Ok(Part::Image {
                source: source_of_url(&url),
                cache,
            })
        }
        Some("file") => {
            let f = p.get("file").unwrap_or(&Value::Null);
            match f.get("file_data").and_then(Value::as_str) {
                Some(data) => Ok(Part::Document {
                    source: source_of_url(data),
                    name: f.get("filename").and_then(Value::as_str).map(Into::into),
                    cache,
                }),
                None => Err(bad(format!(
                    "messages[{i}]: a file is translated only when sent inline (`file_data`), not by `file_id`"
                ))),
            }
        }
        Some(other) => Err(bad(format!(
            "messages[{i}]: content parts of type `{other}` cannot be translated"
        ))),
        None => Err(bad(format!("messages[{i}]: a content part needs a `type`"))),
    }
}

/// A `data:` URL becomes inline base64; anything else stays a URL.
fn source_of_url(url: &str) -> Source {
    if let Some(rest) = url.strip_prefix("data:")
        && let Some((media_type, data)) = rest.split_once(";base64,")
    {
        return Source::Base64 {
            media_type: media_type.into(),
            data: data.into(),
        };
    }
    Source::Url(url.into())
}

fn decode_tools(value: &Value, losses: &mut Losses) -> Result<Vec<Tool>, DecodeError> {
    let Value::Array(list) = value else {
        return Err(bad("`tools` must be an array"));
    };
    let mut tools = Vec::with_capacity(list.len());
    for t in list {
        match t.get("type").and_then(Value::as_str) {
            Some("function") => {
                let f = t.get("function").unwrap_or(&Value::Null);
                tools.push(function_tool(f, cache_of(t))?);
            }
            other => {
                losses.meaning(
                    format!("tools[].type={}", other.unwrap_or("?")),
                    "only function tools translate",
                );
            }
        }
    }
    Ok(tools)
}

fn decode_functions(value: &Value) -> Result<Vec<Tool>, DecodeError> {
    let Value::Array(list) = value else {
        return Err(bad("`functions` must be an array"));
    };
    list.iter().map(|f| function_tool(f, None)).collect()
}

fn function_tool(f: &Value, cache: Option<Cache>) -> Result<Tool, DecodeError> {
    Ok(Tool {
        name: text_of(f.get("name").unwrap_or(&Value::Null), "tools[].function.name")?,
        description: f.get("description").and_then(Value::as_str).map(Into::into),
        parameters: f
            .get("parameters")
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        strict: f.get("strict").and_then(Value::as_bool),
        cache,
    })
}

fn decode_tool_choice(value: &Value) -> Result<Option<ToolChoice>, DecodeError> {
    Ok(match value {
        Value::Null => None,
        Value::String(s) => Some(match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            _ => return Err(bad("`tool_choice` must be auto, none, required or a function")),
        }),
        Value::Object(m) => {
            let name = m.get("function").and_then(|f| f.get("name"));
            Some(ToolChoice::Tool(text_of(
                name.unwrap_or(&Value::Null),
                "tool_choice.function.name",
            )?))
        }
        _ => return Err(bad("`tool_choice` must be a string or an object")),
    })
}

fn decode_response_format(value: &Value) -> Result<Option<OutputFormat>, DecodeError> {
    Ok(match value.get("type").and_then(Value::as_str) {
        None if value.is_null() => None,
        Some("text") => None,
        Some("json_object") => Some(OutputFormat::JsonObject),
        Some("json_schema") => {
            let s = value.get("json_schema").unwrap_or(&Value::Null);
            Some(OutputFormat::JsonSchema {
                name: s.get("name").and_then(Value::as_str).unwrap_or("output").into(),
                schema: s.get("schema").cloned().unwrap_or(Value::Null),
                strict: s.get("strict").and_then(Value::as_bool),
            })
        }
        _ => {
            return Err(bad(
                "`response_format.type` must be text, json_object or json_schema",
            ));
        }
    })
}

/// Encodes a canonical request as Chat Completions. A stream always asks for its usage (the
/// gateway meters it and the client's dialect may report it).
pub fn encode(r: &Request, losses: &mut Losses) -> Result<Vec<u8>, DecodeError> {
    let mut top = Map::new();
    top.insert("model".into(), r.model.clone().into());
    let mut messages = Vec::new();
    if !r.system.is_empty() {
        if r.system.iter().any(|t| t.cache.is_some()) {
            losses.hint("system[].cache_control", "OpenAI caches prompts automatically");
        }
        let text: Vec<&str> = r.system.iter().map(|t| t.text.as_str()).collect();
        messages.push(json!({"role": "system", "content": text.join("\n\n")}));
    }
    for m in &r.messages {
        match m.role {
            Role::User => encode_user(m, &mut messages, losses)?,
            Role::Assistant => messages.push(encode_assistant(m, losses)),
        }
    }
    top.insert("messages".into(), messages.into());
    if !r.tools.is_empty() {
        let tools: Vec<Value> = r
            .tools
            .iter()
            .map(|t| {
                if t.cache.is_some() {
                    losses.hint("tools[].cache_control", "OpenAI caches prompts automatically");
                }
                let mut f = json!({"name": t.name, "parameters": t.parameters});
                if let Some(d) = &t.description {
                    f["description"] = d.clone().into();
                }
                if let Some(s) = t.strict {
                    f["strict"] = s.into();
                }
                json!({"type": "function", "function": f})
            })
            .collect();
        top.insert("tools".into(), tools.into());
        if let Some(p) = r.parallel_tool_calls {
            top.insert("parallel_tool_calls".into(), p.into());
        }
    }
    if let Some(c) = &r.tool_choice {
        let v = match c {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Tool(n) => json!({"type": "function", "function": {"name": n}}),
        };
        top.insert("tool_choice".into(), v);
    }
    if !r.stop.is_empty() {
        top.insert("stop".into(), r.stop.clone().into());
    }
    if let Some(t) = r.temperature {
        top.insert("temperature".into(), t.into());
    }
    if let Some(p) = r.top_p {
        top.insert("top_p".into(), p.into());
    }
    if r.top_k.is_some() {
        losses.meaning("top_k", "OpenAI has no top-k sampling");
    }
    if let Some(n) = r.max_tokens {
        top.insert("max_completion_tokens".into(), n.into());
    }
    if r.stream {
        top.insert("stream".into(), true.into());
        top.insert("stream_options".into(), json!({"include_usage": true}));
    }
    match &r.output {
        None => {}
        Some(OutputFormat::JsonObject) => {
            top.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some(OutputFormat::JsonSchema { name, schema, strict }) => {
            let mut s = json!({"name": name, "schema": schema});
            if let Some(strict) = strict {
                s["strict"] = (*strict).into();
            }
            top.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": s}),
            );
        }
    }
    if let Some(reasoning) = &r.reasoning {
        let effort = match (&reasoning.effort, reasoning.budget_tokens) {
            (Some(e), _) => Some(e.clone()),
            (None, Some(b)) => {
                losses.hint(
                    "thinking.budget_tokens",
                    "approximated by reasoning_effort (< 4096 low, < 16384 medium, else high)",
                );
                Some(effort_of_budget(b).into())
            }
            (None, None) => None,
        };
        if let Some(e) = effort {
            top.insert("reasoning_effort".into(), e.into());
        }
    }
    if let Some(seed) = r.seed {
        top.insert("seed".into(), seed.into());
    }
    if let Some(u) = &r.user {
        top.insert("user".into(), u.clone().into());
    }
    serde_json::to_vec(&Value::Object(top)).map_err(|e| bad(e.to_string()))
}

/// The reasoning effort closest to a thinking budget.
pub fn effort_of_budget(budget: u64) -> &'static str {
    match budget {
        0..4096 => "low",
        4096..16384 => "medium",
        _ => "high",
    }
}

fn encode_user(m: &Message, out: &mut Vec<Value>, losses: &mut Losses) -> Result<(), DecodeError> {
    let mut content = Vec::new();
    for p in &m.parts {
        match p {
            Part::ToolResult {
                id,
                content: result,
                is_error,
                cache,
            } => {
                if *is_error {
                    losses.hint("tool_result.is_error", "OpenAI tool messages carry no error flag");
                }
                if cache.is_some() {
                    losses.hint("tool_result.cache_control", "OpenAI caches prompts automatically");
                }
                let mut text = String::new();
                for r in result {
                    match r {
                        Part::Text(t) => text.push_str(&t.text),
                        _ => {
                            losses.meaning(
                                "tool_result.content[] (not text)",
                                "OpenAI tool results are text only",
                            );
                        }
                    }
                }
                out.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
            other => {
                if let Some(v) = encode_part(other, losses)? {
                    content.push(v);
                }
            }
        }
    }
    if !content.is_empty() {
        // Plain text stays a string, as most clients send it.
        let v = match content.as_slice() {
            [one] if one.get("type") == Some(&json!("text")) => one["text"].clone(),
            _ => Value::Array(content),
        };
        out.push(json!({"role": "user", "content": v}));
    }
    Ok(())
}

fn encode_part(p: &Part, losses: &mut Losses) -> Result<Option<Value>, DecodeError> {
    let cached = |c: &Option<Cache>, losses: &mut Losses| {
        if c.is_some() {
            losses.hint("content[].cache_control", "OpenAI caches prompts automatically");
        }
    };
    Ok(Some(match p {
        Part::Text(t) => {
            cached(&t.cache, losses);
            json!({"type": "text", "text": t.text})
        }
        Part::Image { source, cache } => {
            cached(cache, losses);
            json!({"type": "image_url", "image_url": {"url": url_of(source)}})
        }
        Part::Document { source, name, cache } => {
            cached(cache, losses);
            match source {
                Source::Base64 { .. } => json!({"type": "file", "file": {
                    "filename": name.as_deref().unwrap_or("document.pdf"),
                    "file_data": url_of(source)}}),
                Source::Url(_) => {
                    losses.meaning("document.source.url", "OpenAI takes documents inline only");
                    return Ok(None);
                }
            }
        }
        _ => {
            return Err(bad(
                "a user message holds text, images, documents and tool results only",
            ));
        }
    }))
}

fn url_of(s: &Source) -> String {
    match s {
        Source::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
        Source::Url(u) => u.clone(),
    }
}

fn encode_assistant(m: &Message, losses: &mut Losses) -> Value {
    let mut text = String::new();
    let mut calls = Vec::new();
    for p in &m.parts {
        match p {
            Part::Text(t) => text.push_str(&t.text),
            Part::ToolCall { id, name, arguments } => calls.push(json!({
                "id": id, "type": "function", "function": {"name": name, "arguments": arguments}})),
            Part::Thinking { .. } | Part::RedactedThinking { .. } => {
                losses.hint(
                    "thinking",
                    "OpenAI Chat does not take reasoning back; it is not replayed",
                );
            }
            _ => losses.meaning(
                "assistant content (not text or tool calls)",
                "OpenAI cannot replay it",
            ),
        }
    }
    let mut msg = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { text.into() }});
    if !calls.is_empty() {
        msg["tool_calls"] = calls.into();
    }
    msg
}
