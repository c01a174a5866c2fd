//! What the budget and rate-limit gates cost per call, and how fast the meter reads streams.
//!
//! - `rate check`: one RPM and one TPM limiter (governor, keyed by the caller).
//! - `reserve + settle`: pricing the worst case, reserving it on two budgets (team, team x
//!   model) and settling it with the real usage: the ledger's whole per-call work.
//! - `meter`: an OpenAI stream of 64 chunks and an Anthropic one, fed as one frame, with and
//!   without taking out the usage chunk; throughput in MB/s.
//!
//! `cargo bench -p lattice-gateway --bench budget` prints p50 / p99 over timed calls, then
//! criterion's estimates.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lattice_gateway::Config;
use lattice_gateway::budget::usage::{Basis, Meter, Usage};
use lattice_gateway::budget::{Ask, Budgets, ledger::Embedded};
use lattice_gateway::identity::Principal;
use lattice_providers::Dialect;

fn report(name: &str, mut t: Vec<Duration>) {
    t.sort();
    let q = |p: f64| t[((t.len() as f64 * p) as usize).min(t.len() - 1)];
    println!(
        "{name}: p50 {:.3} us, p99 {:.3} us (n={})",
        q(0.50).as_secs_f64() * 1e6,
        q(0.99).as_secs_f64() * 1e6,
        t.len()
    );
}

fn timed(n: usize, mut f: impl FnMut()) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect()
}

const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
[budgets]
[[budgets.limit]]
name = "team-monthly"
scope = "team"
window = "monthly"
usd = 1000000.0
[[budgets.limit]]
name = "team-model-daily"
scope = "team_model"
window = "daily"
tokens = 1000000000000
[[rate_limits]]
scope = "key"
rpm = 1000000000
tpm = 1000000000
"#;

fn openai_stream(strip: bool) -> Bytes {
    let usage = if strip { "" } else { ",\"usage\":null" };
    let mut s = String::new();
    for i in 0..64 {
        s.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"word{i} \"}},\"finish_reason\":null}}]{usage}}}\n\n"
        ));
    }
    s.push_str("data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":64,\"total_tokens\":76}}\n\ndata: [DONE]\n\n");
    Bytes::from(s)
}

fn anthropic_stream() -> Bytes {
    let mut s = String::from(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n",
    );
    for i in 0..64 {
        s.push_str(&format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"word{i} \"}}}}\n\n"));
    }
    s.push_str("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":64}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    Bytes::from(s)
}

fn budget(c: &mut Criterion) {
    let config = Config::from_str_with_env(std::path::Path::new("bench.toml"), CONFIG, &|_| None).unwrap();
    let budgets = Budgets::new(config.budgets, Arc::new(Embedded::new()))
        .unwrap()
        .unwrap();
    let who = Principal {
        id: "key_0123456789ab".into(),
        kind: "api_key",
        user: "ana".into(),
        team: "research".into(),
        roles: vec![],
        attributes: Default::default(),
    };
    let ask = Ask {
        principal: Some(&who),
        upstream: "openai",
        model: "gpt-4o-mini",
        body_len: 180,
        max_tokens: Some(256),
        choices: 1,
        generates: true,
        from_policy: &[],
    };
    let used = Usage {
        input: 40,
        output: 120,
        ..Usage::default()
    };
    let call = || {
        let mut r = budgets.reserve(&ask).unwrap();
        r.settle(used, Basis::Reported)
    };
    report(
        "rate check (rpm + tpm)",
        timed(50_000, || budgets.check_rates(Some(&who)).unwrap()),
    );
    report(
        "reserve + settle (2 budgets, 1 tpm)",
        timed(50_000, || {
            std::hint::black_box(call());
        }),
    );
    c.bench_function("rate check (rpm + tpm)", |b| {
        b.iter(|| budgets.check_rates(Some(&who)).unwrap())
    });
    c.bench_function("reserve + settle (2 budgets, 1 tpm)", |b| b.iter(call));

    let mut g = c.benchmark_group("meter");
    for (name, body, dialect, strip) in [
        (
            "openai stream, usage asked by the client",
            openai_stream(false),
            Dialect::OpenAi,
            false,
        ),
        (
            "openai stream, usage chunk taken out",
            openai_stream(true),
            Dialect::OpenAi,
            true,
        ),
        ("anthropic stream", anthropic_stream(), Dialect::Anthropic, false),
    ] {
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut m = Meter::new(dialect, true, strip);
                let out = m.feed(body.clone());
                (out, m.finish(true, 0))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, budget);
criterion_main!(benches);
