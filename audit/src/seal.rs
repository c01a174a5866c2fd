//! Seals: Ed25519 signatures over the chain head, written as records of the chain itself, and
//! the key that makes them.
//!
//! Every sync the log makes is of a write that ends with a seal record (kind [`KIND`]) of
//! everything before it, in the same buffer, `write` and `fdatasync`; a durable append is
//! acknowledged only after that. So every durable record is covered by a signature by
//! construction, and after a crash the only records past the last seal are ones no sync made
//! durable: a write the crash cut short, lazy records and (in `batch`) the last interval's. The
//! writer also seals on its interval timer and every 4096 records, so no more than
//! [`crate::log::MAX_UNSEALED`] are ever unsealed. A seal says:
//!
//! > I, the holder of this log's key, wrote (or verified on start) records `base..=seq-1`; the
//! > record `seq-1` has hash `head`.
//!
//! `base` is 1 unless the gateway was started with `allow_corruption` on a damaged log: then it
//! is the first record written after that start (a new *epoch*), so the gateway never signs over
//! records it did not write or could not verify. See FORMAT.md for the bytes and the rules a
//! verifier applies.

pub use ed25519_dalek::VerifyingKey;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier};

use crate::record::{Event, Record};
use crate::storage::Storage;

/// The kind of a seal record. Appenders may not use it (nor any `audit.` kind).
pub const KIND: &str = "audit.seal";
/// Event kinds the log writes itself.
pub const RESERVED_PREFIX: &str = "audit.";
pub const KEY_FILE: &str = "signing.key";
pub const PUBKEY_FILE: &str = "signing.pub";
const DOMAIN: &[u8] = b"lattice-audit-seal-v2";
/// The first line of a head's JSON (`lattice audit head`, the witness).
pub const HEAD_FORMAT: &str = "lattice-audit-head-v2";

/// A seal, as the record that carries it says (its sequence, time and `prev`) and as its payload
/// says (`base`, the signature).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seal {
    /// The seal record's own sequence number.
    pub seq: u64,
    /// The seal record's time.
    pub time_ns: u64,
    /// The first record this seal vouches for.
    pub base: u64,
    /// The hash of record `seq - 1`: the seal record's `prev`.
    pub head: [u8; 32],
    pub signature: [u8; 64],
}

fn message(base: u64, seq: u64, time_ns: u64, head: &[u8; 32]) -> [u8; 21 + 24 + 32] {
    let mut m = [0u8; 21 + 24 + 32];
    m[..21].copy_from_slice(DOMAIN);
    m[21..29].copy_from_slice(&base.to_le_bytes());
    m[29..37].copy_from_slice(&seq.to_le_bytes());
    m[37..45].copy_from_slice(&time_ns.to_le_bytes());
    m[45..].copy_from_slice(head);
    m
}

/// A seal's payload, byte for byte: `{"base":<decimal>,"sig":"<128 lower-case hex>"}`.
fn payload(base: u64, signature: &[u8; 64]) -> Vec<u8> {
    format!(r#"{{"base":{base},"sig":"{}"}}"#, hex(signature)).into_bytes()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    base: u64,
    sig: String,
}

/// The seal's head as one JSON object: what `lattice audit head` prints, what a witness keeps,
/// and what `lattice audit verify --since-head` reads.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadJson {
    format: String,
    /// The last record covered (`seal - 1`) and its hash.
    seq: u64,
    hash: String,
    seal: u64,
    base: u64,
    time_ns: u64,
    signature: String,
}

impl Seal {
    pub fn sign(key: &SigningKey, base: u64, seq: u64, time_ns: u64, head: [u8; 32]) -> Seal {
        let signature = key.sign(&message(base, seq, time_ns, &head)).to_bytes();
        Seal {
            seq,
            time_ns,
            base,
            head,
            signature,
        }
    }

    pub fn verify(&self, key: &VerifyingKey) -> bool {
        key.verify(
            &message(self.base, self.seq, self.time_ns, &self.head),
            &Signature::from_bytes(&self.signature),
        )
        .is_ok()
    }

    /// The record that carries this seal (its `prev` must be `head`).
    pub fn event(&self) -> Event {
        Event {
            kind: KIND.into(),
            session: String::new(),
            principal: String::new(),
            payload: payload(self.base, &self.signature),
        }
    }

    /// The seal a record carries: `None` when it is not a seal record, `Some(Err)` when it is
    /// one but malformed (a seal must have no session or principal, a readable payload, and a
    /// `base` no later than the record it covers last).
    pub fn of(r: &Record) -> Option<Result<Seal, String>> {
        if r.event.kind != KIND {
            return None;
        }
        Some((|| {
            if !r.event.session.is_empty() || !r.event.principal.is_empty() {
                return Err("a seal names a session or principal".to_string());
            }
            let p: Payload =
                serde_json::from_slice(&r.event.payload).map_err(|e| format!("unreadable seal: {e}"))?;
            let signature = unhex::<64>(&p.sig).ok_or("the seal's signature is not 128 hex digits")?;
            if p.base == 0 || p.base >= r.seq {
                return Err(format!("the seal's base {} is not in 1..{}", p.base, r.seq));
            }
            // The signature does not cover the payload's bytes, only what they say: one spelling
            // only, or a keyless editor could respell the last seal (which no later record
            // chains) and still verify.
            if r.event.payload != payload(p.base, &signature) {
                return Err("the seal's payload is not in its one canonical form".into());
            }
            Ok(Seal {
                seq: r.seq,
                time_ns: r.time_ns,
                base: p.base,
                head: r.prev,
                signature,
            })
        })())
    }

    /// The last record this seal covers.
    pub fn covers(&self) -> u64 {
        self.seq - 1
    }

    /// The head as one line of JSON (no newline).
    pub fn head_json(&self) -> String {
        serde_json::to_string(&HeadJson {
            format: HEAD_FORMAT.into(),
            seq: self.covers(),
            hash: hex(&self.head),
            seal: self.seq,
            base: self.base,
            time_ns: self.time_ns,
            signature: hex(&self.signature),
        })
        .unwrap_or_default()
    }

    /// Reads [`Seal::head_json`]'s output (surrounding white space allowed).
    pub fn parse_head(text: &str) -> Result<Seal, String> {
        let h: HeadJson = serde_json::from_str(text.trim()).map_err(|e| format!("not a signed head: {e}"))?;
        if h.format != HEAD_FORMAT {
            return Err(format!("format {:?}, expected {HEAD_FORMAT:?}", h.format));
        }
        if h.seal == 0 || h.seq != h.seal - 1 || h.base == 0 || h.base > h.seq {
            return Err("seq, seal and base do not fit together".into());
        }
        Ok(Seal {
            seq: h.seal,
            time_ns: h.time_ns,
            base: h.base,
            head: unhex::<32>(&h.hash).ok_or("hash is not 64 hex digits")?,
            signature: unhex::<64>(&h.signature).ok_or("signature is not 128 hex digits")?,
        })
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let t = text.as_bytes();
    if t.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(t[2 * i])? << 4 | digit(t[2 * i + 1])?;
    }
    Some(out)
}

/// The signing key in `storage`, made (and its public half written beside it) on first use.
pub fn load_or_create_key(storage: &dyn Storage) -> std::io::Result<SigningKey> {
    match storage.read(KEY_FILE) {
        Ok(bytes) => {
            let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{KEY_FILE} is not a 32-byte Ed25519 seed"),
                )
            })?;
            Ok(SigningKey::from_bytes(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| std::io::Error::other(e.to_string()))?;
            let key = SigningKey::from_bytes(&seed);
            storage.write_new(KEY_FILE, &seed)?;
            storage.write_new(PUBKEY_FILE, public_key_text(&key.verifying_key()).as_bytes())?;
            Ok(key)
        }
        Err(e) => Err(e),
    }
}

/// The public key as one line: `ed25519:<64 hex digits>`.
pub fn public_key_text(key: &VerifyingKey) -> String {
    format!("ed25519:{}\n", hex(key.as_bytes()))
}

/// Reads a public key written by [`public_key_text`].
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let hex = text
        .trim()
        .strip_prefix("ed25519:")
        .ok_or("not an `ed25519:<hex>` public key")?;
    let bytes = unhex::<32>(hex).ok_or("an Ed25519 public key is 64 hex digits")?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| e.to_string())
}

// ------------------------------------------------------------------------ coverage

/// One run of seals sharing a `base`: the records `base..=last.seq-1`, vouched for by the
/// epoch's last seal (whose signature commits, through the chain, to every record before it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    pub base: u64,
    pub seals: u64,
    pub last: Seal,
}

/// Why the seals do not cover the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uncovered {
    /// A seal record that is not a well-formed seal.
    Malformed { seq: u64, why: String },
    /// A seal whose base goes back into, or skips, records another seal already covers.
    Base { seq: u64, base: u64, expected: u64 },
    /// Records no seal vouches for, from `from` to `to`.
    Gap { from: u64, to: u64 },
    /// The records `from..=to` are not the ones the seal at `seal` signed (or it is not this
    /// key's): the first seal of the epoch whose signature fails is `seal`, the one before it
    /// (if any) is record `from - 1`, and verifies.
    Forged { from: u64, to: u64, seal: u64 },
}

impl std::fmt::Display for Uncovered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Uncovered::Malformed { seq, why } => write!(f, "record {seq} is not a valid seal: {why}"),
            Uncovered::Base { seq, base, expected } => write!(
                f,
                "the seal at record {seq} vouches from record {base}, which an earlier seal already covers (expected {expected} or a new epoch past it)"
            ),
            Uncovered::Gap { from, to } => write!(
                f,
                "records {from}..={to} are covered by no seal: added without the key, or a write a crash cut short (the gateway sets such a tail aside on start)"
            ),
            Uncovered::Forged { from, to, seal } => write!(
                f,
                "records {from}..={to} are not what was signed: the seal at record {seal} does not verify under this key"
            ),
        }
    }
}

/// Follows the seals of a chain, record by record, and checks that they cover it. Only the last
/// seal of each epoch is verified (plus a binary search when it fails, to name where the chain
/// was rewritten): one signature vouches for a whole epoch.
pub struct Coverage<'k> {
    key: &'k VerifyingKey,
    /// The seals of the current epoch, in order.
    epoch: Vec<Seal>,
    pub epochs: Vec<Epoch>,
    /// The last record a seal covers (0: none yet).
    pub sealed: u64,
    pub seals: u64,
    /// Fewest and most records one seal added to the coverage.
    pub per_seal: (u64, u64),
}

impl<'k> Coverage<'k> {
    pub fn new(key: &'k VerifyingKey) -> Coverage<'k> {
        Coverage {
            key,
            epoch: Vec::new(),
            epochs: Vec::new(),
            sealed: 0,
            seals: 0,
            per_seal: (u64::MAX, 0),
        }
    }

    /// Takes the next record of the chain (which has been checked to follow the one before).
    pub fn record(&mut self, r: &Record) -> Result<(), Uncovered> {
        let Some(seal) = Seal::of(r) else {
            return Ok(());
        };
        let seal = seal.map_err(|why| Uncovered::Malformed { seq: r.seq, why })?;
        let same_epoch = self.epoch.last().is_some_and(|l| l.base == seal.base);
        let mut problem = Ok(());
        if !same_epoch {
            // A new epoch begins past everything sealed so far; the records in between, if
            // any, are vouched for by nobody.
            if seal.base <= self.sealed {
                problem = Err(Uncovered::Base {
                    seq: seal.seq,
                    base: seal.base,
                    expected: self.epoch.last().map_or(1, |l| l.base),
                });
            }
            // The previous epoch's last seal record vouches for itself (every byte of it is
            // signed or fixed); what lies between it and the new base is vouched by nobody.
            let last_seal = self
                .epoch
                .last()
                .map(|s| s.seq)
                .or_else(|| self.epochs.last().map(|e| e.last.seq))
                .unwrap_or(0);
            if problem.is_ok() && seal.base > last_seal + 1 {
                problem = Err(Uncovered::Gap {
                    from: last_seal + 1,
                    to: seal.base - 1,
                });
            }
            // Then the epoch that ends here: its signature (the structural checks above first).
            let closed = self.close_epoch();
            if problem.is_ok() {
                problem = closed;
            }
        }
        let added = seal.seq - 1 - self.sealed.min(seal.seq - 1);
        self.per_seal = (self.per_seal.0.min(added), self.per_seal.1.max(added));
        // The seal record itself is covered by the next seal.
        self.sealed = seal.seq - 1;
        self.seals += 1;
        self.epoch.push(seal);
        problem
    }

    /// Verifies the current epoch's last seal and closes the epoch.
    fn close_epoch(&mut self) -> Result<(), Uncovered> {
        let Some(last) = self.epoch.last().copied() else {
            return Ok(());
        };
        if !last.verify(self.key) {
            // Seals commit to the chain before them, so once one fails every later one does:
            // find the first that fails.
            let first_bad = self.epoch.partition_point(|s| s.verify(self.key));
            // The last seal that verifies vouches for everything up to and including itself
            // (all its bytes are signed or fixed): the rewrite begins after it.
            let from = match first_bad {
                0 => last.base,
                i => self.epoch[i - 1].seq + 1,
            };
            let seal = self.epoch[first_bad.min(self.epoch.len() - 1)].seq;
            self.epoch.clear();
            return Err(Uncovered::Forged {
                from,
                to: last.seq - 1,
                seal,
            });
        }
        self.epochs.push(Epoch {
            base: last.base,
            seals: self.epoch.len() as u64,
            last,
        });
        self.epoch.clear();
        Ok(())
    }

    /// After the last record (`last_seq`; 0 for an empty log): verifies the last epoch, and
    /// reports the records past the last seal.
    pub fn finish(&mut self, last_seq: u64) -> Result<(), Uncovered> {
        self.close_epoch()?;
        // The last seal record is the only record no seal covers in an intact log.
        let last_seal = self.epochs.last().map_or(0, |e| e.last.seq);
        if last_seq > last_seal {
            return Err(Uncovered::Gap {
                from: last_seal + 1,
                to: last_seq,
            });
        }
        Ok(())
    }

    /// The last seal, once [`Coverage::finish`] has passed.
    pub fn head(&self) -> Option<Seal> {
        self.epochs.last().map(|e| e.last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_round_trip_and_forgeries_fail() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let s = Seal::sign(&key, 1, 42, 1_000, [9u8; 32]);
        assert!(s.verify(&key.verifying_key()));
        let r = Record {
            seq: 42,
            time_ns: 1_000,
            event: s.event(),
            prev: [9u8; 32],
            hash: [0; 32],
        };
        assert_eq!(Seal::of(&r), Some(Ok(s)));
        assert_eq!(Seal::parse_head(&s.head_json()), Ok(s));
        for field in [0usize, 1, 2, 3] {
            let mut f = s;
            match field {
                0 => f.base += 1,
                1 => f.seq += 1,
                2 => f.time_ns += 1,
                _ => f.head[0] ^= 1,
            }
            assert!(!f.verify(&key.verifying_key()), "field {field} is not signed");
        }
        let other = SigningKey::from_bytes(&[8u8; 32]);
        assert!(!s.verify(&other.verifying_key()));
        let text = public_key_text(&key.verifying_key());
        assert_eq!(parse_public_key(&text).unwrap(), key.verifying_key());
        // A seal that claims to vouch for itself, or for nothing before record 1.
        let mut bad = r.clone();
        bad.event = Seal::sign(&key, 42, 42, 1_000, [9u8; 32]).event();
        assert!(matches!(Seal::of(&bad), Some(Err(_))));
        bad.event = Seal::sign(&key, 0, 42, 1_000, [9u8; 32]).event();
        assert!(matches!(Seal::of(&bad), Some(Err(_))));
        // The same fields spelt another way: refused, though the signature would verify.
        for respelt in [
            format!(r#"{{"base": 1, "sig": "{}"}}"#, hex(&s.signature)),
            format!(r#"{{"sig":"{}","base":1}}"#, hex(&s.signature)),
            format!(r#"{{"base":1,"sig":"{}"}} "#, hex(&s.signature)),
            format!(r#"{{"base":1,"sig":"{}"}}"#, hex(&s.signature).to_uppercase()),
        ] {
            bad.event = s.event();
            bad.event.payload = respelt.clone().into_bytes();
            assert!(matches!(Seal::of(&bad), Some(Err(_))), "{respelt}");
        }
    }
}
