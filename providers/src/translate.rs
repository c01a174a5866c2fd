//! Translation between dialects through the canonical model: requests (with the caller's rules
//! for what a target cannot say), JSON answers, and errors. Streams: [`crate::stream`].
//!
//! Same-dialect calls never come here: their bytes pass through untouched.

use crate::Dialect;
use crate::canonical::{Disposition, Loss, Losses, Part, Request};
use crate::codec::DecodeError;
use crate::{anthropic, gemini, ollama, openai};

/// What to do with what a target cannot say: `unsupported` for fields that change the call's
/// meaning (hints the target does without are always dropped), unless `fields` names the field.
#[derive(Debug, Clone)]
pub struct Rules {
    pub unsupported: Disposition,
    pub fields: Vec<(String, Disposition)>,
}

impl Default for Rules {
    fn default() -> Rules {
        Rules {
            unsupported: Disposition::Refuse,
            fields: Vec::new(),
        }
    }
}

impl Rules {
    pub fn disposition(&self, loss: &Loss) -> Disposition {
        match self.fields.iter().find(|(f, _)| *f == loss.field) {
            Some((_, d)) => *d,
            None if loss.changes_meaning => self.unsupported,
            None => Disposition::Drop,
        }
    }
}

/// A request in the target's dialect.
#[derive(Debug)]
pub struct Translated {
    pub body: Vec<u8>,
    /// Fields dropped (or approximated) on the way, for the response header and the audit record.
    pub dropped: Vec<String>,
    pub stream: bool,
    /// The client asked for usage in its stream.
    pub stream_usage: bool,
}

#[derive(Debug)]
pub enum TranslateError {
    /// The request cannot be read (400 in the client's dialect).
    Invalid(DecodeError),
    /// Fields the target cannot carry and the rules refuse to drop.
    Refused(Vec<Loss>),
}

/// `stream`: the call streams, for a dialect that says so in the URL (Gemini).
pub fn decode_request(
    from: Dialect,
    body: &[u8],
    stream: bool,
    losses: &mut Losses,
) -> Result<Request, DecodeError> {
    match from {
        Dialect::OpenAi => openai::request::decode(body, losses),
        Dialect::Anthropic => anthropic::request::decode(body, losses),
        Dialect::Gemini => gemini::request::decode(body, stream, losses),
        Dialect::Ollama => ollama::request::decode(body, losses),
    }
}

pub fn encode_request(to: Dialect, r: &Request, losses: &mut Losses) -> Result<Vec<u8>, DecodeError> {
    match to {
        Dialect::OpenAi => openai::request::encode(r, losses),
        Dialect::Anthropic => anthropic::request::encode(r, losses),
        Dialect::Gemini => gemini::request::encode(r, losses),
        Dialect::Ollama => ollama::request::encode(r, losses),
    }
}

/// Translates a request body from the client's dialect to the upstream's, sent as `model`.
/// `stream`: the client's URL says the call streams (Gemini's `:streamGenerateContent`; the
/// other dialects say it in the body). A Gemini target's model and stream flag go in its URL.
pub fn request(
    from: Dialect,
    to: Dialect,
    body: &[u8],
    model: &str,
    stream: bool,
    rules: &Rules,
) -> Result<Translated, TranslateError> {
    let mut losses = Losses::default();
    let mut r = decode_request(from, body, stream, &mut losses).map_err(TranslateError::Invalid)?;
    model.clone_into(&mut r.model);
    let body = encode_request(to, &r, &mut losses).map_err(TranslateError::Invalid)?;
    let (refused, dropped): (Vec<Loss>, Vec<Loss>) = losses
        .0
        .into_iter()
        .partition(|l| rules.disposition(l) == Disposition::Refuse);
    if !refused.is_empty() {
        return Err(TranslateError::Refused(refused));
    }
    Ok(Translated {
        body,
        dropped: dropped.into_iter().map(|l| l.field).collect(),
        stream: r.stream,
        stream_usage: r.stream_usage,
    })
}

/// Translates a successful JSON answer from the upstream's dialect to the client's.
pub fn response(from: Dialect, to: Dialect, body: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let r = match from {
        Dialect::OpenAi => openai::response::decode(body)?,
        Dialect::Anthropic => anthropic::response::decode(body)?,
        Dialect::Gemini => gemini::response::decode(body)?,
        Dialect::Ollama => ollama::response::decode(body)?,
    };
    if to != Dialect::OpenAi {
        // These dialects carry a call's arguments only as an object: never `{}` for them.
        for p in &r.parts {
            if let Part::ToolCall { name, arguments, .. } = p
                && crate::whole::arguments_object(arguments).is_none()
            {
                let client = match to {
                    Dialect::Anthropic => "Anthropic",
                    Dialect::Gemini => "Gemini",
                    _ => "Ollama",
                };
                return Err(DecodeError(crate::whole::not_an_object(name, client)));
            }
        }
    }
    Ok(match to {
        Dialect::OpenAi => openai::response::encode(&r),
        Dialect::Anthropic => anthropic::response::encode(&r),
        Dialect::Gemini => gemini::response::encode(&r),
        Dialect::Ollama => ollama::response::encode(&r),
    })
}

/// Re-expresses an upstream's error answer in the client's dialect, with the status its SDK
/// acts on.
pub fn error(from: Dialect, to: Dialect, status: u16, body: &[u8]) -> (u16, Vec<u8>) {
    let e = crate::error::decode(from, status, body);
    crate::error::encode(to, &e)
}
