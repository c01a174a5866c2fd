//! HTTP/1.1 framing, checked as strictly as RFC 9112 allows, before hyper reads a byte.
//!
//! hyper (like most parsers) is lenient where a strict reading is the safe one: it takes a
//! request with both `Content-Length` and `Transfer-Encoding`, codings other than `chunked`,
//! bare LF line ends, control bytes in chunk extensions, and HTTP/1.1 without a `Host` (or with
//! two). A peer behind or in front of the gateway that frames the same bytes differently is a
//! request-smuggling channel. So every HTTP/1.1 connection reads through [`Checked`], which
//! follows the message framing (heads, `Content-Length` bodies, chunks and trailers) and hands
//! hyper only bytes it has checked. Refused, in the client's dialect (400) and with the
//! connection closed afterwards, never a 2xx and never forwarded:
//!
//! - a head with a bare LF or CR, a control byte, an obs-fold line, or a header name followed
//!   by white space before its colon;
//! - both `Content-Length` and `Transfer-Encoding`; more than one `Content-Length` or one that is
//!   not a number; more than one `Transfer-Encoding` line or codings other than exactly
//!   `chunked`; `Transfer-Encoding` in HTTP/1.0;
//! - HTTP/1.1 without exactly one `Host`;
//! - a chunk-size line that is not hex digits then well-formed extensions (control bytes, an
//!   unterminated quoted string, a bare CR or LF), chunk data not followed by CRLF, and
//!   malformed trailer lines.
//!
//! A bad head never reaches hyper: in its place hyper reads a stand-in request (same method and
//! path, no body), and the handler, seeing the connection's [`Framing`] failed, answers 400. A
//! bad chunk stops the body there; the handler waiting for it answers 400. Nothing more is read
//! from such a connection.
//!
//! Cost: the bytes pass through one buffer (one copy more than hyper reading the socket), heads
//! are scanned once with `memchr`, body bytes are counted, not scanned.

use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection's framing verdict, shared with the requests on it.
#[derive(Debug, Default)]
pub struct Framing {
    reason: OnceLock<&'static str>,
    notify: tokio::sync::Notify,
}

impl Framing {
    /// Why the connection's framing was refused, if it was.
    pub fn error(&self) -> Option<&'static str> {
        self.reason.get().copied()
    }

    /// Resolves once the framing is refused (for a handler waiting for a body).
    pub async fn failed(&self) -> &'static str {
        loop {
            let wait = self.notify.notified();
            if let Some(r) = self.error() {
                return r;
            }
            wait.await;
        }
    }

    fn fail(&self, reason: &'static str) {
        let _ = self.reason.set(reason);
        self.notify.notify_waiters();
    }
}

/// The longest head the check holds before it gives up on it (hyper's own limit is larger).
const MAX_HEAD: usize = 64 * 1024;
/// The longest chunk-size or trailer line.
const MAX_LINE: usize = 8 * 1024;
/// How much is read from the socket at once.
const READ: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    /// Body bytes left of a `Content-Length` body.
    Length(u64),
    ChunkSize,
    /// Bytes left of the current chunk's data.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    Trailers,
    /// Refused: nothing more is read or handed on.
    Refused,
}

/// The framing of a message body, from its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    None,
    Length(u64),
    Chunked,
}

/// A stream whose bytes are checked as HTTP/1.1 framing before they are read (see the module).
pub struct Checked<S> {
    inner: S,
    framing: std::sync::Arc<Framing>,
    state: State,
    /// Bytes read from the socket: `[taken..checked)` are checked and wait for the reader,
    /// `[checked..len)` wait to be checked.
    buf: Vec<u8>,
    taken: usize,
    checked: usize,
    len: usize,
    eof: bool,
    /// How much of the head being read was searched for its end already.
    head_scanned: usize,
}

impl<S> Checked<S> {
    pub fn new(inner: S, framing: std::sync::Arc<Framing>) -> Checked<S> {
        Checked {
            inner,
            framing,
            state: State::Head,
            buf: vec![0; READ],
            taken: 0,
            checked: 0,
            len: 0,
            eof: false,
            head_scanned: 0,
        }
    }

    /// Checks what it can of `[checked..len)`; returns whether it made progress.
    fn check(&mut self) -> bool {
        let start = self.checked;
        while self.checked < self.len && self.state != State::Refused {
            let pending = &self.buf[self.checked..self.len];
            match self.state {
                State::Head => {
                    // Empty lines before a request line are ignored (RFC 9112 2.2), and passed.
                    if pending.starts_with(b"\r\n") {
                        self.checked += 2;
                        continue;
                    }
                    if pending == b"\r" {
                        break;
                    }
                    // Resume where the last read's search stopped (short of a CRLF CRLF that
                    // straddles reads): a head sent a byte at a time is scanned once, not n times.
                    let from = self.head_scanned.saturating_sub(3);
                    let Some(end) = head_end(pending, from) else {
                        self.head_scanned = pending.len();
                        if pending.len() > MAX_HEAD {
                            self.refuse_head("a request head larger than 64 KiB");
                        }
                        break;
                    };
                    self.head_scanned = 0;
                    match check_head(&pending[..end]) {
                        Ok(body) => {
                            self.checked += end;
                            self.state = match body {
                                Body::None | Body::Length(0) => State::Head,
                                Body::Length(n) => State::Length(n),
                                Body::Chunked => State::ChunkSize,
                            };
                        }
                        Err(why) => self.refuse_head(why),
                    }
                }
                State::Length(n) => {
                    let take = n.min(pending.len() as u64);
                    self.checked += take as usize;
                    self.state = match n - take {
                        0 => State::Head,
                        left => State::Length(left),
                    };
                }
                State::ChunkSize | State::Trailers => {
                    let Some(nl) = memchr::memchr(b'\n', pending) else {
                        if pending.len() > MAX_LINE {
                            self.refuse("a chunk-size or trailer line longer than 8 KiB");
                        }
                        break;
                    };
                    let Some(line) = pending[..nl].strip_suffix(b"\r") else {
                        self.refuse("a bare LF in a chunk-size or trailer line");
                        break;
                    };
                    let next = if self.state == State::ChunkSize {
                        match chunk_size(line) {
                            Ok(0) => Ok(State::Trailers),
                            Ok(n) => Ok(State::ChunkData(n)),
                            Err(why) => Err(why),
                        }
                    } else if line.is_empty() {
                        Ok(State::Head)
                    } else {
                        check_field_line(line).map(|_| State::Trailers)
                    };
                    match next {
                        Ok(s) => {
                            self.checked += nl + 1;
                            self.state = s;
                        }
                        Err(why) => self.refuse(why),
                    }
                }
                State::ChunkData(n) => {
                    let take = n.min(pending.len() as u64);
                    self.checked += take as usize;
                    self.state = match n - take {
                        0 => State::ChunkEnd,
                        left => State::ChunkData(left),
                    };
                }
                State::ChunkEnd => {
                    if pending.len() < 2 {
                        if pending != b"\r" {
                            self.refuse("chunk data not followed by CRLF");
                        }
                        break;
                    }
                    if &pending[..2] != b"\r\n" {
                        self.refuse("chunk data not followed by CRLF");
                        break;
                    }
                    self.checked += 2;
                    self.state = State::ChunkSize;
                }
                State::Refused => break,
            }
        }
        self.checked != start
    }

    /// A bad chunk or trailer: the body stops here; the handler waiting for it answers 400.
    fn refuse(&mut self, why: &'static str) {
        self.state = State::Refused;
        self.len = self.checked;
        self.framing.fail(why);
    }

    /// A bad head: hyper reads a stand-in request (the same method and path, no body) in its
    /// place, which the handler answers with 400 (the connection's framing has failed).
    fn refuse_head(&mut self, why: &'static str) {
        let head = &self.buf[self.checked..self.len];
        let line_end = memchr::memchr(b'\n', head).unwrap_or(head.len());
        let mut words = head[..line_end]
            .split(|&b| b == b' ')
            .map(|w| w.strip_suffix(b"\r").unwrap_or(w));
        let sane = |w: &[u8]| !w.is_empty() && w.len() <= 2048 && w.iter().all(|b| b.is_ascii_graphic());
        let method = words
            .next()
            .filter(|w| sane(w) && w.iter().all(u8::is_ascii_uppercase));
        let path = words.next().filter(|w| sane(w) && w.starts_with(b"/"));
        let mut stand_in = Vec::with_capacity(96);
        stand_in.extend_from_slice(method.unwrap_or(b"GET"));
        stand_in.push(b' ');
        stand_in.extend_from_slice(path.unwrap_or(b"/"));
        stand_in.extend_from_slice(b" HTTP/1.1\r\nhost: lattice\r\ncontent-length: 0\r\n\r\n");
        self.buf.truncate(self.checked);
        self.buf.extend_from_slice(&stand_in);
        self.checked = self.buf.len();
        self.len = self.checked;
        self.state = State::Refused;
        self.framing.fail(why);
    }
}

/// Where a head ends (just past its empty line), if it has, searching from `from`.
fn head_end(b: &[u8], mut from: usize) -> Option<usize> {
    while let Some(i) = memchr::memchr(b'\n', &b[from..]) {
        let nl = from + i;
        match b.get(nl + 1..nl + 3) {
            Some(b"\r\n") => return Some(nl + 3),
            // A bare-LF blank line ends it too (and is refused by the check).
            _ if b.get(nl + 1) == Some(&b'\n') => return Some(nl + 2),
            _ => from = nl + 1,
        }
    }
    None
}

/// Checks a head (request line, fields, the empty line) and says how its body is framed.
fn check_head(head: &[u8]) -> Result<Body, &'static str> {
    // Every LF ends a CRLF, every CR starts one (found with memchr: a head is mostly text).
    for i in memchr::memchr2_iter(b'\r', b'\n', head) {
        let bare = match head[i] {
            b'\n' => i == 0 || head[i - 1] != b'\r',
            _ => head.get(i + 1) != Some(&b'\n'),
        };
        if bare {
            return Err("a bare LF or CR in the request head");
        }
    }
    // No other control byte anywhere in it (one branch-free pass).
    if head
        .iter()
        .any(|&b| (b < 0x20 && b != b'\t' && b != b'\r' && b != b'\n') | (b == 0x7f))
    {
        return Err("a control byte in the request head");
    }
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let http10 = request_line.ends_with(b" HTTP/1.0");
    let (mut hosts, mut lengths, mut codings) = (0usize, Vec::new(), Vec::new());
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = split_field_line(line)?;
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            lengths.push(value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            codings.push(value);
        }
    }
    if !http10 && hosts != 1 {
        return Err("an HTTP/1.1 request must have exactly one Host header");
    }
    if !codings.is_empty() {
        if !lengths.is_empty() {
            return Err("both Content-Length and Transfer-Encoding");
        }
        if http10 {
            return Err("Transfer-Encoding in an HTTP/1.0 request");
        }
        if codings.len() > 1 || !codings[0].eq_ignore_ascii_case(b"chunked") {
            return Err("a Transfer-Encoding other than exactly `chunked`");
        }
        return Ok(Body::Chunked);
    }
    match lengths.as_slice() {
        [] => Ok(Body::None),
        [n] => {
            if n.is_empty() || !n.iter().all(u8::is_ascii_digit) {
                return Err("a Content-Length that is not a number");
            }
            std::str::from_utf8(n)
                .ok()
                .and_then(|n| n.parse().ok())
                .map(Body::Length)
                .ok_or("a Content-Length that is not a number")
        }
        _ => Err("more than one Content-Length"),
    }
}

fn is_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// A field line (header or trailer): `name: value`, the name a token right before the colon,
/// no control byte, no obs-fold. Returns the name and the value without surrounding white space.
fn check_field_line(line: &[u8]) -> Result<(&[u8], &[u8]), &'static str> {
    if line.iter().any(|&b| is_ctl(b)) {
        return Err("a control byte in a header");
    }
    split_field_line(line)
}

/// [`check_field_line`] for a line already known to hold no control byte.
fn split_field_line(line: &[u8]) -> Result<(&[u8], &[u8]), &'static str> {
    if line.starts_with(b" ") || line.starts_with(b"\t") {
        return Err("an obs-fold (a header line starting with white space)");
    }
    let colon = memchr::memchr(b':', line).ok_or("a header line without a colon")?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err("a header name that is not a token (or white space before its colon)");
    }
    let value = line[colon + 1..].trim_ascii();
    Ok((name, value))
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A chunk-size line without its CRLF: hex digits, then extensions `;name[=token|"quoted"]`
/// with optional white space around `;` and `=`.
fn chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err("a chunk size that is not 1 to 16 hex digits");
    }
    let size = std::str::from_utf8(&line[..digits])
        .ok()
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .ok_or("a chunk size that is not 1 to 16 hex digits")?;
    let mut rest = &line[digits..];
    loop {
        rest = bws(rest);
        if rest.is_empty() {
            return Ok(size);
        }
        let Some(after) = rest.strip_prefix(b";") else {
            return Err("a malformed chunk extension");
        };
        rest = bws(after);
        let name = rest.iter().take_while(|&&b| is_tchar(b)).count();
        if name == 0 {
            return Err("a malformed chunk extension");
        }
        rest = bws(&rest[name..]);
        let Some(after) = rest.strip_prefix(b"=") else {
            continue;
        };
        rest = bws(after);
        if let Some(quoted) = rest.strip_prefix(b"\"") {
            // quoted-string: qdtext or quoted-pair, until the closing quote.
            let mut i = 0;
            loop {
                match quoted.get(i) {
                    None => return Err("an unterminated quoted string in a chunk extension"),
                    Some(b'"') => break,
                    Some(b'\\') => match quoted.get(i + 1) {
                        Some(&b) if !is_ctl(b) => i += 2,
                        _ => return Err("a malformed quoted pair in a chunk extension"),
                    },
                    Some(&b) if is_ctl(b) => return Err("a control byte in a chunk extension"),
                    Some(_) => i += 1,
                }
            }
            rest = &quoted[i + 1..];
        } else {
            let value = rest.iter().take_while(|&&b| is_tchar(b)).count();
            if value == 0 {
                return Err("a malformed chunk extension");
            }
            rest = &rest[value..];
        }
    }
}

/// Skips "bad" white space: spaces and tabs only.
fn bws(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|&&c| c == b' ' || c == b'\t').count();
    &b[n..]
}

impl<S: AsyncRead + Unpin> AsyncRead for Checked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.taken < this.checked {
                let n = (this.checked - this.taken).min(out.remaining());
                out.put_slice(&this.buf[this.taken..this.taken + n]);
                this.taken += n;
                return Poll::Ready(Ok(()));
            }
            if this.state == State::Refused {
                // Nothing more from this connection: the handler answers and hyper closes it.
                return Poll::Pending;
            }
            if this.check() {
                continue;
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            // Room for more: move what waits to the front, grow only for a long head or line.
            if this.taken > 0 {
                this.buf.copy_within(this.taken..this.len, 0);
                this.len -= this.taken;
                this.checked -= this.taken;
                this.taken = 0;
            }
            if this.buf.len() - this.len < READ / 2 {
                let grown = this.buf.len() + READ;
                this.buf.resize(grown, 0);
            }
            let len = this.len;
            let mut read = ReadBuf::new(&mut this.buf[len..]);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    if n == 0 {
                        // The client closed; what is not checked is not passed on.
                        this.eof = true;
                    }
                    this.len += n;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Checked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;

    /// Feeds `input` split into pieces at `cuts` and returns what the reader got, and the
    /// verdict.
    async fn through(input: &[u8], cut: usize) -> (Vec<u8>, Option<&'static str>) {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let framing = Arc::new(Framing::default());
        let mut checked = Checked::new(server, framing.clone());
        let input = input.to_vec();
        // The writer closes its end when done: a good stream ends in EOF, a refused one never
        // hands on more (the reader stops once the verdict is in).
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in input.chunks(cut.max(1)) {
                if client.write_all(piece).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
        });
        let mut got = Vec::new();
        let mut buf = [0u8; 7];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match tokio::time::timeout(std::time::Duration::from_millis(5), checked.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                Err(_) if framing.error().is_some() || std::time::Instant::now() > deadline => break,
                Err(_) => {}
            }
        }
        writer.abort();
        (got, framing.error())
    }

    const BODY: &[u8] = br#"{"model":"demo"}"#;

    fn req(head: &str, body: &[u8]) -> Vec<u8> {
        let mut v = format!("POST /v1/chat/completions HTTP/1.1\r\n{head}\r\n").into_bytes();
        v.extend_from_slice(body);
        v
    }

    fn chunked(ext: &str) -> Vec<u8> {
        let mut v = format!("{:x}{ext}\r\n", BODY.len()).into_bytes();
        v.extend_from_slice(BODY);
        v.extend_from_slice(b"\r\n0\r\n\r\n");
        v
    }

    #[tokio::test]
    async fn good_messages_pass_byte_for_byte_at_every_split() {
        let mut two = req(&format!("host: x\r\ncontent-length: {}\r\n", BODY.len()), BODY);
        two.extend(req(
            "host: x\r\ntransfer-encoding: chunked\r\n",
            &chunked(";a=b; c=\"d \\\" e\""),
        ));
        two.extend(req("Host: x\r\nTransfer-Encoding: Chunked\r\n", &{
            let mut c = chunked("");
            c.truncate(c.len() - 2);
            c.extend_from_slice(b"x-trailer: 1\r\n\r\n");
            c
        }));
        two.extend(b"\r\nGET /healthz HTTP/1.0\r\n\r\n");
        for cut in 1..=two.len() {
            let (got, error) = through(&two, cut).await;
            assert_eq!(error, None, "cut {cut}");
            assert_eq!(got, two, "cut {cut}");
        }
    }

    #[tokio::test]
    async fn what_rfc_9112_refuses_is_refused_at_every_split() {
        let len = format!("content-length: {}\r\n", BODY.len());
        let te = "transfer-encoding: chunked\r\n";
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("CL and TE", req(&format!("host: x\r\n{len}{te}"), &chunked(""))),
            (
                "chunked, chunked",
                req("host: x\r\ntransfer-encoding: chunked, chunked\r\n", &chunked("")),
            ),
            ("two TE lines", req(&format!("host: x\r\n{te}{te}"), &chunked(""))),
            (
                "gzip, chunked",
                req("host: x\r\ntransfer-encoding: gzip, chunked\r\n", &chunked("")),
            ),
            (
                "control byte in an extension",
                req(&format!("host: x\r\n{te}"), &chunked(";a=\u{1}b")),
            ),
            (
                "unterminated quote",
                req(&format!("host: x\r\n{te}"), &chunked(";a=\"b")),
            ),
            (
                "bare LF in a head",
                req(&format!("host: x\r\nx-a: 1\n{len}"), BODY),
            ),
            (
                "bare LF line ends",
                format!("POST / HTTP/1.1\nhost: x\n{len}\n").into_bytes(),
            ),
            ("no Host", req(&len, BODY)),
            ("two Hosts", req(&format!("host: x\r\nhost: y\r\n{len}"), BODY)),
            ("two lengths", req(&format!("host: x\r\n{len}{len}"), BODY)),
            ("a signed length", req("host: x\r\ncontent-length: +5\r\n", BODY)),
            (
                "obs-fold",
                req(&format!("host: x\r\nx-a: 1\r\n b\r\n{len}"), BODY),
            ),
            (
                "space before colon",
                req(&format!("host: x\r\ncontent-length : 5\r\n{te}"), &chunked("")),
            ),
            (
                "TE in HTTP/1.0",
                format!("POST / HTTP/1.0\r\n{te}\r\n").into_bytes(),
            ),
            (
                "chunk data without CRLF",
                req(&format!("host: x\r\n{te}"), b"2\r\nabX\r\n0\r\n\r\n"),
            ),
            (
                "a huge chunk size",
                req(&format!("host: x\r\n{te}"), b"fffffffffffffffff\r\n"),
            ),
        ];
        for (what, bytes) in cases {
            for cut in [1, 2, 3, 5, 8, 13, bytes.len()] {
                let (got, error) = through(&bytes, cut).await;
                assert!(error.is_some(), "{what} (cut {cut}) passed");
                // What follows the fault never reaches the reader.
                assert!(!got.windows(BODY.len()).any(|w| w == BODY), "{what} (cut {cut})");
            }
        }
    }
}
