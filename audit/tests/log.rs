//! The audit log against crashes, faults and tampering.
//!
//! `MemStorage` is a directory in memory that knows which bytes were synced: a "crash" drops or
//! tears what was not, at random, as a power cut would. Tamper tests edit real files on disk.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use lattice_audit::log::{AuditLog, MAGIC, Options, segment_name};
use lattice_audit::record::{self, Event};
use lattice_audit::seal;
use lattice_audit::storage::{AppendFile, DiskStorage, Storage};
use lattice_audit::verify::{Damage, verify, verify_since};

// ------------------------------------------------------------------------ fault-injecting storage

#[derive(Default)]
struct MemFile {
    data: Vec<u8>,
    synced: usize,
}

#[derive(Default, Clone)]
struct MemStorage {
    files: Arc<Mutex<HashMap<String, MemFile>>>,
    syncs: Arc<AtomicUsize>,
    fail_sync: Arc<AtomicBool>,
    /// Bumped by a crash: handles opened before it are dead (the process is gone).
    generation: Arc<AtomicUsize>,
    /// When set: the n-th next append to a segment writes only part of its bytes (which reach
    /// the disk) and the process dies there, a write torn by a power cut.
    tear_after: Arc<AtomicUsize>,
    /// A process's view ([`MemStorage::process`]): the generation it was started in. Once a
    /// crash has ended that generation it can neither write nor create anything, as a dead
    /// process cannot (its writer thread, leaked by the test, may still be running).
    born: Option<usize>,
}

struct MemHandle {
    storage: MemStorage,
    name: String,
    generation: usize,
}

impl MemHandle {
    fn alive(&self) -> io::Result<()> {
        if self.storage.generation.load(Ordering::SeqCst) == self.generation {
            Ok(())
        } else {
            Err(io::Error::other("the process crashed"))
        }
    }
}

impl AppendFile for MemHandle {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut files = self.storage.files.lock().unwrap();
        self.alive()?;
        let f = files.get_mut(&self.name).unwrap();
        if self.name.starts_with("seg-") && bytes.len() > 1 {
            let tear = &self.storage.tear_after;
            if tear.load(Ordering::SeqCst) == 1 {
                tear.store(0, Ordering::SeqCst);
                f.data.extend_from_slice(&bytes[..bytes.len() / 2]);
                f.synced = f.data.len();
                self.storage.generation.fetch_add(1, Ordering::SeqCst);
                return Err(io::Error::other("power cut mid-write"));
            }
            if tear.load(Ordering::SeqCst) > 1 {
                tear.fetch_sub(1, Ordering::SeqCst);
            }
        }
        f.data.extend_from_slice(bytes);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        if self.storage.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected fsync failure"));
        }
        let mut files = self.storage.files.lock().unwrap();
        self.alive()?;
        self.storage.syncs.fetch_add(1, Ordering::SeqCst);
        let f = files.get_mut(&self.name).unwrap();
        f.synced = f.data.len();
        Ok(())
    }
}

impl MemStorage {
    /// The storage as one process (one open of the log) sees it.
    fn process(&self) -> MemStorage {
        MemStorage {
            born: Some(self.generation.load(Ordering::SeqCst)),
            ..self.clone()
        }
    }

    fn alive(&self) -> io::Result<()> {
        match self.born {
            Some(g) if g != self.generation.load(Ordering::SeqCst) => {
                Err(io::Error::other("the process crashed"))
            }
            _ => Ok(()),
        }
    }

    fn handle(&self, name: &str) -> Box<dyn AppendFile> {
        Box::new(MemHandle {
            storage: self.clone(),
            name: name.to_string(),
            generation: self
                .born
                .unwrap_or_else(|| self.generation.load(Ordering::SeqCst)),
        })
    }

    /// A power cut: every file keeps its synced bytes, and of the rest nothing, a random prefix,
    /// or all of it.
    fn crash(&self, rng: &mut Rng) {
        let mut files = self.files.lock().unwrap();
        self.generation.fetch_add(1, Ordering::SeqCst);
        for f in files.values_mut() {
            let unsynced = f.data.len() - f.synced;
            let keep = match rng.below(3) {
                0 => 0,
                1 => rng.below(unsynced as u64 + 1) as usize,
                _ => unsynced,
            };
            f.data.truncate(f.synced + keep);
            f.synced = f.data.len();
        }
    }
}

impl Storage for MemStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names: Vec<String> = self.files.lock().unwrap().keys().cloned().collect();
        names.sort();
        Ok(names)
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        self.files
            .lock()
            .unwrap()
            .get(name)
            .map(|f| f.data.clone())
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn read_at(&self, name: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let files = self.files.lock().unwrap();
        let data = &files
            .get(name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?
            .data;
        let start = offset as usize;
        data.get(start..start + len)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))
    }

    fn create(&self, name: &str) -> io::Result<Box<dyn AppendFile>> {
        let mut files = self.files.lock().unwrap();
        self.alive()?;
        if files.contains_key(name) {
            return Err(io::Error::from(io::ErrorKind::AlreadyExists));
        }
        files.insert(name.to_string(), MemFile::default());
        drop(files);
        Ok(self.handle(name))
    }

    fn open_append(&self, name: &str) -> io::Result<Box<dyn AppendFile>> {
        self.alive()?;
        if !self.files.lock().unwrap().contains_key(name) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        Ok(self.handle(name))
    }

    fn truncate(&self, name: &str, len: u64) -> io::Result<()> {
        let mut files = self.files.lock().unwrap();
        self.alive()?;
        let f = files
            .get_mut(name)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        f.data.truncate(len as usize);
        f.synced = f.data.len();
        Ok(())
    }

    fn write_new(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.alive()?;
        let f = MemFile {
            data: bytes.to_vec(),
            synced: bytes.len(),
        };
        self.files.lock().unwrap().insert(name.to_string(), f);
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        Ok(())
    }
}

/// A small deterministic generator (xorshift64*), so every seeded run repeats exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

fn event(session: &str, n: u64) -> Event {
    Event {
        kind: "call".into(),
        session: session.into(),
        principal: format!("p-{session}"),
        payload: format!(r#"{{"n":{n}}}"#).into_bytes(),
    }
}

fn small_segments() -> Options {
    Options {
        segment_bytes: 2_000,
        ..Options::default()
    }
}

// ------------------------------------------------------------------------ durability

#[test]
fn concurrent_appends_share_one_sync() {
    let storage = MemStorage::default();
    let log = Arc::new(AuditLog::open(Arc::new(storage.clone()), Options::default()).unwrap());
    let before = storage.syncs.load(Ordering::SeqCst);
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    log.append_blocking(event(&format!("s{t}"), i)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let syncs = storage.syncs.load(Ordering::SeqCst) - before;
    assert!(syncs < 800, "800 appends took {syncs} syncs: no group commit");
    log.close();
    let s = verify(&storage, log.verifying_key()).unwrap();
    assert_eq!((s.records - s.seals, s.finding.clone()), (800, None), "{s:?}");
}

/// Runs seeded crash loops: appends (acknowledged or still pending) then a power cut, four times
/// a seed. Returns the first acknowledged record found missing, and how many reopenings had to
/// cut a torn tail.
fn crash_loops(options: Options, seeds: u64) -> (Option<String>, usize) {
    let mut torn = 0;
    for seed in 1..=seeds {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let storage = MemStorage::default();
        // Acknowledged records, by sequence: what must survive every crash.
        let mut acked: HashMap<u64, Vec<u8>> = HashMap::new();
        for round in 0..4 {
            let log = AuditLog::open(Arc::new(storage.process()), options.clone())
                .unwrap_or_else(|e| panic!("seed {seed} round {round}: the log did not reopen: {e}"));
            torn += usize::from(log.recovery().torn_tail.is_some());
            let present: HashMap<u64, Vec<u8>> = log
                .session_events("s", 0, usize::MAX)
                .unwrap()
                .into_iter()
                .map(|r| (r.seq, r.event.payload))
                .collect();
            for (seq, payload) in &acked {
                if present.get(seq) != Some(payload) {
                    return (
                        Some(format!(
                            "seed {seed} round {round}: acknowledged record {seq} lost"
                        )),
                        torn,
                    );
                }
            }
            let n = rng.below(40) + 1;
            if rng.below(3) == 0 {
                storage
                    .tear_after
                    .store(rng.below(n) as usize + 1, Ordering::SeqCst);
            }
            for i in 0..n {
                let e = event("s", i);
                match log.append_blocking(e.clone()) {
                    Ok(r) => drop(acked.insert(r.seq, e.payload)),
                    // The power went mid-write: nothing more is acknowledged.
                    Err(_) => break,
                }
            }
            // Sent but not acknowledged: the writer may be mid-commit when the power goes.
            for i in 0..rng.below(8) {
                drop(log.append(event("s", 1_000 + i)));
            }
            if rng.below(2) == 0 {
                std::thread::sleep(std::time::Duration::from_micros(rng.below(300)));
            }
            std::mem::forget(log); // no clean close: the crash comes first
            storage.crash(&mut rng);
            storage.tear_after.store(0, Ordering::SeqCst);
        }
        let log = AuditLog::open(Arc::new(storage.process()), options.clone()).unwrap();
        let key = *log.verifying_key();
        log.close();
        let s = verify(&storage, &key).unwrap();
        assert_eq!(s.finding, None, "seed {seed}: {s:?}");
        assert!(s.records >= acked.len() as u64);
    }
    (None, torn)
}

#[test]
fn no_acknowledged_record_is_lost_in_any_crash() {
    let (lost, torn) = crash_loops(small_segments(), 200);
    assert_eq!(lost, None);
    assert!(
        torn > 0,
        "no crash ever tore a write: the test does not exercise recovery"
    );
}

#[test]
fn the_crash_test_catches_a_log_that_acknowledges_before_syncing() {
    // The control: with `sync = "none"` acknowledgements run ahead of the disk, and some seed
    // must lose an acknowledged record, or the test above could not fail.
    // Large segments: a rotation syncs, and with small ones a busy machine's scheduling could
    // let every rotation land just before its crash.
    let options = Options {
        sync: lattice_audit::SyncMode::None,
        segment_bytes: 1 << 20,
        ..Options::default()
    };
    let (lost, _) = crash_loops(options, 200);
    assert!(
        lost.is_some(),
        "a log that never syncs lost nothing: the crash model is too kind"
    );
}

#[test]
fn a_failed_sync_poisons_the_log_and_nothing_is_acknowledged() {
    let storage = MemStorage::default();
    let log = AuditLog::open(Arc::new(storage.clone()), Options::default()).unwrap();
    log.append_blocking(event("s", 1)).unwrap();
    storage.fail_sync.store(true, Ordering::SeqCst);
    assert!(log.append_blocking(event("s", 2)).is_err());
    // The disk is fine again, but the log never retries on that file: still refused.
    storage.fail_sync.store(false, Ordering::SeqCst);
    let e = log.append_blocking(event("s", 3)).unwrap_err();
    assert!(e.to_string().contains("unavailable"), "{e}");
    assert!(log.failure().unwrap().contains("injected"));
}

// ------------------------------------------------------------------------ recovery

#[test]
fn a_torn_tail_is_cut_and_kept_aside() {
    let storage = MemStorage::default();
    let log = AuditLog::open(Arc::new(storage.clone()), Options::default()).unwrap();
    for i in 0..3 {
        log.append_blocking(event("s", i)).unwrap();
    }
    log.close();
    let seg = segment_name(1);
    let mut torn = Vec::new();
    record::encode(&mut torn, 4, 1, &event("s", 4), &[0; 32]);
    storage
        .files
        .lock()
        .unwrap()
        .get_mut(&seg)
        .unwrap()
        .data
        .extend_from_slice(&torn[..torn.len() / 2]);
    let log = AuditLog::open(Arc::new(storage.clone()), Options::default()).unwrap();
    let (cut, aside) = log.recovery().torn_tail.clone().expect("a torn tail");
    assert_eq!(cut as usize, torn.len() / 2);
    assert_eq!(storage.read(&aside).unwrap(), torn[..torn.len() / 2]);
    // Three events and their three seals, then the recovery record and its seal.
    assert_eq!(log.append_blocking(event("s", 5)).unwrap().seq, 9);
}

#[test]
fn damage_inside_the_signed_part_refuses_to_open_unless_allowed() {
    let storage = MemStorage::default();
    let log = AuditLog::open(Arc::new(storage.clone()), Options::default()).unwrap();
    for i in 0..5 {
        log.append_blocking(event("s", i)).unwrap();
    }
    log.close();
    let seg = segment_name(1);
    {
        let mut files = storage.files.lock().unwrap();
        let f = files.get_mut(&seg).unwrap();
        let at = f.data.len() / 2;
        f.data[at] ^= 0x40;
    }
    let e = AuditLog::open(Arc::new(storage.clone()), Options::default())
        .err()
        .unwrap();
    assert!(e.to_string().contains("corrupt"), "{e}");
    let opts = Options {
        allow_corruption: true,
        ..Options::default()
    };
    let log = AuditLog::open(Arc::new(storage.clone()), opts).unwrap();
    assert!(!log.recovery().skipped.is_empty());
    log.append_blocking(event("s", 9)).unwrap();
}

// ------------------------------------------------------------------------ sessions

#[test]
fn sessions_come_back_separately_and_in_order() {
    let storage = MemStorage::default();
    let log = AuditLog::open(Arc::new(storage.clone()), small_segments()).unwrap();
    for i in 0..60 {
        log.append_blocking(event(if i % 3 == 0 { "a" } else { "b" }, i))
            .unwrap();
        log.append_blocking(event("", i)).unwrap();
    }
    let a = log.session_events("a", 0, 1_000).unwrap();
    let b = log.session_events("b", 0, 1_000).unwrap();
    assert_eq!((a.len(), b.len()), (20, 40));
    assert!(a.windows(2).all(|w| w[0].seq < w[1].seq) && b.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(a.iter().all(|r| r.event.session == "a") && b.iter().all(|r| r.event.session == "b"));
    let page = log.session_events("b", b[9].seq, 5).unwrap();
    assert_eq!(
        page.iter().map(|r| r.seq).collect::<Vec<_>>(),
        b[10..15].iter().map(|r| r.seq).collect::<Vec<_>>()
    );
    assert_eq!(log.session_info("a"), Some(("p-a".to_string(), None)));
    let boundary = log
        .append_blocking(Event {
            kind: lattice_audit::log::COMPACTION.into(),
            session: "a".into(),
            principal: "p-a".into(),
            payload: b"{}".to_vec(),
        })
        .unwrap();
    assert_eq!(
        log.session_info("a"),
        Some(("p-a".to_string(), Some(boundary.seq)))
    );
    log.close();
    // The index is rebuilt from the log on open, boundary included; nothing was deleted.
    let log = AuditLog::open(Arc::new(storage), small_segments()).unwrap();
    assert_eq!(log.session_events("a", 0, 20).unwrap(), a);
    assert_eq!(log.session_events("a", 0, 1_000).unwrap().len(), 21);
    assert_eq!(log.session_info("a").unwrap().1, Some(boundary.seq));
}

// ------------------------------------------------------------------------ tampering

/// A closed log of `n` records in one segment on disk; returns the dir, the segment's bytes and
/// the offsets of each record's frame.
fn disk_log(n: u64) -> (tempfile::TempDir, Vec<u8>, Vec<(usize, usize)>) {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(
        Arc::new(DiskStorage::open(dir.path()).unwrap()),
        Options::default(),
    )
    .unwrap();
    for i in 0..n {
        log.append_blocking(event("s", i)).unwrap();
    }
    log.close();
    let bytes = std::fs::read(dir.path().join(segment_name(1))).unwrap();
    let mut frames = Vec::new();
    let mut pos = 8;
    while pos < bytes.len() {
        let n = record::frame_len(&bytes[pos..]).unwrap();
        frames.push((pos, n));
        pos += n;
    }
    (dir, bytes, frames)
}

fn finding_after(dir: &tempfile::TempDir, bytes: &[u8]) -> (Damage, u64) {
    std::fs::write(dir.path().join(segment_name(1)), bytes).unwrap();
    let storage = DiskStorage::open(dir.path()).unwrap();
    let key = key_of(dir);
    let f = verify(&storage, &key)
        .unwrap()
        .finding
        .expect("the damage went unnoticed");
    (f.damage, f.seq)
}

fn key_of(dir: &tempfile::TempDir) -> ed25519_dalek::VerifyingKey {
    seal::parse_public_key(&std::fs::read_to_string(dir.path().join(seal::PUBKEY_FILE)).unwrap()).unwrap()
}

/// The records of a segment's bytes.
fn records_of(bytes: &[u8]) -> Vec<record::Record> {
    let mut out = Vec::new();
    let mut pos = 8;
    while pos < bytes.len() {
        let (r, n) = record::decode(&bytes[pos..]).unwrap();
        out.push(r);
        pos += n;
    }
    out
}

/// What a keyless editor can do: re-encode `records` as a segment, every CRC, hash and link
/// made right again (sequence numbers and times as given; seals keep their old signatures).
fn rechained(records: &[record::Record]) -> Vec<u8> {
    let mut b = MAGIC.to_vec();
    let mut prev = [0u8; 32];
    for r in records {
        prev = record::encode(&mut b, r.seq, r.time_ns, &r.event, &prev);
    }
    b
}

/// Renumbers `records` from 1, as an editor hiding a deletion would.
fn renumbered(mut records: Vec<record::Record>) -> Vec<record::Record> {
    for (i, r) in records.iter_mut().enumerate() {
        r.seq = i as u64 + 1;
    }
    records
}

#[test]
fn every_tamper_kind_is_detected_and_classified() {
    // Ten appends, each its own write: record 2k+1 is the k-th event, 2k+2 its seal.
    let (dir, bytes, frames) = disk_log(10);
    let storage = DiskStorage::open(dir.path()).unwrap();
    let key = key_of(&dir);
    let s = verify(&storage, &key).unwrap();
    assert_eq!((s.records, s.seals, s.finding.clone()), (20, 10, None), "{s:?}");
    assert_eq!(s.epochs.len(), 1);
    assert_eq!((s.epochs[0].base, s.epochs[0].last.seq), (1, 20));
    let frame = |i: usize| &bytes[frames[i].0..frames[i].0 + frames[i].1];
    let recs = records_of(&bytes);

    // A flipped byte in record 4.
    let mut b = bytes.clone();
    b[frames[3].0 + 20] ^= 1;
    assert_eq!(finding_after(&dir, &b), (Damage::Modified, 4));

    // Record 5 deleted.
    let mut b = bytes[..frames[4].0].to_vec();
    b.extend_from_slice(&bytes[frames[5].0..]);
    assert_eq!(finding_after(&dir, &b), (Damage::Deleted, 5));

    // Records 6 and 7 swapped.
    let mut b = bytes[..frames[5].0].to_vec();
    b.extend_from_slice(frame(6));
    b.extend_from_slice(frame(5));
    b.extend_from_slice(&bytes[frames[7].0..]);
    assert_eq!(finding_after(&dir, &b), (Damage::Reordered, 6));

    // Record 3 duplicated.
    let mut b = bytes[..frames[3].0].to_vec();
    b.extend_from_slice(frame(2));
    b.extend_from_slice(&bytes[frames[3].0..]);
    assert_eq!(finding_after(&dir, &b), (Damage::Duplicated, 3));

    // The last record cut short.
    assert_eq!(
        finding_after(&dir, &bytes[..bytes.len() - 3]),
        (Damage::Truncated, 20)
    );

    // Record 11 rewritten (a call's outcome changed) and everything after it re-chained, CRCs
    // and hashes right, without the key: the seals after it no longer verify; the one before it
    // (record 10) still does, which places the rewrite at record 11.
    let mut edited = recs.clone();
    edited[10].event.payload = br#"{"n":5,"status":403}"#.to_vec();
    assert_eq!(finding_after(&dir, &rechained(&edited)), (Damage::Forged, 11));

    // ... and in addition every seal after it dropped (the log cut back to before the change,
    // then the edited record put back): the records past the last seal are reported.
    let kept: Vec<_> = edited[..11].to_vec();
    assert_eq!(finding_after(&dir, &rechained(&kept)), (Damage::Unsealed, 11));

    // ... or its seal replaced by a copy of an older genuine seal (a replayed signature).
    let mut replay = edited[..12].to_vec();
    replay[11].event = recs[1].event.clone();
    assert_eq!(finding_after(&dir, &rechained(&replay)), (Damage::Forged, 11));

    // Every seal removed and the rest renumbered and re-chained: no signature covers anything.
    let unsigned = renumbered(
        recs.iter()
            .filter(|r| r.event.kind != seal::KIND)
            .cloned()
            .collect(),
    );
    assert_eq!(finding_after(&dir, &rechained(&unsigned)), (Damage::Unsealed, 1));

    // Two seals swapped (with their records' places kept), re-chained.
    let mut swapped = recs.clone();
    let (a, b) = (swapped[3].event.clone(), swapped[7].event.clone());
    (swapped[3].event, swapped[7].event) = (b, a);
    assert_eq!(finding_after(&dir, &rechained(&swapped)).0, Damage::Forged);

    // A whole record deleted, everything after it renumbered and re-chained.
    let mut gone = recs.clone();
    gone.remove(4);
    assert_eq!(
        finding_after(&dir, &rechained(&renumbered(gone))),
        (Damage::Forged, 5)
    );

    // Forged records appended after the last seal, chained correctly.
    let mut more = recs.clone();
    for n in 0..2 {
        more.push(record::Record {
            seq: 21 + n,
            time_ns: 1,
            event: event("s", 99),
            prev: [0; 32],
            hash: [0; 32],
        });
    }
    assert_eq!(finding_after(&dir, &rechained(&more)), (Damage::Unsealed, 21));

    // A seal made by another key, chained correctly at the end.
    let other = ed25519_dalek::SigningKey::from_bytes(&[3u8; 32]);
    let mut by_other = recs.clone();
    by_other.push(record::Record {
        seq: 21,
        time_ns: 5,
        event: event("s", 1),
        prev: [0; 32],
        hash: [0; 32],
    });
    let head = record::encode(&mut Vec::new(), 21, 5, &event("s", 1), &{
        let mut p = [0u8; 32];
        for r in &recs {
            p = record::encode(&mut Vec::new(), r.seq, r.time_ns, &r.event, &p);
        }
        p
    });
    by_other.push(record::Record {
        seq: 22,
        time_ns: 6,
        event: seal::Seal::sign(&other, 1, 22, 6, head).event(),
        prev: [0; 32],
        hash: [0; 32],
    });
    assert_eq!(finding_after(&dir, &rechained(&by_other)), (Damage::Forged, 21));

    // Verified against another key, the genuine log is a forgery.
    std::fs::write(dir.path().join(segment_name(1)), &bytes).unwrap();
    let f = verify(&storage, &other.verifying_key()).unwrap().finding.unwrap();
    assert_eq!((f.damage, f.seq), (Damage::Forged, 1), "{f:?}");
    assert_eq!(verify(&storage, &key).unwrap().finding, None);
}

#[test]
fn a_renamed_segment_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        segment_bytes: 4096,
        ..Options::default()
    };
    let log = AuditLog::open(Arc::new(DiskStorage::open(dir.path()).unwrap()), options.clone()).unwrap();
    for i in 0..40 {
        log.append_blocking(event("s", i)).unwrap();
    }
    log.close();
    let storage = DiskStorage::open(dir.path()).unwrap();
    let names = lattice_audit::log::segment_names(&storage).unwrap();
    assert!(names.len() >= 3, "{names:?}");
    assert_eq!(verify(&storage, &key_of(&dir)).unwrap().finding, None);
    // The second segment renamed one number up: it sorts in the same place, but its name no
    // longer says where it begins.
    let second = lattice_audit::log::segment_first_seq(&names[1]).unwrap();
    std::fs::rename(
        dir.path().join(&names[1]),
        dir.path().join(segment_name(second + 1)),
    )
    .unwrap();
    let f = verify(&storage, &key_of(&dir)).unwrap().finding.unwrap();
    assert_eq!((f.damage, f.seq), (Damage::Renamed, second), "{f:?}");
    let e = AuditLog::open(Arc::new(DiskStorage::open(dir.path()).unwrap()), options)
        .err()
        .expect("a renamed segment opened");
    assert!(e.to_string().contains("its name says"), "{e}");
}

#[test]
fn a_restart_does_not_launder_a_forged_log() {
    let (dir, bytes, _) = disk_log(6);
    let mut edited = records_of(&bytes);
    edited[4].event.payload = br#"{"n":2,"status":403}"#.to_vec();
    std::fs::write(dir.path().join(segment_name(1)), rechained(&edited)).unwrap();
    let open = |allow| {
        AuditLog::open(
            Arc::new(DiskStorage::open(dir.path()).unwrap()),
            Options {
                allow_corruption: allow,
                ..Options::default()
            },
        )
    };
    let e = open(false).err().expect("a forged log was adopted");
    assert!(e.to_string().contains("not what was signed"), "{e}");
    // Told to start anyway, the gateway writes on, but its seals vouch only for what it writes.
    let log = open(true).unwrap();
    assert_eq!(log.recovery().base, 13);
    // Its first write says what recovery skipped (records 13, 14); then the new call.
    let r = log.append_blocking(event("s", 7)).unwrap();
    assert_eq!(r.seq, 15);
    assert_eq!(log.head().unwrap().base, 13);
    log.close();
    let storage = DiskStorage::open(dir.path()).unwrap();
    let s = verify(&storage, &key_of(&dir)).unwrap();
    let f = s.finding.clone().expect("the forgery was laundered");
    assert_eq!((f.damage, f.seq), (Damage::Forged, 5), "{s:?}");
    // And it stays refused on the next plain start.
    assert!(open(false).is_err());
}

#[test]
fn an_unsealed_tail_is_set_aside_never_adopted() {
    let (dir, bytes, _) = disk_log(3);
    let mut recs = records_of(&bytes);
    for n in 0..2 {
        recs.push(record::Record {
            seq: 7 + n,
            time_ns: 1,
            event: event("s", 100 + n),
            prev: [0; 32],
            hash: [0; 32],
        });
    }
    std::fs::write(dir.path().join(segment_name(1)), rechained(&recs)).unwrap();
    // Before any restart, the sealed reader already leaves out what recovery will set aside;
    // the plain reader shows every whole record.
    let seqs = |sealed: bool| {
        let storage = DiskStorage::open(dir.path()).unwrap();
        let mut seqs = Vec::new();
        let walk = if sealed {
            lattice_audit::verify::for_each_sealed_record
        } else {
            lattice_audit::verify::for_each_record
        };
        walk(&storage, &mut |r: record::Record| seqs.push(r.seq)).unwrap();
        seqs
    };
    let before = seqs(true);
    assert_eq!(before.last(), Some(&6), "{before:?}");
    assert_eq!(seqs(false).last(), Some(&8));
    let log = AuditLog::open(
        Arc::new(DiskStorage::open(dir.path()).unwrap()),
        Options::default(),
    )
    .unwrap();
    assert_eq!(log.recovery().unsealed_records, 2);
    assert!(log.recovery().torn_tail.is_some());
    let seen: Vec<_> = log
        .session_events("s", 0, 100)
        .unwrap()
        .into_iter()
        .map(|r| r.event.payload)
        .collect();
    assert_eq!(seen.len(), 3, "an unsealed record was adopted");
    // The chain goes on from the last seal, with a sealed record of what was set aside.
    assert_eq!(log.append_blocking(event("s", 4)).unwrap().seq, 9);
    log.close();
    let storage = DiskStorage::open(dir.path()).unwrap();
    assert_eq!(verify(&storage, &key_of(&dir)).unwrap().finding, None);
    let mut recovery = Vec::new();
    lattice_audit::verify::for_each_record(&storage, |r| {
        if r.event.kind == lattice_audit::log::RECOVERY {
            recovery.push((r.seq, String::from_utf8(r.event.payload).unwrap()));
        }
    })
    .unwrap();
    assert_eq!(recovery.len(), 1);
    assert_eq!(recovery[0].0, 7);
    assert!(
        recovery[0].1.contains(r#""unsealed_records":2"#),
        "{}",
        recovery[0].1
    );
}

#[test]
fn a_rollback_is_caught_against_a_kept_head() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        AuditLog::open(
            Arc::new(DiskStorage::open(dir.path()).unwrap()),
            Options::default(),
        )
        .unwrap()
    };
    let log = open();
    for i in 0..3 {
        log.append_blocking(event("s", i)).unwrap();
    }
    let early = log.head().unwrap();
    let seg = dir.path().join(segment_name(1));
    let early_bytes = std::fs::read(&seg).unwrap();
    for i in 3..6 {
        log.append_blocking(event("s", i)).unwrap();
    }
    // What a witness keeps: the head as JSON.
    let kept = seal::Seal::parse_head(&log.head().unwrap().head_json()).unwrap();
    assert_eq!(kept.covers(), 11);
    log.close();
    let storage = DiskStorage::open(dir.path()).unwrap();
    let key = key_of(&dir);
    assert_eq!(verify_since(&storage, &key, Some(&kept)).unwrap().finding, None);
    assert_eq!(verify_since(&storage, &key, Some(&early)).unwrap().finding, None);
    // Records and seals cut back together to the older head: intact on its own...
    std::fs::write(&seg, &early_bytes).unwrap();
    assert_eq!(verify(&storage, &key).unwrap().finding, None);
    // ...but not against the kept head.
    let f = verify_since(&storage, &key, Some(&kept))
        .unwrap()
        .finding
        .unwrap();
    assert_eq!((f.damage, f.seq), (Damage::RolledBack, 7), "{f:?}");
    // Or rolled back and written again from there: same length, other records.
    let log = open();
    for i in 0..3 {
        log.append_blocking(event("s", 50 + i)).unwrap();
    }
    log.close();
    let f = verify_since(&storage, &key, Some(&kept))
        .unwrap()
        .finding
        .unwrap();
    assert_eq!((f.damage, f.seq), (Damage::RolledBack, 11), "{f:?}");
    // A head not made by the key proves nothing.
    let mut fake = kept;
    fake.head[0] ^= 1;
    let f = verify_since(&storage, &key, Some(&fake))
        .unwrap()
        .finding
        .unwrap();
    assert_eq!(f.damage, Damage::Forged);
    // Opened with the kept head to extend (the witness's), the rewritten log refuses to open,
    // and so does one whose key no longer signs the head.
    let with = |h: seal::Seal| {
        AuditLog::open(
            Arc::new(DiskStorage::open(dir.path()).unwrap()),
            Options {
                extends: Some(h),
                ..Options::default()
            },
        )
    };
    let e = with(kept).err().expect("a rolled-back log opened");
    assert!(e.to_string().contains("witnessed head"), "{e}");
    let e = with(fake).err().expect("a head of another key was taken");
    assert!(e.to_string().contains("not signed by this log's key"), "{e}");
    assert!(with(early).is_ok(), "the log extends the early head");
}

#[test]
fn appenders_cannot_write_seals() {
    let storage = MemStorage::default();
    let log = AuditLog::open(Arc::new(storage), Options::default()).unwrap();
    let mut e = event("", 1);
    e.kind = seal::KIND.into();
    assert!(log.append_blocking(e).is_err());
}

#[test]
fn lazy_records_ride_the_next_sync_or_the_interval() {
    let storage = MemStorage::default();
    let options = Options {
        sync_interval: std::time::Duration::from_millis(50),
        ..Options::default()
    };
    let log = AuditLog::open(Arc::new(storage.clone()), options).unwrap();
    let seg = segment_name(1);
    let synced = |s: &MemStorage| {
        let files = s.files.lock().unwrap();
        let f = &files[&seg];
        (f.synced, f.data.len())
    };
    let before = storage.syncs.load(Ordering::SeqCst);
    log.append_lazy(event("s", 1)).unwrap();
    // A durable append right behind it syncs both with one fdatasync.
    log.append_blocking(event("s", 2)).unwrap();
    let (s, len) = synced(&storage);
    assert_eq!(s, len);
    assert!(storage.syncs.load(Ordering::SeqCst) - before <= 2);
    // Alone, a lazy record is written at once and synced within the interval.
    log.append_lazy(event("s", 3)).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let (s, len) = synced(&storage);
        if s == len && len > 0 && log.session_events("s", 0, 10).unwrap().len() == 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a lazy record was never synced"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
