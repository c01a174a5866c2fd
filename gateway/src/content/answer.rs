//! The response filter for a client of any dialect. [`Filter`] reads OpenAI's and Anthropic's
//! answers itself; a Gemini or Ollama answer is read as OpenAI's, through the canonical model:
//! a stream through two transcoders (the client's dialect to OpenAI's, the filter, and back),
//! a JSON answer translated there and back only when the filter changes it. A filter's error
//! event comes out in the client's dialect, as every other error does.

use bytes::{Bytes, BytesMut};
use lattice_providers::Dialect;
use lattice_providers::stream::Transcoder;

use super::filter::{Filter, Report, Rules, Stopped};

pub enum AnswerFilter {
    /// The filter reads the client's dialect.
    Direct(Filter),
    /// The filter reads OpenAI's, between `into` (client -> OpenAI) and `out` (OpenAI -> client).
    Hub {
        client: Dialect,
        into: Box<Transcoder>,
        filter: Filter,
        out: Box<Transcoder>,
    },
}

impl AnswerFilter {
    pub fn new(client: Dialect, rules: Rules) -> AnswerFilter {
        match client {
            Dialect::OpenAi | Dialect::Anthropic => AnswerFilter::Direct(Filter::new(client, rules)),
            Dialect::Gemini | Dialect::Ollama => AnswerFilter::Hub {
                client,
                into: Box::new(Transcoder::new(client, Dialect::OpenAi, true)),
                filter: Filter::new(Dialect::OpenAi, rules),
                out: Box::new(Transcoder::new(Dialect::OpenAi, client, true)),
            },
        }
    }

    fn filter(&self) -> &Filter {
        match self {
            AnswerFilter::Direct(f) | AnswerFilter::Hub { filter: f, .. } => f,
        }
    }

    pub fn report(&mut self) -> &Report {
        match self {
            AnswerFilter::Direct(f) | AnswerFilter::Hub { filter: f, .. } => f.report(),
        }
    }

    /// The stream was stopped (an error event was sent); nothing more goes out.
    pub fn stopped(&self) -> bool {
        self.filter().stopped()
    }

    pub fn holds(&self) -> bool {
        match self {
            AnswerFilter::Direct(f) => f.holds(),
            AnswerFilter::Hub {
                into, filter, out, ..
            } => !filter.stopped() && (into.holds() || filter.holds() || out.holds()),
        }
    }

    /// A whole JSON answer: `Ok(None)` to send it as it is, `Ok(Some(body))` rewritten, or the
    /// reason to refuse it. `success`: the upstream's status was 2xx. An error answer is not in
    /// the shape of an answer in any dialect: the filter scans it as it is (every string in it,
    /// or its text when it is not JSON), never through the canonical model.
    pub fn json(&mut self, body: &[u8], success: bool) -> Result<Option<Bytes>, Stopped> {
        match self {
            AnswerFilter::Direct(f) => f.json(body),
            AnswerFilter::Hub { filter, .. } if !success => filter.json(body),
            AnswerFilter::Hub { client, filter, .. } => {
                let openai = match lattice_providers::translate::response(*client, Dialect::OpenAi, body) {
                    Ok(b) => b,
                    Err(e) => return Err(filter.unscanned(&e)),
                };
                match filter.json(&openai)? {
                    None => Ok(None),
                    Some(changed) => {
                        match lattice_providers::translate::response(Dialect::OpenAi, *client, &changed) {
                            Ok(b) => Ok(Some(Bytes::from(b))),
                            Err(e) => Err(filter.unscanned(&e)),
                        }
                    }
                }
            }
        }
    }

    /// The next bytes of a stream; what to send now.
    pub fn feed(&mut self, data: &[u8]) -> Bytes {
        match self {
            AnswerFilter::Direct(f) => f.feed(data),
            AnswerFilter::Hub {
                into, filter, out, ..
            } => {
                let mid = into.feed(data);
                if mid.is_empty() {
                    return mid;
                }
                let checked = filter.feed(&mid);
                if checked.is_empty() {
                    return checked;
                }
                out.feed(&checked)
            }
        }
    }

    /// The stream has ended: what each stage held back, through the stages after it.
    pub fn finish(&mut self) -> Bytes {
        match self {
            AnswerFilter::Direct(f) => f.finish(),
            AnswerFilter::Hub {
                into, filter, out, ..
            } => {
                let mut mid = BytesMut::from(&into.finish()[..]);
                let mut checked = BytesMut::new();
                if !mid.is_empty() {
                    checked.extend_from_slice(&filter.feed(&mid.split()));
                }
                checked.extend_from_slice(&filter.finish());
                let mut sent = BytesMut::new();
                if !checked.is_empty() {
                    sent.extend_from_slice(&out.feed(&checked));
                }
                sent.extend_from_slice(&out.finish());
                sent.freeze()
            }
        }
    }
}
