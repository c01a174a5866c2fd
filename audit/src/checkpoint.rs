//! Signed checkpoints of the chain head, and the Ed25519 key that signs them.
//!
//! A checkpoint says "the record with sequence `seq` has hash `hash`", signed. Rewriting a record
//! and re-chaining everything after it keeps the chain consistent, but not the signed hashes; and
//! deleting the log's tail leaves a checkpoint naming a record that is gone. Checkpoints live in
//! their own append-only file (`checkpoints`), one fixed-size entry each (see FORMAT.md):
//!
//! ```text
//! entry := seq:u64le  time_ns:u64le  hash:[32]  signature:[64]  crc:u32le   (116 bytes)
//! signed message := "lattice-audit-checkpoint-v1" || seq:u64le || time_ns:u64le || hash
//! crc = CRC32C(the 112 bytes before it)
//! ```

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::storage::Storage;

pub const FILE: &str = "checkpoints";
pub const KEY_FILE: &str = "signing.key";
pub const PUBKEY_FILE: &str = "signing.pub";
pub const ENTRY: usize = 116;
const DOMAIN: &[u8] = b"lattice-audit-checkpoint-v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    pub time_ns: u64,
    pub hash: [u8; 32],
    pub signature: [u8; 64],
}

fn message(seq: u64, time_ns: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 48);
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(&time_ns.to_le_bytes());
    m.extend_from_slice(hash);
    m
}

impl Checkpoint {
    pub fn sign(key: &SigningKey, seq: u64, time_ns: u64, hash: [u8; 32]) -> Checkpoint {
        let signature = key.sign(&message(seq, time_ns, &hash)).to_bytes();
        Checkpoint {
            seq,
            time_ns,
            hash,
            signature,
        }
    }

    pub fn verify(&self, key: &VerifyingKey) -> bool {
        key.verify(
            &message(self.seq, self.time_ns, &self.hash),
            &Signature::from_bytes(&self.signature),
        )
        .is_ok()
    }

    pub fn encode(&self) -> [u8; ENTRY] {
        let mut e = [0u8; ENTRY];
        e[0..8].copy_from_slice(&self.seq.to_le_bytes());
        e[8..16].copy_from_slice(&self.time_ns.to_le_bytes());
        e[16..48].copy_from_slice(&self.hash);
        e[48..112].copy_from_slice(&self.signature);
        let crc = crc32c::crc32c(&e[..112]);
        e[112..116].copy_from_slice(&crc.to_le_bytes());
        e
    }

    /// `None` when the checksum fails.
    pub fn decode(e: &[u8; ENTRY]) -> Option<Checkpoint> {
        let crc = u32::from_le_bytes([e[112], e[113], e[114], e[115]]);
        if crc32c::crc32c(&e[..112]) != crc {
            return None;
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&e[0..8]);
        let mut time = [0u8; 8];
        time.copy_from_slice(&e[8..16]);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&e[16..48]);
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&e[48..112]);
        Some(Checkpoint {
            seq: u64::from_le_bytes(seq),
            time_ns: u64::from_le_bytes(time),
            hash,
            signature,
        })
    }
}

/// The checkpoints in `bytes`, and the length of its whole entries (a torn last entry is left
/// out). An entry failing its checksum is reported as `Err(index)`.
pub fn parse(bytes: &[u8]) -> (Vec<Result<Checkpoint, usize>>, usize) {
    let whole = bytes.len() / ENTRY * ENTRY;
    let out = bytes[..whole]
        .chunks_exact(ENTRY)
        .enumerate()
        .map(|(i, c)| {
            let mut e = [0u8; ENTRY];
            e.copy_from_slice(c);
            Checkpoint::decode(&e).ok_or(i)
        })
        .collect();
    (out, whole)
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
    let mut s = String::from("ed25519:");
    for b in key.as_bytes() {
        s.push_str(&format!("{b:02x}"));
    }
    s.push('\n');
    s
}

/// Reads a public key written by [`public_key_text`].
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, String> {
    let hex = text
        .trim()
        .strip_prefix("ed25519:")
        .ok_or("not an `ed25519:<hex>` public key")?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("an Ed25519 public key is 64 hex digits".into());
    }
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    VerifyingKey::from_bytes(&bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_entries_round_trip_and_forgeries_fail() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let c = Checkpoint::sign(&key, 42, 1_000, [9u8; 32]);
        assert!(c.verify(&key.verifying_key()));
        let (parsed, whole) = parse(&c.encode());
        assert_eq!((parsed, whole), (vec![Ok(c)], ENTRY));
        let mut forged = c;
        forged.hash[0] ^= 1;
        assert!(!forged.verify(&key.verifying_key()));
        let other = SigningKey::from_bytes(&[8u8; 32]);
        assert!(!c.verify(&other.verifying_key()));
        let mut e = c.encode();
        e[3] ^= 1;
        assert_eq!(parse(&e).0, vec![Err(0)]);
        let text = public_key_text(&key.verifying_key());
        assert_eq!(parse_public_key(&text).unwrap(), key.verifying_key());
    }
}
