//! Content gates: what the text of a call may carry. [`pii`] finds personal data and secrets;
//! this module decides what to do with each finding (allow, block, redact, mask, hash), per
//! detector kind and per direction, and rewrites request bodies.
//!
//! A request body is scanned once as it arrived (its raw bytes: a JSON string's escapes never
//! hide a match from this scan, except `\u` escapes, which send the body down the careful path).
//! With nothing found, the body goes upstream untouched. Otherwise the body is parsed, every
//! string value is scanned (message text of every role, tool calls and tool results, in both
//! dialects; not ids, roles, model names or inline image data) and the findings acted on.

pub mod answer;
pub mod filter;
pub mod pii;
pub mod strict;
pub mod tools;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use pii::{Detector, Scanner, Validator};

/// What to do with one kind of finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Allow,
    /// Refuse the call (the error names the kind, never the value).
    Block,
    /// Replace with a typed placeholder: `[EMAIL_1]` (the same value, the same number).
    Redact,
    /// Keep the last four characters: `************1111`.
    Mask,
    /// Replace with a stable hash: `[EMAIL_3f9a2b1c4d5e]` (SHA-256, first 12 hex digits).
    Hash,
}

/// Actions by detector kind, with a default for the kinds not named.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
pub struct Actions {
    #[serde(default)]
    pub default: Option<Action>,
    #[serde(flatten)]
    pub kinds: BTreeMap<String, Action>,
}

impl Actions {
    pub fn get(&self, kind: &str) -> Action {
        self.kinds
            .get(kind)
            .copied()
            .or(self.default)
            .unwrap_or(Action::Allow)
    }

    /// `other` on top of `self`.
    pub fn with(&self, other: &Actions) -> Actions {
        let mut a = self.clone();
        if other.default.is_some() {
            a.default = other.default;
        }
        a.kinds.extend(other.kinds.iter().map(|(k, v)| (k.clone(), *v)));
        a
    }

    pub fn all_allow(&self) -> bool {
        self.default.is_none_or(|d| d == Action::Allow) && self.kinds.values().all(|a| *a == Action::Allow)
    }
}

/// `[pii]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPii {
    #[serde(default)]
    request: Actions,
    #[serde(default)]
    response: Actions,
    #[serde(default)]
    detectors: Vec<RawDetector>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDetector {
    name: String,
    pattern: String,
    #[serde(default)]
    validator: Option<String>,
}

/// The validated `[pii]`.
#[derive(Debug, Clone, Default)]
pub struct PiiConfig {
    pub request: Actions,
    pub response: Actions,
    pub custom: Vec<Detector>,
}

impl PiiConfig {
    pub fn enabled(&self) -> bool {
        !self.request.all_allow() || !self.response.all_allow()
    }
}

pub fn validate(raw: Option<RawPii>) -> Result<PiiConfig, (String, String)> {
    let Some(raw) = raw else {
        return Ok(PiiConfig::default());
    };
    let mut custom = Vec::new();
    for (i, d) in raw.detectors.into_iter().enumerate() {
        let key = format!("pii.detectors[{i}]");
        if d.name.is_empty()
            || !d
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit())
        {
            return Err((format!("{key}.name"), "lower-case letters, digits and `_`".into()));
        }
        let validator = match d.validator.as_deref() {
            None => Validator::None,
            Some(v) => Validator::parse(v).ok_or_else(|| {
                (
                    format!("{key}.validator"),
                    format!("\"{v}\" is not one of luhn, iban, ssn, ipv4, ipv6, phone, entropy"),
                )
            })?,
        };
        if let Err(e) = regex_automata::meta::Regex::new(&d.pattern) {
            return Err((format!("{key}.pattern"), format!("not a valid regex: {e}")));
        }
        custom.push(Detector {
            kind: d.name.into(),
            pattern: d.pattern,
            validator,
        });
    }
    Ok(PiiConfig {
        request: raw.request,
        response: raw.response,
        custom,
    })
}

/// What was found of one kind, and what was done: for the audit record (never the values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: Box<str>,
    pub direction: &'static str,
    pub count: u32,
    pub action: Action,
}

/// The outcome of scanning a request body.
#[derive(Debug, Default)]
pub struct Scanned {
    /// The body to send instead, when something was rewritten.
    pub body: Option<bytes::Bytes>,
    pub findings: Vec<Finding>,
    /// The first kind whose action is `block`.
    pub blocked: Option<Box<str>>,
}

/// Keys whose string values are not text: identifiers, roles, model names, inline images,
/// protocol fields of answers, and signatures (which must come back byte for byte). Skipped
/// only in the protocol's own objects: inside a tool call's `input` (or `metadata`,
/// `parameters`) they are data like any other.
fn skipped(key: &str) -> bool {
    matches!(
        key,
        "model"
            | "role"
            | "type"
            | "id"
            | "tool_call_id"
            | "tool_use_id"
            | "media_type"
            | "data"
            | "cache_control"
            | "object"
            | "finish_reason"
            | "stop_reason"
            | "system_fingerprint"
            | "signature"
    )
}

/// The PII engine: the compiled detectors and the configured actions.
pub struct Pii {
    scanner: Scanner,
    config: PiiConfig,
}

/// What was found, by kind, and the placeholder numbers given so far: one per call and
/// direction, so the same value gets the same placeholder throughout.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    /// kind -> (count, action)
    found: BTreeMap<Box<str>, (u32, Action)>,
    /// (kind, value) -> placeholder number.
    numbers: BTreeMap<(Box<str>, String), usize>,
    /// Something was rewritten.
    changed: bool,
}

impl Tally {
    /// Appends `text[range]` to `out` with each of `hits` (inside `range`, in order) acted on.
    /// Returns the first kind whose action is `block` (the text is still appended).
    pub(crate) fn apply(
        &mut self,
        scanner: &Scanner,
        actions: &Actions,
        text: &str,
        range: std::ops::Range<usize>,
        hits: &[pii::Hit],
        out: &mut String,
    ) -> Option<Box<str>> {
        let mut blocked = None;
        let mut at = range.start;
        for h in hits {
            let kind = &scanner.detectors()[h.detector].kind;
            let action = actions.get(kind);
            let e = self.found.entry(kind.clone()).or_insert((0, action));
            e.0 += 1;
            let value = &text[h.span.clone()];
            out.push_str(&text[at..h.span.start]);
            match action {
                Action::Allow => out.push_str(value),
                Action::Block => {
                    blocked.get_or_insert_with(|| kind.clone());
                    out.push_str(value);
                }
                Action::Redact => {
                    // Numbered per kind, in order of first appearance.
                    let next = self.numbers.keys().filter(|(k, _)| k == kind).count() + 1;
                    let n = *self
                        .numbers
                        .entry((kind.clone(), value.to_string()))
                        .or_insert(next);
                    out.push_str(&format!("[{}_{n}]", kind.to_ascii_uppercase()));
                }
                Action::Mask => out.push_str(&mask(value)),
                Action::Hash => {
                    let digest = Sha256::digest(value.as_bytes());
                    out.push_str(&format!(
                        "[{}_{}]",
                        kind.to_ascii_uppercase(),
                        &crate::hex::encode(&digest)[..12]
                    ));
                }
            }
            if matches!(action, Action::Redact | Action::Mask | Action::Hash) {
                self.changed = true;
            }
            at = h.span.end;
        }
        out.push_str(&text[at..range.end]);
        blocked
    }

    pub(crate) fn changed(&self) -> bool {
        self.changed
    }

    pub(crate) fn findings(&self, direction: &'static str) -> Vec<Finding> {
        self.found
            .iter()
            .map(|(k, (count, action))| Finding {
                kind: k.clone(),
                direction,
                count: *count,
                action: *action,
            })
            .collect()
    }
}

/// Rewrites every string of a JSON document that is text (see [`skipped`]).
pub(crate) struct Rewriter<'a> {
    pub scanner: &'a Scanner,
    pub actions: &'a Actions,
    pub tally: &'a mut Tally,
    pub blocked: Option<Box<str>>,
    hits: Vec<pii::Hit>,
    /// How deep the walk is inside free-form data (a tool call's `input`, `metadata`), where
    /// no key is protocol and every string is scanned.
    in_data: u32,
}

/// Keys whose values are free-form data, not protocol: below them nothing is skipped (Gemini's
/// `functionCall.args` and `functionResponse.response`, Ollama's object `arguments`, too).
fn free_form(key: &str) -> bool {
    matches!(
        key,
        "input" | "metadata" | "parameters" | "args" | "response" | "arguments"
    )
}

impl<'a> Rewriter<'a> {
    pub(crate) fn new(scanner: &'a Scanner, actions: &'a Actions, tally: &'a mut Tally) -> Self {
        Rewriter {
            scanner,
            actions,
            tally,
            blocked: None,
            hits: Vec::new(),
            in_data: 0,
        }
    }

    pub(crate) fn text(&mut self, s: &mut String) {
        self.hits.clear();
        let hits = &mut self.hits;
        self.scanner.scan(s, |h| hits.push(h));
        if self.hits.is_empty() {
            return;
        }
        let mut out = String::with_capacity(s.len());
        let blocked = self
            .tally
            .apply(self.scanner, self.actions, s, 0..s.len(), &self.hits, &mut out);
        if self.blocked.is_none() {
            self.blocked = blocked;
        }
        *s = out;
    }

    pub(crate) fn walk(&mut self, v: &mut Value) {
        match v {
            Value::String(s) => self.text(s),
            Value::Array(a) => a.iter_mut().for_each(|v| self.walk(v)),
            Value::Object(m) => {
                for (k, v) in m.iter_mut() {
                    if free_form(k) {
                        self.in_data += 1;
                        self.walk(v);
                        self.in_data -= 1;
                    } else if self.in_data > 0 || !skipped(k) {
                        self.walk(v);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Keeps the last four characters, stars the rest.
fn mask(value: &str) -> String {
    let n = value.chars().count();
    value
        .chars()
        .enumerate()
        .map(|(i, c)| if i + 4 >= n { c } else { '*' })
        .collect()
}

impl Pii {
    pub fn new(config: PiiConfig) -> Result<Pii, String> {
        let mut detectors = pii::builtins();
        // Custom detectors first: a configured kind is more specific than the built-in shapes.
        detectors.splice(0..0, config.custom.iter().cloned());
        Ok(Pii {
            scanner: Scanner::new(detectors)?,
            config,
        })
    }

    pub fn scanner(&self) -> &Scanner {
        &self.scanner
    }

    pub fn config(&self) -> &PiiConfig {
        &self.config
    }

    /// Scans a request body and applies `actions`.
    pub fn request(&self, body: &[u8], actions: &Actions) -> Scanned {
        if actions.all_allow() {
            return Scanned::default();
        }
        // The raw bytes first: nothing there (and no escape at all, which could split or hide
        // a value: `\u0040`, `\/`) means nothing to do, and the body passes untouched.
        let raw = String::from_utf8_lossy(body);
        let mut any = false;
        self.scanner.scan(&raw, |_| any = true);
        if !any && memchr::memchr(b'\\', body).is_none() {
            return Scanned::default();
        }
        // The gate checked the body (`strict`), so this cannot fail; if it did, nothing passes.
        let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
            return Scanned {
                blocked: Some("unreadable".into()),
                ..Scanned::default()
            };
        };
        let mut tally = Tally::default();
        let mut w = Rewriter::new(&self.scanner, actions, &mut tally);
        w.walk(&mut v);
        let blocked = w.blocked.take();
        let findings = tally.findings("request");
        let body = (tally.changed() && blocked.is_none())
            .then(|| serde_json::to_vec(&v).ok().map(bytes::Bytes::from))
            .flatten();
        Scanned {
            body,
            findings,
            blocked,
        }
    }
}

/// How a kind is named to a client: "an e-mail address (`email`)".
pub fn describe(kind: &str) -> String {
    let what = match kind {
        "email" => "an e-mail address",
        "phone" => "a phone number",
        "card" => "a payment card number",
        "iban" => "an IBAN",
        "ssn" => "a US social security number",
        "ipv4" | "ipv6" => "an IP address",
        "secret" => "a secret (an API key, token or private key)",
        _ => "data",
    };
    format!("{what} (detector `{kind}`)")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn actions(default: Action, pairs: &[(&str, Action)]) -> Actions {
        Actions {
            default: Some(default),
            kinds: pairs.iter().map(|(k, a)| (k.to_string(), *a)).collect(),
        }
    }

    #[test]
    fn redacts_masks_and_hashes_every_text_part_in_both_dialects() {
        let pii = Pii::new(PiiConfig::default()).unwrap();
        let openai = br#"{"model":"gpt-4o","messages":[{"role":"system","content":"ops: ana@example.com"},{"role":"user","content":[{"type":"text","text":"mail ana@example.com and bo@example.org, card 4111 1111 1111 1111"}]},{"role":"tool","tool_call_id":"c1","content":"ip 10.1.2.3"}]}"#;
        let a = actions(Action::Redact, &[("card", Action::Mask), ("ipv4", Action::Hash)]);
        let s = pii.request(openai, &a);
        let body: Value = serde_json::from_slice(s.body.as_ref().unwrap()).unwrap();
        assert_eq!(body["messages"][0]["content"], "ops: [EMAIL_1]");
        assert_eq!(
            body["messages"][1]["content"][0]["text"],
            "mail [EMAIL_1] and [EMAIL_2], card ***************1111"
        );
        let ip = body["messages"][2]["content"].as_str().unwrap();
        assert!(ip.starts_with("ip [IPV4_") && !ip.contains("10.1.2.3"), "{ip}");
        assert_eq!(body["model"], "gpt-4o");
        let counts: Vec<(String, u32)> = s.findings.iter().map(|f| (f.kind.to_string(), f.count)).collect();
        assert_eq!(
            counts,
            vec![("card".into(), 1), ("email".into(), 3), ("ipv4".into(), 1)]
        );

        let anthropic = br#"{"model":"claude","system":[{"type":"text","text":"key sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH"}],"messages":[{"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":[{"type":"text","text":"ssn 123-45-6789"}]}]}]}"#;
        let s = pii.request(anthropic, &actions(Action::Redact, &[("secret", Action::Block)]));
        assert_eq!(s.blocked.as_deref(), Some("secret"));
        assert!(s.body.is_none());
    }

    #[test]
    fn protocol_key_names_inside_tool_input_are_scanned() {
        let pii = Pii::new(PiiConfig::default()).unwrap();
        let key = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH";
        for field in ["data", "id", "type", "signature", "model"] {
            let body = format!(
                r#"{{"model":"claude","messages":[{{"role":"assistant","content":[{{"type":"tool_use","id":"toolu_01","name":"x","input":{{"nested":{{"{field}":"{key}"}}}}}}]}}]}}"#
            );
            let s = pii.request(
                body.as_bytes(),
                &actions(Action::Allow, &[("secret", Action::Block)]),
            );
            assert_eq!(s.blocked.as_deref(), Some("secret"), "{field}");
        }
        // The protocol's own ids are still left alone.
        let s = pii.request(
            br#"{"model":"m","messages":[{"role":"assistant","content":[{"type":"tool_use","id":"toolu_01A09q90qw90lq917835lq9abcdefghijk","name":"x","input":{}}]}]}"#,
            &actions(Action::Redact, &[]),
        );
        assert!(s.findings.is_empty(), "{:?}", s.findings);
    }

    #[test]
    fn a_body_without_findings_passes_untouched() {
        let pii = Pii::new(PiiConfig::default()).unwrap();
        let s = pii.request(
            br#"{"model":"m","messages":[{"role":"user","content":"hello"}]}"#,
            &actions(Action::Redact, &[]),
        );
        assert!(s.body.is_none() && s.findings.is_empty());
        // A \u escape cannot hide an address.
        let s = pii.request(
            br#"{"model":"m","messages":[{"role":"user","content":"ana\u0040example.com"}]}"#,
            &actions(Action::Redact, &[]),
        );
        let body: Value = serde_json::from_slice(s.body.as_ref().unwrap()).unwrap();
        assert_eq!(body["messages"][0]["content"], "[EMAIL_1]");
    }
}
