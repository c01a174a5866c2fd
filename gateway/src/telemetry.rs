//! Structured logs (`tracing`), text or JSON, on stderr through one non-blocking writer so a slow
//! terminal never stalls the request path. `LATTICE_LOG` overrides the configured level/filter.
//!
//! The per-request access record is the hottest log line, so it has its own formatter: one
//! pass into a reused buffer, no per-field visitor (tracing-subscriber's cost ~18k instructions
//! a line here, this one ~2k). Lines are batched in memory and handed to the writer every
//! [`FLUSH_EVERY`] or once [`FLUSH_BYTES`] are pending (Envoy's `access_log_flush_interval`):
//! waking the writer thread for every line cost ~80 us of p50 at c=1 on 2 cores. It honours the
//! same filter (`lattice::access` at INFO) and shares the writer, so lines never interleave
//! mid-line; [`flush_access`] runs at shutdown. Without [`init`] (a library user with their own
//! subscriber) the record is a regular `tracing` event.

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{LogConfig, LogFormat};

/// How long an access line may wait in memory before it is written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Pending bytes that trigger an immediate write.
pub const FLUSH_BYTES: usize = 64 * 1024;

struct AccessSink {
    writer: NonBlocking,
    json: bool,
    /// Lines not yet written. Held only to append or swap a buffer (no I/O, no await).
    pending: Mutex<Vec<u8>>,
}

impl AccessSink {
    fn push(&self, line: &[u8]) {
        let full = {
            let Ok(mut p) = self.pending.lock() else { return };
            p.extend_from_slice(line);
            (p.len() >= FLUSH_BYTES).then(|| std::mem::take(&mut *p))
        };
        if let Some(batch) = full {
            let _ = self.writer.make_writer().write_all(&batch);
        }
    }

    fn flush(&self) {
        let batch = match self.pending.lock() {
            Ok(mut p) if !p.is_empty() => std::mem::take(&mut *p),
            _ => return,
        };
        let _ = self.writer.make_writer().write_all(&batch);
    }
}

/// Writes the access lines still in memory (call before exit).
pub fn flush_access() {
    if let Some(sink) = ACCESS.get() {
        sink.flush();
    }
}

static ACCESS: OnceLock<AccessSink> = OnceLock::new();

/// Installs the global subscriber; keep the guard alive until exit so buffered lines are flushed.
pub fn init(cfg: &LogConfig) -> WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let filter = EnvFilter::try_from_env("LATTICE_LOG").unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let builder = tracing_subscriber::fmt()
        .with_writer(writer.clone())
        .with_env_filter(filter);
    let installed = match cfg.format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    if installed.is_ok() {
        let sink = AccessSink {
            writer,
            json: cfg.format == LogFormat::Json,
            pending: Mutex::new(Vec::new()),
        };
        if ACCESS.set(sink).is_ok() {
            let _ = std::thread::Builder::new()
                .name("lattice-access-log".into())
                .spawn(|| {
                    loop {
                        std::thread::sleep(FLUSH_EVERY);
                        flush_access();
                    }
                });
        }
    }
    guard
}

/// One call's access record.
#[derive(Serialize)]
pub struct AccessRecord<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub model: &'a str,
    pub upstream: &'a str,
    pub reason: &'a str,
    /// The caller's principal id (a key id, a SPIFFE id or subject, a token's `sub`); never a
    /// credential.
    pub principal: &'a str,
    /// The deciding policy bundle (the first 12 hex digits of its SHA-256).
    pub policy: &'a str,
    #[serde(serialize_with = "micros_as_ms")]
    pub latency_ms: u64,
    pub bytes: u64,
    pub outcome: &'a str,
}

fn micros_as_ms<S: serde::Serializer>(us: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(*us as f64 / 1000.0)
}

#[derive(Serialize)]
struct JsonLine<'a> {
    timestamp: Rfc3339,
    level: &'static str,
    target: &'static str,
    #[serde(flatten)]
    record: &'a AccessRecord<'a>,
}

/// `humantime`'s timestamp is `Display` only.
struct Rfc3339(humantime::Rfc3339Timestamp);

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

thread_local! {
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(256));
}

/// Writes the access record (a no-op when `lattice::access` is filtered out).
pub fn access(r: &AccessRecord<'_>) {
    if !tracing::enabled!(target: "lattice::access", tracing::Level::INFO) {
        return;
    }
    let Some(sink) = ACCESS.get() else {
        tracing::info!(
            target: "lattice::access",
            request_id = r.request_id, method = r.method, path = r.path, status = r.status,
            model = r.model, upstream = r.upstream, reason = r.reason, principal = r.principal,
            policy = r.policy, latency_us = r.latency_ms,
            bytes = r.bytes, outcome = r.outcome,
        );
        return;
    };
    let now = humantime::format_rfc3339_micros(SystemTime::now());
    LINE.with_borrow_mut(|buf| {
        buf.clear();
        if sink.json {
            let line = JsonLine {
                timestamp: Rfc3339(now),
                level: "INFO",
                target: "lattice::access",
                record: r,
            };
            if serde_json::to_writer(&mut *buf, &line).is_err() {
                return;
            }
        } else {
            let _ = write!(buf, "{now}  INFO lattice::access: request_id=");
            value(buf, r.request_id);
            buf.extend_from_slice(b" method=");
            value(buf, r.method);
            buf.extend_from_slice(b" path=");
            value(buf, r.path);
            let _ = write!(buf, " status={} model=", r.status);
            value(buf, r.model);
            buf.extend_from_slice(b" upstream=");
            value(buf, r.upstream);
            buf.extend_from_slice(b" reason=");
            value(buf, r.reason);
            buf.extend_from_slice(b" principal=");
            value(buf, r.principal);
            buf.extend_from_slice(b" policy=");
            value(buf, r.policy);
            let _ = write!(
                buf,
                " latency_ms={}.{:03} bytes={} outcome={}",
                r.latency_ms / 1000,
                r.latency_ms % 1000,
                r.bytes,
                r.outcome
            );
        }
        buf.push(b'\n');
        sink.push(buf);
    });
}

/// A value as is when it is plainly safe, else quoted and escaped (a model name comes from the
/// client and must not forge log lines).
fn value(buf: &mut Vec<u8>, s: &str) {
    let plain = !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/' | b':' | b'@' | b'+')
        });
    if plain {
        buf.extend_from_slice(s.as_bytes());
    } else {
        let _ = write!(buf, "{s:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_cannot_forge_lines() {
        let mut b = Vec::new();
        value(&mut b, "gpt-4o-mini");
        b.push(b' ');
        value(&mut b, "evil\nstatus=200 x=\"y\"");
        assert_eq!(
            String::from_utf8(b).unwrap(),
            r#"gpt-4o-mini "evil\nstatus=200 x=\"y\"""#
        );
    }
}
