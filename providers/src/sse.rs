//! Server-sent events (the WHATWG `text/event-stream` format), the one codec every stream of
//! every dialect goes through: the meter scans its lines, the content filter and the
//! transcoders take whole events, the mock writes them.
//!
//! An event is its lines up to a blank line; `event:` names it, `data:` lines (joined by `\n`)
//! carry its payload; `\n` and `\r\n` both end a line. Comments (`:`) and `id:`/`retry:` are
//! kept by whoever forwards raw events and ignored by [`parse`].

use bytes::{Bytes, BytesMut};

/// A line without its `\n` or `\r\n`.
pub fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The payload of a `data:` line (after the one optional space), if it is one.
pub fn data_line(line: &[u8]) -> Option<&[u8]> {
    let data = line.strip_prefix(b"data:")?;
    Some(data.strip_prefix(b" ").unwrap_or(data))
}

/// Where the first complete event in `buf` ends (after its blank line).
pub fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(nl) = memchr::memchr(b'\n', &buf[i..]) {
        let at = i + nl + 1;
        match buf.get(at) {
            Some(b'\n') => return Some(at + 1),
            Some(b'\r') if buf.get(at + 1) == Some(&b'\n') => return Some(at + 2),
            _ => i = at,
        }
    }
    None
}

/// One parsed event: its name and its data (`None` for an event without `data:` lines, such
/// as a comment).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    pub name: Option<Box<str>>,
    pub data: Option<String>,
}

/// An event's `event:` name and its `data:` (lines joined by `\n`).
pub fn parse(raw: &[u8]) -> Event {
    let text = String::from_utf8_lossy(raw);
    let mut name = None;
    let mut data: Option<String> = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            name = Some(v.trim_start().into());
        } else if let Some(v) = line.strip_prefix("data:") {
            let v = v.strip_prefix(' ').unwrap_or(v);
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(v);
                }
                None => data = Some(v.to_string()),
            }
        }
    }
    Event { name, data }
}

/// An event read without copying: its name and its data, borrowed from the event's bytes when
/// it has one `data:` line (the usual case) and is UTF-8.
#[derive(Debug, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub name: Option<&'a str>,
    pub data: Option<std::borrow::Cow<'a, str>>,
}

/// [`parse`] without copying where it can: lines are found with `memchr`, and only the `data:`
/// payload is checked for UTF-8.
pub fn parse_ref(raw: &[u8]) -> EventRef<'_> {
    let mut name = None;
    let mut data: Option<std::borrow::Cow<'_, str>> = None;
    let mut at = 0;
    while at < raw.len() {
        let end = memchr::memchr(b'\n', &raw[at..]).map_or(raw.len(), |i| at + i);
        let line = trim_eol(&raw[at..end]);
        at = end + 1;
        if let Some(v) = line.strip_prefix(b"event:") {
            let v = v.trim_ascii_start();
            match std::str::from_utf8(v) {
                Ok(v) => name = Some(v),
                Err(_) => return owned(raw),
            }
        } else if let Some(v) = data_line(line) {
            let Ok(v) = std::str::from_utf8(v) else {
                return owned(raw);
            };
            data = Some(match data {
                None => std::borrow::Cow::Borrowed(v),
                Some(d) => std::borrow::Cow::Owned(format!("{d}\n{v}")),
            });
        }
    }
    EventRef { name, data }
}

/// An event that is not all UTF-8: read the lossy way.
fn owned(raw: &[u8]) -> EventRef<'_> {
    let e = parse(raw);
    EventRef {
        name: None,
        data: e.data.map(std::borrow::Cow::Owned),
    }
}

/// Writes one event. `data` must not contain a newline (compact JSON never does).
pub fn write(out: &mut BytesMut, name: Option<&str>, data: &str) {
    if let Some(n) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data.as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Splits a stream's reads into whole events, however the reads fall.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Appends the next read.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole event (raw, with its blank line), if one has arrived.
    pub fn next_raw(&mut self) -> Option<Bytes> {
        let end = event_end(&self.buf)?;
        Some(self.buf.split_to(end).freeze())
    }

    /// What is left once the stream has ended: an unterminated last event, terminated.
    pub fn finish(&mut self) -> Option<Bytes> {
        if self.buf.iter().all(|b| b.is_ascii_whitespace()) {
            self.buf.clear();
            return None;
        }
        let mut rest = self.buf.split();
        rest.extend_from_slice(b"\n\n");
        Some(rest.freeze())
    }

    /// Bytes held for an unfinished event.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Drops what is held.
    pub fn clear(&mut self) {
        self.buf.clear();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn events_are_found_whatever_the_reads() {
        let stream = b"event: a\r\ndata: {\"x\":1}\r\n\r\n: comment\n\ndata: one\ndata: two\n\n";
        for cut in 0..=stream.len() {
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for part in [&stream[..cut], &stream[cut..]] {
                d.push(part);
                while let Some(e) = d.next_raw() {
                    got.push(parse(&e));
                }
            }
            assert!(d.finish().is_none(), "cut {cut}");
            assert_eq!(got.len(), 3, "cut {cut}");
            assert_eq!(got[0].name.as_deref(), Some("a"));
            assert_eq!(got[0].data.as_deref(), Some("{\"x\":1}"));
            assert_eq!(got[1].data, None);
            assert_eq!(got[2].data.as_deref(), Some("one\ntwo"));
        }
    }

    #[test]
    fn borrowed_parsing_agrees_with_parsing() {
        for raw in [
            &b"event: a\r\ndata: {\"x\":1}\r\n\r\n"[..],
            b"data: one\ndata: two\n\n",
            b": comment\n\n",
            b"data:no-space\n\n",
            b"event: e\ndata: caf\xc3\xa9\n\n",
            b"data: bad \xff byte\n\n",
        ] {
            let e = parse(raw);
            let r = parse_ref(raw);
            assert_eq!(r.data.as_deref(), e.data.as_deref(), "{raw:?}");
            if std::str::from_utf8(raw).is_ok() {
                assert_eq!(r.name, e.name.as_deref(), "{raw:?}");
            }
        }
    }

    #[test]
    fn an_unterminated_last_event_is_kept() {
        let mut d = Decoder::new();
        d.push(b"data: [DONE]");
        assert!(d.next_raw().is_none());
        let last = d.finish().unwrap();
        assert_eq!(parse(&last).data.as_deref(), Some("[DONE]"));
    }

    #[test]
    fn written_events_parse_back() {
        let mut out = BytesMut::new();
        write(&mut out, Some("message_stop"), "{\"type\":\"message_stop\"}");
        let e = parse(&out);
        assert_eq!(e.name.as_deref(), Some("message_stop"));
        assert_eq!(event_end(&out), Some(out.len()));
    }
}
