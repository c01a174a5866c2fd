//! `lattice-audit`: the durable, append-only, SHA-256-chained event log (segments, group commit,
//! recovery, verify, signed checkpoints, the per-session index).
//!
//! Empty until the audit issue lands; until then each call's record is the structured access
//! log line the gateway writes (`lattice::access`).
