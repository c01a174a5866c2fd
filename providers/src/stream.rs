//! A stream transcoded event by event: SSE events of the upstream's dialect in, SSE events of
//! the client's out, through canonical [`Event`]s. Nothing is buffered beyond the event being
//! read. A stream that breaks mid-event, sends what its dialect does not allow, or an event
//! this codec does not know, ends with an error event in the client's dialect: never silently,
//! never truncated to look complete.

use bytes::{Bytes, BytesMut};

use crate::Dialect;
use crate::canonical::{ApiError, ErrorKind, Event};
use crate::{anthropic, gemini, ollama, openai, sse};

/// Why a stream could not be transcoded further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamError {
    /// The upstream sent an error event.
    Upstream(ApiError),
    /// An event its dialect does not allow (or not JSON).
    Malformed(String),
    /// An event or block this codec does not know.
    Unknown(String),
}

impl StreamError {
    fn api_error(self) -> ApiError {
        match self {
            StreamError::Upstream(e) => e,
            StreamError::Malformed(m) => ApiError {
                status: 502,
                kind: ErrorKind::Api,
                message: format!("the upstream's stream could not be translated: {m}"),
            },
            StreamError::Unknown(m) => ApiError {
                status: 502,
                kind: ErrorKind::Api,
                message: format!("the upstream's stream sent something this gateway does not translate: {m}"),
            },
        }
    }
}

#[derive(Debug)]
enum Decode {
    OpenAi(openai::stream::Decoder),
    Anthropic(anthropic::stream::Decoder),
    Gemini(gemini::stream::Decoder),
    Ollama(ollama::stream::Decoder),
}

#[derive(Debug)]
enum Encode {
    OpenAi(openai::stream::Encoder),
    Anthropic(anthropic::stream::Encoder),
    Gemini(gemini::stream::Encoder),
    Ollama(ollama::stream::Encoder),
}

/// How the upstream's stream is framed: server-sent events, or one JSON object per line
/// (Ollama).
#[derive(Debug)]
enum Framing {
    Sse(sse::Decoder),
    Lines(Lines),
}

/// Newline-delimited frames.
#[derive(Debug, Default)]
struct Lines {
    buf: BytesMut,
}

impl Lines {
    fn next(&mut self) -> Option<Bytes> {
        let at = memchr::memchr(b'\n', &self.buf)?;
        Some(self.buf.split_to(at + 1).freeze())
    }
}

impl Framing {
    fn push(&mut self, data: &[u8]) {
        match self {
            Framing::Sse(d) => d.push(data),
            Framing::Lines(l) => l.buf.extend_from_slice(data),
        }
    }

    fn next(&mut self) -> Option<Bytes> {
        match self {
            Framing::Sse(d) => d.next_raw(),
            Framing::Lines(l) => l.next(),
        }
    }

    fn finish(&mut self) -> Option<Bytes> {
        match self {
            Framing::Sse(d) => d.finish(),
            Framing::Lines(l) => (!l.buf.is_empty()).then(|| l.buf.split().freeze()),
        }
    }

    fn clear(&mut self) {
        match self {
            Framing::Sse(d) => d.clear(),
            Framing::Lines(l) => l.buf.clear(),
        }
    }

    /// A frame's payload: an SSE event's data (none for a comment), or a non-blank line.
    fn payload<'a>(&self, raw: &'a [u8]) -> Option<std::borrow::Cow<'a, str>> {
        match self {
            Framing::Sse(_) => sse::parse_ref(raw).data,
            Framing::Lines(_) => {
                let line = sse::trim_eol(raw);
                let blank = line.iter().all(u8::is_ascii_whitespace);
                (!blank).then(|| String::from_utf8_lossy(line))
            }
        }
    }
}

/// Transcodes one stream from `from` (the upstream's dialect) to `to` (the client's).
#[derive(Debug)]
pub struct Transcoder {
    framing: Framing,
    decode: Decode,
    encode: Encode,
    events: Vec<Event>,
    /// Set once the stream has ended (completed, or with an error event).
    ended: bool,
    /// Why it ended early, for the access record.
    failure: Option<String>,
}

impl Transcoder {
    /// `client_usage`: the client asked for usage in the stream (OpenAI clients ask; Anthropic
    /// streams always carry it).
    pub fn new(from: Dialect, to: Dialect, client_usage: bool) -> Transcoder {
        Transcoder {
            framing: match from {
                Dialect::Ollama => Framing::Lines(Lines::default()),
                _ => Framing::Sse(sse::Decoder::new()),
            },
            decode: match from {
                Dialect::OpenAi => Decode::OpenAi(openai::stream::Decoder::new()),
                Dialect::Anthropic => Decode::Anthropic(anthropic::stream::Decoder::new()),
                Dialect::Gemini => Decode::Gemini(gemini::stream::Decoder::new()),
                Dialect::Ollama => Decode::Ollama(ollama::stream::Decoder::new()),
            },
            encode: match to {
                Dialect::OpenAi => Encode::OpenAi(openai::stream::Encoder::new(client_usage)),
                Dialect::Anthropic => Encode::Anthropic(anthropic::stream::Encoder::new()),
                Dialect::Gemini => Encode::Gemini(gemini::stream::Encoder::new()),
                Dialect::Ollama => Encode::Ollama(ollama::stream::Encoder::new()),
            },
            events: Vec::new(),
            ended: false,
            failure: None,
        }
    }

    /// The next bytes of the upstream's stream; returns the client's bytes for every whole
    /// event among them.
    pub fn feed(&mut self, data: &[u8]) -> Bytes {
        if self.ended {
            return Bytes::new();
        }
        self.framing.push(data);
        let mut out = BytesMut::new();
        while let Some(raw) = self.framing.next() {
            self.raw_event(&raw, &mut out);
            if self.ended {
                self.framing.clear();
                break;
            }
        }
        out.freeze()
    }

    /// The upstream's stream has ended: a last unterminated event is read; a stream that did
    /// not reach its end gets an error event.
    pub fn finish(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        if self.ended {
            return out.freeze();
        }
        if let Some(raw) = self.framing.finish() {
            // An unterminated last event is read if it is whole (`data: [DONE]` without its
            // blank line); one cut in the middle is reported as what it is.
            let mut last = BytesMut::new();
            self.raw_event(&raw, &mut last);
            if self.failure.is_some() {
                let e = StreamError::Malformed("it ended in the middle of an event".into());
                self.ended = false;
                self.fail(e, &mut out);
                return out.freeze();
            }
            out.extend_from_slice(&last);
        }
        if !self.ended {
            let e = StreamError::Malformed("it ended before its last event".into());
            self.fail(e, &mut out);
        }
        out.freeze()
    }

    /// Until the stream's last event has been read, more may follow: the rest of an unfinished
    /// event, or the error event of a stream cut short.
    pub fn holds(&self) -> bool {
        !self.ended
    }

    /// Why the stream ended early, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    fn raw_event(&mut self, raw: &[u8], out: &mut BytesMut) {
        let Some(data) = self.framing.payload(raw) else {
            return; // a comment, keep-alive or blank line
        };
        let decoded = match &mut self.decode {
            Decode::OpenAi(d) => d.data(&data, &mut self.events),
            Decode::Anthropic(d) => d.event(&data, &mut self.events),
            Decode::Gemini(d) => d.data(&data, &mut self.events),
            Decode::Ollama(d) => d.line(&data, &mut self.events),
        };
        // Events decoded before a failure still go out, then the error. An event the client's
        // dialect cannot carry ends the stream there, with the error.
        let mut unwritable = None;
        for e in self.events.drain(..) {
            let written = match &mut self.encode {
                Encode::OpenAi(enc) => {
                    enc.event(&e, out);
                    Ok(())
                }
                Encode::Anthropic(enc) => {
                    enc.event(&e, out);
                    Ok(())
                }
                Encode::Gemini(enc) => enc.event(&e, out),
                Encode::Ollama(enc) => enc.event(&e, out),
            };
            if let Err(err) = written {
                unwritable = Some(err);
                break;
            }
            if e == Event::Stop {
                self.ended = true;
            }
        }
        if let Some(e) = unwritable.or(decoded.err()) {
            self.events.clear();
            self.ended = false;
            self.fail(e, out);
        }
    }

    fn fail(&mut self, e: StreamError, out: &mut BytesMut) {
        let e = e.api_error();
        self.failure = Some(e.message.clone());
        self.ended = true;
        match &mut self.encode {
            Encode::OpenAi(enc) => enc.error(&e, out),
            Encode::Anthropic(enc) => enc.error(&e, out),
            Encode::Gemini(enc) => enc.error(&e, out),
            Encode::Ollama(enc) => enc.error(&e, out),
        }
    }
}
