//! What the PII gate costs: the scanner's throughput, and the request gate's latency on a 4 KB
//! and a 64 KB prompt, clean (the body passes untouched) and with personal data in it (parsed,
//! rewritten, serialised again).
//!
//! The response side too: a streamed answer (OpenAI SSE, one event per word) through the
//! response filter, clean and with personal data, and the same answer as JSON.
//!
//! `cargo bench -p lattice-gateway --bench pii` prints p50 / p99 of timed runs, then criterion's
//! estimates (with MB/s).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::sync::Arc;

use lattice_gateway::content::filter::{Filter, Rules};
use lattice_gateway::content::{Action, Actions, Pii, PiiConfig};
use lattice_providers::Dialect;

const PROSE: &str = "The quarterly report covers revenue, churn and the hiring plan for the platform team. \
Version 2.14.1 shipped on 2026-11-28 at 10:35:00 with order ORD-2024-000123 and build 550e8400-e29b-41d4-a716-446655440000. \
Latency improved by 12.5% while the error budget stayed at 99.9% for the third month in a row. ";

const PERSONAL: &str = "Contact ana.lopez@example.com or +44 20 7946 0958; card 4111 1111 1111 1111; IBAN DE89 3704 0044 0532 0130 00. ";

fn text(len: usize, with_pii: bool) -> String {
    let mut s = String::new();
    while s.len() < len {
        s.push_str(PROSE);
        if with_pii && s.len() % 2048 < PROSE.len() {
            s.push_str(PERSONAL);
        }
    }
    s.truncate(len);
    s
}

fn body(len: usize, with_pii: bool) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": text(len, with_pii)}
        ]
    }))
    .unwrap()
}

/// An OpenAI stream of `text`, one event per word, as the upstream sends it.
fn stream(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, w) in text.split_inclusive(' ').enumerate() {
        let delta = if i == 0 {
            serde_json::json!({"role": "assistant", "content": w})
        } else {
            serde_json::json!({"content": w})
        };
        let chunk = serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": delta, "finish_reason": null}]});
        out.extend_from_slice(format!("data: {chunk}\n\n").as_bytes());
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    out
}

fn answer(text: &str) -> Vec<u8> {
    serde_json::to_vec(
        &serde_json::json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1,
        "model": "gpt-4o-mini", "choices": [{"index": 0, "finish_reason": "stop",
        "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 700, "total_tokens": 710}}),
    )
    .unwrap()
}

/// A whole stream through a new filter (one call's), in 16 KB reads.
fn filter_stream(pii: &Arc<Pii>, actions: &Arc<Actions>, sse: &[u8]) -> usize {
    let mut f = Filter::new(
        Dialect::OpenAi,
        Rules {
            pii: Some((pii.clone(), actions.clone())),
            tools: None,
        },
    );
    let mut n = 0;
    for read in sse.chunks(16 * 1024) {
        n += f.feed(read).len();
    }
    n + f.finish().len()
}

fn report(name: &str, mut t: Vec<Duration>) {
    t.sort();
    let q = |p: f64| t[((t.len() as f64 * p) as usize).min(t.len() - 1)];
    println!(
        "{name}: p50 {:.1} us, p99 {:.1} us (n={})",
        q(0.50).as_secs_f64() * 1e6,
        q(0.99).as_secs_f64() * 1e6,
        t.len()
    );
}

fn pii(c: &mut Criterion) {
    let pii = Pii::new(PiiConfig::default()).unwrap();
    let actions = Actions {
        default: Some(Action::Redact),
        kinds: Default::default(),
    };
    for (name, len, with) in [
        ("4 KB prompt, clean", 4096, false),
        ("4 KB prompt, with PII", 4096, true),
        ("64 KB prompt, clean", 65536, false),
        ("64 KB prompt, with PII", 65536, true),
    ] {
        let b = body(len, with);
        let s = pii.request(&b, &actions);
        assert_eq!(s.body.is_some(), with, "{name}");
        let runs = if len > 10_000 { 500 } else { 5_000 };
        let t = (0..runs)
            .map(|_| {
                let s = Instant::now();
                std::hint::black_box(pii.request(&b, &actions));
                s.elapsed()
            })
            .collect();
        report(&format!("request gate, {name}"), t);
    }
    let shared = Arc::new(Pii::new(PiiConfig::default()).unwrap());
    let answer_actions = Arc::new(actions.clone());
    for (name, with) in [("4 KB answer, clean", false), ("4 KB answer, with PII", true)] {
        let t = text(4096, with);
        let sse = stream(&t);
        let json = answer(&t);
        let events = sse
            .split(|b| *b == b'\n')
            .filter(|l| l.starts_with(b"data:"))
            .count();
        let stream_t = (0..1_000)
            .map(|_| {
                let s = Instant::now();
                std::hint::black_box(filter_stream(&shared, &answer_actions, &sse));
                s.elapsed()
            })
            .collect();
        report(
            &format!(
                "response filter, stream of {events} events ({} KB), {name}",
                sse.len() / 1024
            ),
            stream_t,
        );
        // A call's whole response-side cost: the filter set up, the answer checked.
        let json_t = (0..2_000)
            .map(|_| {
                let s = Instant::now();
                let mut f = Filter::new(
                    Dialect::OpenAi,
                    Rules {
                        pii: Some((shared.clone(), answer_actions.clone())),
                        tools: None,
                    },
                );
                std::hint::black_box(f.json(&json).unwrap());
                s.elapsed()
            })
            .collect();
        report(&format!("response filter, JSON, {name}"), json_t);
    }
    let mut g = c.benchmark_group("pii");
    // The same prose without its numbers: what the automaton costs when nothing is a candidate.
    let words: String = PROSE
        .chars()
        .filter(|c| !c.is_ascii_digit())
        .collect::<String>()
        .repeat(400);
    for (name, t) in [
        ("scan 64 KB, clean", text(65536, false)),
        ("scan 64 KB, with PII", text(65536, true)),
        ("scan 64 KB, words only", words[..65536].to_string()),
    ] {
        g.throughput(Throughput::Bytes(t.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut n = 0;
                pii.scanner().scan(&t, |_| n += 1);
                n
            })
        });
    }
    for (name, len, with) in [
        ("request gate 4 KB, clean", 4096, false),
        ("request gate 64 KB, with PII", 65536, true),
    ] {
        let b = body(len, with);
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_function(name, |bch| bch.iter(|| pii.request(&b, &actions)));
    }
    for (name, with) in [
        ("response stream 4 KB answer, clean", false),
        ("response stream 4 KB answer, with PII", true),
    ] {
        let sse = stream(&text(4096, with));
        g.throughput(Throughput::Bytes(sse.len() as u64));
        g.bench_function(name, |b| b.iter(|| filter_stream(&shared, &answer_actions, &sse)));
    }
    g.finish();
}

criterion_group!(benches, pii);
criterion_main!(benches);
