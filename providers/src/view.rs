//! The canonical call view: what gates and routing read from a request body, parsed once.
//!
//! Only the few fields a decision needs are read; everything else in the body is skipped by
//! the parser without being materialised, and the raw body is kept by the caller so it can pass
//! upstream unchanged. The `model` value's byte span is recorded so a route that renames the
//! model can splice the new name in without re-serialising the body.

use std::borrow::Cow;
use std::ops::Range;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::Dialect;

/// An API surface the gateway serves (a method + path pair with a body to parse).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Surface {
    /// OpenAI `POST /v1/chat/completions`.
    ChatCompletions,
    /// OpenAI `POST /v1/embeddings`.
    Embeddings,
    /// Anthropic `POST /v1/messages`.
    Messages,
    /// Anthropic `POST /v1/messages/count_tokens`.
    CountTokens,
    /// Gemini `POST /v1beta/models/{model}:generateContent` (the model is in the path).
    GenerateContent,
    /// Gemini `POST /v1beta/models/{model}:streamGenerateContent?alt=sse`.
    StreamGenerateContent,
    /// Gemini `POST /v1beta/models/{model}:countTokens`.
    GeminiCountTokens,
    /// Ollama `POST /api/chat` (NDJSON streams unless `"stream": false`).
    OllamaChat,
}

impl Surface {
    /// The dialect a client of this surface speaks.
    pub fn dialect(self) -> Dialect {
        match self {
            Surface::ChatCompletions | Surface::Embeddings => Dialect::OpenAi,
            Surface::Messages | Surface::CountTokens => Dialect::Anthropic,
            Surface::GenerateContent | Surface::StreamGenerateContent | Surface::GeminiCountTokens => {
                Dialect::Gemini
            }
            Surface::OllamaChat => Dialect::Ollama,
        }
    }

    /// A stable name for logs, metrics and policy input.
    pub fn name(self) -> &'static str {
        match self {
            Surface::ChatCompletions => "chat.completions",
            Surface::Embeddings => "embeddings",
            Surface::Messages => "messages",
            Surface::CountTokens => "messages.count_tokens",
            Surface::GenerateContent => "generate_content",
            Surface::StreamGenerateContent => "stream_generate_content",
            Surface::GeminiCountTokens => "count_tokens",
            Surface::OllamaChat => "ollama.chat",
        }
    }

    /// The path of this surface below the dialect's base URL (OpenAI bases end in `/v1`,
    /// Anthropic, Gemini and Ollama bases do not, as in the official SDKs' base URLs). Gemini's
    /// path goes on with the model and the method ([`Surface::gemini_method`]).
    pub fn upstream_suffix(self) -> &'static str {
        match self {
            Surface::ChatCompletions => "/chat/completions",
            Surface::Embeddings => "/embeddings",
            Surface::Messages => "/v1/messages",
            Surface::CountTokens => "/v1/messages/count_tokens",
            Surface::GenerateContent | Surface::StreamGenerateContent | Surface::GeminiCountTokens => {
                "/v1beta/models/"
            }
            Surface::OllamaChat => "/api/chat",
        }
    }

    /// What follows the model in a Gemini path: the method, and the query a stream needs.
    pub fn gemini_method(self) -> Option<&'static str> {
        match self {
            Surface::GenerateContent => Some(":generateContent"),
            Surface::StreamGenerateContent => Some(":streamGenerateContent?alt=sse"),
            Surface::GeminiCountTokens => Some(":countTokens"),
            _ => None,
        }
    }

    /// A conversation turn (chat, messages, generateContent, Ollama chat): what translation
    /// carries between dialects.
    pub fn is_chat(self) -> bool {
        !matches!(
            self,
            Surface::Embeddings | Surface::CountTokens | Surface::GeminiCountTokens
        )
    }

    /// Whether the surface streams whatever the body says (Gemini says so in the URL).
    pub fn streams(self) -> bool {
        self == Surface::StreamGenerateContent
    }
}

/// What a gate may read of a call without touching the raw body again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallView<'a> {
    pub surface: Surface,
    /// The requested model name, unescaped.
    pub model: Cow<'a, str>,
    /// Byte range of the `model` JSON value (quotes included) in the body.
    pub model_span: Range<usize>,
    pub stream: bool,
    /// OpenAI `stream_options.include_usage`.
    pub include_usage: bool,
    /// The most output tokens the request lets one choice have: the larger of `max_tokens` and
    /// OpenAI's `max_completion_tokens` (OpenAI and vLLM honour the latter; a worst case must
    /// not take the smaller), when either is given.
    pub max_tokens: Option<u64>,
    /// How many choices the answer has: OpenAI's `n` (1 when absent; other surfaces have one).
    pub choices: u64,
    /// The names of the tools offered to the model, in request order: OpenAI
    /// `tools[].function.name` (then the legacy `functions[].name`), Anthropic `tools[].name`
    /// (else a tool's `type`).
    pub tools: Vec<Cow<'a, str>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewError {
    /// Not JSON, not an object, or a known field of the wrong type.
    Malformed(String),
    /// No `model` field.
    MissingModel,
    /// `model` is not a non-empty string.
    BadModel,
    /// A number no provider accepts: the field, and the range it must be in.
    OutOfRange(&'static str, &'static str),
}

/// The largest output-token limit any provider accepts (OpenAI's and Anthropic's are 32-bit
/// integers); a larger one is refused, not clamped.
pub const MAX_OUTPUT_TOKENS: u64 = i32::MAX as u64;
/// The most choices OpenAI's `n` accepts.
pub const MAX_CHOICES: u64 = 128;

impl std::fmt::Display for ViewError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ViewError::Malformed(e) => write!(f, "the request body is not valid JSON for this API: {e}"),
            ViewError::MissingModel => f.write_str("the request body has no \"model\" field"),
            ViewError::BadModel => f.write_str("\"model\" must be a non-empty string"),
            ViewError::OutOfRange(field, range) => write!(f, "\"{field}\" must be {range}"),
        }
    }
}

impl std::error::Error for ViewError {}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default, borrow)]
    tools: Option<Vec<RawTool<'a>>>,
    /// OpenAI's legacy `functions` (still honoured): offered tools too.
    #[serde(default, borrow)]
    functions: Option<Vec<RawFunction<'a>>>,
    /// Gemini's limits.
    #[serde(default, rename = "generationConfig", alias = "generation_config")]
    generation_config: Option<GenerationConfig>,
    /// Ollama's limits (`num_predict`: -1 is no limit).
    #[serde(default)]
    options: Option<OllamaOptions>,
}

#[derive(Deserialize)]
struct GenerationConfig {
    #[serde(default, rename = "maxOutputTokens", alias = "max_output_tokens")]
    max_output_tokens: Option<u64>,
    #[serde(default, rename = "candidateCount", alias = "candidate_count")]
    candidate_count: Option<u64>,
}

#[derive(Deserialize)]
struct OllamaOptions {
    #[serde(default)]
    num_predict: Option<i64>,
}

/// One entry of `tools`, in either dialect; everything but the names is skipped unparsed.
#[derive(Deserialize)]
struct RawTool<'a> {
    #[serde(default, borrow)]
    name: Option<Name<'a>>,
    #[serde(default, borrow, rename = "type")]
    kind: Option<Name<'a>>,
    #[serde(default, borrow)]
    function: Option<RawFunction<'a>>,
    /// Gemini: one entry declares many functions.
    #[serde(
        default,
        borrow,
        rename = "functionDeclarations",
        alias = "function_declarations"
    )]
    function_declarations: Option<Vec<RawFunction<'a>>>,
    /// Gemini's built-in tools (`googleSearch`, `codeExecution`, `urlContext`, ...): each other
    /// key of an entry names one, and a gate must see it.
    #[serde(flatten, borrow)]
    other: std::collections::BTreeMap<Cow<'a, str>, serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct RawFunction<'a> {
    #[serde(default, borrow)]
    name: Option<Name<'a>>,
}

/// A string borrowed from the body unless it has escapes (serde borrows a `Cow` only when it is
/// a field's whole type, not inside an `Option`).
#[derive(Deserialize)]
struct Name<'a>(#[serde(borrow)] Cow<'a, str>);

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

/// The model a Gemini path names: `/v1beta/models/{model}:{method}`.
pub fn gemini_path_model(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v1beta/models/")?;
    let (model, _method) = rest.rsplit_once(':')?;
    Some(model)
}

/// Parses the view of a call to `surface` from its path and raw body: a Gemini call's model is
/// its path's (the body has none); every other surface's is the body's.
pub fn parse_at<'a>(surface: Surface, path: &str, body: &'a [u8]) -> Result<CallView<'a>, ViewError> {
    if surface.dialect() != Dialect::Gemini {
        return parse(surface, body);
    }
    let model = gemini_path_model(path)
        .filter(|m| !m.is_empty())
        .ok_or(ViewError::BadModel)?;
    let raw: Raw<'_> = serde_json::from_slice(body).map_err(|e| ViewError::Malformed(e.to_string()))?;
    let g = raw.generation_config.as_ref();
    Ok(CallView {
        surface,
        model: Cow::Owned(model.to_string()),
        // Nothing in the body to splice: the model is in the URL.
        model_span: 0..0,
        stream: surface.streams(),
        include_usage: false,
        max_tokens: limit(
            g.and_then(|g| g.max_output_tokens),
            "generationConfig.maxOutputTokens",
        )?,
        choices: match g.and_then(|g| g.candidate_count) {
            None => 1,
            Some(n) if (1..=MAX_CHOICES).contains(&n) => n,
            Some(_) => {
                return Err(ViewError::OutOfRange(
                    "candidateCount",
                    "an integer from 1 to 128",
                ));
            }
        },
        tools: tool_names(raw.tools, None),
    })
}

/// The names of offered tools, in request order.
fn tool_names<'a>(
    tools: Option<Vec<RawTool<'a>>>,
    functions: Option<Vec<RawFunction<'a>>>,
) -> Vec<Cow<'a, str>> {
    let mut out = Vec::new();
    for t in tools.unwrap_or_default() {
        let gemini = t.function_declarations.is_some()
            || (t.name.is_none() && t.kind.is_none() && t.function.is_none());
        if gemini {
            out.extend(
                t.function_declarations
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f.name)
                    .map(|n| n.0),
            );
            // Built-in tools, by their key.
            out.extend(t.other.into_keys());
        } else if let Some(n) = t.function.and_then(|f| f.name).or(t.name).or(t.kind) {
            out.push(n.0);
        }
    }
    out.extend(
        functions
            .unwrap_or_default()
            .into_iter()
            .filter_map(|f| f.name)
            .map(|n| n.0),
    );
    out
}

/// Parses the view of a call to `surface` from its raw body.
pub fn parse(surface: Surface, body: &[u8]) -> Result<CallView<'_>, ViewError> {
    let raw: Raw<'_> = serde_json::from_slice(body).map_err(|e| ViewError::Malformed(e.to_string()))?;
    let model_raw = raw.model.ok_or(ViewError::MissingModel)?;
    let text = model_raw.get();
    let model: Cow<'_, str> = match serde_json::from_str::<&str>(text) {
        Ok(s) => Cow::Borrowed(s),
        // A string with escapes cannot be borrowed; anything else is not a string at all.
        Err(_) => Cow::Owned(serde_json::from_str::<String>(text).map_err(|_| ViewError::BadModel)?),
    };
    if model.is_empty() {
        return Err(ViewError::BadModel);
    }
    // `text` borrows from `body`, so its address lies inside the body's allocation.
    let start = (text.as_ptr() as usize).saturating_sub(body.as_ptr() as usize);
    Ok(CallView {
        surface,
        model,
        model_span: start..start + text.len(),
        // Ollama streams unless told not to; Gemini says so in the URL.
        stream: raw.stream.unwrap_or(surface == Surface::OllamaChat) || surface.streams(),
        include_usage: raw.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
        // Ollama reads only `options.num_predict`: a top-level `max_tokens`, which it ignores,
        // must not shrink the reservation.
        max_tokens: if surface == Surface::OllamaChat {
            limit(
                raw.options
                    .and_then(|o| o.num_predict)
                    .and_then(|n| u64::try_from(n).ok()),
                "options.num_predict",
            )?
        } else {
            limit(raw.max_tokens, "max_tokens")?
                .max(limit(raw.max_completion_tokens, "max_completion_tokens")?)
        },
        choices: match (surface, raw.n) {
            (Surface::ChatCompletions, Some(n)) if (1..=MAX_CHOICES).contains(&n) => n,
            (Surface::ChatCompletions, Some(_)) => {
                return Err(ViewError::OutOfRange("n", "an integer from 1 to 128"));
            }
            _ => 1,
        },
        tools: tool_names(raw.tools, raw.functions),
    })
}

/// An output-token limit, refused when no provider accepts it.
fn limit(n: Option<u64>, field: &'static str) -> Result<Option<u64>, ViewError> {
    match n {
        Some(n) if n > MAX_OUTPUT_TOKENS => Err(ViewError::OutOfRange(field, "an integer below 2^31")),
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemini_built_in_tools_are_offered_tools_and_ollama_limits_are_its_own() {
        let body = br#"{"contents":[],"tools":[{"functionDeclarations":[{"name":"f"}],"codeExecution":{}},{"googleSearch":{}}]}"#;
        let v = parse_at(Surface::GenerateContent, "/v1beta/models/g:generateContent", body).expect("valid");
        assert_eq!(v.tools, ["f", "codeExecution", "googleSearch"]);
        // Ollama ignores a top-level `max_tokens`: only `options.num_predict` limits it.
        let body = br#"{"model":"m","max_tokens":1,"messages":[]}"#;
        assert_eq!(parse(Surface::OllamaChat, body).expect("valid").max_tokens, None);
        let body = br#"{"model":"m","options":{"num_predict":9},"messages":[]}"#;
        assert_eq!(
            parse(Surface::OllamaChat, body).expect("valid").max_tokens,
            Some(9)
        );
    }

    #[test]
    fn reads_the_fields_and_the_model_span() {
        let body = br#"{"messages":[{"role":"user","content":"hi"}], "model" : "gpt-4o", "stream":true,
            "stream_options":{"include_usage":true},"max_tokens":7}"#;
        let v = parse(Surface::ChatCompletions, body).expect("valid");
        assert_eq!(v.model, "gpt-4o");
        assert!(matches!(v.model, Cow::Borrowed(_)));
        assert_eq!(&body[v.model_span.clone()], br#""gpt-4o""#);
        assert!(v.stream && v.include_usage);
        assert_eq!(v.max_tokens, Some(7));
    }

    #[test]
    fn the_output_limit_is_the_larger_and_numbers_no_provider_takes_are_refused() {
        let v = |extra: &str| {
            parse(
                Surface::ChatCompletions,
                format!(r#"{{"model":"m"{extra}}}"#).as_bytes(),
            )
            .map(|v| (v.max_tokens, v.choices))
        };
        assert_eq!(
            v(r#","max_tokens":1,"max_completion_tokens":1000"#),
            Ok((Some(1000), 1))
        );
        assert_eq!(
            v(r#","max_completion_tokens":1000,"max_tokens":1"#),
            Ok((Some(1000), 1))
        );
        assert_eq!(v(r#","max_completion_tokens":7"#), Ok((Some(7), 1)));
        assert_eq!(v(""), Ok((None, 1)));
        assert_eq!(v(r#","n":3"#), Ok((None, 3)));
        for bad in [
            r#","max_tokens":18446744073709551615"#,
            r#","max_completion_tokens":2147483648"#,
            r#","n":0"#,
            r#","n":129"#,
        ] {
            assert!(matches!(v(bad), Err(ViewError::OutOfRange(..))), "{bad}");
        }
        assert!(matches!(v(r#","max_tokens":-1"#), Err(ViewError::Malformed(_))));
        // `n` is OpenAI's: elsewhere there is one choice.
        let a = parse(Surface::Messages, br#"{"model":"m","n":5}"#).unwrap();
        assert_eq!(a.choices, 1);
    }

    #[test]
    fn legacy_functions_are_offered_tools() {
        let body = br#"{"model":"m","tools":[{"type":"function","function":{"name":"a"}}],"functions":[{"name":"Bash","parameters":{}}]}"#;
        assert_eq!(
            parse(Surface::ChatCompletions, body).unwrap().tools,
            ["a", "Bash"]
        );
    }

    #[test]
    fn tool_names_in_both_dialects() {
        let openai = br#"{"model":"m","tools":[{"type":"function","function":{"name":"web_search",
            "parameters":{"type":"object","properties":{"q":{"type":"string"}}}}},
            {"type":"function","function":{"name":"calc\u0075lator"}}]}"#;
        let v = parse(Surface::ChatCompletions, openai).expect("valid");
        assert_eq!(v.tools, ["web_search", "calculator"]);
        assert!(matches!(v.tools[0], Cow::Borrowed(_)));
        let anthropic = br#"{"model":"m","tools":[{"name":"get_weather","input_schema":{}},
            {"type":"web_search_20250305","name":"web_search"},{"type":"bash_20250124"}]}"#;
        let v = parse(Surface::Messages, anthropic).expect("valid");
        assert_eq!(v.tools, ["get_weather", "web_search", "bash_20250124"]);
        assert!(
            parse(Surface::Messages, br#"{"model":"m"}"#)
                .expect("valid")
                .tools
                .is_empty()
        );
        assert!(matches!(
            parse(Surface::Messages, br#"{"model":"m","tools":{"name":"x"}}"#),
            Err(ViewError::Malformed(_))
        ));
    }

    #[test]
    fn escaped_model_is_unescaped() {
        let body = br#"{"model":"a\u002fb"}"#;
        let v = parse(Surface::Messages, body).expect("valid");
        assert_eq!(v.model, "a/b");
        assert_eq!(&body[v.model_span.clone()], br#""a\u002fb""#);
        assert!(!v.stream);
    }

    #[test]
    fn rejects_bad_input() {
        assert!(matches!(
            parse(Surface::Messages, b"{not json"),
            Err(ViewError::Malformed(_))
        ));
        assert!(matches!(
            parse(Surface::Messages, b"[1,2]"),
            Err(ViewError::Malformed(_))
        ));
        assert_eq!(parse(Surface::Messages, b"{}"), Err(ViewError::MissingModel));
        assert_eq!(
            parse(Surface::Messages, br#"{"model":3}"#),
            Err(ViewError::BadModel)
        );
        assert_eq!(
            parse(Surface::Messages, br#"{"model":""}"#),
            Err(ViewError::BadModel)
        );
        assert!(matches!(
            parse(Surface::ChatCompletions, br#"{"model":"m","stream":"yes"}"#),
            Err(ViewError::Malformed(_))
        ));
    }

    #[test]
    fn null_stream_is_false() {
        let v = parse(
            Surface::ChatCompletions,
            br#"{"model":"m","stream":null,"max_completion_tokens":3}"#,
        )
        .expect("valid");
        assert!(!v.stream);
        assert_eq!(v.max_tokens, Some(3));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_give_a_view_or_an_error(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse(Surface::ChatCompletions, &body);
        }

        #[test]
        fn the_span_always_holds_the_model(model in "\\PC{0,40}", pad in " {0,3}", max in proptest::option::of(0u64..100_000)) {
            let quoted = serde_json::to_string(&model).unwrap();
            let max_field = max.map(|m| format!(",{pad}\"max_tokens\":{pad}{m}")).unwrap_or_default();
            let body = format!(
                "{{\"messages\":[{{\"role\":\"user\",\"content\":\"x\"}}],{pad}\"model\"{pad}:{pad}{quoted}{pad}{max_field}}}"
            );
            match parse(Surface::Messages, body.as_bytes()) {
                Ok(v) => {
                    proptest::prop_assert_eq!(&v.model, &model);
                    let raw: String = serde_json::from_slice(&body.as_bytes()[v.model_span.clone()]).unwrap();
                    proptest::prop_assert_eq!(raw, model);
                    proptest::prop_assert_eq!(v.max_tokens, max);
                }
                Err(e) => proptest::prop_assert!(model.is_empty() && e == ViewError::BadModel),
            }
        }
    }
}
