//! `lattice audit verify`: walks the whole log without changing it and says whether it is intact,
//! or where it first breaks and how.
//!
//! Checked, in order of the records: each segment's magic, each frame's length and CRC32C, each
//! record's own hash, the sequence (one more than the last), the chain (`prev` is the last
//! record's hash); then every checkpoint: its checksum, its Ed25519 signature, and that the
//! record it names exists and has the signed hash.

use ed25519_dalek::VerifyingKey;

use crate::checkpoint;
use crate::log::{MAGIC, segment_names};
use crate::record::{self, DecodeError, GENESIS};
use crate::storage::Storage;

/// How the log is damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// A record's bytes changed (checksum or hash mismatch, or not a record).
    Modified,
    /// Records are missing from the middle (a gap in the sequence).
    Deleted,
    /// Records are out of order.
    Reordered,
    /// A record appears twice.
    Duplicated,
    /// Records are missing from the end (a checkpoint names a record past the last one), or the
    /// last record is cut short.
    Truncated,
    /// The chain is consistent but does not match what was signed, or a checkpoint's signature
    /// is not the key's: a rewritten (re-chained) log, or a forged checkpoint.
    Forged,
}

impl Damage {
    pub fn as_str(self) -> &'static str {
        match self {
            Damage::Modified => "modified",
            Damage::Deleted => "deleted",
            Damage::Reordered => "reordered",
            Damage::Duplicated => "duplicated",
            Damage::Truncated => "truncated",
            Damage::Forged => "forged",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub damage: Damage,
    /// The first sequence number affected.
    pub seq: u64,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Summary {
    pub records: u64,
    pub segments: usize,
    pub checkpoints: usize,
    pub last_seq: u64,
    pub last_hash: [u8; 32],
    /// The first problem found; `None` when the log is intact.
    pub finding: Option<Finding>,
}

/// Verifies the log in `storage` against `key` (the checkpoint signer's public key).
pub fn verify(storage: &dyn Storage, key: &VerifyingKey) -> std::io::Result<Summary> {
    let mut s = Summary::default();
    let names = segment_names(storage)?;
    s.segments = names.len();
    // Hashes by sequence, to check checkpoints against (32 bytes a record: 200k records, 6 MB).
    let mut hashes: Vec<[u8; 32]> = Vec::new();
    let mut expect = 1u64;
    let mut head = GENESIS;
    let found = |s: &mut Summary, damage, seq, detail: String| {
        s.finding.get_or_insert(Finding { damage, seq, detail });
    };
    'segments: for (i, name) in names.iter().enumerate() {
        let bytes = storage.read(name)?;
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            found(
                &mut s,
                Damage::Modified,
                expect,
                format!("{name}: not an audit segment"),
            );
            break;
        }
        let mut pos = MAGIC.len();
        while pos < bytes.len() {
            match record::decode(&bytes[pos..]) {
                Ok((r, n)) => {
                    if r.seq != expect {
                        // The missing record right behind this one: moved, not deleted.
                        let behind =
                            record::decode(&bytes[pos + n..]).is_ok_and(|(next, _)| next.seq == expect);
                        let (damage, detail) = if r.seq > expect && behind {
                            (
                                Damage::Reordered,
                                format!("record {} comes before record {expect}", r.seq),
                            )
                        } else if r.seq > expect {
                            (
                                Damage::Deleted,
                                format!("record {} follows record {}", r.seq, expect - 1),
                            )
                        } else if r.seq == expect - 1 && r.hash == head {
                            (Damage::Duplicated, format!("record {} appears twice", r.seq))
                        } else {
                            (
                                Damage::Reordered,
                                format!("record {} comes after record {}", r.seq, expect - 1),
                            )
                        };
                        // A gap whose next record still links to the last one is a rewrite,
                        // not a deletion; either way the first bad sequence is `expect`.
                        found(&mut s, damage, expect.min(r.seq), detail);
                        break 'segments;
                    }
                    if r.prev != head {
                        found(
                            &mut s,
                            Damage::Modified,
                            r.seq,
                            format!("record {} does not link to record {}", r.seq, expect - 1),
                        );
                        break 'segments;
                    }
                    head = r.hash;
                    hashes.push(r.hash);
                    s.records += 1;
                    s.last_seq = r.seq;
                    expect += 1;
                    pos += n;
                }
                Err(DecodeError::Incomplete { have, need }) if i + 1 == names.len() => {
                    found(
                        &mut s,
                        Damage::Truncated,
                        expect,
                        format!("{name}: the last record is cut short ({have} of {need} bytes)"),
                    );
                    break 'segments;
                }
                Err(e) => {
                    found(
                        &mut s,
                        Damage::Modified,
                        expect,
                        format!("{name} at byte {pos}: {e}"),
                    );
                    break 'segments;
                }
            }
        }
    }
    s.last_hash = head;

    let bytes = match storage.read(checkpoint::FILE) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    let (entries, _) = checkpoint::parse(&bytes);
    s.checkpoints = entries.len();
    // Every checkpoint's hash must match its record; only the last one's signature is checked
    // (one Ed25519 verification, not one per group commit): it vouches for its record, whose
    // hash commits to the whole chain before it, and each earlier checkpoint must agree with
    // that chain. A forged earlier checkpoint can only assert what the chain already says.
    let mut good_up_to = 0u64;
    let mut last = None;
    for entry in &entries {
        let c = match entry {
            Ok(c) => c,
            Err(i) => {
                found(
                    &mut s,
                    Damage::Modified,
                    good_up_to + 1,
                    format!("checkpoint {i}: checksum mismatch"),
                );
                return Ok(s);
            }
        };
        last = Some(*c);
        let end = s.last_seq;
        if c.seq > end && s.finding.is_none() {
            found(
                &mut s,
                Damage::Truncated,
                end + 1,
                format!("a checkpoint names record {}, the log ends at {end}", c.seq),
            );
            break;
        }
        match hashes.get((c.seq as usize).wrapping_sub(1)) {
            Some(h) if *h == c.hash => good_up_to = good_up_to.max(c.seq),
            Some(_) => {
                found(
                    &mut s,
                    Damage::Forged,
                    good_up_to + 1,
                    format!(
                        "record {} is not the one signed at its checkpoint: records {}..={} were rewritten",
                        c.seq,
                        good_up_to + 1,
                        c.seq
                    ),
                );
                break;
            }
            // Past a break found above: nothing to compare with.
            None => {}
        }
    }
    if let Some(last) = last
        && !last.verify(key)
    {
        // Name the first checkpoint the key did not sign.
        let first = entries
            .iter()
            .filter_map(|e| e.as_ref().ok())
            .find(|c| !c.verify(key))
            .unwrap_or(&last);
        let detail = format!("the checkpoint of record {} is not signed by this key", first.seq);
        found(&mut s, Damage::Forged, first.seq, detail);
    }
    Ok(s)
}

/// Calls `f` with every record in order, stopping (without an error) at the first frame that is
/// not a whole, valid record: what `lattice audit tail` and `export` read. Use [`verify`] to find
/// out why a walk stopped early.
pub fn for_each_record(storage: &dyn Storage, mut f: impl FnMut(record::Record)) -> std::io::Result<()> {
    let names = segment_names(storage)?;
    for name in names {
        let bytes = storage.read(&name)?;
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Ok(());
        }
        let mut pos = MAGIC.len();
        while pos < bytes.len() {
            match record::decode(&bytes[pos..]) {
                Ok((r, n)) => {
                    f(r);
                    pos += n;
                }
                Err(_) => return Ok(()),
            }
        }
    }
    Ok(())
}
