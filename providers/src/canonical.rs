//! The canonical model of a call: the hub every dialect's codec decodes into and encodes from,
//! so N dialects need 2N codecs, not N^2 converters.
//!
//! It holds what at least two dialects can say. What a source says that has no place here, or
//! that a target cannot say, is a [`Loss`]: the translation either refuses the call or drops
//! the field, by the caller's rules ([`Disposition`]), and never changes meaning silently.
//! Text that is opaque to the gateway (tool arguments, thinking signatures, schemas) is kept
//! verbatim.

use serde_json::Value;

/// A request, as any dialect can put it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Request {
    pub model: String,
    /// System and developer instructions, in order.
    pub system: Vec<Text>,
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    /// `false`: at most one tool call per turn.
    pub parallel_tool_calls: Option<bool>,
    pub stop: Vec<String>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub max_tokens: Option<u64>,
    /// A sampling seed, for repeatable answers where the provider offers them.
    pub seed: Option<i64>,
    pub stream: bool,
    /// The client asked for usage in the stream (OpenAI `stream_options.include_usage`;
    /// Anthropic streams always carry it).
    pub stream_usage: bool,
    pub output: Option<OutputFormat>,
    pub reasoning: Option<Reasoning>,
    /// An end-user id for the provider's abuse monitoring.
    pub user: Option<String>,
}

/// Instruction or message text, with its prompt-caching hint.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Text {
    pub text: String,
    /// A cache breakpoint after this block (Anthropic `cache_control`).
    pub cache: Option<Cache>,
}

/// A prompt-caching breakpoint: `ttl` as the provider spells it (`5m`, `1h`), when given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cache {
    pub ttl: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub parts: Vec<Part>,
}

/// One piece of a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(Text),
    Image {
        source: Source,
        cache: Option<Cache>,
    },
    /// A document (PDF or plain text) for the model to read.
    Document {
        source: Source,
        name: Option<String>,
        cache: Option<Cache>,
    },
    /// The model calls a tool. `arguments` is the JSON text as the model wrote it.
    ToolCall {
        id: String,
        name: String,
        arguments: String,
    },
    /// What a tool returned for the call `id`.
    ToolResult {
        id: String,
        content: Vec<Part>,
        is_error: bool,
        cache: Option<Cache>,
    },
    /// The model's reasoning; `signature` is kept verbatim so the next turn can replay it.
    Thinking {
        text: String,
        signature: Option<String>,
    },
    /// Reasoning the provider encrypted; replayed as it came.
    RedactedThinking {
        data: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Base64 { media_type: String, data: String },
    Url(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// The input's JSON schema, verbatim.
    pub parameters: Value,
    /// OpenAI `strict` (structured outputs for the arguments).
    pub strict: Option<bool>,
    pub cache: Option<Cache>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    /// Some tool must be called.
    Required,
    /// This tool must be called.
    Tool(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum OutputFormat {
    /// Any JSON object.
    JsonObject,
    /// JSON matching a schema.
    JsonSchema {
        name: String,
        schema: Value,
        strict: Option<bool>,
    },
}

/// Extended thinking / reasoning, in whichever form the source gave it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reasoning {
    /// Anthropic `thinking.budget_tokens`.
    pub budget_tokens: Option<u64>,
    /// OpenAI `reasoning_effort` (`minimal`, `low`, `medium`, `high`).
    pub effort: Option<String>,
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Response {
    pub id: String,
    pub model: String,
    pub parts: Vec<Part>,
    pub finish: Option<Finish>,
    /// The stop sequence that ended the answer, when the provider says.
    pub stop_sequence: Option<String>,
    pub usage: Option<Usage>,
    /// Unix seconds, when the provider says.
    pub created: Option<u64>,
}

/// Why the answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    EndTurn,
    MaxTokens,
    StopSequence,
    ToolUse,
    /// Refused or filtered by the provider.
    ContentFilter,
    /// A long-running turn paused (Anthropic server tools); the client continues it.
    PauseTurn,
    /// The context window filled.
    ContextWindow,
}

/// Tokens, normalised: `input` excludes cached and cache-write tokens; `output` includes
/// reasoning tokens, which `reasoning` counts again on their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cached_input: u64,
    pub cache_write: u64,
    pub reasoning: u64,
}

impl Usage {
    /// All prompt tokens, cached or not (OpenAI's `prompt_tokens`).
    pub fn prompt(&self) -> u64 {
        self.input
            .saturating_add(self.cached_input)
            .saturating_add(self.cache_write)
    }

    /// The final usage: the start's input counts, updated by the end's where it reports them.
    pub fn merge(start: Option<Usage>, end: Option<Usage>) -> Usage {
        match (start, end) {
            (Some(s), Some(e)) => Usage {
                input: if e.input > 0 { e.input } else { s.input },
                cached_input: if e.cached_input > 0 {
                    e.cached_input
                } else {
                    s.cached_input
                },
                cache_write: if e.cache_write > 0 {
                    e.cache_write
                } else {
                    s.cache_write
                },
                output: e.output,
                reasoning: e.reasoning,
            },
            (s, e) => e.or(s).unwrap_or_default(),
        }
    }
}

/// One event of a streamed answer. Parts are numbered in the order they open, from 0.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Start {
        id: String,
        model: String,
        /// Input usage, when the provider reports it at the start.
        usage: Option<Usage>,
    },
    PartStart {
        index: usize,
        part: PartStart,
    },
    Delta {
        index: usize,
        delta: Delta,
    },
    PartStop {
        index: usize,
    },
    /// The answer has ended (its parts are closed); usage is the final count when known.
    Finish {
        finish: Option<Finish>,
        stop_sequence: Option<String>,
        usage: Option<Usage>,
    },
    /// The stream is complete.
    Stop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartStart {
    Text,
    ToolCall { id: String, name: String },
    Thinking,
    RedactedThinking { data: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delta {
    Text(String),
    /// A piece of a tool call's JSON arguments.
    Arguments(String),
    Thinking(String),
    Signature(String),
}

/// An error an upstream answered with, in canonical terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidRequest,
    Authentication,
    Permission,
    NotFound,
    TooLarge,
    RateLimit,
    /// The provider is overloaded (Anthropic 529): retry later.
    Overloaded,
    Api,
}

/// Something the source said that the target cannot (or the hub does not) carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    /// The field as the client wrote it (`logprobs`, `messages[].content[].cache_control`).
    pub field: String,
    /// Whether dropping it would change what the call means (sampling, the number of answers,
    /// what the model sees); otherwise it is a hint the target does without.
    pub changes_meaning: bool,
    /// What happens when it is dropped, for the docs and the error message.
    pub note: &'static str,
}

/// What to do with a [`Loss`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Refuse,
    Drop,
}

/// The losses of one translation, as the codecs find them.
#[derive(Debug, Default)]
pub struct Losses(pub Vec<Loss>);

impl Losses {
    /// A field with no place in the target: dropping it changes the call's meaning.
    pub fn meaning(&mut self, field: impl Into<String>, note: &'static str) {
        self.push(field.into(), true, note);
    }

    /// A hint the target does without.
    pub fn hint(&mut self, field: impl Into<String>, note: &'static str) {
        self.push(field.into(), false, note);
    }

    fn push(&mut self, field: String, changes_meaning: bool, note: &'static str) {
        if !self.0.iter().any(|l| l.field == field) {
            self.0.push(Loss {
                field,
                changes_meaning,
                note,
            });
        }
    }
}
