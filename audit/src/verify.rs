//! `lattice audit verify`: walks the whole log without changing it and says whether it is intact,
//! or where it first breaks and how.
//!
//! Checked, in order of the records: each segment's magic and that its name is its first
//! record's sequence, each frame's length and CRC32C, each record's own hash, the sequence (one
//! more than the last), the chain (`prev` is the last record's hash); the seals: each well
//! formed, epochs in order, every record covered, the last seal of each epoch signed by the key;
//! and, given a head kept outside the log (`--since-head`), that the log still holds it.

use ed25519_dalek::VerifyingKey;

use crate::log::{MAGIC, MAGIC_V1, segment_first_seq, segment_names};
use crate::record::{self, DecodeError, GENESIS};
use crate::seal::{Coverage, Epoch, Seal, Uncovered};
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
    /// The last record is cut short.
    Truncated,
    /// A segment's file name is not its first record's sequence.
    Renamed,
    /// Records no seal covers: added without the key, or a write a crash cut short (which the
    /// gateway sets aside on start).
    Unsealed,
    /// The chain is consistent but is not what was signed, or a seal is not the key's.
    Forged,
    /// The log no longer holds a head it once had (`--since-head`): cut back or replaced.
    RolledBack,
}

impl Damage {
    pub fn as_str(self) -> &'static str {
        match self {
            Damage::Modified => "modified",
            Damage::Deleted => "deleted",
            Damage::Reordered => "reordered",
            Damage::Duplicated => "duplicated",
            Damage::Truncated => "truncated",
            Damage::Renamed => "renamed",
            Damage::Unsealed => "unsealed",
            Damage::Forged => "forged",
            Damage::RolledBack => "rolled back",
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
    /// Seal records, and the epochs they form (each vouched for by its last seal's signature).
    pub seals: u64,
    pub epochs: Vec<Epoch>,
    /// Fewest and most records one seal added to what is covered.
    pub per_seal: (u64, u64),
    pub last_seq: u64,
    pub last_hash: [u8; 32],
    /// The first problem found; `None` when the log is intact.
    pub finding: Option<Finding>,
}

impl Summary {
    /// The last seal: the log's signed head.
    pub fn head(&self) -> Option<Seal> {
        self.epochs.last().map(|e| e.last)
    }
}

fn uncovered(u: Uncovered) -> Finding {
    let (damage, seq) = match u {
        Uncovered::Malformed { seq, .. } | Uncovered::Base { seq, .. } => (Damage::Forged, seq),
        Uncovered::Gap { from, .. } => (Damage::Unsealed, from),
        Uncovered::Forged { from, .. } => (Damage::Forged, from),
    };
    Finding {
        damage,
        seq,
        detail: u.to_string(),
    }
}

/// Verifies the log in `storage` against `key` (the seal signer's public key).
pub fn verify(storage: &dyn Storage, key: &VerifyingKey) -> std::io::Result<Summary> {
    verify_since(storage, key, None)
}

/// [`verify`], and that the log still holds `since`, a signed head kept outside it (a witness's
/// copy, or `lattice audit head` saved earlier), and extends it.
pub fn verify_since(
    storage: &dyn Storage,
    key: &VerifyingKey,
    since: Option<&Seal>,
) -> std::io::Result<Summary> {
    let mut s = Summary::default();
    let names = segment_names(storage)?;
    s.segments = names.len();
    // Hashes by sequence, to check a kept head against (32 bytes a record: 200k records, 6 MB).
    let mut hashes: Vec<[u8; 32]> = Vec::new();
    let mut coverage = Coverage::new(key);
    let mut expect = 1u64;
    let mut head = GENESIS;
    let found = |s: &mut Summary, damage, seq, detail: String| {
        s.finding.get_or_insert(Finding { damage, seq, detail });
    };
    'segments: for (i, name) in names.iter().enumerate() {
        let bytes = storage.read(name)?;
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            let what = if bytes.starts_with(MAGIC_V1) {
                "in the first audit format, which this release does not verify"
            } else {
                "not an audit segment"
            };
            found(&mut s, Damage::Modified, expect, format!("{name}: {what}"));
            break;
        }
        let named = segment_first_seq(name);
        let empty_last = bytes.len() == MAGIC.len() && i + 1 == names.len();
        if named != Some(expect) && (bytes.len() > MAGIC.len() || empty_last) {
            found(
                &mut s,
                Damage::Renamed,
                expect,
                format!(
                    "{name}: named for record {}, but the chain is at record {expect} there",
                    named.map_or("?".into(), |n| n.to_string())
                ),
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
                    if let Err(u) = coverage.record(&r) {
                        s.finding.get_or_insert(uncovered(u));
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
    if s.finding.is_none()
        && let Err(u) = coverage.finish(s.last_seq)
    {
        s.finding = Some(uncovered(u));
    }
    s.seals = coverage.seals;
    s.per_seal = if coverage.seals == 0 {
        (0, 0)
    } else {
        coverage.per_seal
    };
    s.epochs = std::mem::take(&mut coverage.epochs);
    if let Some(h) = since
        && s.finding.is_none()
    {
        let at = h.covers();
        let end = s.last_seq;
        if !h.verify(key) {
            found(
                &mut s,
                Damage::Forged,
                at,
                format!("the kept head (record {at}) is not signed by this key"),
            );
        } else {
            match hashes.get((at as usize).wrapping_sub(1)) {
                Some(hash) if *hash == h.head => {}
                Some(_) => found(
                    &mut s,
                    Damage::RolledBack,
                    at,
                    format!(
                        "record {at} is not the one in the kept head: the log was replaced from there on"
                    ),
                ),
                None => found(
                    &mut s,
                    Damage::RolledBack,
                    end + 1,
                    format!(
                        "the kept head names record {at}, the log ends at record {end}: records {}..={at} were cut off",
                        end + 1
                    ),
                ),
            }
        }
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

/// Like [`for_each_record`], but only what a restart keeps: the records past the last seal at
/// the end of the log (a write no sync made durable, which recovery sets aside) are left out.
/// Readers whose answer must equal what the gateway rebuilds after a crash (the spend reports
/// and the budget ledger) read this way.
pub fn for_each_sealed_record(
    storage: &dyn Storage,
    mut f: impl FnMut(record::Record),
) -> std::io::Result<()> {
    let names = segment_names(storage)?;
    let mut unsealed: Vec<record::Record> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let last = i + 1 == names.len();
        let bytes = storage.read(name)?;
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Ok(());
        }
        let mut pos = MAGIC.len();
        while pos < bytes.len() {
            let Ok((r, n)) = record::decode(&bytes[pos..]) else {
                break;
            };
            pos += n;
            if !last {
                f(r);
            } else if r.event.kind == crate::seal::KIND {
                unsealed.drain(..).for_each(&mut f);
                f(r);
            } else {
                unsealed.push(r);
            }
        }
        if pos < bytes.len() {
            return Ok(()); // a frame that does not decode ends the walk, as in `for_each_record`
        }
    }
    Ok(())
}
