//! Gemini `GenerateContentRequest` bodies <-> the canonical request. The model and the stream
//! flag are not in the body: the caller passes them (they come from, and go to, the URL).

use std::borrow::Cow;

use serde_json::{Map, Value, json};

use super::field;
use crate::canonical::{
    Losses, Message, OutputFormat, Part, Reasoning, Request, Role, Source, Text, Tool, ToolChoice,
};
use crate::codec::{DecodeError, bad, opt_f64, opt_u64, text_of};

/// A snake_case field name as its camelCase twin (the API accepts both spellings).
fn camel(key: &str) -> Cow<'_, str> {
    if !key.contains('_') {
        return Cow::Borrowed(key);
    }
    let mut out = String::with_capacity(key.len());
    let mut up = false;
    for c in key.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Ids for calls that came without one (Gemini's are optional), so a later `functionResponse`
/// finds its call by name, first unanswered first.
#[derive(Default)]
struct Calls {
    next: usize,
    open: Vec<(String, String)>,
}

impl Calls {
    fn call(&mut self, id: Option<&str>, name: &str) -> String {
        let id = match id.filter(|i| !i.is_empty()) {
            Some(i) => i.to_string(),
            None => {
                self.next += 1;
                format!("call_{}_{}", self.next, name)
            }
        };
        self.open.push((id.clone(), name.into()));
        id
    }

    fn result(&mut self, id: Option<&str>, name: &str) -> String {
        let at = match id.filter(|i| !i.is_empty()) {
            Some(i) => self.open.iter().position(|(o, _)| o == i),
            None => self.open.iter().position(|(_, n)| n == name),
        };
        match (at, id) {
            (Some(at), _) => self.open.remove(at).0,
            (None, Some(i)) if !i.is_empty() => i.into(),
            (None, _) => format!("call_unmatched_{name}"),
        }
    }
}

pub fn decode(body: &[u8], stream: bool, losses: &mut Losses) -> Result<Request, DecodeError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
    let Value::Object(top) = v else {
        return Err(bad("the body must be a JSON object"));
    };
    let mut r = Request {
        stream,
        stream_usage: stream,
        ..Request::default()
    };
    let mut calls = Calls::default();
    let mut allowed: Option<Vec<String>> = None;
    for (key, value) in &top {
        if value.is_null() {
            continue;
        }
        match &*camel(key) {
            // Some clients repeat the model in the body; the URL's is the one called.
            "model" => {}
            "contents" => {
                let Value::Array(list) = value else {
                    return Err(bad("`contents` must be an array"));
                };
                for (i, c) in list.iter().enumerate() {
                    let role = match c.get("role").and_then(Value::as_str) {
                        None | Some("user") => Role::User,
                        Some("model") => Role::Assistant,
                        Some(other) => return Err(bad(format!("contents[{i}]: unknown role `{other}`"))),
                    };
                    let parts = decode_parts(c, i, &mut calls, losses)?;
                    match r.messages.last_mut() {
                        Some(last) if last.role == role => last.parts.extend(parts),
                        _ => r.messages.push(Message { role, parts }),
                    }
                }
            }
            "systemInstruction" => {
                for p in value.get("parts").and_then(Value::as_array).into_iter().flatten() {
                    r.system.push(Text {
                        text: text_of(
                            p.get("text").unwrap_or(&Value::Null),
                            "systemInstruction.parts[].text",
                        )?,
                        cache: None,
                    });
                }
            }
            "tools" => {
                let Value::Array(list) = value else {
                    return Err(bad("`tools` must be an array"));
                };
                for t in list {
                    let Value::Object(t) = t else {
                        return Err(bad("`tools[]` must be objects"));
                    };
                    for (k, decls) in t {
                        if &*camel(k) != "functionDeclarations" {
                            losses.meaning(
                                format!("tools[].{k}"),
                                "Gemini's built-in tools run only on Gemini",
                            );
                            continue;
                        }
                        for d in decls.as_array().into_iter().flatten() {
                            let parameters = field(d, "parametersJsonSchema", "parameters_json_schema")
                                .or_else(|| field(d, "parameters", "parameters"))
                                .cloned()
                                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
                            r.tools.push(Tool {
                                name: text_of(
                                    d.get("name").unwrap_or(&Value::Null),
                                    "functionDeclarations[].name",
                                )?,
                                description: d.get("description").and_then(Value::as_str).map(Into::into),
                                parameters,
                                strict: None,
                                cache: None,
                            });
                        }
                    }
                }
            }
            "toolConfig" => {
                let Some(f) = field(value, "functionCallingConfig", "function_calling_config") else {
                    continue;
                };
                r.tool_choice = match f.get("mode").and_then(Value::as_str) {
                    None | Some("AUTO" | "MODE_UNSPECIFIED") => Some(ToolChoice::Auto),
                    Some("ANY") => Some(ToolChoice::Required),
                    Some("NONE") => Some(ToolChoice::None),
                    Some("VALIDATED") => {
                        losses.meaning(
                            "toolConfig.functionCallingConfig.mode",
                            "VALIDATED has no equivalent",
                        );
                        Some(ToolChoice::Auto)
                    }
                    Some(other) => {
                        return Err(bad(format!("functionCallingConfig.mode `{other}` is not known")));
                    }
                };
                allowed = field(f, "allowedFunctionNames", "allowed_function_names")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).map(Into::into).collect());
            }
            "generationConfig" => decode_config(value, &mut r, losses)?,
            "safetySettings" => losses.hint("safetySettings", "Gemini's safety thresholds, not sent"),
            "labels" => losses.hint("labels", "Gemini billing labels, not sent"),
            "cachedContent" => losses.meaning(
                "cachedContent",
                "a Gemini context cache holds content the target cannot see",
            ),
            other => losses.meaning(other.to_string(), "a field this gateway does not translate"),
        }
    }
    if let Some(names) = allowed {
        match (names.as_slice(), &r.tool_choice) {
            ([], _) => {}
            ([one], Some(ToolChoice::Required)) => r.tool_choice = Some(ToolChoice::Tool(one.clone())),
            _ => losses.meaning(
                "toolConfig.functionCallingConfig.allowedFunctionNames",
                "only a single forced function has an equivalent",
            ),
        }
    }
    Ok(r)
}

fn decode_config(value: &Value, r: &mut Request, losses: &mut Losses) -> Result<(), DecodeError> {
    let Value::Object(cfg) = value else {
        return Err(bad("`generationConfig` must be an object"));
    };
    let mut mime: Option<String> = None;
    let mut schema: Option<Value> = None;
    for (key, value) in cfg {
        if value.is_null() {
            continue;
        }
        match &*camel(key) {
            "temperature" => r.temperature = opt_f64(value, "temperature")?,
            "topP" => r.top_p = opt_f64(value, "topP")?,
            "topK" => r.top_k = opt_u64(value, "topK")?,
            "maxOutputTokens" => r.max_tokens = opt_u64(value, "maxOutputTokens")?,
            "seed" => {
                r.seed = Some(
                    value
                        .as_i64()
                        .ok_or_else(|| bad("`generationConfig.seed` must be an integer"))?,
                )
            }
            "stopSequences" => {
                r.stop = value
                    .as_array()
                    .ok_or_else(|| bad("`stopSequences` must be an array"))?
                    .iter()
                    .map(|s| text_of(s, "stopSequences[]"))
                    .collect::<Result<_, _>>()?
            }
            "candidateCount" => {
                if value.as_u64() != Some(1) {
                    losses.meaning("generationConfig.candidateCount", "one answer per call");
                }
            }
            "responseMimeType" => mime = value.as_str().map(Into::into),
            "responseJsonSchema" | "responseSchema" => schema = Some(value.clone()),
            "thinkingConfig" => {
                let budget = field(value, "thinkingBudget", "thinking_budget").and_then(Value::as_i64);
                let level = field(value, "thinkingLevel", "thinking_level").and_then(Value::as_str);
                r.reasoning = match (budget, level) {
                    (Some(0), _) => None,
                    (Some(b), _) if b > 0 => Some(Reasoning {
                        budget_tokens: Some(b as u64),
                        effort: None,
                    }),
                    // -1: the model decides.
                    (Some(_), _) => Some(Reasoning {
                        budget_tokens: None,
                        effort: Some("medium".into()),
                    }),
                    (None, Some(l)) => Some(Reasoning {
                        budget_tokens: None,
                        effort: Some(l.to_ascii_lowercase()),
                    }),
                    (None, None) => r.reasoning.take(),
                };
            }
            other => losses.meaning(
                format!("generationConfig.{other}"),
                "a setting this gateway does not translate",
            ),
        }
    }
    match (mime.as_deref(), schema) {
        (Some("application/json"), Some(schema)) => {
            r.output = Some(OutputFormat::JsonSchema {
                name: "output".into(),
                schema,
                strict: None,
            })
        }
        (Some("application/json"), None) => r.output = Some(OutputFormat::JsonObject),
        (None | Some("text/plain"), None) => {}
        (Some(m), _) => losses.meaning(
            format!("generationConfig.responseMimeType={m}"),
            "only JSON or text answers",
        ),
        (None, Some(_)) => losses.meaning(
            "generationConfig.responseSchema",
            "a schema needs responseMimeType",
        ),
    }
    Ok(())
}

fn media_part(mime: String, source: Source) -> Part {
    if mime.starts_with("image/") {
        Part::Image { source, cache: None }
    } else {
        Part::Document {
            source,
            name: None,
            cache: None,
        }
    }
}

fn decode_parts(
    c: &Value,
    i: usize,
    calls: &mut Calls,
    losses: &mut Losses,
) -> Result<Vec<Part>, DecodeError> {
    let mut parts = Vec::new();
    for p in c.get("parts").and_then(Value::as_array).into_iter().flatten() {
        let signature = field(p, "thoughtSignature", "thought_signature").and_then(Value::as_str);
        if let Some(t) = p.get("text").and_then(Value::as_str) {
            if p.get("thought").and_then(Value::as_bool) == Some(true) {
                parts.push(Part::Thinking {
                    text: t.into(),
                    signature: signature.map(Into::into),
                });
                continue;
            }
            if signature.is_some() {
                losses.hint(
                    "contents[].parts[].thoughtSignature",
                    "Gemini's thought signatures replay only to Gemini",
                );
            }
            parts.push(Part::Text(Text {
                text: t.into(),
                cache: None,
            }));
        } else if let Some(d) = field(p, "inlineData", "inline_data") {
            let mime = text_of(
                field(d, "mimeType", "mime_type").unwrap_or(&Value::Null),
                "inlineData.mimeType",
            )?;
            let data = text_of(d.get("data").unwrap_or(&Value::Null), "inlineData.data")?;
            parts.push(media_part(
                mime.clone(),
                Source::Base64 {
                    media_type: mime,
                    data,
                },
            ));
        } else if let Some(d) = field(p, "fileData", "file_data") {
            let mime = field(d, "mimeType", "mime_type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let uri = text_of(
                field(d, "fileUri", "file_uri").unwrap_or(&Value::Null),
                "fileData.fileUri",
            )?;
            parts.push(media_part(mime, Source::Url(uri)));
        } else if let Some(f) = field(p, "functionCall", "function_call") {
            let name = text_of(f.get("name").unwrap_or(&Value::Null), "functionCall.name")?;
            if signature.is_some() {
                losses.hint(
                    "contents[].parts[].thoughtSignature",
                    "Gemini's thought signatures replay only to Gemini",
                );
            }
            let id = calls.call(f.get("id").and_then(Value::as_str), &name);
            parts.push(Part::ToolCall {
                id,
                name,
                arguments: f.get("args").map_or_else(|| "{}".into(), Value::to_string),
            });
        } else if let Some(f) = field(p, "functionResponse", "function_response") {
            let name = text_of(f.get("name").unwrap_or(&Value::Null), "functionResponse.name")?;
            let id = calls.result(f.get("id").and_then(Value::as_str), &name);
            let response = f.get("response").cloned().unwrap_or(Value::Null);
            let is_error = response.get("error").is_some() && response.get("output").is_none();
            let text = match &response {
                Value::Object(o) if o.len() == 1 => match o.values().next() {
                    Some(Value::String(s)) if o.contains_key("output") || o.contains_key("result") => {
                        s.clone()
                    }
                    _ => response.to_string(),
                },
                _ => response.to_string(),
            };
            parts.push(Part::ToolResult {
                id,
                content: vec![Part::Text(Text { text, cache: None })],
                is_error,
                cache: None,
            });
        } else {
            let kind = p
                .as_object()
                .and_then(|o| {
                    o.keys()
                        .find(|k| !matches!(k.as_str(), "thoughtSignature" | "thought"))
                })
                .map_or("?", String::as_str);
            losses.meaning(
                format!("contents[{i}].parts[].{kind}"),
                "a part of this kind cannot be translated",
            );
        }
    }
    Ok(parts)
}

/// A media type from a URL's extension, for `fileData` (which must name one).
fn mime_of_url(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or(url).to_ascii_lowercase();
    let ext = path.rsplit_once('.').map(|(_, e)| e)?;
    Some(match ext {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        _ => return None,
    })
}

/// The body for the target model; the caller puts the model (and the stream flag) in the URL.
pub fn encode(r: &Request, losses: &mut Losses) -> Result<Vec<u8>, DecodeError> {
    let mut top = Map::new();
    if !r.system.is_empty() {
        let parts: Vec<Value> = r.system.iter().map(|t| json!({"text": t.text})).collect();
        top.insert("systemInstruction".into(), json!({"parts": parts}));
    }
    // The name of each call, for its result (`functionResponse` must name the function).
    let mut names: Vec<(&str, &str)> = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    for m in &r.messages {
        let mut parts = Vec::new();
        for p in &m.parts {
            if let Some(v) = encode_part(p, &mut names, losses)? {
                parts.push(v);
            }
        }
        if parts.is_empty() {
            continue;
        }
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "model",
        };
        match contents.last_mut() {
            Some(last) if last["role"] == role => {
                if let Some(p) = last["parts"].as_array_mut() {
                    p.extend(parts);
                }
            }
            _ => contents.push(json!({"role": role, "parts": parts})),
        }
    }
    top.insert("contents".into(), contents.into());
    if r.system.iter().any(|t| t.cache.is_some()) || r.tools.iter().any(|t| t.cache.is_some()) {
        losses.hint("cache_control", "Gemini caches prompts implicitly");
    }
    if !r.tools.is_empty() {
        let decls: Vec<Value> = r
            .tools
            .iter()
            .map(|t| {
                let mut v = json!({"name": t.name, "parametersJsonSchema": t.parameters});
                if let Some(d) = &t.description {
                    v["description"] = d.clone().into();
                }
                if t.strict.is_some() {
                    losses.hint(
                        "tools[].function.strict",
                        "Gemini does not take strict tool schemas",
                    );
                }
                v
            })
            .collect();
        top.insert("tools".into(), json!([{"functionDeclarations": decls}]));
        if r.parallel_tool_calls == Some(false) {
            losses.meaning(
                "parallel_tool_calls",
                "Gemini cannot be held to one call per turn",
            );
        }
    }
    let config = match &r.tool_choice {
        None => None,
        Some(ToolChoice::Auto) => Some(json!({"mode": "AUTO"})),
        Some(ToolChoice::None) => Some(json!({"mode": "NONE"})),
        Some(ToolChoice::Required) => Some(json!({"mode": "ANY"})),
        Some(ToolChoice::Tool(n)) => Some(json!({"mode": "ANY", "allowedFunctionNames": [n]})),
    };
    if let Some(c) = config {
        top.insert("toolConfig".into(), json!({"functionCallingConfig": c}));
    }
    let mut g = Map::new();
    if let Some(t) = r.temperature {
        g.insert("temperature".into(), t.into());
    }
    if let Some(p) = r.top_p {
        g.insert("topP".into(), p.into());
    }
    if let Some(k) = r.top_k {
        g.insert("topK".into(), k.into());
    }
    if let Some(m) = r.max_tokens {
        g.insert("maxOutputTokens".into(), m.into());
    }
    if !r.stop.is_empty() {
        g.insert("stopSequences".into(), r.stop.clone().into());
    }
    if let Some(seed) = r.seed {
        g.insert("seed".into(), seed.into());
    }
    match &r.output {
        None => {}
        Some(OutputFormat::JsonObject) => {
            g.insert("responseMimeType".into(), "application/json".into());
        }
        Some(OutputFormat::JsonSchema { schema, .. }) => {
            g.insert("responseMimeType".into(), "application/json".into());
            g.insert("responseJsonSchema".into(), schema.clone());
        }
    }
    if let Some(reasoning) = &r.reasoning {
        let budget = match (reasoning.budget_tokens, reasoning.effort.as_deref()) {
            (Some(b), _) => Some(i64::try_from(b).unwrap_or(i64::MAX)),
            (None, Some("minimal" | "none")) => Some(0),
            (None, Some(e)) => {
                losses.hint(
                    "reasoning_effort",
                    "approximated by a thinking budget (low 1024, medium 8192, high 24576 tokens)",
                );
                Some(match e {
                    "low" => 1024,
                    "medium" => 8192,
                    _ => 24576,
                })
            }
            (None, None) => None,
        };
        if let Some(b) = budget {
            g.insert(
                "thinkingConfig".into(),
                json!({"thinkingBudget": b, "includeThoughts": b != 0}),
            );
        }
    }
    if !g.is_empty() {
        top.insert("generationConfig".into(), Value::Object(g));
    }
    if r.user.is_some() {
        losses.hint("user", "Gemini takes no end-user id");
    }
    serde_json::to_vec(&Value::Object(top)).map_err(|e| bad(e.to_string()))
}

fn media(source: &Source, field_name: &str, losses: &mut Losses) -> Option<Value> {
    match source {
        Source::Base64 { media_type, data } => {
            Some(json!({"inlineData": {"mimeType": media_type, "data": data}}))
        }
        Source::Url(u) => match mime_of_url(u) {
            Some(m) => Some(json!({"fileData": {"mimeType": m, "fileUri": u}})),
            None => {
                losses.meaning(
                    field_name.to_string(),
                    "Gemini needs a media type for a URL, and this URL's cannot be told",
                );
                None
            }
        },
    }
}

fn encode_part<'a>(
    p: &'a Part,
    names: &mut Vec<(&'a str, &'a str)>,
    losses: &mut Losses,
) -> Result<Option<Value>, DecodeError> {
    let cached = |losses: &mut Losses, c: &Option<crate::canonical::Cache>| {
        if c.is_some() {
            losses.hint("cache_control", "Gemini caches prompts implicitly");
        }
    };
    Ok(match p {
        Part::Text(t) if t.text.is_empty() => None,
        Part::Text(t) => {
            cached(losses, &t.cache);
            Some(json!({"text": t.text}))
        }
        Part::Image { source, cache } => {
            cached(losses, cache);
            media(source, "image_url", losses)
        }
        Part::Document { source, cache, .. } => {
            cached(losses, cache);
            media(source, "document", losses)
        }
        Part::ToolCall { id, name, arguments } => {
            names.push((id, name));
            let Some(args) = crate::whole::arguments_object(arguments) else {
                return Err(bad(format!(
                    "the arguments of tool call `{id}` are not a JSON object"
                )));
            };
            Some(json!({"functionCall": {"id": id, "name": name, "args": args}}))
        }
        Part::ToolResult {
            id,
            content,
            is_error,
            cache,
        } => {
            cached(losses, cache);
            let Some(&(_, name)) = names.iter().find(|(i, _)| i == id) else {
                return Err(bad(format!(
                    "the tool result `{id}` answers no earlier tool call"
                )));
            };
            let mut text = String::new();
            for c in content {
                match c {
                    Part::Text(t) => text.push_str(&t.text),
                    _ => losses.meaning(
                        "tool_result.content[].image",
                        "Gemini function responses carry text only",
                    ),
                }
            }
            let key = if *is_error { "error" } else { "output" };
            let response = match serde_json::from_str::<Value>(&text) {
                Ok(v @ Value::Object(_)) if !*is_error => v,
                _ => json!({ key: text }),
            };
            Some(json!({"functionResponse": {"id": id, "name": name, "response": response}}))
        }
        Part::Thinking { .. } | Part::RedactedThinking { .. } => {
            losses.hint("thinking", "earlier turns' reasoning is not replayed to Gemini");
            None
        }
    })
}
