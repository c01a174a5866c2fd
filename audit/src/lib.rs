//! `lattice-audit`: the durable, append-only, SHA-256-chained event log.
//!
//! - [`record`]: one record's fields, its frame and hash (the format: `audit/FORMAT.md`).
//! - [`storage`]: file access behind a trait (the disk; a fault-injecting one in tests).
//! - [`log`]: recovery on open, group commit on one writer thread, a seal in every synced write, the
//!   per-session index.
//! - [`seal`]: seals: Ed25519 signatures of the chain head, as records of the chain; the signing key.
//! - [`verify`]: the offline check behind `lattice audit verify`.
//!
//! This crate knows nothing of HTTP or gates: the gateway's audit gate decides what an event
//! says; the log makes it durable, ordered and tamper-evident.

pub mod log;
pub mod record;
mod recover;
pub mod seal;
pub mod storage;
pub mod verify;

pub use log::{AuditError, AuditLog, Options, Receipt, SyncMode};
pub use record::{Event, Record};
pub use storage::{DiskStorage, Storage};
