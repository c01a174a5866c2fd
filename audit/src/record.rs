//! One record: its fields, its frame on disk, and its place in the chain (see FORMAT.md).
//!
//! ```text
//! frame := len:u32le  crc:u32le  body[len]          crc = CRC32C(body)
//! body  := seq:u64le  time_ns:u64le
//!          kind_len:u8      kind[kind_len]            UTF-8
//!          session_len:u16le session[session_len]     UTF-8, may be empty
//!          principal_len:u16le principal[...]          UTF-8, may be empty
//!          payload_len:u32le payload[payload_len]     JSON
//!          prev:[32]  hash:[32]                       hash = SHA-256(body without hash)
//! ```
//!
//! Every variable field is length-prefixed, so the hashed encoding is unambiguous, and it covers
//! `prev`, so each record commits to the whole chain before it.

use sha2::{Digest, Sha256};

/// Bytes before the body: length and checksum.
pub const FRAME_HEADER: usize = 8;
/// The fixed part of a body: seq, time, the four length fields, prev and hash.
pub const FIXED_BODY: usize = 8 + 8 + 1 + 2 + 2 + 4 + 32 + 32;
/// The largest body accepted (a payload is a few KiB; this bounds what a corrupt length can ask
/// a reader to allocate).
pub const MAX_BODY: usize = 16 << 20;
/// `prev` of the first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// What a caller appends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What happened: `call`, `call.end`, `checkpoint`, `compaction`, ... (at most 255 bytes).
    pub kind: String,
    /// The session the event belongs to; empty when none.
    pub session: String,
    /// The principal's id; empty when none. Never a credential.
    pub principal: String,
    /// JSON.
    pub payload: Vec<u8>,
}

/// A record as stored: the event, its place in the chain, and its hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub time_ns: u64,
    pub event: Event,
    pub prev: [u8; 32],
    pub hash: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{0} is too long ({1} bytes)")]
    TooLong(&'static str, usize),
}

/// Why bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the frame says: a torn write at the end of a file.
    #[error("incomplete record ({have} of {need} bytes)")]
    Incomplete { have: usize, need: usize },
    #[error("record length {0} is out of range")]
    BadLength(usize),
    #[error("checksum mismatch")]
    Checksum,
    #[error("malformed record body: {0}")]
    Malformed(&'static str),
    /// The stored hash is not the hash of the body.
    #[error("hash mismatch")]
    Hash,
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), EncodeError> {
    if len > max {
        Err(EncodeError::TooLong(what, len))
    } else {
        Ok(())
    }
}

impl Event {
    pub fn validate(&self) -> Result<(), EncodeError> {
        check_len("kind", self.kind.len(), u8::MAX as usize)?;
        check_len("session", self.session.len(), u16::MAX as usize)?;
        check_len("principal", self.principal.len(), u16::MAX as usize)?;
        check_len(
            "payload",
            self.payload.len(),
            MAX_BODY - FIXED_BODY - 255 - 2 * 65_535,
        )
    }
}

/// Appends the frame of the record `(seq, time_ns, event)` chained after `prev` to `out`;
/// returns the record's hash. `event` must have passed [`Event::validate`].
pub fn encode(out: &mut Vec<u8>, seq: u64, time_ns: u64, event: &Event, prev: &[u8; 32]) -> [u8; 32] {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&time_ns.to_le_bytes());
    // Lengths were checked by `validate`; the casts cannot truncate.
    out.push(event.kind.len() as u8);
    out.extend_from_slice(event.kind.as_bytes());
    out.extend_from_slice(&(event.session.len() as u16).to_le_bytes());
    out.extend_from_slice(event.session.as_bytes());
    out.extend_from_slice(&(event.principal.len() as u16).to_le_bytes());
    out.extend_from_slice(event.principal.as_bytes());
    out.extend_from_slice(&(event.payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&event.payload);
    out.extend_from_slice(prev);
    let hash: [u8; 32] = Sha256::digest(&out[start + FRAME_HEADER..]).into();
    out.extend_from_slice(&hash);
    let body = &out[start + FRAME_HEADER..];
    let len = body.len() as u32;
    let crc = crc32c::crc32c(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    hash
}

/// The length of the frame at the start of `bytes`, checked for range and completeness only.
pub fn frame_len(bytes: &[u8]) -> Result<usize, DecodeError> {
    if bytes.len() < FRAME_HEADER {
        return Err(DecodeError::Incomplete {
            have: bytes.len(),
            need: FRAME_HEADER,
        });
    }
    let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    if !(FIXED_BODY..=MAX_BODY).contains(&len) {
        return Err(DecodeError::BadLength(len));
    }
    let need = FRAME_HEADER + len;
    if bytes.len() < need {
        return Err(DecodeError::Incomplete {
            have: bytes.len(),
            need,
        });
    }
    Ok(need)
}

/// Decodes the frame at the start of `bytes`: checksum, fields, and the record's own hash.
/// Returns the record and the frame's length.
pub fn decode(bytes: &[u8]) -> Result<(Record, usize), DecodeError> {
    let n = frame_len(bytes)?;
    let crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let body = &bytes[FRAME_HEADER..n];
    if crc32c::crc32c(body) != crc {
        return Err(DecodeError::Checksum);
    }
    let mut r = Reader { b: body };
    let seq = r.u64()?;
    let time_ns = r.u64()?;
    let kind_len = r.take(1)?[0] as usize;
    let kind = r.string(kind_len)?;
    let session_len = r.u16()? as usize;
    let session = r.string(session_len)?;
    let principal_len = r.u16()? as usize;
    let principal = r.string(principal_len)?;
    let payload_len = r.u32()? as usize;
    let payload = r.take(payload_len)?.to_vec();
    let prev: [u8; 32] = r.array()?;
    let hash: [u8; 32] = r.array()?;
    if !r.b.is_empty() {
        return Err(DecodeError::Malformed("trailing bytes"));
    }
    let computed: [u8; 32] = Sha256::digest(&body[..body.len() - 32]).into();
    if computed != hash {
        return Err(DecodeError::Hash);
    }
    Ok((
        Record {
            seq,
            time_ns,
            event: Event {
                kind,
                session,
                principal,
                payload,
            },
            prev,
            hash,
        },
        n,
    ))
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return Err(DecodeError::Malformed("a field runs past the record"));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self, n: usize) -> Result<String, DecodeError> {
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| DecodeError::Malformed("a text field is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(kind: &str, session: &str, payload: &str) -> Event {
        Event {
            kind: kind.into(),
            session: session.into(),
            principal: "key_1".into(),
            payload: payload.as_bytes().to_vec(),
        }
    }

    #[test]
    fn round_trip_and_chain() {
        let mut buf = Vec::new();
        let h1 = encode(&mut buf, 1, 10, &event("call", "s1", "{}"), &GENESIS);
        let h2 = encode(&mut buf, 2, 11, &event("call", "", r#"{"a":1}"#), &h1);
        let (r1, n1) = decode(&buf).unwrap();
        let (r2, n2) = decode(&buf[n1..]).unwrap();
        assert_eq!(n1 + n2, buf.len());
        assert_eq!((r1.seq, r1.hash, r1.prev), (1, h1, GENESIS));
        assert_eq!((r2.seq, r2.prev, r2.hash), (2, h1, h2));
        assert_eq!(r2.event, event("call", "", r#"{"a":1}"#));
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let mut buf = Vec::new();
        encode(
            &mut buf,
            7,
            99,
            &event("call", "s", r#"{"model":"gpt-4o"}"#),
            &GENESIS,
        );
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0x01;
            assert!(decode(&b).is_err(), "a flip at byte {i} went unnoticed");
        }
        // A torn frame is incomplete, not garbage.
        assert!(matches!(
            decode(&buf[..buf.len() - 1]),
            Err(DecodeError::Incomplete { .. })
        ));
        assert!(matches!(decode(&buf[..3]), Err(DecodeError::Incomplete { .. })));
    }

    #[test]
    fn a_rechained_body_with_a_fixed_crc_still_fails_its_hash() {
        // Change the payload and fix the CRC, but not the hash: caught by the hash.
        let mut buf = Vec::new();
        encode(
            &mut buf,
            1,
            1,
            &event("call", "s", r#"{"allow":false}"#),
            &GENESIS,
        );
        let pos = buf.windows(5).position(|w| w == b"false").unwrap();
        buf[pos..pos + 5].copy_from_slice(b"fals3");
        let crc = crc32c::crc32c(&buf[FRAME_HEADER..]);
        buf[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&buf).unwrap_err(), DecodeError::Hash);
    }

    proptest! {
        #[test]
        fn any_event_round_trips(kind in "[a-z.]{0,20}", session in "\\PC{0,40}", principal in "\\PC{0,40}",
                                 payload in proptest::collection::vec(any::<u8>(), 0..300),
                                 seq in any::<u64>(), time in any::<u64>(), prev in any::<[u8; 32]>()) {
            let e = Event { kind, session, principal, payload };
            e.validate().unwrap();
            let mut buf = Vec::new();
            let h = encode(&mut buf, seq, time, &e, &prev);
            let (r, n) = decode(&buf).unwrap();
            prop_assert_eq!(n, buf.len());
            prop_assert_eq!(r, Record { seq, time_ns: time, event: e, prev, hash: h });
        }

        #[test]
        fn any_bytes_decode_or_fail_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode(&bytes);
        }
    }
}
