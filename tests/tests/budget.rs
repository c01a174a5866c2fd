//! Budgets and rate limits over real sockets: concurrent reservations, streamed usage, clients
//! that hang up, several budgets on one call, unknown prices, RPM and TPM, and the spend reports
//! against the ground truth of an upstream that counts what it generated.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use lattice_tests::usage::{CACHED_TOKENS, PROMPT_TOKENS, UsageUpstream};
use lattice_tests::{Reply, TestGateway, request, send, send_streaming};

/// Prices per million tokens of the test models (input, output, cached input).
const GPT: (f64, f64, f64) = (1.0, 2.0, 0.5);
const CLAUDE: (f64, f64, f64) = (3.0, 15.0, 0.3);

fn config(up: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[audit]
sync = "batch"

[upstreams.oa]
kind = "openai"
base_url = "http://{up}/v1"

[upstreams.an]
kind = "anthropic"
base_url = "http://{up}"

[[routes]]
model = "gpt-*"
upstream = "oa"

[[routes]]
model = "claude-*"
upstream = "an"

[prices."gpt-test"]
input = {}
output = {}
cached_input = {}

[prices."claude-test"]
input = {}
output = {}
cached_input = {}

[prices."gpt-exact"]
input = 0.0
output = 1.0

{extra}
"#,
        GPT.0, GPT.1, GPT.2, CLAUDE.0, CLAUDE.1, CLAUDE.2
    )
}

/// The cost in nano-dollars of one call of the test upstream with `output` tokens: 7 uncached
/// and 2 cached prompt tokens.
fn cost(price: (f64, f64, f64), output: u64) -> u64 {
    let pico = |usd_per_m: f64| (usd_per_m * 1e6).round() as u64;
    let p = (PROMPT_TOKENS - CACHED_TOKENS) * pico(price.0)
        + output * pico(price.1)
        + CACHED_TOKENS * pico(price.2);
    p.div_ceil(1000)
}

fn chat(model: &str, max_tokens: u64, stream: &str) -> String {
    format!(
        r#"{{"model":"{model}","max_tokens":{max_tokens},{stream}"messages":[{{"role":"user","content":"hello"}}]}}"#
    )
}

async fn post(addr: SocketAddr, path: &str, body: String) -> Reply {
    let headers: &[(&str, &str)] = if path == "/v1/messages" {
        &[
            ("content-type", "application/json"),
            ("anthropic-version", "2023-06-01"),
        ]
    } else {
        &[("content-type", "application/json")]
    };
    send(addr, request(Method::POST, path, headers, body)).await
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, request(Method::GET, path, &[], Bytes::new())).await
}

/// The spend report once `calls` calls have settled (end records are written as each answer
/// ends, just after the client has read it).
async fn settled(addr: SocketAddr, query: &str, calls: u64) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(addr, &format!("/admin/spend?{query}")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let v = r.json();
        let t = &v["total"];
        if t["calls"] == calls && t["unsettled_calls"] == 0 {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled: want {calls} calls, have {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn row<'a>(report: &'a serde_json::Value, key: &str, value: &str) -> &'a serde_json::Value {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r[key] == value)
        .unwrap_or_else(|| panic!("no row {key}={value} in {report}"))
}

fn nano(usd: &serde_json::Value) -> u64 {
    let s = usd.as_str().unwrap();
    let (whole, frac) = s.split_once('.').unwrap();
    whole.parse::<u64>().unwrap() * 1_000_000_000 + frac.parse::<u64>().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_calls_against_a_budget_for_ten_admit_ten() {
    let up = UsageUpstream::start(None).await;
    // Each call reserves (and, as the upstream returns max_tokens, spends) 100 output tokens
    // at $1/M: $0.0001. The budget holds exactly ten.
    let gw = TestGateway::start(&config(
        up.addr,
        r#"[budgets]
[[budgets.limit]]
name = "ten-calls"
scope = "team"
window = "daily"
usd = 0.001
"#,
    ))
    .await;
    let addr = gw.addr;
    let calls: Vec<_> = (0..1000)
        .map(|_| {
            tokio::spawn(async move { post(addr, "/v1/chat/completions", chat("gpt-exact", 100, "")).await })
        })
        .collect();
    let mut ok = 0;
    let mut refused = 0;
    for c in calls {
        let r = c.await.unwrap();
        match r.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
                assert!((1..=86_400).contains(&retry), "Retry-After {retry}");
                let e = r.json();
                assert_eq!(e["error"]["code"], "budget_exceeded", "{e}");
                assert!(e["error"]["message"].as_str().unwrap().contains("ten-calls"));
            }
            s => panic!("unexpected {s}: {}", r.text()),
        }
    }
    assert_eq!((ok, refused), (10, 990));
    assert_eq!(up.counters.calls.load(std::sync::atomic::Ordering::SeqCst), 10);
    let report = settled(addr, "group_by=model", 10).await;
    assert_eq!(row(&report, "model", "gpt-exact")["cost_usd"], "0.001000000");
    gw.stop().await;
}

/// Reads a streamed answer to its end; returns its text.
async fn stream_text(addr: SocketAddr, path: &str, body: String) -> String {
    let r = post(addr, path, body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    r.text()
}

#[tokio::test]
async fn streamed_and_json_calls_are_charged_the_upstreams_usage_exactly() {
    let up = UsageUpstream::start(None).await;
    let gw = TestGateway::start(&config(up.addr, "[budgets]\n")).await;
    let addr = gw.addr;

    // OpenAI stream without include_usage: the gateway asks for it, the client never sees it.
    let text = stream_text(
        addr,
        "/v1/chat/completions",
        chat("gpt-test", 20, r#""stream":true,"#),
    )
    .await;
    assert_eq!(
        up.counters.asked_usage.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert!(!text.contains("\"usage\":{"), "usage chunk leaked: {text}");
    assert!(
        text.contains("t19 ") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    // With include_usage the client gets it.
    let text = stream_text(
        addr,
        "/v1/chat/completions",
        chat(
            "gpt-test",
            30,
            r#""stream":true,"stream_options":{"include_usage":true},"#,
        ),
    )
    .await;
    assert!(text.contains("\"completion_tokens\":30"), "{text}");
    // Anthropic stream: usage from message_start and message_delta.
    let text = stream_text(addr, "/v1/messages", chat("claude-test", 40, r#""stream":true,"#)).await;
    assert!(text.contains("message_stop"), "{text}");
    // JSON answers, both dialects.
    assert_eq!(
        post(addr, "/v1/chat/completions", chat("gpt-test", 10, ""))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        post(addr, "/v1/messages", chat("claude-test", 12, ""))
            .await
            .status,
        StatusCode::OK
    );

    let report = settled(addr, "group_by=model", 5).await;
    let gpt = row(&report, "model", "gpt-test");
    assert_eq!(
        nano(&gpt["cost_usd"]),
        cost(GPT, 20) + cost(GPT, 30) + cost(GPT, 10),
        "{gpt}"
    );
    assert_eq!(gpt["output_tokens"], 60);
    assert_eq!(gpt["input_tokens"], 3 * (PROMPT_TOKENS - CACHED_TOKENS));
    assert_eq!(gpt["cached_input_tokens"], 3 * CACHED_TOKENS);
    let claude = row(&report, "model", "claude-test");
    assert_eq!(
        nano(&claude["cost_usd"]),
        cost(CLAUDE, 40) + cost(CLAUDE, 12),
        "{claude}"
    );
    assert_eq!(claude["output_tokens"], 52);
    // The same report as CSV.
    let csv = get(addr, "/admin/spend?group_by=model&format=csv").await;
    assert_eq!(csv.headers["content-type"], "text/csv; charset=utf-8");
    let text = csv.text();
    let line = text.lines().find(|l| l.starts_with("claude-test,")).unwrap();
    assert_eq!(
        line,
        format!(
            "claude-test,2,0,14,52,4,0,70,{}",
            gpt_usd(cost(CLAUDE, 40) + cost(CLAUDE, 12))
        )
    );
    gw.stop().await;
}

fn gpt_usd(nano: u64) -> String {
    format!("{}.{:09}", nano / 1_000_000_000, nano % 1_000_000_000)
}

/// A tiny deterministic generator, so a failure repeats.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_that_hang_up_are_charged_what_was_generated() {
    const CALLS: u64 = 40;
    const OUTPUT: u64 = 30;
    // Paced as a model streams (10 ms a token), so a hang-up is noticed between tokens.
    let up = UsageUpstream::start(Some(Duration::from_millis(10))).await;
    let gw = TestGateway::start(&config(
        up.addr,
        r#"[budgets]
[[budgets.limit]]
name = "all"
scope = "team"
window = "monthly"
tokens = 100000000
"#,
    ))
    .await;
    let addr = gw.addr;
    let mut rng = Lcg(7);
    let mut tasks = Vec::new();
    let mut hung_up = 0;
    for i in 0..CALLS {
        // Half of them hang up after reading 1..=25 events.
        let stop_after = (rng.next(2) == 0).then(|| 1 + rng.next(25));
        hung_up += u64::from(stop_after.is_some());
        let (path, model) = if i % 2 == 0 {
            ("/v1/chat/completions", "gpt-test")
        } else {
            ("/v1/messages", "claude-test")
        };
        let body = chat(model, OUTPUT, r#""stream":true,"#);
        tasks.push(tokio::spawn(async move {
            let rid = format!("call-{i}");
            let mut headers = vec![
                ("content-type", "application/json"),
                ("x-request-id", rid.as_str()),
            ];
            if path == "/v1/messages" {
                headers.push(("anthropic-version", "2023-06-01"));
            }
            let resp = send_streaming(addr, request(Method::POST, path, &headers, body)).await;
            assert_eq!(resp.status(), StatusCode::OK);
            let mut body = resp.into_body();
            let mut events = 0;
            while let Some(f) = body.frame().await {
                let Ok(f) = f else { break };
                if let Some(d) = f.data_ref() {
                    events += d.windows(2).filter(|w| w == b"\n\n").count() as u64;
                }
                if stop_after.is_some_and(|n| events >= n) {
                    // Dropping the body closes the connection: the client has gone.
                    return;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let report = settled(addr, "group_by=model", CALLS).await;
    let output: u64 = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["output_tokens"].as_u64().unwrap())
        .sum();
    // Wait for the upstream's last send attempts to finish before reading its count.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let generated = up.generated();
    assert!(hung_up >= 10, "the seed must hang up a fair share: {hung_up}");
    assert!(
        generated < CALLS * OUTPUT,
        "hang-ups must stop generation early: {generated}"
    );
    assert!(
        output.abs_diff(generated) <= hung_up,
        "ledger output {output} vs generated {generated}: more than one token per hung-up call apart ({hung_up})"
    );
    // Call by call, from the gateway's audit log: each call's settled output against what the
    // upstream generated for it.
    let mut settled_output = std::collections::HashMap::new();
    let log = lattice_audit::DiskStorage::open(&gw.dir.path().join("lattice-data/audit")).unwrap();
    lattice_audit::verify::for_each_record(&log, |r| {
        if r.event.kind == "call.end" {
            let v: serde_json::Value = serde_json::from_slice(&r.event.payload).unwrap();
            if let Some(out) = v["spend"]["usage"]["output"].as_u64() {
                settled_output.insert(v["request_id"].as_str().unwrap().to_string(), out);
            }
        }
    })
    .unwrap();
    let generated_by = up.counters.by_request.lock().unwrap().clone();
    assert_eq!(settled_output.len(), CALLS as usize);
    let mut worst = 0;
    for (rid, out) in &settled_output {
        let gen_ = generated_by[rid];
        worst = worst.max(out.abs_diff(gen_));
    }
    // A token in flight when the gateway closed the upstream connection was generated but never
    // reached the gateway: at most one per hung-up call overall (asserted above); on a loaded
    // machine a single call may see two.
    assert!(
        worst <= 2,
        "a call's settled output is {worst} tokens from what was generated for it"
    );
    // The live ledger agrees with the log.
    let metrics = get(addr, "/metrics").await.text();
    let spent: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lattice_budget_spent_tokens{budget=\"all\",subject=\"-\"} "))
        .unwrap_or_else(|| panic!("{metrics}"))
        .parse()
        .unwrap();
    assert_eq!(spent, report["total"]["tokens"].as_u64().unwrap(), "{metrics}");
    gw.stop().await;
}

#[tokio::test]
async fn every_budget_on_a_call_must_admit_it() {
    let up = UsageUpstream::start(None).await;
    let gw = TestGateway::start(&config(
        up.addr,
        r#"[budgets]
[[budgets.limit]]
name = "team-usd"
scope = "team"
window = "monthly"
usd = 100.0

[[budgets.limit]]
name = "gpt-tokens"
scope = "team_model"
model = "gpt-*"
window = "daily"
tokens = 60
"#,
    ))
    .await;
    let addr = gw.addr;
    // Each call reserves its estimated input (the body's bytes / 3: 27) and 10 output tokens,
    // and settles at 9 + 10 = 19: the third does not fit in 60.
    let first = post(addr, "/v1/chat/completions", chat("gpt-test", 10, "")).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    let mut refused = None;
    for _ in 0..5 {
        let r = post(addr, "/v1/chat/completions", chat("gpt-test", 10, "")).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(r);
            break;
        }
    }
    let refused = refused.expect("the token budget must refuse a call");
    let msg = refused.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("gpt-tokens") && msg.contains("-/gpt-test"), "{msg}");
    // The team's USD budget still admits other models: only the gpt-* budget is spent.
    let claude = post(addr, "/v1/messages", chat("claude-test", 10, "")).await;
    assert_eq!(claude.status, StatusCode::OK, "{}", claude.text());
    assert_eq!(claude.json()["type"], "message");
    gw.stop().await;
}

#[tokio::test]
async fn a_model_without_a_price_is_refused_or_charged_the_default() {
    let up = UsageUpstream::start(None).await;
    let gw = TestGateway::start(&config(up.addr, "[budgets]\n")).await;
    let r = post(gw.addr, "/v1/messages", chat("claude-unpriced", 10, "")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let e = r.json();
    assert_eq!(e["type"], "error", "Anthropic's error shape: {e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("claude-unpriced")
    );
    gw.stop().await;

    let gw = TestGateway::start(&config(
        up.addr,
        "[budgets]\nunknown_model = \"default\"\ndefault_price = { input = 10.0, output = 30.0 }\n",
    ))
    .await;
    let r = post(gw.addr, "/v1/chat/completions", chat("gpt-unpriced", 10, "")).await;
    assert_eq!(r.status, StatusCode::OK);
    let report = settled(gw.addr, "group_by=model", 1).await;
    // 9 prompt tokens at $10/M (no cached price: input's) and 10 at $30/M.
    assert_eq!(
        nano(&row(&report, "model", "gpt-unpriced")["cost_usd"]),
        9 * 10_000 + 10 * 30_000
    );
    gw.stop().await;
}

#[tokio::test]
async fn requests_and_tokens_per_minute() {
    let up = UsageUpstream::start(None).await;
    let gw = TestGateway::start(&config(up.addr, "[[rate_limits]]\nscope = \"key\"\nrpm = 3\n")).await;
    for i in 0..3 {
        let r = post(gw.addr, "/v1/chat/completions", chat("gpt-test", 5, "")).await;
        assert_eq!(r.status, StatusCode::OK, "call {i}: {}", r.text());
    }
    let r = post(gw.addr, "/v1/chat/completions", chat("gpt-test", 5, "")).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
    gw.stop().await;

    // 40 tokens a minute; each call uses 9 + 5 = 14, counted when it settles.
    let gw = TestGateway::start(&config(up.addr, "[[rate_limits]]\nscope = \"team\"\ntpm = 40\n")).await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = post(gw.addr, "/v1/messages", chat("claude-test", 5, "")).await;
        statuses.push(r.status.as_u16());
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.text().contains("tokens-per-minute"), "{}", r.text());
            break;
        }
        // The settlement follows the answer by a moment.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        statuses,
        vec![200, 200, 200, 429],
        "40 tokens take three calls of 14"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_policy_can_set_budgets_and_a_malformed_one_fails_closed() {
    let up = UsageUpstream::start(None).await;
    let pol = tempfile::tempdir().unwrap();
    // Claude calls get a daily budget of 40 tokens from the policy; the rest none.
    std::fs::write(
        pol.path().join("p.rego"),
        r#"package lattice.authz
import rego.v1
budget := {"budget": {"name": "claude-daily", "scope": "team", "window": "daily", "tokens": 40}} if {
	startswith(input.request.model, "claude")
} else := {}
decision := {"allow": true, "reasons": [], "obligations": budget}
"#,
    )
    .unwrap();
    let extra = format!(
        "[budgets]\n[authorization]\npolicy_dir = \"{}\"\n",
        pol.path().display()
    );
    let gw = TestGateway::start(&config(up.addr, &extra)).await;
    // Each Claude call reserves 27 estimated + 5 and settles 9 + 5: the second does not fit.
    let first = post(gw.addr, "/v1/messages", chat("claude-test", 5, "")).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    let mut second = post(gw.addr, "/v1/messages", chat("claude-test", 5, "")).await;
    for _ in 0..50 {
        if second.status == StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        second = post(gw.addr, "/v1/messages", chat("claude-test", 5, "")).await;
    }
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(second.text().contains("policy:claude-daily"), "{}", second.text());
    // GPT calls carry no policy budget.
    for _ in 0..3 {
        assert_eq!(
            post(gw.addr, "/v1/chat/completions", chat("gpt-test", 5, ""))
                .await
                .status,
            StatusCode::OK
        );
    }
    gw.stop().await;

    std::fs::write(
        pol.path().join("p.rego"),
        "package lattice.authz\nimport rego.v1\ndecision := {\"allow\": true, \"reasons\": [], \"obligations\": {\"budget\": {\"name\": \"x\", \"scope\": \"galaxy\", \"window\": \"daily\", \"usd\": 1}}}\n",
    )
    .unwrap();
    let gw = TestGateway::start(&config(up.addr, &extra)).await;
    let r = post(gw.addr, "/v1/chat/completions", chat("gpt-test", 5, "")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["error"]["code"], "policy_invalid");
    gw.stop().await;
}

#[tokio::test]
async fn a_policy_sees_the_estimated_cost() {
    let up = UsageUpstream::start(None).await;
    let pol = tempfile::tempdir().unwrap();
    std::fs::write(
        pol.path().join("p.rego"),
        r#"package lattice.authz
import rego.v1
reasons := ["over $0.0001 a call"] if input.request.estimated_cost_usd > 0.0001 else := []
decision := {"allow": count(reasons) == 0, "reasons": reasons, "obligations": {}}
"#,
    )
    .unwrap();
    let extra = format!(
        "[budgets]\n[authorization]\npolicy_dir = \"{}\"\n",
        pol.path().display()
    );
    let gw = TestGateway::start(&config(up.addr, &extra)).await;
    // gpt-exact: output at $1/M, input free. 50 tokens: $0.00005; 500: $0.0005.
    let cheap = post(gw.addr, "/v1/chat/completions", chat("gpt-exact", 50, "")).await;
    assert_eq!(cheap.status, StatusCode::OK, "{}", cheap.text());
    let dear = post(gw.addr, "/v1/chat/completions", chat("gpt-exact", 500, "")).await;
    assert_eq!(dear.status, StatusCode::FORBIDDEN);
    assert!(dear.text().contains("over $0.0001 a call"), "{}", dear.text());
    gw.stop().await;
}

#[tokio::test]
async fn a_stream_past_its_reservation_is_cut_when_configured() {
    let up = UsageUpstream::start(Some(Duration::from_millis(2))).await;
    let gw = TestGateway::start(&config(up.addr, "[budgets]\ncut_streams = true\n")).await;
    // The upstream ignores max_tokens 5 and would send 35 tokens.
    let req = request(
        Method::POST,
        "/v1/chat/completions",
        &[("content-type", "application/json"), ("x-test-overshoot", "30")],
        chat("gpt-test", 5, r#""stream":true,"#),
    );
    let r = send(gw.addr, req).await;
    assert_eq!(r.status, StatusCode::OK);
    let text = r.text();
    let tokens = text.matches("\"content\":\"t").count();
    assert!(
        (6..=8).contains(&tokens),
        "cut after the 6th token, got {tokens}: {text}"
    );
    assert!(!text.contains("[DONE]"), "{text}");
    let report = settled(gw.addr, "group_by=model", 1).await;
    assert_eq!(row(&report, "model", "gpt-test")["output_tokens"], tokens as u64);
    gw.stop().await;
}

#[tokio::test]
async fn budget_thresholds_call_the_webhook() {
    let up = UsageUpstream::start(None).await;
    let hook = lattice_tests::MockUpstream::start(lattice_tests::Behavior::default()).await;
    // Three calls of $0.000005 (5 output tokens at $1/M) fill it exactly.
    let gw = TestGateway::start(&config(
        up.addr,
        &format!(
            r#"[budgets]
webhook = "http://{}/hooks/budget"
[[budgets.limit]]
name = "small"
scope = "team"
window = "daily"
usd = 0.000015
"#,
            hook.addr
        ),
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(
            post(gw.addr, "/v1/chat/completions", chat("gpt-exact", 5, ""))
                .await
                .status,
            StatusCode::OK
        );
    }
    let refused = post(gw.addr, "/v1/chat/completions", chat("gpt-exact", 5, "")).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while hook.recorded().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", hook.recorded());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events: Vec<serde_json::Value> = hook
        .recorded()
        .iter()
        .map(|r| {
            assert_eq!(r.uri.path(), "/hooks/budget");
            serde_json::from_slice(&r.body).unwrap()
        })
        .collect();
    let mut thresholds: Vec<u64> = events
        .iter()
        .map(|e| e["threshold_percent"].as_u64().unwrap())
        .collect();
    thresholds.sort_unstable();
    assert_eq!(thresholds, vec![80, 100], "{events:?}");
    assert!(events.iter().all(|e| e["event"] == "budget.threshold"
        && e["budget"] == "small"
        && e["spent_usd"] == "0.000015000"));
    gw.stop().await;
}

#[tokio::test]
async fn spend_is_reported_per_principal_to_finance_only() {
    let up = UsageUpstream::start(None).await;
    let data = tempfile::tempdir().unwrap();
    let mut store = lattice_gateway::identity::keys::KeyStore::open(data.path()).unwrap();
    let (ana_rec, ana) = store.create("ana", "research", &[], None).unwrap();
    let (_, bo) = store.create("bo", "support", &[], None).unwrap();
    let (_, fin) = store
        .create("fi", "finance", &["finance".to_string()], None)
        .unwrap();
    let cfg = format!(
        "data_dir = \"{}\"\n[identity]\nmethods = [\"api_key\"]\n{}",
        data.path().display(),
        config(up.addr, "[budgets]\n")
    );
    let gw = TestGateway::start(&cfg).await;
    let call = |key: String, max: u64| {
        let body = chat("gpt-test", max, "");
        async move {
            let auth = format!("Bearer {key}");
            let r = send(
                gw.addr,
                request(
                    Method::POST,
                    "/v1/chat/completions",
                    &[("content-type", "application/json"), ("authorization", &auth)],
                    body,
                ),
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        }
    };
    call(ana.clone(), 10).await;
    call(ana.clone(), 20).await;
    call(bo.clone(), 30).await;
    let report = |key: String, query: &'static str| async move {
        let auth = format!("Bearer {key}");
        send(
            gw.addr,
            request(
                Method::GET,
                &format!("/admin/spend?{query}"),
                &[("authorization", &auth)],
                Bytes::new(),
            ),
        )
        .await
    };
    // Not finance: refused, in the OpenAI dialect.
    let r = report(ana.clone(), "group_by=team").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["error"]["code"], "spend_forbidden");
    // Finance: by team and by key, and nothing before the calls were made.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let by_team = loop {
        let v = report(fin.clone(), "group_by=team,user").await.json();
        if v["total"]["calls"] == 3 && v["total"]["unsettled_calls"] == 0 {
            break v;
        }
        assert!(tokio::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let research = row(&by_team, "team", "research");
    assert_eq!(
        (research["user"].as_str(), research["calls"].as_u64()),
        (Some("ana"), Some(2))
    );
    assert_eq!(nano(&research["cost_usd"]), cost(GPT, 10) + cost(GPT, 20));
    assert_eq!(nano(&row(&by_team, "team", "support")["cost_usd"]), cost(GPT, 30));
    let by_key = report(fin.clone(), "group_by=key&since=1h").await.json();
    assert_eq!(row(&by_key, "key", &ana_rec.id)["output_tokens"], 30);
    let none = report(fin.clone(), "group_by=key&until=2000-01-01T00:00:00Z")
        .await
        .json();
    assert_eq!(none["rows"], serde_json::json!([]));
    assert_eq!(
        report(fin, "group_by=galaxy").await.status,
        StatusCode::BAD_REQUEST
    );
    gw.stop().await;
}

/// The worst case is the most any upstream may produce for the request as sent: the larger of
/// `max_tokens` and `max_completion_tokens`, times `n`, with no arithmetic that wraps; numbers no
/// provider accepts are refused.
#[tokio::test]
async fn the_worst_case_is_not_understated() {
    let up = UsageUpstream::start(None).await;
    // gpt-exact: output at $1/M. The budget holds $0.01: 10,000 output tokens.
    let gw = TestGateway::start(&config(
        up.addr,
        r#"[budgets]
[[budgets.limit]]
name = "small"
scope = "team"
window = "daily"
usd = 0.01
"#,
    ))
    .await;
    let body = |fields: &str| {
        format!(r#"{{"model":"gpt-exact",{fields},"messages":[{{"role":"user","content":"hello"}}]}}"#)
    };
    // The larger limit counts, whichever field it is in.
    for fields in [
        r#""max_tokens":1,"max_completion_tokens":1000000000"#,
        r#""max_completion_tokens":1000000000,"max_tokens":1"#,
    ] {
        let r = post(gw.addr, "/v1/chat/completions", body(fields)).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{fields}: {}", r.text());
        assert!(r.text().contains("up to $1000.000000000"), "{}", r.text());
    }
    // n choices may each reach the limit.
    let r = post(
        gw.addr,
        "/v1/chat/completions",
        body(r#""max_tokens":1000,"n":100"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert!(r.text().contains("up to $0.100000000"), "{}", r.text());
    // The control: a request the budget holds passes, charged no more than it used.
    let r = post(
        gw.addr,
        "/v1/chat/completions",
        body(r#""max_tokens":1000,"n":5"#),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // Numbers no provider accepts are refused before anything is reserved or sent, not wrapped
    // (u64::MAX + the input estimate wrapped to 33 tokens).
    let sent = up.counters.calls.load(std::sync::atomic::Ordering::SeqCst);
    for fields in [
        r#""max_tokens":18446744073709551615"#,
        r#""max_completion_tokens":2147483648"#,
        r#""max_tokens":10,"n":0"#,
        r#""max_tokens":10,"n":129"#,
    ] {
        let r = post(gw.addr, "/v1/chat/completions", body(fields)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{fields}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "invalid_value", "{fields}");
    }
    assert_eq!(
        up.counters.calls.load(std::sync::atomic::Ordering::SeqCst),
        sent,
        "a refused request reached the upstream"
    );
    gw.stop().await;
}

/// Once a caller passed authorization, a model that does not exist is 404 `model_not_found`
/// (the SDKs' `NotFoundError`), in both dialects: the budget gate's "has no price" used to hide it.
#[tokio::test]
async fn an_unknown_model_is_404_not_a_budget_refusal() {
    let up = UsageUpstream::start(None).await;
    let pol = tempfile::tempdir().unwrap();
    lattice_tests::allow_with_obligations(pol.path(), "{}");
    let extra = format!(
        "[budgets]\n[[budgets.limit]]\nname = \"all\"\nscope = \"team\"\nwindow = \"daily\"\nusd = 10.0\n[authorization]\npolicy_dir = \"{}\"\n",
        pol.path().display()
    );
    let gw = TestGateway::start(&config(up.addr, &extra)).await;
    let r = post(gw.addr, "/v1/chat/completions", chat("no-such-model", 5, "")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    let r = post(
        gw.addr,
        "/v1/messages",
        r#"{"model":"no-such-model","max_tokens":5,"messages":[]}"#.to_string(),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "not_found_error");
    // The control: a model that routes but has no price is still the budget's refusal.
    let r = post(gw.addr, "/v1/chat/completions", chat("gpt-unpriced", 5, "")).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "model_price_unknown");
    gw.stop().await;
}

/// Prometheus scrapes without a key: `[server] metrics_listen` serves `GET /metrics` (and
/// nothing else) on a listener of its own; on the main listener metrics and spend reports stay
/// behind a key with the `finance` (or `admin`, `metrics`) role.
#[tokio::test]
async fn a_scraper_reads_metrics_without_a_key_and_spend_stays_behind_finance() {
    let up = UsageUpstream::start(None).await;
    let cfg = config(
        up.addr,
        "[identity]\nmethods = [\"api_key\"]\n[budgets]\n[[budgets.limit]]\nname = \"all\"\nscope = \"team\"\nwindow = \"daily\"\nusd = 10.0\n",
    )
    .replacen("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:0\"\nmetrics_listen = \"127.0.0.1:0\"", 1);
    let gw = TestGateway::start(&cfg).await;
    let mut store =
        lattice_gateway::identity::keys::KeyStore::open(&gw.dir.path().join("lattice-data")).unwrap();
    let (_, dev) = store.create("ana", "research", &[], None).unwrap();
    let (_, fin) = store.create("fay", "finance", &["finance".into()], None).unwrap();
    let call = request(
        Method::POST,
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("authorization", &format!("Bearer {dev}")),
        ],
        chat("gpt-exact", 10, ""),
    );
    assert_eq!(send(gw.addr, call).await.status, StatusCode::OK);

    let scrape = gw.metrics_addr.expect("a metrics listener");
    let m = send(scrape, request(Method::GET, "/metrics", &[], "")).await;
    assert_eq!(m.status, StatusCode::OK, "{}", m.text());
    assert!(
        m.text().contains("# TYPE") && m.text().contains("budget"),
        "{}",
        m.text()
    );
    // Nothing else on it: not the API, not spend.
    for path in ["/admin/spend", "/v1/chat/completions", "/healthz"] {
        assert_eq!(
            send(scrape, request(Method::GET, path, &[], "")).await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    // The main listener: no key 401, a developer's key 403, finance 200.
    let get_as = |path: &str, key: Option<&str>| {
        let auth = key.map(|k| format!("Bearer {k}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        request(Method::GET, path, &headers, "")
    };
    for path in ["/metrics", "/admin/spend?group_by=team"] {
        assert_eq!(
            send(gw.addr, get_as(path, None)).await.status,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        assert_eq!(
            send(gw.addr, get_as(path, Some(&dev))).await.status,
            StatusCode::FORBIDDEN,
            "{path}"
        );
        assert_eq!(
            send(gw.addr, get_as(path, Some(&fin))).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
    gw.stop().await;
}
