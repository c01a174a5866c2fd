//! Group commit and verify speed, on the real disk.
//!
//! `cargo bench -p lattice-audit --bench append` prints, for 1, 16 and 64 concurrent writers
//! with `sync = "always"`: acknowledged appends per second, the p50 / p99 time to an
//! acknowledgement, and how many appends shared each write (its seal and, with `always`, its `fdatasync`); then the same for
//! `sync = "none"`; then how fast `verify` walks a 300,000-record log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use lattice_audit::log::{AuditLog, Options, SyncMode};
use lattice_audit::record::Event;
use lattice_audit::storage::DiskStorage;
use lattice_audit::verify::verify;

/// A decision record's typical size (~400 bytes of JSON).
fn event(i: u64) -> Event {
    Event {
        kind: "call.decision".into(),
        session: format!("s-{}", i % 97),
        principal: "3f9a1c2b7d40".into(),
        payload: format!(
            r#"{{"request_id":"0b8f5e2c-6f0a-4d7e-9c1b-{i:012}","surface":"chat.completions","model":"gpt-4o-mini","upstream":"openai","stream":false,"principal":{{"id":"3f9a1c2b7d40","kind":"api_key","user":"ana","team":"research"}},"allow":true,"policy_sha256":"fbed7507ce63497d1b1e8b10da1fd62cb72e7a3cd9112a5bd2260776e8350b18","request_sha256":"9c56cc51b374c3ba189210d5b6d4bf57790d351c96c47c02190ecf1e430635ab"}}"#
        )
        .into_bytes(),
    }
}

fn run(sync: SyncMode, writers: usize, duration: Duration) {
    let dir = tempfile::tempdir_in(
        std::env::var_os("AUDIT_BENCH_DIR").unwrap_or_else(|| std::env::temp_dir().into()),
    )
    .unwrap();
    let log = Arc::new(
        AuditLog::open(
            Arc::new(DiskStorage::open(dir.path()).unwrap()),
            Options {
                sync,
                ..Options::default()
            },
        )
        .unwrap(),
    );
    let start = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|w| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                let mut i = w as u64 * 1_000_000_000;
                while start.elapsed() < duration {
                    let t = Instant::now();
                    log.append_blocking(event(i)).unwrap();
                    lat.push(t.elapsed());
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<Duration> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e6;
    let key = *log.verifying_key();
    log.close();
    // Every write ends with one seal.
    let writes = verify(&DiskStorage::open(dir.path()).unwrap(), &key)
        .unwrap()
        .seals;
    println!(
        "sync={sync:?} writers={writers:>2}: {:>8.0} appends/s, ack p50 {:>7.1} us, p99 {:>8.1} us, {:.1} appends per write ({} appends)",
        lat.len() as f64 / secs,
        q(0.50),
        q(0.99),
        if writes > 0 {
            lat.len() as f64 / writes as f64
        } else {
            f64::NAN
        },
        lat.len()
    );
}

fn main() {
    let duration = Duration::from_secs(3);
    for sync in [SyncMode::Always, SyncMode::None] {
        for writers in [1, 16, 64] {
            run(sync, writers, duration);
        }
    }

    // Verify speed: a 300,000-record log (synced once at the end).
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(
        Arc::new(DiskStorage::open(dir.path()).unwrap()),
        Options {
            sync: SyncMode::None,
            ..Options::default()
        },
    )
    .unwrap();
    let n = 300_000u64;
    for i in 0..n {
        drop(log.append(event(i)));
    }
    log.append_blocking(event(n)).unwrap();
    let key = *log.verifying_key();
    log.close();
    let storage = DiskStorage::open(dir.path()).unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        let s = verify(&storage, &key).unwrap();
        let secs = t.elapsed().as_secs_f64();
        assert!(s.finding.is_none());
        println!(
            "verify: {} records ({} segments) in {:.3} s = {:.0} records/s",
            s.records,
            s.segments,
            secs,
            s.records as f64 / secs
        );
    }
}
