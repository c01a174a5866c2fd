//! A stream transcoded event by event: SSE events of the upstream's dialect in, SSE events of
//! the client's out, through canonical [`Event`]s. Nothing is buffered beyond the event being
//! read. A stream that breaks mid-event, sends what its dialect does not allow, or an event
//! this codec does not know, ends with an error event in the client's dialect: never silently,
//! never truncated to look complete.

use bytes::{Bytes, BytesMut};

use crate::Dialect;
use crate::canonical::{ApiError, ErrorKind, Event};
use crate::{anthropic, openai, sse};

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
}

#[derive(Debug)]
enum Encode {
    OpenAi(openai::stream::Encoder),
    Anthropic(anthropic::stream::Encoder),
}

/// Transcodes one stream from `from` (the upstream's dialect) to `to` (the client's).
#[derive(Debug)]
pub struct Transcoder {
    sse: sse::Decoder,
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
            sse: sse::Decoder::new(),
            decode: match from {
                Dialect::OpenAi => Decode::OpenAi(openai::stream::Decoder::new()),
                Dialect::Anthropic => Decode::Anthropic(anthropic::stream::Decoder::new()),
            },
            encode: match to {
                Dialect::OpenAi => Encode::OpenAi(openai::stream::Encoder::new(client_usage)),
                Dialect::Anthropic => Encode::Anthropic(anthropic::stream::Encoder::new()),
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
        self.sse.push(data);
        let mut out = BytesMut::new();
        while let Some(raw) = self.sse.next_raw() {
            self.raw_event(&raw, &mut out);
            if self.ended {
                self.sse.clear();
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
        if let Some(raw) = self.sse.finish() {
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
        let sse::EventRef { data, .. } = sse::parse_ref(raw);
        let Some(data) = data else {
            return; // a comment or keep-alive
        };
        let decoded = match &mut self.decode {
            Decode::OpenAi(d) => d.data(&data, &mut self.events),
            Decode::Anthropic(d) => d.event(&data, &mut self.events),
        };
        // Events decoded before a failure still go out, then the error.
        for e in self.events.drain(..) {
            if e == Event::Stop {
                self.ended = true;
            }
            match &mut self.encode {
                Encode::OpenAi(enc) => enc.event(&e, out),
                Encode::Anthropic(enc) => enc.event(&e, out),
            }
        }
        if let Err(e) = decoded {
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
        }
    }
}
