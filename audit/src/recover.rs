//! Recovery: what [`crate::AuditLog::open`] does with the log on disk before it writes again.
//!
//! Every segment is read in order, the session index rebuilt and the seals followed. Records
//! past the last seal at the end are ones no sync made durable: they are cut and kept aside.
//! Damage anywhere before, seals that do not verify, or a witnessed head the log does not
//! extend refuse to open unless `allow_corruption`, which skips the damage and starts a new
//! epoch, so no new seal vouches for it. The rules are FORMAT.md's "Recovery".

use ed25519_dalek::VerifyingKey;

use crate::log::{
    AuditError, Index, Loc, MAGIC, MAGIC_V1, MAX_UNSEALED, Options, RecoveryReport, io, now_ns,
    segment_first_seq, segment_names,
};
use crate::record::{self, Event, GENESIS};
use crate::seal::{Coverage, Seal};
use crate::storage::Storage;

pub(crate) struct Recovered {
    pub(crate) index: Index,
    pub(crate) next_seq: u64,
    pub(crate) head: [u8; 32],
    pub(crate) seal: Option<Seal>,
    pub(crate) last_segment_len: u64,
    pub(crate) report: RecoveryReport,
}

/// Reads the log back: every segment in order, rebuilding the session index, following the
/// seals. Records past the last seal at the end are a write a crash cut short (nothing in it
/// was acknowledged): they are cut and kept aside. Damage anywhere before, or seals that do not
/// verify, refuse to open unless `allow_corruption`, which skips the damage and starts a new
/// epoch, so no new seal vouches for it.
pub(crate) fn recover(
    storage: &dyn Storage,
    key: &VerifyingKey,
    options: &Options,
) -> Result<Recovered, AuditError> {
    let mut report = RecoveryReport {
        base: 1,
        ..RecoveryReport::default()
    };
    let mut damaged = false;
    let mut corrupt = |what: String, report: &mut RecoveryReport| -> Result<(), AuditError> {
        if !options.allow_corruption {
            return Err(AuditError::Corrupt(what));
        }
        tracing::error!(damage = %what, "audit log: damage skipped; new seals will not vouch for it");
        report.skipped.push(what);
        damaged = true;
        Ok(())
    };
    // A witnessed head first: one this key did not sign means the key was replaced.
    let mut extends = options.extends.as_ref();
    if let Some(h) = extends
        && !h.verify(key)
    {
        corrupt(
            "the witnessed head is not signed by this log's key: the key (and with it the log) was replaced"
                .into(),
            &mut report,
        )?;
        extends = None;
    }
    let names = segment_names(storage).map_err(io)?;
    let mut coverage = Coverage::new(key);
    let mut index = Index::default();
    let mut next_seq = 1;
    let mut head = GENESIS;
    let mut last_segment_len = 0;
    // Records read but not yet covered by a seal, and where the last seal ended: (segment,
    // offset, the next sequence and the head there).
    let mut pending: Vec<(Event, Loc)> = Vec::new();
    let mut sealed = (0usize, 0usize, 1u64, GENESIS);
    for (i, name) in names.iter().enumerate() {
        let last = i + 1 == names.len();
        let bytes = storage.read(name).map_err(io)?;
        if bytes.len() >= MAGIC.len() && &bytes[..MAGIC.len()] == MAGIC_V1 {
            return Err(AuditError::Unsupported(format!(
                "{name} is in the first audit format (signatures in a side file), which this release does not read: move the audit directory aside (verify it with the release that wrote it) and start again"
            )));
        }
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            if last && bytes.len() < MAGIC.len() && MAGIC.starts_with(&bytes) {
                // Created, but its magic never made it: an empty last segment.
                storage.truncate(name, 0).map_err(io)?;
                let mut f = storage.open_append(name).map_err(io)?;
                f.append(MAGIC).map_err(io)?;
                f.sync().map_err(io)?;
                index.segments.push(name.clone());
                last_segment_len = MAGIC.len() as u64;
                sealed = (i, MAGIC.len(), next_seq, head);
                continue;
            }
            corrupt(format!("{name}: not an audit segment"), &mut report)?;
            continue;
        }
        let named = segment_first_seq(name);
        if named != Some(next_seq) {
            // The name must be where the chain is: a renamed segment reorders the log.
            corrupt(
                format!(
                    "{name}: its name says it starts at record {named:?}, the chain is at record {next_seq}"
                ),
                &mut report,
            )?;
        }
        let segment = index.segments.len() as u32;
        index.segments.push(name.clone());
        let mut pos = MAGIC.len();
        if last {
            sealed = (i, pos, next_seq, head);
        }
        while pos < bytes.len() {
            let decoded = record::decode(&bytes[pos..]);
            let follows = matches!(&decoded, Ok((r, _)) if r.seq == next_seq && r.prev == head);
            if follows && let Ok((r, n)) = decoded {
                if let Some(h) = extends
                    && r.seq == h.covers()
                    && r.hash != h.head
                {
                    corrupt(
                        format!(
                            "record {} is not the one in the witnessed head: the log was replaced from there on",
                            r.seq
                        ),
                        &mut report,
                    )?;
                }
                let loc = Loc {
                    seq: r.seq,
                    segment,
                    offset: pos as u64,
                    len: n as u32,
                };
                head = r.hash;
                next_seq += 1;
                report.records += 1;
                pos += n;
                if let Err(u) = coverage.record(&r) {
                    corrupt(format!("{name}: {u}"), &mut report)?;
                }
                if Seal::of(&r).is_some() {
                    for (e, l) in pending.drain(..) {
                        index.add(&e, l);
                    }
                    sealed = (i, pos, next_seq, head);
                } else {
                    pending.push((r.event, loc));
                }
                continue;
            }
            let damage = match &decoded {
                Ok((r, _)) => format!(
                    "record {} does not follow record {} in the chain",
                    r.seq,
                    next_seq - 1
                ),
                Err(e) => e.to_string(),
            };
            if last && !seal_follows(&bytes[pos..]) {
                // Past the last seal, at the end: a write the crash cut short.
                break;
            }
            let what = format!("{name} at byte {pos} (after record {}): {damage}", next_seq - 1);
            corrupt(what, &mut report)?;
            // Skip the frame when its length can be trusted, else the rest of the segment.
            match record::frame_len(&bytes[pos..]) {
                Ok(n) => {
                    // A record out of the chain still holds its place in it when it decodes.
                    if let Ok((r, _)) = &decoded {
                        next_seq = r.seq + 1;
                        head = r.hash;
                    }
                    pos += n;
                }
                Err(_) => break,
            }
        }
        if !last && !pending.is_empty() {
            // A segment is sealed and synced before the next one begins.
            corrupt(
                format!(
                    "{name}: records {}..={} at its end are covered by no seal",
                    pending[0].1.seq,
                    next_seq - 1
                ),
                &mut report,
            )?;
            for (e, l) in pending.drain(..) {
                index.add(&e, l);
            }
        }
        if last {
            last_segment_len = bytes.len().min(pos) as u64;
            // Whatever follows the last seal was never acknowledged: keep it aside.
            let (seg, at, first, sealed_head) = sealed;
            if pending.len() > MAX_UNSEALED {
                // The writer never leaves more unsealed: this is not a crash's leftover.
                corrupt(
                    format!(
                        "{name}: {} whole records past the last seal, more than the writer ever leaves unsealed: not a crash's leftover",
                        pending.len()
                    ),
                    &mut report,
                )?;
            }
            if seg == i && at < bytes.len() {
                let cut = &bytes[at..];
                let aside = format!("torn-{first:020}-{}.bin", now_ns());
                storage.write_new(&aside, cut).map_err(io)?;
                storage.truncate(name, at as u64).map_err(io)?;
                report.unsealed_records = pending.len() as u64;
                tracing::warn!(segment = %name, offset = at, bytes = cut.len(), whole_records = pending.len(), kept = %aside,
                    "audit log: the end of the last write was never sealed (a crash cut it short): set aside");
                report.torn_tail = Some((cut.len() as u64, aside));
                report.records -= pending.len() as u64;
                (next_seq, head) = (first, sealed_head);
                pending.clear();
                last_segment_len = at as u64;
            }
        }
    }
    if let Err(u) = coverage.finish(next_seq - 1) {
        corrupt(u.to_string(), &mut report)?;
    }
    if let Some(h) = extends
        && next_seq - 1 < h.covers()
    {
        corrupt(
            format!(
                "the witnessed head names record {}, the log ends at record {}: it was rolled back",
                h.covers(),
                next_seq - 1
            ),
            &mut report,
        )?;
    }
    let seal = coverage.head();
    if damaged {
        // Never sign over what could not be verified: seals vouch from the next record on.
        report.base = next_seq;
    } else if let Some(s) = seal {
        report.base = s.base;
    }
    report.segments = index.segments.len();
    Ok(Recovered {
        index,
        next_seq,
        head,
        seal,
        last_segment_len,
        report,
    })
}

/// Whether a whole seal record follows somewhere in `bytes` (walking frames by their lengths):
/// then the damage before it is inside the sealed part, not a torn tail.
fn seal_follows(bytes: &[u8]) -> bool {
    let mut pos = 0;
    while let Ok(n) = record::frame_len(&bytes[pos..]) {
        if let Ok((r, _)) = record::decode(&bytes[pos..])
            && Seal::of(&r).is_some()
        {
            return true;
        }
        pos += n;
    }
    false
}
