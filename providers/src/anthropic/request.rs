//! Anthropic Messages requests (`POST /v1/messages`) <-> the canonical request.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::canonical::{
    Cache, Losses, Message, OutputFormat, Part, Reasoning, Request, Role, Source, Text, Tool, ToolChoice,
};
use crate::codec::{
    DecodeError, bad, cache_of, fields, opt_f64, opt_str, opt_u64, plain_text, text_of, tree,
};

/// `max_tokens` is required by Anthropic; a translated call that gives none gets this.
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

pub fn decode(body: &[u8], losses: &mut Losses) -> Result<Request, DecodeError> {
    // Members one by one (a member given twice is refused), the conversation's messages into
    // typed structs; what needs a tree gets one.
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
                    losses.hint(key, "an Anthropic-only setting, not sent");
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
    let list: Vec<WireMessageIn<'_>> =
        serde_json::from_str(raw.get()).map_err(|e| bad(format!("`messages`: {e}")))?;
    for (i, m) in list.into_iter().enumerate() {
        let role = match m.role.as_deref() {
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            other => {
                return Err(bad(format!(
                    "messages[{i}]: unknown role `{}`",
                    other.unwrap_or("")
                )));
            }
        };
        // A plain string (most turns of a simple conversation) without a tree.
        let content = match m.content {
            Some(raw) => match plain_text(raw, "messages[].content")? {
                Some(text) => Value::String(text),
                None => tree(raw)?,
            },
            None => Value::Null,
        };
        let parts = match content {
            Value::String(text) => vec![Part::Text(Text { text, cache: None })],
            Value::Array(blocks) => blocks
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
    let messages = encode_messages(r, losses)?;
    let tools: Vec<WireTool<'_>> = r
        .tools
        .iter()
        .map(|t| {
            if t.strict.is_some() {
                losses.hint(
                    "tools[].function.strict",
                    "Anthropic does not take strict tool schemas",
                );
            }
            WireTool {
                name: &t.name,
                description: t.description.as_deref(),
                input_schema: &t.parameters,
                cache_control: t.cache.as_ref().map(CacheControl::from),
            }
        })
        .collect();
    let no_parallel = r.parallel_tool_calls == Some(false) && !r.tools.is_empty();
    let choice = |ty, name| WireToolChoice {
        ty,
        name,
        disable_parallel_tool_use: no_parallel && ty != "none",
    };
    let tool_choice = match &r.tool_choice {
        None if no_parallel => Some(choice("auto", None)),
        None => None,
        Some(ToolChoice::Auto) => Some(choice("auto", None)),
        Some(ToolChoice::None) => Some(choice("none", None)),
        Some(ToolChoice::Required) => Some(choice("any", None)),
        Some(ToolChoice::Tool(n)) => Some(choice("tool", Some(n.as_str()))),
    };
    if r.output.is_some() {
        losses.meaning(
            "response_format",
            "Anthropic has no JSON mode on this surface; the answer would not be held to it",
        );
    }
    let (thinking, max_tokens) = thinking(r, losses);
    if r.seed.is_some() {
        losses.meaning("seed", "Anthropic has no sampling seed");
    }
    let out = WireRequest {
        model: &r.model,
        max_tokens,
        system: r.system.iter().map(text_block).collect(),
        messages,
        tools,
        tool_choice,
        stop_sequences: &r.stop,
        temperature: r.temperature,
        top_p: r.top_p,
        top_k: r.top_k,
        stream: r.stream,
        thinking,
        metadata: r.user.as_deref().map(|user_id| WireMetadata { user_id }),
    };
    serde_json::to_vec(&out).map_err(|e| bad(e.to_string()))
}

/// The conversation as Anthropic's alternating turns: consecutive messages of one role merge.
fn encode_messages<'a>(r: &'a Request, losses: &mut Losses) -> Result<Vec<WireMessage<'a>>, DecodeError> {
    let mut messages: Vec<WireMessage<'_>> = Vec::with_capacity(r.messages.len());
    for m in &r.messages {
        let mut content = Vec::with_capacity(m.parts.len());
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
            Some(last) if last.role == role => last.content.extend(content),
            _ => messages.push(WireMessage { role, content }),
        }
    }
    Ok(messages)
}

/// The thinking budget a reasoning setting asks for, and the `max_tokens` it must fit under.
fn thinking(r: &Request, losses: &mut Losses) -> (Option<WireThinking>, u64) {
    let mut max_tokens = r.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    let mut thinking = None;
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
            thinking = Some(WireThinking {
                ty: "enabled",
                budget_tokens: b,
            });
            // The budget must fit under max_tokens.
            if max_tokens <= b {
                max_tokens = b + DEFAULT_MAX_TOKENS;
            }
        }
    }
    (thinking, max_tokens)
}

/// One of `messages`, as the decoder reads it.
#[derive(Deserialize)]
struct WireMessageIn<'a> {
    #[serde(borrow)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

/// A Messages request, written from typed structs straight to bytes (no JSON tree).
#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    system: Vec<WireBlock<'a>>,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<WireToolChoice<'a>>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    stop_sequences: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<WireThinking>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<WireMetadata<'a>>,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: Vec<WireBlock<'a>>,
}

#[derive(Serialize)]
struct WireTool<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    cache_control: Option<CacheControl<'a>>,
}

#[derive(Serialize)]
struct WireToolChoice<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    disable_parallel_tool_use: bool,
}

#[derive(Serialize)]
struct WireThinking {
    #[serde(rename = "type")]
    ty: &'static str,
    budget_tokens: u64,
}

#[derive(Serialize)]
struct WireMetadata<'a> {
    user_id: &'a str,
}

/// `cache_control`: `{"type":"ephemeral"}`, with its `ttl` when given.
#[derive(Serialize)]
struct CacheControl<'a> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<&'a str>,
}

impl<'a> From<&'a Cache> for CacheControl<'a> {
    fn from(c: &'a Cache) -> CacheControl<'a> {
        CacheControl {
            ty: "ephemeral",
            ttl: c.ttl.as_deref(),
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireBlock<'a> {
    Text {
        text: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl<'a>>,
    },
    Image {
        source: WireSource<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl<'a>>,
    },
    Document {
        source: WireSource<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        title: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl<'a>>,
    },
    ToolUse {
        id: String,
        name: &'a str,
        input: Value,
    },
    ToolResult {
        tool_use_id: String,
        content: Vec<WireBlock<'a>>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        is_error: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        cache_control: Option<CacheControl<'a>>,
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
#[serde(tag = "type", rename_all = "snake_case")]
enum WireSource<'a> {
    Base64 { media_type: &'a str, data: &'a str },
    Url { url: &'a str },
}

impl<'a> From<&'a Source> for WireSource<'a> {
    fn from(s: &'a Source) -> WireSource<'a> {
        match s {
            Source::Base64 { media_type, data } => WireSource::Base64 { media_type, data },
            Source::Url(url) => WireSource::Url { url },
        }
    }
}

fn text_block(t: &Text) -> WireBlock<'_> {
    WireBlock::Text {
        text: &t.text,
        cache_control: t.cache.as_ref().map(CacheControl::from),
    }
}

fn encode_part<'a>(p: &'a Part, losses: &mut Losses) -> Result<Option<WireBlock<'a>>, DecodeError> {
    let cache = |c: &'a Option<Cache>| c.as_ref().map(CacheControl::from);
    Ok(Some(match p {
        Part::Text(t) if t.text.is_empty() => return Ok(None),
        Part::Text(t) => text_block(t),
        Part::Image { source, cache: c } => WireBlock::Image {
            source: source.into(),
            cache_control: cache(c),
        },
        Part::Document {
            source,
            name,
            cache: c,
        } => WireBlock::Document {
            source: source.into(),
            title: name.as_deref(),
            cache_control: cache(c),
        },
        Part::ToolCall { id, name, arguments } => {
            // Parsed and written again, so Anthropic reads the object the gates read (one
            // parser's view of duplicate keys), not the client's raw text.
            let input: Value = match serde_json::from_str(arguments) {
                Ok(v @ Value::Object(_)) => v,
                _ if arguments.trim().is_empty() => Value::Object(Default::default()),
                _ => {
                    return Err(bad(format!(
                        "the arguments of tool call `{id}` are not a JSON object"
                    )));
                }
            };
            WireBlock::ToolUse {
                id: tool_id(id),
                name,
                input,
            }
        }
        Part::ToolResult {
            id,
            content,
            is_error,
            cache: c,
        } => {
            let mut inner = Vec::with_capacity(content.len());
            for part in content {
                inner.extend(encode_part(part, losses)?);
            }
            WireBlock::ToolResult {
                tool_use_id: tool_id(id),
                content: inner,
                is_error: *is_error,
                cache_control: cache(c),
            }
        }
        Part::Thinking { text, signature } => match signature {
            Some(s) => WireBlock::Thinking {
                thinking: text,
                signature: s,
            },
            None => {
                losses.hint(
                    "reasoning_content",
                    "reasoning without a signature cannot be replayed to Anthropic",
                );
                return Ok(None);
            }
        },
        Part::RedactedThinking { data } => WireBlock::RedactedThinking { data },
    }))
}
