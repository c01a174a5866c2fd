//! The live log: recovery on open, one writer thread doing group commit, seals,
//! and the session index.
//!
//! Appenders hand their event to the writer thread and wait for its acknowledgement. The
//! writer takes every event that is waiting, chains and frames them into one buffer, writes it
//! with one `write`, and (in `sync = "always"`) makes it durable with one `fdatasync` before it
//! acknowledges any of them: concurrent appends share one sync. A synced write ends with a seal,
//! a record carrying an Ed25519 signature of the head (see [`crate::seal`]), so a record is
//! covered by a signature by the time it is durable: one signature per sync, not per write.
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

use crate::record::{self, Event, Record};
use crate::seal::{self, Seal};
use crate::storage::{AppendFile, Storage};

/// The first bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"LTAUDIT2";
/// The first bytes of a segment of the first format (signatures in a side file), which this
/// release does not read.
pub const MAGIC_V1: &[u8; 8] = b"LTAUDIT1";

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
    /// Open even when the sealed part of the log is damaged or not signed by this log's key:
    /// the damage is skipped and reported, and the gateway's seals from then on vouch only for
    /// the records it writes itself (a new epoch, see [`crate::seal`]). Without it such a log
    /// refuses to open.
    pub allow_corruption: bool,
    /// A signed head kept outside the log (the witness's): the log must still hold it and
    /// extend it, or it was rolled back (or its key replaced), and refuses to open.
    pub extends: Option<Seal>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            sync: SyncMode::Always,
            sync_interval: Duration::from_millis(100),
            segment_bytes: 64 << 20,
            allow_corruption: false,
            extends: None,
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
    #[error("the audit log cannot be read by this release: {0}")]
    Unsupported(String),
}

pub(crate) fn io(e: std::io::Error) -> AuditError {
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
    /// Bytes cut from the tail (a write a crash cut short: whole records past the last seal,
    /// and a torn frame), kept aside in this file.
    pub torn_tail: Option<(u64, String)>,
    /// How many whole records that cut held (none of them was ever acknowledged).
    pub unsealed_records: u64,
    /// Damage skipped (only with `allow_corruption`).
    pub skipped: Vec<String>,
    /// The first record the gateway's seals vouch for from now on: 1, or where a new epoch
    /// starts after damage was skipped.
    pub base: u64,
}

/// The sequence number in a segment's file name.
pub fn segment_first_seq(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
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

pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Where a record is, for reading it back.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Loc {
    pub(crate) seq: u64,
    pub(crate) segment: u32,
    pub(crate) offset: u64,
    pub(crate) len: u32,
}

#[derive(Default)]
struct Session {
    /// The principals that wrote into the session, the first (its owner: who may read it all)
    /// first; each event names its writer by position here.
    writers: Vec<String>,
    events: Vec<(Loc, u16)>,
    /// The latest compaction boundary: where a client's context was last summarised.
    compaction: Option<u64>,
}

/// The writer index of events by a principal past the first 65,535 of a session.
const OTHER_WRITER: u16 = u16::MAX;

#[derive(Default)]
pub(crate) struct Index {
    pub(crate) segments: Vec<String>,
    sessions: HashMap<String, Session>,
}

/// The event kind that marks where a session's context was summarised. Nothing before it is
/// deleted: the boundary only tells a client where to resume reading.
pub const COMPACTION: &str = "session.compaction";

/// The event kinds of a model call's two records (the gateway writes them; the spend reports and
/// the budget ledger's rebuild read them back). The log itself treats them as opaque.
pub const CALL_DECISION: &str = "call.decision";
pub const CALL_END: &str = "call.end";

/// The event kind the log writes on open when recovery set a tail aside or skipped damage.
pub const RECOVERY: &str = "audit.recovery";

impl Index {
    pub(crate) fn add(&mut self, event: &Event, loc: Loc) {
        if event.session.is_empty() {
            return;
        }
        let s = self.sessions.entry(event.session.clone()).or_default();
        let who = match s.writers.iter().position(|w| *w == event.principal) {
            Some(i) => i as u16,
            None if s.writers.len() < OTHER_WRITER as usize => {
                s.writers.push(event.principal.clone());
                (s.writers.len() - 1) as u16
            }
            None => OTHER_WRITER,
        };
        if event.kind == COMPACTION {
            s.compaction = Some(loc.seq);
        }
        s.events.push((loc, who));
    }
}

struct Shared {
    storage: Arc<dyn Storage>,
    index: RwLock<Index>,
    failed: Mutex<Option<String>>,
    poisoned: AtomicBool,
    /// The latest durable seal: what `lattice audit head` and the witness read.
    head: tokio::sync::watch::Sender<Option<Seal>>,
}

struct Request {
    event: Event,
    /// `None`: nobody waits (a lazy append).
    ack: Option<tokio::sync::oneshot::Sender<Result<Receipt, AuditError>>>,
    /// Must be synced before it is acknowledged (in `sync = "always"`). A lazy record is
    /// written (and sealed) at once and synced with the next durable one, or within
    /// `sync_interval`.
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
        let key = seal::load_or_create_key(&*storage).map_err(io)?;
        let recovered = crate::recover::recover(&*storage, &key.verifying_key(), &options)?;
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
        let (head, _) = tokio::sync::watch::channel(recovered.seal);
        let shared = Arc::new(Shared {
            storage: storage.clone(),
            index: RwLock::new(index),
            failed: Mutex::new(None),
            poisoned: AtomicBool::new(false),
            head,
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
            base: recovered.report.base,
            key,
            unsynced: None,
            unsealed: 0,
            dirty: false,
            last_sync: Instant::now(),
            buf: Vec::with_capacity(64 << 10),
        };
        // What recovery set aside or skipped goes into the chain itself, sealed, as the writer's
        // first write: a tail moved out of the log is visible in it, not only in a side file.
        let r = &recovered.report;
        let first = (r.torn_tail.is_some() || !r.skipped.is_empty()).then(|| Event {
            kind: RECOVERY.into(),
            session: String::new(),
            principal: String::new(),
            payload: serde_json::json!({
                "set_aside": r.torn_tail.as_ref().map(|(bytes, file)| serde_json::json!({"file": file, "bytes": bytes})),
                "unsealed_records": r.unsealed_records,
                "skipped": r.skipped,
                "seals_vouch_from": r.base,
            })
            .to_string()
            .into_bytes(),
        });
        let handle = std::thread::Builder::new()
            .name("lattice-audit-writer".into())
            .spawn(move || {
                if let Some(event) = first {
                    writer.commit(&mut vec![Request {
                        event,
                        ack: None,
                        durable: true,
                    }]);
                }
                writer.run(rx)
            })
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

    /// The latest seal that is durable (as `sync` defines it); `None` for an empty log.
    pub fn head(&self) -> Option<Seal> {
        *self.shared.head.borrow()
    }

    /// Follows [`AuditLog::head`]: changes whenever a newer seal is durable. Readers that fall
    /// behind see only the latest (each head extends the one before).
    pub fn heads(&self) -> tokio::sync::watch::Receiver<Option<Seal>> {
        self.shared.head.subscribe()
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

    /// Appends `event` without waiting and without asking for its own sync: it is written (and
    /// sealed) at once and becomes durable with the next durable append, or within
    /// `sync_interval`. For records whose loss in a crash costs detail, not truth (a call's end,
    /// after its decision).
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
        if event.kind.starts_with(seal::RESERVED_PREFIX) {
            return Err(AuditError::Invalid(format!(
                "event kind {:?}: kinds starting with {:?} are written by the log itself",
                event.kind,
                seal::RESERVED_PREFIX
            )));
        }
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
            .map(|s| (s.writers.first().cloned().unwrap_or_default(), s.compaction))
    }

    /// Whether `principal` owns `session`; `None` when the session does not exist. (The call
    /// path's question: unlike [`AuditLog::session_info`] it copies nothing.)
    pub fn session_owned_by(&self, session: &str, principal: &str) -> Option<bool> {
        let index = self.shared.index.read().ok()?;
        let s = index.sessions.get(session)?;
        Some(s.writers.first().is_some_and(|w| w == principal))
    }

    /// Whether `principal` wrote into `session` (as its owner or by delegation).
    pub fn session_writer(&self, session: &str, principal: &str) -> bool {
        self.shared
            .index
            .read()
            .ok()
            .and_then(|i| {
                i.sessions
                    .get(session)
                    .map(|s| s.writers.iter().any(|w| w == principal))
            })
            .unwrap_or(false)
    }

    /// Up to `limit` events of `session` with a sequence number above `after`, in order.
    pub fn session_events(&self, session: &str, after: u64, limit: usize) -> Result<Vec<Record>, AuditError> {
        self.session_events_by(session, after, limit, None)
    }

    /// [`AuditLog::session_events`], only those `by` wrote when it is given.
    pub fn session_events_by(
        &self,
        session: &str,
        after: u64,
        limit: usize,
        by: Option<&str>,
    ) -> Result<Vec<Record>, AuditError> {
        let (locs, names): (Vec<Loc>, Vec<String>) = {
            let index = self
                .shared
                .index
                .read()
                .map_err(|_| AuditError::Unavailable("index lock poisoned".into()))?;
            let Some(s) = index.sessions.get(session) else {
                return Ok(Vec::new());
            };
            let from = s.events.partition_point(|(l, _)| l.seq <= after);
            let who = match by {
                None => None,
                Some(p) => match s.writers.iter().position(|w| w == p) {
                    Some(i) => Some(i as u16),
                    None => return Ok(Vec::new()),
                },
            };
            let locs: Vec<Loc> = s.events[from..]
                .iter()
                .filter(|(_, w)| who.is_none_or(|who| *w == who))
                .take(limit)
                .map(|(l, _)| *l)
                .collect();
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
    /// The first record this writer's seals vouch for.
    base: u64,
    key: SigningKey,
    /// The last seal written but not yet synced (or, without syncs, not yet published).
    unsynced: Option<Seal>,
    /// Records written since the last seal.
    unsealed: usize,
    /// Bytes written since the last sync.
    dirty: bool,
    /// The last time everything written was sealed and synced.
    last_sync: Instant,
    buf: Vec<u8>,
}

/// Most events taken into one group commit.
const MAX_BATCH: usize = 4096;
/// A write seals what is unsealed once this many records are (besides every sync, and the
/// interval timer): what a crash can leave past the last seal is below `SEAL_EVERY + MAX_BATCH`.
const SEAL_EVERY: usize = 4096;
/// More whole records than this past the last seal are not what a crash leaves.
pub const MAX_UNSEALED: usize = SEAL_EVERY + MAX_BATCH;

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Request>) {
        let mut batch = Vec::with_capacity(256);
        loop {
            let first = if self.unsealed > 0 || (self.dirty && self.options.sync != SyncMode::None) {
                // Wake up to seal (and sync) what is written.
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
        // Closing: seal everything written and make it durable.
        if !self.shared.poisoned.load(Ordering::Acquire)
            && let Err(e) = self.flush()
        {
            self.poison(e);
        }
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
            // The interval timer.
            if let Err(e) = self.flush() {
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
        let (mut seq, mut head) = (self.next_seq, self.head);
        for r in batch.iter() {
            let start = self.buf.len();
            head = record::encode(&mut self.buf, seq, now_ns(), &r.event, &head);
            placed.push((seq, head, start, self.buf.len() - start));
            seq += 1;
        }
        // A write that is synced ends with a seal of everything before it, in the same write:
        // nothing is durable without its signature. Lazy records (and, in batch mode, records
        // between syncs) ride the next seal: one signature per sync, not per write.
        let sync_now = match self.options.sync {
            SyncMode::Always => batch.iter().any(|r| r.durable),
            SyncMode::Batch => self.last_sync.elapsed() >= self.options.sync_interval,
            SyncMode::None => false,
        };
        let seal_now = sync_now || self.unsealed + batch.len() >= SEAL_EVERY;
        let sealed = seal_now.then(|| {
            let time = now_ns();
            let s = Seal::sign(&self.key, self.base, seq, time, head);
            head = record::encode(&mut self.buf, seq, time, &s.event(), &head);
            seq += 1;
            s
        });
        let written = self.file.append(&self.buf).map_err(|e| format!("write: {e}"));
        if let Err(e) = written {
            // What reached the disk is unknown: poison, and acknowledge nothing.
            self.poison(e.clone());
            for mut r in batch.drain(..) {
                r.answer(Err(AuditError::Unavailable(e.clone())));
            }
            return;
        }
        (self.next_seq, self.head) = (seq, head);
        self.dirty = true;
        match sealed {
            Some(s) => {
                self.unsealed = 0;
                self.unsynced = Some(s);
            }
            None => self.unsealed += batch.len(),
        }
        let durable = if sync_now {
            self.sync()
        } else {
            if self.options.sync == SyncMode::None {
                self.published();
            }
            Ok(())
        };
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

    /// Makes what is written durable, and publishes its seal.
    fn sync(&mut self) -> Result<(), String> {
        if self.dirty {
            self.file.sync().map_err(|e| format!("fdatasync: {e}"))?;
            self.dirty = false;
        }
        self.last_sync = Instant::now();
        self.published();
        Ok(())
    }

    /// Seals what is unsealed (a write of the seal alone) and syncs (in `none`: publishes).
    fn flush(&mut self) -> Result<(), String> {
        if self.unsealed > 0 {
            self.buf.clear();
            let time = now_ns();
            let s = Seal::sign(&self.key, self.base, self.next_seq, time, self.head);
            let head = record::encode(&mut self.buf, self.next_seq, time, &s.event(), &self.head);
            self.file.append(&self.buf).map_err(|e| format!("write: {e}"))?;
            (self.next_seq, self.head) = (self.next_seq + 1, head);
            self.segment_len += self.buf.len() as u64;
            self.unsealed = 0;
            self.dirty = true;
            self.unsynced = Some(s);
        }
        match self.options.sync {
            SyncMode::None => {
                self.last_sync = Instant::now();
                self.published();
                Ok(())
            }
            _ => self.sync(),
        }
    }

    fn published(&mut self) {
        if let Some(s) = self.unsynced.take() {
            self.shared.head.send_replace(Some(s));
        }
    }

    fn rotate(&mut self) -> Result<(), String> {
        // A segment ends with a seal, durable before the next segment begins.
        self.flush()?;
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
