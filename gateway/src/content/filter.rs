//! Answers on their way to the client: PII found in the model's text is acted on (the
//! `response` actions), and a model's call of a tool the caller may not use is removed or
//! stops the answer. JSON answers are read whole and rewritten only when something changed;
//! streams (SSE) are rewritten event by event.
//!
//! In a stream a value can be split across any number of events (and an event across any number
//! of reads). Each text channel (a choice's `content`, a tool call's `arguments`, a content
//! block's `text` or `partial_json`, ...) keeps back only the text from which a detector's match
//! could still be in progress: the first position, after everything already decided, from which
//! the detectors' automaton is not yet dead ([`Scanner::live_from`]). In prose that is the last
//! word or less. Everything before it has been scanned as the whole text would be and is sent
//! at once. The held text goes out with the channel's next event, or in an event of the same
//! shape when the channel ends (a finish reason, `content_block_stop`, `[DONE]`, the end of the
//! stream). Held text beyond [`MAX_HOLD`] is let go, scanned as if the text ended there.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use lattice_providers::{Dialect, sse};
use serde::Serialize;
use serde_json::{Map, Value};

use super::pii::{Hit, Liveness, Scanner};
use super::tools::{AllowedTools, Calls};
use super::{Actions, Finding, Pii, Rewriter, Tally, describe, strict};

/// The most text a channel keeps back.
pub const MAX_HOLD: usize = 4096;

/// The largest JSON answer the response filter reads; a larger one is refused (502), never
/// passed on unscanned.
pub const MAX_SCANNED_ANSWER: usize = 16 * 1024 * 1024;
/// Already-sent text kept before a channel's held text: word boundaries and the validators
/// look at what precedes a match.
const CONTEXT: usize = 32;

/// Fields whose string values are the model's text, in streams.
fn text_field(key: &str) -> bool {
    matches!(
        key,
        "content" | "text" | "refusal" | "arguments" | "partial_json" | "thinking" | "reasoning_content"
    )
}

/// Why an answer was stopped: rendered as an error (JSON) or an error event (stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    pub gate: &'static str,
    pub code: &'static str,
    /// 403 for what a rule refused; 502 for an answer that could not be read to be checked.
    pub status: http::StatusCode,
    pub message: String,
}

/// What the filter found and did, for the `call.end` record (never a value).
#[derive(Debug, Default, Serialize)]
pub struct Report {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pii: Vec<Finding>,
    /// Tool calls taken out of the answer, by tool name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls_removed: Vec<Box<str>>,
    /// The answer was stopped: the code of the error the client got.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<&'static str>,
}

/// The response-side rules of one call.
pub struct Rules {
    /// The engine and the actions on answers (shared: most calls use the config's as they are).
    pub pii: Option<(Arc<Pii>, Arc<Actions>)>,
    pub tools: Option<(Arc<AllowedTools>, Calls)>,
}

/// A path into an event's JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    At(usize),
}

/// One text channel of a stream.
struct Channel {
    /// Already-sent context, then the held text.
    text: String,
    /// Bytes of `text` already sent.
    sent: usize,
    /// The event that carries held text out when the channel ends: its `event:` name and its
    /// JSON reduced to the path of the channel's field (and the `index`/`type` beside it).
    template: Option<(Option<Box<str>>, Value, Vec<Step>)>,
}

impl Channel {
    fn holds(&self) -> bool {
        self.text.len() > self.sent
    }
}

pub struct Filter {
    dialect: Wire,
    rules: Rules,
    tally: Tally,
    live: Option<Liveness>,
    channels: BTreeMap<String, Channel>,
    /// An unfinished event.
    buf: BytesMut,
    report: Report,
    /// OpenAI: removed tool calls by (choice, index); choices that kept a tool call.
    oa_removed: BTreeSet<(u64, u64)>,
    oa_kept: BTreeSet<u64>,
    /// Anthropic: removed content blocks; whether a tool_use block was kept.
    an_removed: BTreeSet<u64>,
    an_kept_tool: bool,
    stopped: bool,
    hits: Vec<Hit>,
}

enum ToolStep {
    Keep,
    Drop,
    Block(String),
}

fn as_u64(v: Option<&Value>) -> Option<u64> {
    v.and_then(Value::as_u64)
}

fn is_tool_block(ty: Option<&str>) -> bool {
    matches!(ty, Some("tool_use" | "server_tool_use" | "mcp_tool_use"))
}

/// The dialects whose answers the filter reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wire {
    OpenAi,
    Anthropic,
}

impl Filter {
    /// A filter for answers in `dialect`: OpenAI's or Anthropic's. Other dialects' answers are
    /// read as OpenAI's (`super::answer`), and a filter asked for one reads OpenAI's.
    pub fn new(dialect: Dialect, rules: Rules) -> Filter {
        let dialect = match dialect {
            Dialect::Anthropic => Wire::Anthropic,
            Dialect::OpenAi | Dialect::Gemini | Dialect::Ollama => Wire::OpenAi,
        };
        Filter {
            dialect,
            rules,
            tally: Tally::default(),
            // Taken when a stream first has text to check (a JSON answer never needs it).
            live: None,
            channels: BTreeMap::new(),
            buf: BytesMut::new(),
            report: Report::default(),
            oa_removed: BTreeSet::new(),
            oa_kept: BTreeSet::new(),
            an_removed: BTreeSet::new(),
            an_kept_tool: false,
            stopped: false,
            hits: Vec::new(),
        }
    }

    /// What was found and done so far.
    pub fn report(&mut self) -> &Report {
        self.report.pii = self.tally.findings("response");
        &self.report
    }

    /// The stream was stopped (an error event was sent); nothing more goes out.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Bytes are held back (an unfinished event, or text that may still be part of a match).
    pub fn holds(&self) -> bool {
        !self.stopped && (!self.buf.is_empty() || self.channels.values().any(Channel::holds))
    }

    /// An answer (or event) that is meant as JSON but does not read one way only: not checked,
    /// so not passed on.
    pub(super) fn unscanned(&mut self, why: &dyn std::fmt::Display) -> Stopped {
        self.report.stopped = Some("answer_unscanned");
        Stopped {
            gate: "content",
            code: "answer_unscanned",
            status: http::StatusCode::BAD_GATEWAY,
            message: format!("the upstream's answer could not be checked, so it is not passed on: {why}"),
        }
    }

    fn blocked_by_pii(&mut self, kind: &str) -> Stopped {
        self.report.stopped = Some("pii_blocked");
        Stopped {
            gate: "pii",
            code: "pii_blocked",
            status: http::StatusCode::FORBIDDEN,
            message: format!(
                "the answer contains {}, which this gateway does not pass on",
                describe(kind)
            ),
        }
    }

    fn blocked_tool(&mut self, name: &str) -> Stopped {
        self.report.stopped = Some("tool_call_blocked");
        Stopped {
            status: http::StatusCode::FORBIDDEN,
            gate: "tools",
            code: "tool_call_blocked",
            message: format!("the model called the tool `{name}`, which this caller may not use"),
        }
    }

    // ---- JSON answers ----------------------------------------------------------------------

    /// A whole JSON answer: `Ok(None)` to send it as it is, `Ok(Some(body))` rewritten, or the
    /// reason to refuse it. A body that is not JSON is scanned as text.
    pub fn json(&mut self, body: &[u8]) -> Result<Option<Bytes>, Stopped> {
        // Tool rules only, and no tool call in sight (nor an escape that could spell one):
        // nothing to parse.
        if self.rules.pii.is_none()
            && memchr::memmem::find(body, b"\\u").is_none()
            && [
                &b"\"tool_calls\""[..],
                b"\"function_call\"",
                b"\"tool_use\"",
                b"_tool_use\"",
            ]
            .iter()
            .all(|m| memchr::memmem::find(body, m).is_none())
        {
            return Ok(None);
        }
        let mut v = match strict::parse(body) {
            Ok(v) => v,
            Err(e) if strict::looks_like_json(body) => return Err(self.unscanned(&e)),
            // Not JSON at all (an upstream's HTML error page, say): scanned as text.
            Err(_) => return self.raw_text(body),
        };
        let mut changed = false;
        if self.rules.tools.is_some() {
            match self.json_tools(&mut v) {
                Ok(c) => changed |= c,
                Err(name) => return Err(self.blocked_tool(&name)),
            }
        }
        if let Some((pii, actions)) = &self.rules.pii {
            let mut w = Rewriter::new(pii.scanner(), actions, &mut self.tally);
            w.walk(&mut v);
            if let Some(kind) = w.blocked.take() {
                return Err(self.blocked_by_pii(&kind));
            }
            changed |= self.tally.changed();
        }
        Ok(changed
            .then(|| serde_json::to_vec(&v).ok().map(Bytes::from))
            .flatten())
    }

    /// A body that is not JSON (an upstream's HTML error page, say): its text is scanned whole.
    fn raw_text(&mut self, body: &[u8]) -> Result<Option<Bytes>, Stopped> {
        let Some((pii, actions)) = &self.rules.pii else {
            return Ok(None);
        };
        let mut text = String::from_utf8_lossy(body).into_owned();
        let mut w = Rewriter::new(pii.scanner(), actions, &mut self.tally);
        w.text(&mut text);
        if let Some(kind) = w.blocked.take() {
            return Err(self.blocked_by_pii(&kind));
        }
        Ok(self.tally.changed().then(|| Bytes::from(text)))
    }

    /// Takes disallowed tool calls out of a JSON answer (or names the first, to block).
    fn json_tools(&mut self, v: &mut Value) -> Result<bool, String> {
        let Some((allowed, calls)) = &self.rules.tools else {
            return Ok(false);
        };
        let mut changed = false;
        let mut removed = Vec::new();
        match self.dialect {
            Wire::OpenAi => {
                for choice in v
                    .get_mut("choices")
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    let Some(msg) = choice.get_mut("message").and_then(Value::as_object_mut) else {
                        continue;
                    };
                    let mut kept = 0;
                    let mut gone = 0;
                    if let Some(Value::Array(list)) = msg.get_mut("tool_calls") {
                        list.retain(|c| {
                            let name = c
                                .get("function")
                                .and_then(|f| f.get("name"))
                                .and_then(Value::as_str)
                                .unwrap_or("");
                            let ok = allowed.allows(name);
                            if ok {
                                kept += 1;
                            } else {
                                removed.push(Box::from(name));
                                gone += 1;
                            }
                            ok
                        });
                        if list.is_empty() {
                            msg.remove("tool_calls");
                        }
                    }
                    // The legacy single `function_call`.
                    let legacy = msg
                        .get("function_call")
                        .and_then(|f| f.get("name"))
                        .and_then(Value::as_str)
                        .filter(|n| !allowed.allows(n))
                        .map(Box::<str>::from);
                    if let Some(name) = legacy {
                        msg.remove("function_call");
                        removed.push(name);
                        gone += 1;
                    }
                    if gone > 0 {
                        changed = true;
                        if kept == 0
                            && let Some(Value::Object(c)) = Some(&mut *choice)
                            && matches!(
                                c.get("finish_reason").and_then(Value::as_str),
                                Some("tool_calls" | "function_call")
                            )
                        {
                            c.insert("finish_reason".into(), "stop".into());
                        }
                    }
                }
            }
            Wire::Anthropic => {
                let mut kept_tool = false;
                if let Some(Value::Array(blocks)) = v.get_mut("content") {
                    blocks.retain(|b| {
                        if !is_tool_block(b.get("type").and_then(Value::as_str)) {
                            return true;
                        }
                        let name = b.get("name").and_then(Value::as_str).unwrap_or("");
                        let ok = allowed.allows(name);
                        if ok {
                            kept_tool = true;
                        } else {
                            removed.push(Box::from(name));
                        }
                        ok
                    });
                }
                if !removed.is_empty() {
                    changed = true;
                    if !kept_tool && v.get("stop_reason").and_then(Value::as_str) == Some("tool_use") {
                        v["stop_reason"] = "end_turn".into();
                    }
                }
            }
        }
        if let (Calls::Block, Some(first)) = (calls, removed.first()) {
            return Err(first.to_string());
        }
        self.report.tool_calls_removed.extend(removed);
        Ok(changed)
    }

    // ---- Streams -----------------------------------------------------------------------------

    /// Takes the next bytes of a stream; returns what to send now.
    pub fn feed(&mut self, data: &[u8]) -> Bytes {
        if self.stopped {
            return Bytes::new();
        }
        self.buf.extend_from_slice(data);
        let mut out = BytesMut::new();
        while let Some(end) = sse::event_end(&self.buf) {
            let event = self.buf.split_to(end).freeze();
            self.event(&event, &mut out);
            if self.stopped {
                self.buf.clear();
                break;
            }
        }
        out.freeze()
    }

    /// The stream has ended: what was held back, scanned as final.
    pub fn finish(&mut self) -> Bytes {
        if self.stopped {
            return Bytes::new();
        }
        let mut out = BytesMut::new();
        if !self.buf.is_empty() {
            // An unterminated last event.
            let mut event = self.buf.split();
            event.extend_from_slice(b"\n\n");
            self.event(&event.freeze(), &mut out);
        }
        if !self.stopped {
            self.flush(&mut out, "");
        }
        out.freeze()
    }

    fn event(&mut self, raw: &Bytes, out: &mut BytesMut) {
        let sse::Event { name, data } = sse::parse(raw);
        let Some(data) = data else {
            out.extend_from_slice(raw);
            return;
        };
        if data == "[DONE]" {
            self.flush(out, "");
            if !self.stopped {
                out.extend_from_slice(raw);
            }
            return;
        }
        let tools_here = self.rules.tools.is_some()
            && (data.contains("tool")
                || data.contains("function_call")
                || data.contains("\\u")
                || (self.dialect == Wire::Anthropic && !self.an_removed.is_empty()));
        if self.rules.pii.is_none() && !tools_here {
            out.extend_from_slice(raw);
            return;
        }
        let parsed = strict::parse(data.as_bytes());
        if let Err(e) = &parsed
            && strict::looks_like_json(data.as_bytes())
        {
            let s = self.unscanned(e);
            return self.stop(out, &s);
        }
        let Ok(mut v) = parsed else {
            // Not JSON: its text is scanned as it stands (it ends no channel).
            match self.raw_text(data.as_bytes()) {
                Ok(None) => out.extend_from_slice(raw),
                Ok(Some(text)) => sse::write(out, name.as_deref(), &String::from_utf8_lossy(&text)),
                Err(s) => self.stop(out, &s),
            }
            return;
        };
        let mut changed = false;
        if tools_here {
            match self.stream_tools(&mut v, &mut changed) {
                ToolStep::Keep => {}
                ToolStep::Drop => return,
                ToolStep::Block(n) => {
                    let s = self.blocked_tool(&n);
                    self.stop(out, &s);
                    return;
                }
            }
        }
        if let Some((pii, _)) = &self.rules.pii {
            if self.live.is_none() {
                self.live = Some(pii.scanner().liveness());
            }
            // A channel this event ends takes the rest of its text in this event when the event
            // carries some; otherwise its held text goes out first, in an event of its own.
            let ends = self.ends(&v);
            let mut paths = Vec::new();
            text_paths(&v, &mut Vec::new(), &mut String::new(), &mut paths);
            for (path, key) in paths {
                let Some(Value::String(s)) = at_mut(&mut v, &path) else {
                    continue;
                };
                let last = ends.iter().any(|p| key.starts_with(p.as_str()));
                let ch = self.channels.entry(key.clone()).or_insert_with(|| Channel {
                    text: String::new(),
                    sent: 0,
                    template: None,
                });
                ch.text.push_str(s);
                let (sent, blocked) = drain(
                    &self.rules,
                    &mut self.tally,
                    self.live.as_mut(),
                    &mut self.hits,
                    ch,
                    last,
                );
                if let Some(kind) = blocked {
                    let s = self.blocked_by_pii(&kind);
                    self.stop(out, &s);
                    return;
                }
                if *s != sent {
                    *s = sent;
                    changed = true;
                }
                if last {
                    self.channels.remove(&key);
                } else if ch.holds() {
                    // The channel's events share a shape: built again only when it changes (a
                    // block's start event, then its deltas).
                    let reduced = reduced_path(&path);
                    if ch
                        .template
                        .as_ref()
                        .is_none_or(|(n, _, p)| *n != name || *p != reduced)
                    {
                        ch.template = Some((name.clone(), template(&v, &path), reduced));
                    }
                }
            }
            for prefix in ends {
                self.flush(out, &prefix);
                if self.stopped {
                    return;
                }
            }
        }
        if changed {
            sse::write(out, name.as_deref(), &v.to_string());
        } else {
            out.extend_from_slice(raw);
        }
    }

    /// The channel prefixes an event ends (sent before the event itself).
    fn ends(&self, v: &Value) -> Vec<String> {
        match self.dialect {
            Wire::OpenAi => match v.get("choices").and_then(Value::as_array) {
                None => vec![String::new()],
                Some(c) if c.is_empty() => vec![String::new()],
                Some(choices) => choices
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.get("finish_reason").is_some_and(|f| !f.is_null()))
                    .map(|(i, c)| format!("{}/", as_u64(c.get("index")).unwrap_or(i as u64)))
                    .collect(),
            },
            Wire::Anthropic => match v.get("type").and_then(Value::as_str) {
                Some("content_block_stop") => as_u64(v.get("index"))
                    .map(|i| vec![format!("{i}/")])
                    .unwrap_or_default(),
                Some("message_delta" | "message_stop" | "error") => vec![String::new()],
                _ => Vec::new(),
            },
        }
    }

    /// Lets go of the held text of the channels whose key starts with `prefix`.
    fn flush(&mut self, out: &mut BytesMut, prefix: &str) {
        let keys: Vec<String> = self
            .channels
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let Some(mut ch) = self.channels.remove(&key) else {
                continue;
            };
            if !ch.holds() {
                continue;
            }
            let (text, blocked) = drain(
                &self.rules,
                &mut self.tally,
                self.live.as_mut(),
                &mut self.hits,
                &mut ch,
                true,
            );
            if let Some(kind) = blocked {
                let s = self.blocked_by_pii(&kind);
                self.stop(out, &s);
                return;
            }
            if let Some((name, mut v, path)) = ch.template.take()
                && let Some(slot) = at_mut(&mut v, &path)
            {
                *slot = Value::String(text);
                sse::write(out, name.as_deref(), &v.to_string());
            }
        }
    }

    /// Ends the stream with an error event in the client's dialect (the SDKs raise it).
    fn stop(&mut self, out: &mut BytesMut, s: &Stopped) {
        self.stopped = true;
        let body = match self.dialect {
            Wire::OpenAi => {
                let kind = if s.status == http::StatusCode::FORBIDDEN {
                    "permission_error"
                } else {
                    "api_error"
                };
                serde_json::json!({"error": {"message": s.message, "type": kind, "code": s.code}})
            }
            Wire::Anthropic => {
                let kind = if s.status == http::StatusCode::FORBIDDEN {
                    "permission_error"
                } else {
                    "api_error"
                };
                serde_json::json!({"type": "error", "error": {"type": kind, "message": s.message}})
            }
        };
        let name = (self.dialect == Wire::Anthropic).then_some("error");
        sse::write(out, name, &body.to_string());
    }

    /// Tool calls in one stream event: removed ones are taken out (and their later pieces),
    /// the others renumbered so the client's indexes stay dense.
    fn stream_tools(&mut self, v: &mut Value, changed: &mut bool) -> ToolStep {
        let Some((allowed, calls)) = &self.rules.tools else {
            return ToolStep::Keep;
        };
        match self.dialect {
            Wire::OpenAi => {
                let Some(choices) = v.get_mut("choices").and_then(Value::as_array_mut) else {
                    return ToolStep::Keep;
                };
                for (pos, choice) in choices.iter_mut().enumerate() {
                    let c = as_u64(choice.get("index")).unwrap_or(pos as u64);
                    // The legacy `function_call` delta names its function once, first: a call of
                    // one not allowed stops the stream (its pieces carry no index to remove).
                    if let Some(name) = choice
                        .pointer("/delta/function_call/name")
                        .and_then(Value::as_str)
                        && !allowed.allows(name)
                    {
                        return ToolStep::Block(name.to_string());
                    }
                    if let Some(delta) = choice.get_mut("delta").and_then(Value::as_object_mut)
                        && let Some(Value::Array(list)) = delta.get_mut("tool_calls")
                    {
                        let mut block = None;
                        let removed = &mut self.oa_removed;
                        let kept = &mut self.oa_kept;
                        let names = &mut self.report.tool_calls_removed;
                        list.retain_mut(|call| {
                            let j = as_u64(call.get("index")).unwrap_or(0);
                            if let Some(name) = call
                                .get("function")
                                .and_then(|f| f.get("name"))
                                .and_then(Value::as_str)
                            {
                                if allowed.allows(name) {
                                    kept.insert(c);
                                } else {
                                    removed.insert((c, j));
                                    if *calls == Calls::Block {
                                        block.get_or_insert_with(|| name.to_string());
                                    } else {
                                        names.push(name.into());
                                    }
                                }
                            }
                            if removed.contains(&(c, j)) {
                                *changed = true;
                                return false;
                            }
                            let below = removed.range((c, 0)..(c, j)).count() as u64;
                            if below > 0 {
                                call["index"] = (j - below).into();
                                *changed = true;
                            }
                            true
                        });
                        if let Some(name) = block {
                            return ToolStep::Block(name);
                        }
                        if list.is_empty() {
                            delta.remove("tool_calls");
                        }
                    }
                    let gone = self.oa_removed.range((c, 0)..=(c, u64::MAX)).next().is_some();
                    if gone
                        && !self.oa_kept.contains(&c)
                        && choice.get("finish_reason").and_then(Value::as_str) == Some("tool_calls")
                    {
                        choice["finish_reason"] = "stop".into();
                        *changed = true;
                    }
                }
                ToolStep::Keep
            }
            Wire::Anthropic => {
                let ty = v.get("type").and_then(Value::as_str).unwrap_or("").to_string();
                if ty == "content_block_start"
                    && let Some(i) = as_u64(v.get("index"))
                    && let Some(block) = v.get("content_block")
                    && is_tool_block(block.get("type").and_then(Value::as_str))
                {
                    let name = block.get("name").and_then(Value::as_str).unwrap_or("");
                    if allowed.allows(name) {
                        self.an_kept_tool = true;
                    } else {
                        if *calls == Calls::Block {
                            return ToolStep::Block(name.to_string());
                        }
                        self.report.tool_calls_removed.push(name.into());
                        self.an_removed.insert(i);
                        return ToolStep::Drop;
                    }
                }
                if let Some(i) = as_u64(v.get("index")) {
                    if self.an_removed.contains(&i) {
                        return ToolStep::Drop;
                    }
                    let below = self.an_removed.range(..i).count() as u64;
                    if below > 0 {
                        v["index"] = (i - below).into();
                        *changed = true;
                    }
                }
                if ty == "message_delta"
                    && !self.an_removed.is_empty()
                    && !self.an_kept_tool
                    && v.pointer("/delta/stop_reason").and_then(Value::as_str) == Some("tool_use")
                {
                    v["delta"]["stop_reason"] = "end_turn".into();
                    *changed = true;
                }
                ToolStep::Keep
            }
        }
    }
}

impl Drop for Filter {
    fn drop(&mut self) {
        if let (Some(live), Some((pii, _))) = (self.live.take(), &self.rules.pii) {
            pii.scanner().recycle(live);
        }
    }
}

/// Scans a channel and takes what is decided: the text up to the first position from which a
/// match may still be in progress (all of it when `last`), with its findings acted on. Keeps a
/// little sent text as context for the next round.
fn drain(
    rules: &Rules,
    tally: &mut Tally,
    live: Option<&mut Liveness>,
    hits: &mut Vec<Hit>,
    ch: &mut Channel,
    last: bool,
) -> (String, Option<Box<str>>) {
    let (Some((pii, actions)), Some(live)) = (&rules.pii, live) else {
        let s = ch.text[ch.sent..].to_string();
        ch.text.clear();
        ch.sent = 0;
        return (s, None);
    };
    let scanner: &Scanner = pii.scanner();
    let text = &ch.text;
    let from = ch.sent;
    hits.clear();
    scanner.scan_from(text, from, |h| hits.push(h));
    let mut cut = text.len();
    if !last {
        let mut next_hit = 0;
        let mut s = from;
        while s < text.len() {
            if let Some(h) = hits.get(next_hit)
                && h.span.start == s
            {
                if scanner.live_from(text, s, live) {
                    cut = s;
                    break;
                }
                // A finished match: nothing more can change it.
                s = h.span.end;
                next_hit += 1;
                continue;
            }
            if scanner.live_from(text, s, live) {
                cut = s;
                break;
            }
            s = next_char(text, s);
        }
        if cut < text.len() && text.len() - cut > MAX_HOLD {
            cut = floor_boundary(text, text.len() - MAX_HOLD);
            if let Some(h) = hits.iter().find(|h| h.span.start < cut && h.span.end > cut) {
                cut = h.span.end;
            }
        }
    }
    let taken = hits.iter().take_while(|h| h.span.start < cut).count();
    let mut out = String::with_capacity(cut - from);
    let blocked = tally.apply(scanner, actions, text, from..cut, &hits[..taken], &mut out);
    if last {
        ch.text.clear();
        ch.sent = 0;
    } else {
        let keep = floor_boundary(&ch.text, cut.saturating_sub(CONTEXT));
        ch.text.drain(..keep);
        ch.sent = cut - keep;
    }
    (out, blocked)
}

fn next_char(text: &str, at: usize) -> usize {
    text[at..]
        .chars()
        .next()
        .map_or(text.len(), |c| at + c.len_utf8())
}

fn floor_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The text fields of an event, with the channel each belongs to: the chain of `index` values
/// of the objects above it (a choice, a tool call, a content block) and the field's name.
fn text_paths(v: &Value, path: &mut Vec<Step>, chain: &mut String, out: &mut Vec<(Vec<Step>, String)>) {
    match v {
        Value::Object(m) => {
            let len = chain.len();
            if let Some(i) = as_u64(m.get("index")) {
                chain.push_str(&i.to_string());
                chain.push('/');
            }
            for (k, child) in m {
                path.push(Step::Key(k.clone()));
                match child {
                    Value::String(_) if text_field(k) => out.push((path.clone(), format!("{chain}{k}"))),
                    Value::Object(_) | Value::Array(_) => text_paths(child, path, chain, out),
                    _ => {}
                }
                path.pop();
            }
            chain.truncate(len);
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                path.push(Step::At(i));
                text_paths(child, path, chain, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn at_mut<'v>(v: &'v mut Value, path: &[Step]) -> Option<&'v mut Value> {
    let mut cur = v;
    for step in path {
        cur = match step {
            Step::Key(k) => cur.get_mut(k.as_str())?,
            Step::At(i) => cur.get_mut(*i)?,
        };
    }
    Some(cur)
}

/// `v` reduced to what an event carrying more of the channel at `path` needs: at every level
/// the path's member and the `index` and `type` beside it; at the top also the chunk's id,
/// object, created and model (OpenAI). Fields an SDK would concatenate (a tool call's name) or
/// take as a new start are left out.
fn template(v: &Value, path: &[Step]) -> Value {
    fn reduce(v: &Value, path: &[Step], top: bool) -> Value {
        match (v, path.first()) {
            (Value::Object(m), Some(Step::Key(k))) => {
                let mut out = Map::new();
                for (name, child) in m {
                    let keep = name == "index"
                        || name == "type"
                        || (top && matches!(name.as_str(), "id" | "object" | "created" | "model"));
                    if name == k {
                        out.insert(name.clone(), reduce(child, &path[1..], false));
                    } else if keep {
                        out.insert(name.clone(), child.clone());
                    }
                }
                Value::Object(out)
            }
            (Value::Array(a), Some(Step::At(i))) => match a.get(*i) {
                Some(child) => Value::Array(vec![reduce(child, &path[1..], false)]),
                None => Value::Array(Vec::new()),
            },
            (Value::String(_), None) => Value::String(String::new()),
            (other, _) => other.clone(),
        }
    }
    reduce(v, path, true)
}

/// The template's path after reduction: arrays keep only the path's element, at 0.
fn reduced_path(path: &[Step]) -> Vec<Step> {
    path.iter()
        .map(|s| match s {
            Step::Key(k) => Step::Key(k.clone()),
            Step::At(_) => Step::At(0),
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::content::{Action, PiiConfig};
    use serde_json::json;

    const SAMPLES: &[&str] = &[
        "ana.lopez@example.com",
        "4111 1111 1111 1111",
        "DE89 3704 0044 0532 0130 00",
        "123-45-6789",
        "192.168.1.20",
        "2001:db8::1",
        "+44 20 7946 0958",
        "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD",
    ];

    /// Compiled once: building the automata is most of a filter's set-up.
    fn pii() -> Arc<Pii> {
        static PII: std::sync::LazyLock<Arc<Pii>> =
            std::sync::LazyLock::new(|| Arc::new(Pii::new(PiiConfig::default()).unwrap()));
        PII.clone()
    }

    fn redact_all() -> Actions {
        Actions {
            default: Some(Action::Redact),
            kinds: Default::default(),
        }
    }

    fn pii_filter(dialect: Dialect) -> Filter {
        Filter::new(
            dialect,
            Rules {
                pii: Some((pii(), Arc::new(redact_all()))),
                tools: None,
            },
        )
    }

    /// The text as a whole answer would be rewritten.
    fn whole(text: &str) -> String {
        let p = pii();
        let mut tally = Tally::default();
        let actions = redact_all();
        let mut w = Rewriter::new(p.scanner(), &actions, &mut tally);
        let mut s = text.to_string();
        w.text(&mut s);
        s
    }

    fn openai_stream(deltas: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        let chunk = |delta: Value, finish: Value| {
            json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
        };
        let mut push = |v: Value| out.extend_from_slice(format!("data: {v}\n\n").as_bytes());
        push(chunk(json!({"role": "assistant", "content": ""}), Value::Null));
        for d in deltas {
            push(chunk(json!({"content": d}), Value::Null));
        }
        push(chunk(json!({}), json!("stop")));
        out.extend_from_slice(b"data: [DONE]\n\n");
        out
    }

    fn anthropic_stream(deltas: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut push =
            |name: &str, v: Value| out.extend_from_slice(format!("event: {name}\ndata: {v}\n\n").as_bytes());
        push(
            "message_start",
            json!({"type": "message_start", "message": {"id": "m1", "type": "message", "role": "assistant", "content": [], "model": "m", "usage": {"input_tokens": 3, "output_tokens": 1}}}),
        );
        push(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        );
        push("ping", json!({"type": "ping"}));
        for d in deltas {
            push(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": d}}),
            );
        }
        push(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        );
        push(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}}),
        );
        push("message_stop", json!({"type": "message_stop"}));
        out
    }

    /// Runs `input` through a filter in the given reads; returns the SSE events out.
    fn run(f: &mut Filter, reads: &[&[u8]]) -> Vec<(Option<String>, Value)> {
        let mut out = Vec::new();
        for r in reads {
            out.extend_from_slice(&f.feed(r));
        }
        out.extend_from_slice(&f.finish());
        let text = String::from_utf8(out).unwrap();
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let sse::Event { name, data } = sse::parse(e.as_bytes());
                let data = data.unwrap();
                let v = if data == "[DONE]" {
                    json!("[DONE]")
                } else {
                    serde_json::from_str(&data).unwrap()
                };
                (name.map(|n| n.to_string()), v)
            })
            .collect()
    }

    fn text_of(dialect: Dialect, events: &[(Option<String>, Value)]) -> String {
        events
            .iter()
            .filter_map(|(_, v)| match dialect {
                Dialect::OpenAi => v.pointer("/choices/0/delta/content").and_then(Value::as_str),
                _ => v.pointer("/delta/text").and_then(Value::as_str),
            })
            .collect()
    }

    #[test]
    fn a_value_split_between_two_deltas_at_any_point_is_still_found() {
        for dialect in [Dialect::OpenAi, Dialect::Anthropic] {
            for sample in SAMPLES {
                let text = format!("Sure. Reach them at {sample} today, or write back.");
                let want = whole(&text);
                assert!(!want.contains(sample), "{sample} not found in the whole text");
                for (cut, _) in text.char_indices().skip(1) {
                    let (a, b) = text.split_at(cut);
                    let input = match dialect {
                        Dialect::OpenAi => openai_stream(&[a, b]),
                        _ => anthropic_stream(&[a, b]),
                    };
                    let events = run(&mut pii_filter(dialect), &[&input]);
                    let got = text_of(dialect, &events);
                    assert_eq!(got, want, "{dialect:?}, split at {cut}: {a:?} | {b:?}");
                }
            }
        }
    }

    #[test]
    fn one_character_per_event_and_reads_split_at_every_byte() {
        for dialect in [Dialect::OpenAi, Dialect::Anthropic] {
            let text = "mail ana@example.com or call +1 415 555 0132, card 4111-1111-1111-1111.";
            let want = whole(text);
            let chars: Vec<String> = text.chars().map(String::from).collect();
            let deltas: Vec<&str> = chars.iter().map(String::as_str).collect();
            let input = match dialect {
                Dialect::OpenAi => openai_stream(&deltas),
                _ => anthropic_stream(&deltas),
            };
            let events = run(&mut pii_filter(dialect), &[&input]);
            assert_eq!(text_of(dialect, &events), want, "{dialect:?}");
            // Transport reads split at every byte of a two-delta stream.
            let (a, b) = text.split_at(24);
            let input = match dialect {
                Dialect::OpenAi => openai_stream(&[a, b]),
                _ => anthropic_stream(&[a, b]),
            };
            for cut in 1..input.len() {
                let events = run(&mut pii_filter(dialect), &[&input[..cut], &input[cut..]]);
                assert_eq!(
                    text_of(dialect, &events),
                    want,
                    "{dialect:?}, read split at byte {cut}"
                );
            }
        }
    }

    #[test]
    fn text_in_the_event_that_ends_its_channel_is_checked_with_what_was_held() {
        // Some servers put the last text and the finish reason in one chunk.
        let chunk = |content: &str, finish: Value| {
            let v = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                           "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]});
            format!("data: {v}\n\n")
        };
        let text = "write to ana@example.com";
        for (cut, _) in text.char_indices().skip(1) {
            let (a, b) = text.split_at(cut);
            let input = format!(
                "{}{}data: [DONE]\n\n",
                chunk(a, Value::Null),
                chunk(b, json!("stop"))
            );
            let events = run(&mut pii_filter(Dialect::OpenAi), &[input.as_bytes()]);
            assert_eq!(
                text_of(Dialect::OpenAi, &events),
                "write to [EMAIL_1]",
                "split at {cut}"
            );
            let last = events.iter().rev().find(|(_, v)| v.is_object()).unwrap();
            assert_eq!(last.1["choices"][0]["finish_reason"], "stop", "{events:?}");
        }
    }

    #[test]
    fn tool_arguments_are_a_channel_of_their_own() {
        // A secret split across two `partial_json` deltas of an Anthropic tool_use block.
        let mut out = Vec::new();
        let mut push =
            |name: &str, v: Value| out.extend_from_slice(format!("event: {name}\ndata: {v}\n\n").as_bytes());
        push(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "deploy", "input": {}}}),
        );
        for piece in [
            "{\"token\": \"sk-proj-abcdefghij",
            "klmnopqrstuvwxyz0123456789ABCD\"}",
        ] {
            push(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": piece}}),
            );
        }
        push(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        );
        let events = run(&mut pii_filter(Dialect::Anthropic), &[&out]);
        let json: String = events
            .iter()
            .filter_map(|(_, v)| v.pointer("/delta/partial_json").and_then(Value::as_str))
            .collect();
        assert_eq!(json, "{\"token\": \"[SECRET_1]\"}");
        // The held piece went out before the block's stop, in a delta of the same block.
        assert_eq!(events.last().unwrap().1["type"], "content_block_stop");
    }

    #[test]
    fn prose_is_held_back_by_at_most_a_word() {
        let mut f = pii_filter(Dialect::OpenAi);
        let first = f.feed(&openai_stream(&["Hello there, how are you doing tod"])[..]);
        let text = String::from_utf8(first.to_vec()).unwrap();
        // Everything up to the unfinished last word went out at once.
        assert!(text.contains("\"Hello there, how are you doing \""), "{text}");
    }

    #[test]
    fn a_blocked_kind_ends_the_stream_with_an_error_event() {
        for dialect in [Dialect::OpenAi, Dialect::Anthropic] {
            let mut f = Filter::new(
                dialect,
                Rules {
                    pii: Some((
                        pii(),
                        Arc::new(Actions {
                            default: None,
                            kinds: [("secret".to_string(), Action::Block)].into(),
                        }),
                    )),
                    tools: None,
                },
            );
            let deltas = [
                "the key is sk-proj-abcdefghijkl",
                "mnopqrstuvwxyz0123456789ABCD ok",
            ];
            let input = match dialect {
                Dialect::OpenAi => openai_stream(&deltas),
                _ => anthropic_stream(&deltas),
            };
            let events = run(&mut f, &[&input]);
            let all: String = events.iter().map(|(_, v)| v.to_string()).collect();
            assert!(!all.contains("abcdefghijkl"), "{all}");
            let last = &events.last().unwrap().1;
            match dialect {
                Dialect::OpenAi => assert_eq!(last["error"]["code"], "pii_blocked"),
                _ => assert_eq!(last["type"], "error"),
            }
            assert!(f.stopped());
            assert_eq!(f.report().stopped, Some("pii_blocked"));
        }
    }

    fn tool_filter(dialect: Dialect, calls: Calls) -> Filter {
        Filter::new(
            dialect,
            Rules {
                pii: None,
                tools: Some((
                    Arc::new(AllowedTools::from_obligation(&json!(["web_search"])).unwrap()),
                    calls,
                )),
            },
        )
    }

    fn openai_tool_stream() -> Vec<u8> {
        let mut out = Vec::new();
        let mut push = |delta: Value, finish: Value| {
            let v = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
            out.extend_from_slice(format!("data: {v}\n\n").as_bytes());
        };
        push(
            json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "t0", "type": "function", "function": {"name": "shell", "arguments": ""}}]}),
            Value::Null,
        );
        push(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"cmd\":\"rm -rf /\"}"}}]}),
            Value::Null,
        );
        push(
            json!({"tool_calls": [{"index": 1, "id": "t1", "type": "function", "function": {"name": "web_search", "arguments": ""}}]}),
            Value::Null,
        );
        push(
            json!({"tool_calls": [{"index": 1, "function": {"arguments": "{\"q\":\"rust\"}"}}]}),
            Value::Null,
        );
        push(json!({}), json!("tool_calls"));
        out.extend_from_slice(b"data: [DONE]\n\n");
        out
    }

    fn anthropic_tool_stream(tools: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut push =
            |name: &str, v: Value| out.extend_from_slice(format!("event: {name}\ndata: {v}\n\n").as_bytes());
        push(
            "message_start",
            json!({"type": "message_start", "message": {"id": "m1", "content": [], "usage": {"input_tokens": 3}}}),
        );
        push(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        );
        push(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me look."}}),
        );
        push(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        );
        for (i, t) in tools.iter().enumerate() {
            let i = i + 1;
            push(
                "content_block_start",
                json!({"type": "content_block_start", "index": i, "content_block": {"type": "tool_use", "id": format!("tu{i}"), "name": t, "input": {}}}),
            );
            push(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": i, "delta": {"type": "input_json_delta", "partial_json": "{\"q\": 1}"}}),
            );
            push(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": i}),
            );
        }
        push(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 9}}),
        );
        push("message_stop", json!({"type": "message_stop"}));
        out
    }

    #[test]
    fn a_disallowed_tool_call_is_removed_from_an_openai_stream() {
        let mut f = tool_filter(Dialect::OpenAi, Calls::Remove);
        let events = run(&mut f, &[&openai_tool_stream()]);
        let calls: Vec<&Value> = events
            .iter()
            .filter_map(|(_, v)| v.pointer("/choices/0/delta/tool_calls"))
            .flat_map(|c| c.as_array().unwrap())
            .collect();
        assert!(calls.iter().all(|c| c["index"] == 0), "renumbered: {calls:?}");
        assert_eq!(calls[0]["function"]["name"], "web_search");
        let all: String = events.iter().map(|(_, v)| v.to_string()).collect();
        assert!(!all.contains("shell") && !all.contains("rm -rf"), "{all}");
        // A tool call was kept, so the finish reason stays.
        assert!(all.contains("\"finish_reason\":\"tool_calls\""));
        assert_eq!(f.report().tool_calls_removed, vec![Box::from("shell")]);
    }

    #[test]
    fn a_disallowed_tool_use_is_removed_from_an_anthropic_stream_and_blocks_renumbered() {
        let mut f = tool_filter(Dialect::Anthropic, Calls::Remove);
        let events = run(&mut f, &[&anthropic_tool_stream(&["shell", "web_search"])]);
        let all: String = events.iter().map(|(_, v)| v.to_string()).collect();
        assert!(!all.contains("shell"), "{all}");
        let starts: Vec<u64> = events
            .iter()
            .filter(|(_, v)| v["type"] == "content_block_start")
            .map(|(_, v)| v["index"].as_u64().unwrap())
            .collect();
        assert_eq!(starts, vec![0, 1]);
        assert!(
            events
                .iter()
                .all(|(_, v)| v["index"].as_u64().is_none_or(|i| i <= 1))
        );

        // Only disallowed tools: none is left, and the stop reason says so.
        let mut f = tool_filter(Dialect::Anthropic, Calls::Remove);
        let events = run(&mut f, &[&anthropic_tool_stream(&["shell"])]);
        let stop = events.iter().find(|(_, v)| v["type"] == "message_delta").unwrap();
        assert_eq!(stop.1["delta"]["stop_reason"], "end_turn");
    }

    #[test]
    fn block_mode_ends_the_stream_before_the_call_is_sent() {
        let mut f = tool_filter(Dialect::OpenAi, Calls::Block);
        let events = run(&mut f, &[&openai_tool_stream()]);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].1["error"]["code"], "tool_call_blocked");
        let mut f = tool_filter(Dialect::Anthropic, Calls::Block);
        let events = run(&mut f, &[&anthropic_tool_stream(&["web_search", "shell"])]);
        assert_eq!(events.last().unwrap().0.as_deref(), Some("error"));
        let all: String = events.iter().map(|(_, v)| v.to_string()).collect();
        assert!(!all.contains("\"shell\""), "{all}");
    }

    #[test]
    fn json_answers_in_both_dialects() {
        let openai = json!({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": "mail ana@example.com", "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "shell", "arguments": "{}"}}]}}]});
        let mut f = Filter::new(
            Dialect::OpenAi,
            Rules {
                pii: Some((pii(), Arc::new(redact_all()))),
                tools: Some((
                    Arc::new(AllowedTools::from_obligation(&json!([])).unwrap()),
                    Calls::Remove,
                )),
            },
        );
        let out: Value =
            serde_json::from_slice(&f.json(&serde_json::to_vec(&openai).unwrap()).unwrap().unwrap()).unwrap();
        assert_eq!(out["choices"][0]["message"]["content"], "mail [EMAIL_1]");
        assert!(out["choices"][0]["message"].get("tool_calls").is_none());
        assert_eq!(out["choices"][0]["finish_reason"], "stop");
        assert_eq!(out["id"], "x");

        let anthropic = json!({"id": "m", "type": "message", "stop_reason": "tool_use", "content": [
            {"type": "text", "text": "ok"}, {"type": "tool_use", "id": "t", "name": "shell", "input": {"cmd": "ls"}}]});
        let mut f = tool_filter(Dialect::Anthropic, Calls::Block);
        let err = f.json(&serde_json::to_vec(&anthropic).unwrap()).unwrap_err();
        assert_eq!(err.code, "tool_call_blocked");
        let mut f = tool_filter(Dialect::Anthropic, Calls::Remove);
        let out: Value =
            serde_json::from_slice(&f.json(&serde_json::to_vec(&anthropic).unwrap()).unwrap().unwrap())
                .unwrap();
        assert_eq!(out["content"], json!([{"type": "text", "text": "ok"}]));
        assert_eq!(out["stop_reason"], "end_turn");
        // Nothing to change: the body passes as it is.
        let clean = json!({"content": [{"type": "text", "text": "hello"}]});
        assert!(
            pii_filter(Dialect::Anthropic)
                .json(&serde_json::to_vec(&clean).unwrap())
                .unwrap()
                .is_none()
        );
    }
}
