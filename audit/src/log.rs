//! The live log: recovery on open, one writer thread doing group commit, signed checkpoints,
//! and the session index.
//!
//! Appenders hand their event to the writer thread and wait for its acknowledgement. The
//! writer takes every event that is waiting, chains and frames them into one buffer, writes it
//! with one `write`, and (in `sync = "always"`) makes it durable with one `fdatasync` before it
//! acknowledges any of them: concurrent appends share one sync. After each sync it signs the new
//! head into the checkpoint file.
//!
//! A failed write or sync poisons the log: the write may or may not have reached the disk, and
//! after a failed `fsync` the kernel may have dropped the dirty pages, so retrying on the same
//! file could acknowledge a record that is not there. Every pending and later append fails, and
//! the gateway refuses calls (503) until it is restarted, when recovery decides from what is on
//! disk.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;

use crate::checkpoint::{self, Checkpoint};
use crate::record::{self, DecodeError, Event, GENESIS, Record};
use crate::storage::{AppendFile, Storage};

/// The first bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"LTAUDIT1";

/// When appends become durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Every group commit is `fdatasync`ed before any of its records is acknowledged.
    #[default]
    Always,
    /// Acknowledged once written; synced at most every `sync_interval` (a crash may lose the
    /// last interval).
    Batch,
    /// Never synced by the gateway (tests, benchmarks).
    None,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub sync: SyncMode,
    pub sync_interval: Duration,
    /// A segment is closed and a new one started once it is this large.
    pub segment_bytes: u64,
    /// Open even when a record inside the signed (synced) part is damaged; it is skipped and
    /// reported. Without it such a log refuses to open.
    pub allow_corruption: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            sync: SyncMode::Always,
            sync_interval: Duration::from_millis(100),
            segment_bytes: 64 << 20,
            allow_corruption: false,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("the audit log is unavailable: {0}")]
    Unavailable(String),
    #[error("audit event rejected: {0}")]
    Invalid(String),
    #[error("audit log I/O: {0}")]
    Io(String),
    /// Damage inside the synced part of the log, found on open.
    #[error("the audit log is corrupt: {0} (start with allow_corruption to skip it)")]
    Corrupt(String),
}

fn io(e: std::io::Error) -> AuditError {
    AuditError::Io(e.to_string())
}

/// What an acknowledged append tells its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub seq: u64,
    pub hash: [u8; 32],
}

/// What recovery found and did, for the log and `/readyz`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub records: u64,
    pub segments: usize,
    /// Bytes cut from the tail (a torn write), kept aside in this file.
    pub torn_tail: Option<(u64, String)>,
    /// Damaged records skipped (only with `allow_corruption`).
    pub skipped: Vec<String>,
}

pub fn segment_name(first_seq: u64) -> String {
    format!("seg-{first_seq:020}.log")
}

/// The segment files in `storage`, in sequence order (their names sort as their numbers).
pub fn segment_names(storage: &dyn Storage) -> std::io::Result<Vec<String>> {
    let mut names: Vec<String> = storage
        .list()?
        .into_iter()
        .filter(|n| n.starts_with("seg-") && n.ends_with(".log"))
        .collect();
    names.sort();
    Ok(names)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Where a record is, for reading it back.
#[derive(Debug, Clone, Copy)]
struct Loc {
    seq: u64,
    segment: u32,
    offset: u64,
    len: u32,
}

#[derive(Default)]
struct Session {
    /// The principal of the session's first event: who may read it.
    owner: String,
    events: Vec<Loc>,
    /// The latest compaction boundary: where a client's context was last summarised.
    compaction: Option<u64>,
}

#[derive(Default)]
struct Index {
    segments: Vec<String>,
    sessions: HashMap<String, Session>,
}

/// The event kind that marks where a session's context was summarised. Nothing before it is
/// deleted: the boundary only tells a client where to resume reading.
pub const COMPACTION: &str = "session.compaction";

impl Index {
    fn add(&mut self, event: &Event, loc: Loc) {
        if event.session.is_empty() {
            return;
        }
        let s = self.sessions.entry(event.session.clone()).or_default();
        if s.events.is_empty() {
            s.owner = event.principal.clone();
        }
        if event.kind == COMPACTION {
            s.compaction = Some(loc.seq);
        }
        s.events.push(loc);
    }
}

struct Shared {
    storage: Arc<dyn Storage>,
    index: RwLock<Index>,
    failed: Mutex<Option<String>>,
    poisoned: AtomicBool,
}

struct Request {
    event: Event,
    /// `None`: nobody waits (a lazy append).
    ack: Option<tokio::sync::oneshot::Sender<Result<Receipt, AuditError>>>,
    /// Must be synced before it is acknowledged (in `sync = "always"`). A lazy record is
    /// written at once and synced with the next durable one, or within `sync_interval`.
    durable: bool,
}

impl Request {
    fn answer(&mut self, r: Result<Receipt, AuditError>) {
        if let Some(ack) = self.ack.take() {
            let _ = ack.send(r);
        }
    }
}

/// The audit log. Cheap to share (`Arc`); appends from any thread or task.
pub struct AuditLog {
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    shared: Arc<Shared>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    verifying_key: ed25519_dalek::VerifyingKey,
    report: RecoveryReport,
}

impl AuditLog {
    /// Recovers the log in `storage` and starts its writer.
    pub fn open(storage: Arc<dyn Storage>, options: Options) -> Result<AuditLog, AuditError> {
        let key = checkpoint::load_or_create_key(&*storage).map_err(io)?;
        let recovered = recover(&*storage, &key, &options)?;
        let file = match recovered.index.segments.last() {
            Some(name) => storage.open_append(name).map_err(io)?,
            None => {
                let name = segment_name(recovered.next_seq);
                let mut f = storage.create(&name).map_err(io)?;
                f.append(MAGIC).map_err(io)?;
                f.sync().map_err(io)?;
                storage.sync_dir().map_err(io)?;
                f
            }
        };
        let mut index = recovered.index;
        if index.segments.is_empty() {
            index.segments.push(segment_name(recovered.next_seq));
        }
        let segment_len = recovered.last_segment_len.max(MAGIC.len() as u64);
        let checkpoints = match storage.open_append(checkpoint::FILE) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let f = storage.create(checkpoint::FILE).map_err(io)?;
                storage.sync_dir().map_err(io)?;
                f
            }
            Err(e) => return Err(io(e)),
        };
        let shared = Arc::new(Shared {
            storage: storage.clone(),
            index: RwLock::new(index),
            failed: Mutex::new(None),
            poisoned: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel();
        let verifying_key = key.verifying_key();
        let mut writer = Writer {
            shared: shared.clone(),
            options: options.clone(),
            file,
            segment_len,
            next_seq: recovered.next_seq,
            head: recovered.head,
            key,
            checkpoints,
            unsynced: false,
            last_sync: Instant::now(),
            last_checkpoint_sync: Instant::now(),
            buf: Vec::with_capacity(64 << 10),
        };
        let handle = std::thread::Builder::new()
            .name("lattice-audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io)?;
        Ok(AuditLog {
            tx: Mutex::new(Some(tx)),
            shared,
            writer: Mutex::new(Some(handle)),
            verifying_key,
            report: recovered.report,
        })
    }

    /// What recovery found when the log was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.report
    }

    pub fn verifying_key(&self) -> &ed25519_dalek::VerifyingKey {
        &self.verifying_key
    }

    /// Why the log stopped taking appends, if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared.failed.lock().ok().and_then(|f| f.clone())
    }

    /// Appends `event`; resolves when it is acknowledged (durable, in `sync = "always"`).
    pub fn append(
        &self,
        event: Event,
    ) -> impl std::future::Future<Output = Result<Receipt, AuditError>> + Send + 'static {
        let (ack, rx) = tokio::sync::oneshot::channel();
        let sent = self.send(event, Some(ack), true);
        async move {
            sent?;
            rx.await
                .unwrap_or_else(|_| Err(AuditError::Unavailable("the audit writer stopped".into())))
        }
    }

    /// Appends `event` without waiting and without asking for its own sync: it is written at
    /// once and becomes durable with the next durable append, or within `sync_interval`. For
    /// records whose loss in a crash costs detail, not truth (a call's end, after its decision).
    pub fn append_lazy(&self, event: Event) -> Result<(), AuditError> {
        self.send(event, None, false)
    }

    /// [`AuditLog::append`] for code outside a runtime (the CLI, tests).
    pub fn append_blocking(&self, event: Event) -> Result<Receipt, AuditError> {
        let (ack, rx) = tokio::sync::oneshot::channel();
        self.send(event, Some(ack), true)?;
        rx.blocking_recv()
            .unwrap_or_else(|_| Err(AuditError::Unavailable("the audit writer stopped".into())))
    }

    fn send(
        &self,
        event: Event,
        ack: Option<tokio::sync::oneshot::Sender<Result<Receipt, AuditError>>>,
        durable: bool,
    ) -> Result<(), AuditError> {
        event.validate().map_err(|e| AuditError::Invalid(e.to_string()))?;
        if self.shared.poisoned.load(Ordering::Acquire) {
            return Err(AuditError::Unavailable(self.failure().unwrap_or_default()));
        }
        let tx = self
            .tx
            .lock()
            .map_err(|_| AuditError::Unavailable("the audit log is closed".into()))?;
        tx.as_ref()
            .ok_or_else(|| AuditError::Unavailable("the audit log is closed".into()))?
            .send(Request { event, ack, durable })
            .map_err(|_| AuditError::Unavailable("the audit writer stopped".into()))
    }

    /// The principal who owns `session` (its first event's) and its latest compaction
    /// boundary, if the session exists.
    pub fn session_info(&self, session: &str) -> Option<(String, Option<u64>)> {
        let index = self.shared.index.read().ok()?;
        index
            .sessions
            .get(session)
            .map(|s| (s.owner.clone(), s.compaction))
    }

    /// Up to `limit` events of `session` with a sequence number above `after`, in order.
    pub fn session_events(&self, session: &str, after: u64, limit: usize) -> Result<Vec<Record>, AuditError> {
        let (locs, names): (Vec<Loc>, Vec<String>) = {
            let index = self
                .shared
                .index
                .read()
                .map_err(|_| AuditError::Unavailable("index lock poisoned".into()))?;
            let Some(s) = index.sessions.get(session) else {
                return Ok(Vec::new());
            };
            let from = s.events.partition_point(|l| l.seq <= after);
            let locs: Vec<Loc> = s.events[from..].iter().take(limit).copied().collect();
            let names = locs
                .iter()
                .map(|l| index.segments[l.segment as usize].clone())
                .collect();
            (locs, names)
        };
        locs.iter()
            .zip(names)
            .map(|(l, name)| {
                let bytes = self
                    .shared
                    .storage
                    .read_at(&name, l.offset, l.len as usize)
                    .map_err(io)?;
                record::decode(&bytes)
                    .map(|(r, _)| r)
                    .map_err(|e| AuditError::Io(format!("{name} at {}: {e}", l.offset)))
            })
            .collect()
    }

    /// Stops the writer after it has written (and synced) everything sent so far.
    pub fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Ok(mut w) = self.writer.lock()
            && let Some(h) = w.take()
        {
            let _ = h.join();
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

struct Writer {
    shared: Arc<Shared>,
    options: Options,
    file: Box<dyn AppendFile>,
    segment_len: u64,
    next_seq: u64,
    head: [u8; 32],
    key: SigningKey,
    checkpoints: Box<dyn AppendFile>,
    unsynced: bool,
    last_sync: Instant,
    last_checkpoint_sync: Instant,
    buf: Vec<u8>,
}

/// Most events taken into one group commit.
const MAX_BATCH: usize = 4096;

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Request>) {
        let mut batch = Vec::with_capacity(256);
        loop {
            let first = if self.unsynced {
                // Batch mode: wake up to sync what is written.
                let wait = self
                    .options
                    .sync_interval
                    .saturating_sub(self.last_sync.elapsed());
                match rx.recv_timeout(wait) {
                    Ok(r) => Some(r),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match rx.recv() {
                    Ok(r) => Some(r),
                    Err(_) => break,
                }
            };
            batch.extend(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            self.commit(&mut batch);
        }
        // Closing: make everything written durable and sign the head.
        if self.unsynced && !self.shared.poisoned.load(Ordering::Acquire) {
            let _ = self.sync_and_checkpoint();
        }
        let _ = self.checkpoints.sync();
    }

    fn poison(&self, why: String) {
        tracing::error!(error = %why, "audit log failed: appends are refused until restart");
        if let Ok(mut f) = self.shared.failed.lock() {
            f.get_or_insert(why);
        }
        self.shared.poisoned.store(true, Ordering::Release);
    }

    fn commit(&mut self, batch: &mut Vec<Request>) {
        if self.shared.poisoned.load(Ordering::Acquire) {
            let why = self
                .shared
                .failed
                .lock()
                .ok()
                .and_then(|f| f.clone())
                .unwrap_or_default();
            for mut r in batch.drain(..) {
                r.answer(Err(AuditError::Unavailable(why.clone())));
            }
            return;
        }
        if batch.is_empty() {
            // A batch-mode timer tick.
            if let Err(e) = self.sync_and_checkpoint() {
                self.poison(e);
            }
            return;
        }
        if self.segment_len >= self.options.segment_bytes
            && let Err(e) = self.rotate()
        {
            self.poison(e);
            return self.commit(batch);
        }
        self.buf.clear();
        let mut placed = Vec::with_capacity(batch.len());
        for r in batch.iter() {
            let start = self.buf.len();
            let seq = self.next_seq;
            self.head = record::encode(&mut self.buf, seq, now_ns(), &r.event, &self.head);
            self.next_seq += 1;
            placed.push((seq, self.head, start, self.buf.len() - start));
        }
        let written = self.file.append(&self.buf).map_err(|e| format!("write: {e}"));
        let wants_sync = batch.iter().any(|r| r.durable);
        let durable = written.and_then(|()| match self.options.sync {
            SyncMode::Always if wants_sync => self.sync_and_checkpoint(),
            // Only lazy records: synced with the next durable one, or on the interval timer.
            SyncMode::Always => {
                self.unsynced = true;
                Ok(())
            }
            SyncMode::Batch => {
                self.unsynced = true;
                if self.last_sync.elapsed() >= self.options.sync_interval {
                    self.sync_and_checkpoint()
                } else {
                    Ok(())
                }
            }
            SyncMode::None => Ok(()),
        });
        if let Err(e) = durable {
            self.poison(e.clone());
            for mut r in batch.drain(..) {
                r.answer(Err(AuditError::Unavailable(e.clone())));
            }
            return;
        }
        let base = self.segment_len;
        self.segment_len += self.buf.len() as u64;
        if let Ok(mut index) = self.shared.index.write() {
            let segment = index.segments.len().saturating_sub(1) as u32;
            for (r, &(seq, _, start, len)) in batch.iter().zip(&placed) {
                let loc = Loc {
                    seq,
                    segment,
                    offset: base + start as u64,
                    len: len as u32,
                };
                index.add(&r.event, loc);
            }
        }
        for (mut r, (seq, hash, _, _)) in batch.drain(..).zip(placed) {
            r.answer(Ok(Receipt { seq, hash }));
        }
    }

    fn sync_and_checkpoint(&mut self) -> Result<(), String> {
        self.file.sync().map_err(|e| format!("fdatasync: {e}"))?;
        self.unsynced = false;
        self.last_sync = Instant::now();
        if self.next_seq > 1 {
            // Sign only what is durable: the head just synced.
            let c = Checkpoint::sign(&self.key, self.next_seq - 1, now_ns(), self.head);
            self.checkpoints
                .append(&c.encode())
                .map_err(|e| format!("checkpoint write: {e}"))?;
            // The checkpoint file may lag the log (a lost checkpoint only weakens tail
            // detection for that moment); it is synced at most once a second.
            if self.last_checkpoint_sync.elapsed() >= Duration::from_secs(1) {
                self.checkpoints
                    .sync()
                    .map_err(|e| format!("checkpoint sync: {e}"))?;
                self.last_checkpoint_sync = Instant::now();
            }
        }
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), String> {
        self.sync_and_checkpoint()?;
        let name = segment_name(self.next_seq);
        let mut f = self
            .shared
            .storage
            .create(&name)
            .map_err(|e| format!("create {name}: {e}"))?;
        f.append(MAGIC).map_err(|e| format!("write {name}: {e}"))?;
        f.sync().map_err(|e| format!("sync {name}: {e}"))?;
        self.shared
            .storage
            .sync_dir()
            .map_err(|e| format!("sync dir: {e}"))?;
        self.file = f;
        self.segment_len = MAGIC.len() as u64;
        if let Ok(mut index) = self.shared.index.write() {
            index.segments.push(name);
        }
        Ok(())
    }
}

struct Recovered {
    index: Index,
    next_seq: u64,
    head: [u8; 32],
    last_segment_len: u64,
    report: RecoveryReport,
}

/// Reads the log back: the checkpoints, then every segment in order, rebuilding the session
/// index. A torn tail is cut (the bytes kept aside); damage inside the signed part refuses to
/// open unless `allow_corruption`.
fn recover(storage: &dyn Storage, key: &SigningKey, options: &Options) -> Result<Recovered, AuditError> {
    let mut report = RecoveryReport::default();
    // The highest sequence a valid signed checkpoint vouches for: the synced part.
    let signed = match storage.read(checkpoint::FILE) {
        Ok(bytes) => {
            let (entries, whole) = checkpoint::parse(&bytes);
            if whole != bytes.len() {
                storage.truncate(checkpoint::FILE, whole as u64).map_err(io)?;
            }
            // Checkpoints only grow, so the last one that verifies is the highest.
            let key = key.verifying_key();
            entries
                .iter()
                .rev()
                .filter_map(|c| c.as_ref().ok())
                .find(|c| c.verify(&key))
                .map_or(0, |c| c.seq)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(io(e)),
    };
    let names = segment_names(storage).map_err(io)?;
    let mut index = Index::default();
    let mut next_seq = 1;
    let mut head = GENESIS;
    let mut last_segment_len = 0;
    for (i, name) in names.iter().enumerate() {
        let last = i + 1 == names.len();
        let bytes = storage.read(name).map_err(io)?;
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            if last && bytes.len() < MAGIC.len() && MAGIC.starts_with(&bytes) {
                // Created, but its magic never made it: an empty last segment.
                storage.truncate(name, 0).map_err(io)?;
                let mut f = storage.open_append(name).map_err(io)?;
                f.append(MAGIC).map_err(io)?;
                f.sync().map_err(io)?;
                index.segments.push(name.clone());
                last_segment_len = MAGIC.len() as u64;
                continue;
            }
            return Err(AuditError::Corrupt(format!("{name}: not an audit segment")));
        }
        let segment = index.segments.len() as u32;
        index.segments.push(name.clone());
        let mut pos = MAGIC.len();
        while pos < bytes.len() {
            let decoded = record::decode(&bytes[pos..]);
            let damage = match &decoded {
                Ok((r, n)) if r.seq == next_seq && r.prev == head => {
                    let (r, n) = (r, *n);
                    let loc = Loc {
                        seq: r.seq,
                        segment,
                        offset: pos as u64,
                        len: n as u32,
                    };
                    index.add(&r.event, loc);
                    head = r.hash;
                    next_seq += 1;
                    report.records += 1;
                    pos += n;
                    continue;
                }
                Ok((r, _)) => format!(
                    "record {} does not follow record {} in the chain",
                    r.seq,
                    next_seq - 1
                ),
                Err(e) => e.to_string(),
            };
            let torn = matches!(decoded, Err(DecodeError::Incomplete { .. }));
            if last && (torn || next_seq > signed) {
                // Past the synced part, at the end: a write the crash cut short. Keep it aside.
                let cut = &bytes[pos..];
                let aside = format!("torn-{next_seq:020}-{}.bin", now_ns());
                storage.write_new(&aside, cut).map_err(io)?;
                storage.truncate(name, pos as u64).map_err(io)?;
                tracing::warn!(segment = %name, offset = pos, bytes = cut.len(), kept = %aside, reason = %damage, "audit log: torn tail cut");
                report.torn_tail = Some((cut.len() as u64, aside));
                break;
            }
            let what = format!("{name} at byte {pos} (after record {}): {damage}", next_seq - 1);
            if !options.allow_corruption {
                return Err(AuditError::Corrupt(what));
            }
            tracing::error!(damage = %what, "audit log: damaged record skipped");
            report.skipped.push(what);
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
        if last {
            last_segment_len = bytes.len().min(pos) as u64;
        }
    }
    report.segments = index.segments.len();
    Ok(Recovered {
        index,
        next_seq,
        head,
        last_segment_len,
        report,
    })
}
