//! What a call used: read from the upstream's answer as it passes through, without holding it
//! back or re-serialising it.
//!
//! - A JSON answer: its `usage` object, parsed once the body has ended (the body's frames are
//!   kept by reference, not copied, until then).
//! - A stream (SSE): scanned line by line as it is forwarded. Only the few events that carry
//!   usage are parsed (OpenAI's final usage chunk; Anthropic's `message_start` and
//!   `message_delta`); content deltas are counted with a substring search, one token each, for
//!   a stream that ends before the upstream reported its usage (a client that hung up).
//! - When the gateway asked an OpenAI upstream for usage the client did not ask for
//!   (`stream_options.include_usage`), the usage chunk is taken out of the stream again: the
//!   meter then forwards whole lines only, holding back at most one unfinished line.

use crate::{Dialect, sse};
use bytes::{Bytes, BytesMut};
use memchr::memmem;
use serde::{Deserialize, Serialize};

/// Tokens by price class. `input` excludes cached prompt tokens, which are counted apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_input: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Usage {
    pub fn tokens(&self) -> u64 {
        // Saturating: an upstream's (or a request's) numbers must not wrap a budget around.
        self.input
            .saturating_add(self.output)
            .saturating_add(self.cached_input)
            .saturating_add(self.cache_write)
    }
}

/// How a call's usage was known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// As the upstream reported it.
    Reported,
    /// The stream ended before the upstream's report: output counted from the deltas, input as
    /// reported at the stream's start or else as estimated.
    Counted,
    /// Not known (the answer was not read to its end): charged the reservation.
    Reserved,
    /// Nothing was generated (refused before the upstream, or the upstream failed).
    None,
}

#[derive(Deserialize, Default)]
struct OpenAiUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<OpenAiPromptDetails>,
}

#[derive(Deserialize, Default)]
struct OpenAiPromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl OpenAiUsage {
    fn usage(&self) -> Usage {
        let cached = self
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
            .unwrap_or(0)
            .min(self.prompt_tokens);
        Usage {
            input: self.prompt_tokens - cached,
            output: self.completion_tokens,
            cached_input: cached,
            cache_write: 0,
        }
    }
}

#[derive(Deserialize, Default)]
struct AnthropicUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

/// Any JSON answer's `usage` (chat, messages, embeddings).
#[derive(Deserialize)]
struct WithUsage<U> {
    #[serde(default)]
    usage: Option<U>,
}

#[derive(Deserialize)]
struct OpenAiChunk {
    #[serde(default)]
    usage: Option<OpenAiUsage>,
    #[serde(default)]
    choices: Vec<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct AnthropicStart {
    message: WithUsage<AnthropicUsage>,
}

/// Gemini's `usageMetadata`: the prompt count includes the cached tokens; the candidates
/// count excludes the thoughts, which are output too.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct GeminiUsage {
    #[serde(default, alias = "prompt_token_count")]
    prompt_token_count: u64,
    #[serde(default, alias = "candidates_token_count")]
    candidates_token_count: u64,
    #[serde(default, alias = "cached_content_token_count")]
    cached_content_token_count: u64,
    #[serde(default, alias = "thoughts_token_count")]
    thoughts_token_count: u64,
}

impl GeminiUsage {
    fn usage(&self) -> Usage {
        let cached = self.cached_content_token_count.min(self.prompt_token_count);
        Usage {
            input: self.prompt_token_count - cached,
            output: self
                .candidates_token_count
                .saturating_add(self.thoughts_token_count),
            cached_input: cached,
            cache_write: 0,
        }
    }
}

#[derive(Deserialize)]
struct GeminiBody {
    #[serde(default, rename = "usageMetadata", alias = "usage_metadata")]
    usage: Option<GeminiUsage>,
}

/// Ollama's counts, on its last (`done`) answer.
#[derive(Deserialize)]
struct OllamaDone {
    #[serde(default)]
    done: bool,
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(default)]
    eval_count: Option<u64>,
}

impl OllamaDone {
    fn usage(&self) -> Option<Usage> {
        self.done.then(|| Usage {
            input: self.prompt_eval_count.unwrap_or(0),
            output: self.eval_count.unwrap_or(0),
            ..Usage::default()
        })
    }
}

/// The input side of a report (Anthropic reports it first, output last).
#[derive(Debug, Clone, Copy, Default)]
struct Input {
    input: u64,
    cached_input: u64,
    cache_write: u64,
}

impl AnthropicUsage {
    fn input(&self) -> Option<Input> {
        self.input_tokens.map(|input| Input {
            input,
            cached_input: self.cache_read_input_tokens.unwrap_or(0),
            cache_write: self.cache_creation_input_tokens.unwrap_or(0),
        })
    }
}

/// Reads usage from an answer as it is forwarded.
pub struct Meter {
    dialect: Dialect,
    stream: bool,
    /// Remove OpenAI's usage-only chunk (the gateway asked for it, the client did not).
    strip_usage: bool,
    /// JSON: the frames so far. Kept by reference; joined only if there is more than one.
    frames: Vec<Bytes>,
    json_len: usize,
    /// SSE: the unfinished last line.
    tail: BytesMut,
    /// SSE, stripping: the blank line that ends a removed event is removed too.
    drop_blank: bool,
    input: Option<Input>,
    output: Option<u64>,
    deltas: u64,
}

/// JSON answers larger than this are not kept for their usage (charged the reservation).
const MAX_JSON: usize = 16 * 1024 * 1024;

impl Meter {
    pub fn new(dialect: Dialect, stream: bool, strip_usage: bool) -> Meter {
        Meter {
            dialect,
            stream,
            strip_usage: strip_usage && stream && dialect == Dialect::OpenAi,
            frames: Vec::new(),
            json_len: 0,
            tail: BytesMut::new(),
            drop_blank: false,
            input: None,
            output: None,
            deltas: 0,
        }
    }

    /// Takes one frame of the answer; returns what to forward (the same bytes unless a usage
    /// chunk was removed or an unfinished line is held back while stripping).
    pub fn feed(&mut self, frame: Bytes) -> Bytes {
        if !self.stream {
            self.json_len += frame.len();
            if self.json_len <= MAX_JSON {
                self.frames.push(frame.clone());
            }
            return frame;
        }
        if self.tail.is_empty() {
            let Some(nl) = memchr::memrchr(b'\n', &frame) else {
                self.tail.extend_from_slice(&frame);
                return if self.strip_usage { Bytes::new() } else { frame };
            };
            let cut = self.scan(&frame[..=nl]);
            self.tail.extend_from_slice(&frame[nl + 1..]);
            return match (self.strip_usage, cut) {
                (false, _) => frame,
                (true, None) if nl + 1 == frame.len() => frame,
                (true, None) => frame.slice(..=nl),
                (true, Some(cut)) => without(&frame[..=nl], &cut),
            };
        }
        // An unfinished line from the last frame: complete it.
        self.tail.extend_from_slice(&frame);
        let Some(nl) = memchr::memrchr(b'\n', &self.tail) else {
            return if self.strip_usage { Bytes::new() } else { frame };
        };
        let lines = self.tail.split_to(nl + 1);
        let cut = self.scan(&lines);
        match (self.strip_usage, cut) {
            (false, _) => frame,
            (true, None) => lines.freeze(),
            (true, Some(cut)) => without(&lines, &cut),
        }
    }

    /// True while bytes are held back (an unfinished line, when stripping).
    pub fn holds(&self) -> bool {
        self.strip_usage && !self.tail.is_empty()
    }

    /// What the stream held back when it ended (an unfinished last line), to forward.
    pub fn flush(&mut self) -> Option<Bytes> {
        if !self.stream || self.tail.is_empty() {
            return None;
        }
        let rest = self.tail.split();
        let cut = self.scan(&rest);
        if !self.strip_usage {
            return None;
        }
        Some(match cut {
            None => rest.freeze(),
            Some(cut) => without(&rest, &cut),
        })
    }

    /// Scans whole lines; returns the byte ranges to remove (only when stripping).
    fn scan(&mut self, lines: &[u8]) -> Option<Vec<std::ops::Range<usize>>> {
        let mut cut: Option<Vec<std::ops::Range<usize>>> = None;
        let mut start = 0;
        while start < lines.len() {
            let end = memchr::memchr(b'\n', &lines[start..]).map_or(lines.len(), |i| start + i + 1);
            let line = sse::trim_eol(&lines[start..end]);
            if line.is_empty() {
                if std::mem::take(&mut self.drop_blank) {
                    cut.get_or_insert_with(Vec::new).push(start..end);
                }
            } else if let Some(data) = match self.dialect {
                // NDJSON: every line is a payload.
                Dialect::Ollama => Some(line),
                _ => sse::data_line(line),
            } && self.data(data)
            {
                cut.get_or_insert_with(Vec::new).push(start..end);
                self.drop_blank = true;
            }
            start = end;
        }
        cut
    }

    /// One `data:` payload; true when it is to be removed.
    fn data(&mut self, data: &[u8]) -> bool {
        match self.dialect {
            Dialect::OpenAi => {
                if has_object(data, b"usage") {
                    if let Ok(chunk) = serde_json::from_slice::<OpenAiChunk>(data)
                        && let Some(u) = chunk.usage
                    {
                        let u = u.usage();
                        self.input = Some(Input {
                            input: u.input,
                            cached_input: u.cached_input,
                            cache_write: 0,
                        });
                        self.output = Some(u.output);
                        return self.strip_usage && chunk.choices.is_empty();
                    }
                    return false;
                }
                if has_text(data, b"content") || has_text(data, b"arguments") || has_text(data, b"refusal") {
                    self.deltas += 1;
                }
                false
            }
            Dialect::Anthropic => {
                if has_pair(data, b"type", b"content_block_delta") {
                    self.deltas += 1;
                } else if has_pair(data, b"type", b"message_start") {
                    if let Ok(s) = serde_json::from_slice::<AnthropicStart>(data) {
                        self.input = s.message.usage.and_then(|u| u.input());
                    }
                } else if has_pair(data, b"type", b"message_delta")
                    && let Ok(d) = serde_json::from_slice::<WithUsage<AnthropicUsage>>(data)
                    && let Some(u) = d.usage
                {
                    // Cumulative counts; newer versions repeat the input side here too.
                    if let Some(i) = u.input() {
                        self.input = Some(i);
                    }
                    if let Some(o) = u.output_tokens {
                        self.output = Some(o);
                    }
                }
                false
            }
            Dialect::Gemini => {
                if has_object(data, b"usageMetadata")
                    && let Ok(GeminiBody { usage: Some(u) }) = serde_json::from_slice::<GeminiBody>(data)
                {
                    // Cumulative counts, on every chunk.
                    let u = u.usage();
                    self.input = Some(Input {
                        input: u.input,
                        cached_input: u.cached_input,
                        cache_write: 0,
                    });
                    self.output = Some(u.output);
                }
                if has_text(data, b"text") || has_object(data, b"functionCall") {
                    self.deltas += 1;
                }
                false
            }
            Dialect::Ollama => {
                if has_object(data, b"message") && (has_text(data, b"content") || has_text(data, b"thinking"))
                {
                    self.deltas += 1;
                }
                if memmem::find(data, b"\"done\":true").is_some()
                    && let Ok(d) = serde_json::from_slice::<OllamaDone>(data)
                    && let Some(u) = d.usage()
                {
                    self.input = Some(Input {
                        input: u.input,
                        ..Input::default()
                    });
                    self.output = Some(u.output);
                }
                false
            }
        }
    }

    /// Output tokens seen so far: reported, else counted.
    pub fn output_so_far(&self) -> u64 {
        self.output.unwrap_or(self.deltas)
    }

    /// The call's usage once its answer has ended or been dropped. `complete`: the answer was
    /// read to its end. `estimated_input`: the reservation's input estimate, used when the
    /// stream ended before the upstream reported its input.
    pub fn finish(&mut self, complete: bool, estimated_input: u64) -> (Usage, Basis) {
        if !self.stream {
            if !complete || self.json_len > MAX_JSON {
                return (Usage::default(), Basis::Reserved);
            }
            let joined;
            let body: &[u8] = match self.frames.as_slice() {
                [one] => one,
                many => {
                    joined = many.concat();
                    &joined
                }
            };
            let usage = match self.dialect {
                Dialect::OpenAi => serde_json::from_slice::<WithUsage<OpenAiUsage>>(body)
                    .ok()
                    .and_then(|w| w.usage)
                    .map(|u| u.usage()),
                Dialect::Anthropic => serde_json::from_slice::<WithUsage<AnthropicUsage>>(body)
                    .ok()
                    .and_then(|w| w.usage)
                    .map(|u| {
                        let i = u.input().unwrap_or_default();
                        Usage {
                            input: i.input,
                            output: u.output_tokens.unwrap_or(0),
                            cached_input: i.cached_input,
                            cache_write: i.cache_write,
                        }
                    }),
                Dialect::Gemini => serde_json::from_slice::<GeminiBody>(body)
                    .ok()
                    .and_then(|b| b.usage)
                    .map(|u| u.usage()),
                Dialect::Ollama => serde_json::from_slice::<OllamaDone>(body)
                    .ok()
                    .and_then(|d| d.usage()),
            };
            return match usage {
                Some(u) => (u, Basis::Reported),
                // A complete answer without usage (an error body): nothing generated.
                None => (Usage::default(), Basis::None),
            };
        }
        let _ = self.flush();
        match (self.input, self.output) {
            (Some(i), Some(output)) => (
                Usage {
                    input: i.input,
                    output,
                    cached_input: i.cached_input,
                    cache_write: i.cache_write,
                },
                Basis::Reported,
            ),
            (input, _) if self.deltas > 0 || input.is_some() => {
                let i = input.unwrap_or(Input {
                    input: estimated_input,
                    ..Input::default()
                });
                (
                    Usage {
                        input: i.input,
                        output: self.deltas,
                        cached_input: i.cached_input,
                        cache_write: i.cache_write,
                    },
                    Basis::Counted,
                )
            }
            _ => (Usage::default(), Basis::None),
        }
    }
}

/// `"key":{` or `"key": {` (a JSON key whose value is an object; inside a JSON string the
/// quotes would be escaped, so text cannot fake it).
fn has_object(data: &[u8], key: &[u8]) -> bool {
    after_key(data, key).any(|rest| rest.first() == Some(&b'{'))
}

/// `"key":"` followed by at least one character: a non-empty string value.
fn has_text(data: &[u8], key: &[u8]) -> bool {
    after_key(data, key).any(|rest| rest.len() > 1 && rest[0] == b'"' && rest[1] != b'"')
}

/// `"key":"value"`.
fn has_pair(data: &[u8], key: &[u8], value: &[u8]) -> bool {
    after_key(data, key).any(|rest| {
        rest.first() == Some(&b'"')
            && rest[1..].starts_with(value)
            && rest.get(value.len() + 1) == Some(&b'"')
    })
}

/// The bytes after each `"key":` (and one optional space) in `data`.
fn after_key<'a>(data: &'a [u8], key: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    memmem::find_iter(data, key).filter_map(move |i| {
        let open = i.checked_sub(1)?;
        if data[open] != b'"' {
            return None;
        }
        let rest = data.get(i + key.len()..)?.strip_prefix(b"\":")?;
        Some(rest.strip_prefix(b" ").unwrap_or(rest))
    })
}

/// `buf` without the byte ranges `cut` (in order, not overlapping).
fn without(buf: &[u8], cut: &[std::ops::Range<usize>]) -> Bytes {
    let mut out = BytesMut::with_capacity(buf.len());
    let mut at = 0;
    for r in cut {
        out.extend_from_slice(&buf[at..r.start]);
        at = r.end;
    }
    out.extend_from_slice(&buf[at..]);
    out.freeze()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const OPENAI: &str = concat!(
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo \\\"usage\\\":{\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":2,\"total_tokens\":13,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\n",
        "data: [DONE]\n\n",
    );

    const ANTHROPIC: &str = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":7,\"cache_read_input_tokens\":3,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"a \\\"type\\\":\\\"message_delta\\\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"b\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );

    fn run(m: &mut Meter, text: &str, split: &[usize]) -> String {
        let mut out = Vec::new();
        let mut at = 0;
        for &s in split.iter().chain(std::iter::once(&text.len())) {
            out.extend_from_slice(&m.feed(Bytes::copy_from_slice(&text.as_bytes()[at..s])));
            at = s;
        }
        if let Some(rest) = m.flush() {
            out.extend_from_slice(&rest);
        }
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn openai_stream_usage_is_read_and_stripped_at_every_split() {
        let usage_line = OPENAI.lines().find(|l| l.contains("\"choices\":[]")).unwrap();
        let expected = OPENAI.replace(&format!("{usage_line}\n\n"), "");
        for split in 0..=OPENAI.len() {
            for (strip, want) in [(false, OPENAI), (true, expected.as_str())] {
                let mut m = Meter::new(Dialect::OpenAi, true, strip);
                assert_eq!(run(&mut m, OPENAI, &[split]), want, "split {split} strip {strip}");
                let (u, basis) = m.finish(true, 99);
                assert_eq!(basis, Basis::Reported);
                assert_eq!(
                    u,
                    Usage {
                        input: 7,
                        output: 2,
                        cached_input: 4,
                        cache_write: 0
                    }
                );
            }
        }
    }

    #[test]
    fn a_cut_stream_is_counted_from_its_deltas() {
        // Cut after the second content delta: two tokens, input as estimated.
        let cut = OPENAI.match_indices("\n\n").nth(2).unwrap().0 + 2;
        let mut m = Meter::new(Dialect::OpenAi, true, false);
        run(&mut m, &OPENAI[..cut], &[]);
        assert_eq!(
            m.finish(false, 40),
            (
                Usage {
                    input: 40,
                    output: 2,
                    ..Usage::default()
                },
                Basis::Counted
            )
        );
        // Anthropic reported its input at the start: that is kept.
        let cut = ANTHROPIC.find("event: content_block_stop").unwrap();
        let mut m = Meter::new(Dialect::Anthropic, true, false);
        run(&mut m, &ANTHROPIC[..cut], &[100]);
        assert_eq!(
            m.finish(false, 40),
            (
                Usage {
                    input: 7,
                    output: 2,
                    cached_input: 3,
                    cache_write: 0
                },
                Basis::Counted
            )
        );
    }

    #[test]
    fn anthropic_stream_usage_at_every_split() {
        for split in 0..=ANTHROPIC.len() {
            let mut m = Meter::new(Dialect::Anthropic, true, true);
            assert_eq!(run(&mut m, ANTHROPIC, &[split]), ANTHROPIC);
            assert_eq!(
                m.finish(true, 0).0,
                Usage {
                    input: 7,
                    output: 2,
                    cached_input: 3,
                    cache_write: 0
                }
            );
        }
    }

    #[test]
    fn json_answers_in_both_dialects() {
        let mut m = Meter::new(Dialect::OpenAi, false, true);
        let body =
            r#"{"id":"x","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":9,"total_tokens":14}}"#;
        assert_eq!(run(&mut m, body, &[10, 20]), body);
        assert_eq!(m.finish(true, 0).0.output, 9);
        let mut m = Meter::new(Dialect::Anthropic, false, false);
        run(
            &mut m,
            r#"{"usage":{"input_tokens":5,"output_tokens":9,"cache_creation_input_tokens":2}}"#,
            &[],
        );
        assert_eq!(
            m.finish(true, 0).0,
            Usage {
                input: 5,
                output: 9,
                cached_input: 0,
                cache_write: 2
            }
        );
        // Not read to the end: unknown.
        let mut m = Meter::new(Dialect::OpenAi, false, false);
        run(&mut m, &body[..10], &[]);
        assert_eq!(m.finish(false, 0).1, Basis::Reserved);
        // An error body: nothing generated.
        let mut m = Meter::new(Dialect::OpenAi, false, false);
        run(&mut m, r#"{"error":{"message":"no"}}"#, &[]);
        assert_eq!(m.finish(true, 0), (Usage::default(), Basis::None));
    }
}
