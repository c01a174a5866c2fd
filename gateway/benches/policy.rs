//! Decision latency of the shipped policy bundle (`policies/`), per evaluation, warm engine.
//!
//! `cargo bench -p lattice-gateway --bench policy` prints p50 / p99 / max over 20,000 timed
//! decisions of a realistic input (allowed and denied), then criterion's own estimate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use lattice_gateway::policy::Bundle;
use regorus::Value;

fn input(team: &str, model: &str, tools: &[&str]) -> Value {
    let doc = serde_json::json!({
        "version": 1,
        "principal": {"id": "key_3f9a", "kind": "api_key", "user": "ana", "team": team,
                      "roles": ["developer"], "attributes": {"cost_center": "r-17"}},
        "request": {"surface": "chat.completions", "method": "POST", "path": "/v1/chat/completions",
                    "model": model, "provider": "openai", "upstream": "openai", "stream": true,
                    "max_tokens": 512, "tools": tools, "session": "s-42"},
        "budget": {},
        "time": {"unix": 1795530441u64, "rfc3339": "2026-11-24T14:27:21Z", "weekday": "Tuesday", "hour": 14}
    });
    Value::from_json_str(&doc.to_string()).unwrap()
}

fn bundle() -> Bundle {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    Bundle::load(&dir, Duration::from_millis(100)).unwrap()
}

fn percentiles(b: &Bundle, name: &str, input: &Value) {
    for _ in 0..2_000 {
        b.decide(input.clone()).unwrap();
    }
    let mut t: Vec<Duration> = (0..20_000)
        .map(|_| {
            let s = Instant::now();
            let d = b.decide(input.clone()).unwrap();
            let e = s.elapsed();
            std::hint::black_box(d);
            e
        })
        .collect();
    t.sort();
    let q = |p: f64| t[((t.len() as f64 * p) as usize).min(t.len() - 1)];
    println!(
        "policy decision {name}: p50 {:.1} us, p99 {:.1} us, max {:.1} us (n={})",
        q(0.50).as_secs_f64() * 1e6,
        q(0.99).as_secs_f64() * 1e6,
        t[t.len() - 1].as_secs_f64() * 1e6,
        t.len()
    );
}

fn decisions(c: &mut Criterion) {
    let b = bundle();
    let allowed = input("research", "gpt-4o", &["web_search"]);
    let denied = input("support", "claude-3-5-sonnet", &["shell"]);
    assert!(b.decide(allowed.clone()).unwrap().allow);
    assert!(!b.decide(denied.clone()).unwrap().allow);
    percentiles(&b, "allowed", &allowed);
    percentiles(&b, "denied", &denied);
    c.bench_function("policy decision (allowed)", |x| {
        x.iter(|| b.decide(allowed.clone()).unwrap())
    });
    c.bench_function("policy decision (denied)", |x| {
        x.iter(|| b.decide(denied.clone()).unwrap())
    });
}

criterion_group!(benches, decisions);
criterion_main!(benches);
