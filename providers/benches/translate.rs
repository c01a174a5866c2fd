//! Translation cost in process: a request, a JSON answer and a whole stream for each of the 12
//! ordered pairs of the four dialects (the stream's throughput is per upstream event), from the
//! golden inputs. `cargo bench -p lattice-providers --bench translate`.

use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lattice_providers::Dialect;
use lattice_providers::stream::Transcoder;
use lattice_providers::translate::{self, Rules};

fn golden(rel: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(rel),
    )
    .unwrap_or_default()
}

fn name(from: Dialect, to: Dialect) -> String {
    format!("{}->{}", from.as_str(), to.as_str())
}

fn bench(c: &mut Criterion) {
    let rules = Rules::default();
    let pairs: Vec<(Dialect, Dialect)> = Dialect::ALL
        .into_iter()
        .flat_map(|a| {
            Dialect::ALL
                .into_iter()
                .filter(move |b| *b != a)
                .map(move |b| (a, b))
        })
        .collect();
    let stream_ext = |d: Dialect| if d == Dialect::Ollama { "ndjson" } else { "sse" };
    let mut g = c.benchmark_group("request");
    for &(from, to) in &pairs {
        let body = golden(&format!("requests/tool_result_turn.{}.json", from.as_str()));
        g.bench_function(name(from, to), |b| {
            b.iter(|| translate::request(from, to, &body, "m", false, &rules).map(|t| t.body.len()))
        });
    }
    let small = br#"{"model":"claude-via-openai","messages":[{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":64,"stream":true}"#;
    g.bench_function("openai->anthropic/small", |b| {
        b.iter(|| {
            translate::request(Dialect::OpenAi, Dialect::Anthropic, small, "m", false, &rules)
                .map(|t| t.body.len())
        })
    });
    g.finish();
    let mut g = c.benchmark_group("answer");
    for &(from, to) in &pairs {
        let body = golden(&format!("responses/tool_calls.{}.json", from.as_str()));
        g.bench_function(name(from, to), |b| {
            b.iter(|| translate::response(from, to, &body).map(|v| v.len()))
        });
    }
    g.finish();
    let mut g = c.benchmark_group("stream");
    for &(from, to) in &pairs {
        let stream = golden(&format!(
            "streams/tool_calls.{}.{}",
            from.as_str(),
            stream_ext(from)
        ));
        // Events: one `data:` line per SSE event, one line per NDJSON event.
        let events = match from {
            Dialect::Ollama => stream.iter().filter(|b| **b == b'\n').count(),
            _ => stream.windows(5).filter(|w| w == b"data:").count(),
        } as u64;
        g.throughput(Throughput::Elements(events));
        g.bench_function(name(from, to), |b| {
            b.iter(|| {
                let mut t = Transcoder::new(from, to, true);
                let mut n = t.feed(&stream).len();
                n += t.finish().len();
                n
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
