//! What a request brings before anything reads it: its ids (request and session headers) and
//! its body, read once, bounded in size, and ended when the connection's framing is refused.

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::gates::ConnInfo;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The session a call belongs to: given by the client, else assigned (a random UUID).
pub const X_LATTICE_SESSION: HeaderName = HeaderName::from_static("x-lattice-session");
/// Why a request body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Larger than the limit (the limit).
    TooLarge(u64),
    /// The connection failed mid-body.
    Read,
    /// HTTP/1.1 chunked framing refused mid-body (`crate::framing`).
    Framing(&'static str),
}

/// A client-chosen id worth keeping: 1-128 visible ASCII characters.
pub(crate) fn sane_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 128 && b.iter().all(u8::is_ascii_graphic)
}

pub(crate) fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(v) = headers.get(&X_REQUEST_ID).filter(|v| sane_id(v)) {
        return v.clone();
    }
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let s = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static("-"))
}

/// Reads the whole body, refusing more than `limit` bytes. A declared length over the limit is
/// refused before reading; the rest of an oversized body is drained in the background (bounded)
/// so the client reads the 413 instead of a reset connection.
/// [`read_body`], ended with 400 when the connection's chunked framing is refused mid-body
/// (`crate::framing`): the checker stops handing on bytes there.
pub(crate) async fn read_framed_body(
    conn: &ConnInfo,
    headers: &HeaderMap,
    body: Incoming,
    limit: u64,
) -> Result<Bytes, BodyError> {
    tokio::select! {
        r = read_body(headers, body, limit) => r,
        why = conn.framing.failed() => Err(BodyError::Framing(why)),
    }
}

async fn read_body(headers: &HeaderMap, mut body: Incoming, limit: u64) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        drain(body);
        return Err(BodyError::TooLarge(limit));
    }
    // Most bodies arrive as one frame: keep it without copying.
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    let mut total: u64 = 0;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(BodyError::Read);
        };
        let Ok(data) = frame.into_data() else { continue };
        total += data.len() as u64;
        if total > limit {
            drain(body);
            return Err(BodyError::TooLarge(limit));
        }
        match first.take() {
            None if buf.is_empty() => first = Some(data),
            prev => {
                if let Some(p) = prev {
                    buf.reserve(declared.map_or(0, |n| n as usize).max(p.len() + data.len()));
                    buf.extend_from_slice(&p);
                }
                buf.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

/// Reads and discards what is left of a refused body, for at most 64 MiB or 10 s.
fn drain(mut body: Incoming) {
    if body.is_end_stream() {
        return;
    }
    tokio::spawn(async move {
        let mut left: u64 = 64 * 1024 * 1024;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while let Some(Ok(f)) = body.frame().await {
                let n = f.data_ref().map_or(0, |d| d.len() as u64);
                match left.checked_sub(n) {
                    Some(l) => left = l,
                    None => break,
                }
            }
        })
        .await;
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_propagated_when_sane() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_eq!(request_id(&h).len(), 36);
        assert_ne!(request_id(&HeaderMap::new()), request_id(&HeaderMap::new()));
    }
}
