//! Failover over real sockets: fault-injecting upstreams (`lattice_tests::faults`) behind
//! routes of several deployments, in the same or another dialect.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, StatusCode};
use lattice_tests::faults::{Fault, FaultyUpstream, refusing_addr};
use lattice_tests::{TestGateway, request, send};

/// A gateway with upstreams `a` and `b` (each `kind` with `base`), the route `m` trying `a`
/// then `b`, and `extra` appended (more `[failover]`, a route's `failover`, ...).
fn two(a: (&str, SocketAddr), b: (&str, SocketAddr), route_extra: &str, extra: &str) -> String {
    let base = |kind: &str, addr: SocketAddr| match kind {
        "openai" => format!("http://{addr}/v1"),
        _ => format!("http://{addr}"),
    };
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[upstreams.a]
kind = "{ak}"
base_url = "{abase}"
api_key = "key-a"
timeout_ms = 10000

[upstreams.b]
kind = "{bk}"
base_url = "{bbase}"
api_key = "key-b"

[[routes]]
model = "m"
upstream = "a"
upstream_model = "model-a"
fallbacks = [{{ upstream = "b", model = "model-b" }}]
{route_extra}

{extra}
"#,
        ak = a.0,
        abase = base(a.0, a.1),
        bk = b.0,
        bbase = base(b.0, b.1),
    )
}

fn chat(stream: bool) -> String {
    serde_json::json!({"model": "m", "stream": stream, "max_tokens": 16,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string()
}

async fn call(addr: SocketAddr) -> lattice_tests::Reply {
    send(
        addr,
        request(
            Method::POST,
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            chat(false),
        ),
    )
    .await
}

#[tokio::test]
async fn every_trigger_moves_the_call_to_the_next_deployment() {
    let cases: Vec<(&str, Fault)> = vec![
        ("500", Fault::Status(500, None)),
        ("502", Fault::Status(502, None)),
        ("503", Fault::Status(503, None)),
        ("504", Fault::Status(504, None)),
        ("529", Fault::Status(529, None)),
        ("429", Fault::Status(429, None)),
        ("429 with Retry-After", Fault::Status(429, Some("30"))),
        ("reset mid-headers", Fault::ResetMidHeaders),
        ("hang before headers", Fault::HangBeforeHeaders),
    ];
    for (what, fault) in cases {
        let a = FaultyUpstream::start("a", vec![fault]).await;
        let b = FaultyUpstream::start("b", vec![Fault::Ok]).await;
        let gw = TestGateway::start(&two(
            ("openai", a.addr),
            ("openai", b.addr),
            "",
            "[failover]\ndeadline_ms = 5000\n",
        ))
        .await;
        // The hang is cut by the first-byte timeout of deployment a.
        let gw = if what == "hang before headers" {
            gw.stop().await;
            TestGateway::start(&two(("openai", a.addr), ("openai", b.addr), "", "").replace(
                "upstream = \"a\"\nupstream_model = \"model-a\"\nfallbacks",
                "groups = [{ deployments = [{ upstream = \"a\", model = \"model-a\", first_byte_timeout_ms = 300 }] }]\nfallbacks",
            ))
            .await
        } else {
            gw
        };
        let r = call(gw.addr).await;
        assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.text());
        assert_eq!(r.json()["choices"][0]["message"]["content"], "from b", "{what}");
        assert_eq!(a.hits(), 1, "{what}");
        assert_eq!(b.hits(), 1, "{what}");
        assert_eq!(b.bodies.lock().unwrap()[0]["model"], "model-b", "{what}");
        // The chain shows the failed attempt, then the call's end at b.
        let attempts = gw.records("call.attempt", 1).await;
        assert_eq!(attempts[0]["upstream"], "a", "{what}");
        assert_eq!(attempts[0]["result"], "failed", "{what}");
        let ends = gw.records("call.end", 1).await;
        assert_eq!(ends[0]["upstream"], "b", "{what}: {}", ends[0]);
        gw.stop().await;
    }
}

#[tokio::test]
async fn a_refused_connection_moves_the_call_and_so_does_a_fallback_of_another_dialect() {
    let b = FaultyUpstream::start("b", vec![Fault::Ok]).await;
    let gw = TestGateway::start(&two(
        ("openai", refusing_addr().await),
        ("anthropic", b.addr),
        "",
        "",
    ))
    .await;
    let r = call(gw.addr).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // The Anthropic answer, translated for the OpenAI client.
    assert_eq!(r.json()["object"], "chat.completion");
    assert_eq!(r.json()["choices"][0]["message"]["content"], "from b");
    let attempts = gw.records("call.attempt", 1).await;
    assert_eq!(attempts[0]["error"], "connect");
    gw.stop().await;

    // And an Anthropic primary failing with overload falls back to an OpenAI one.
    let a = FaultyUpstream::start("a", vec![Fault::Status(529, None)]).await;
    let b = FaultyUpstream::start("b", vec![Fault::Ok]).await;
    let gw = TestGateway::start(&two(("anthropic", a.addr), ("openai", b.addr), "", "")).await;
    let r = call(gw.addr).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["choices"][0]["message"]["content"], "from b");
    assert_eq!((a.hits(), b.hits()), (1, 1));
    gw.stop().await;
}

#[tokio::test]
async fn other_client_errors_do_not_move_the_call() {
    for status in [400u16, 401, 403, 404, 409, 413, 422] {
        let a = FaultyUpstream::start("a", vec![Fault::Status(status, None)]).await;
        let b = FaultyUpstream::start("b", vec![Fault::Ok]).await;
        let gw = TestGateway::start(&two(("openai", a.addr), ("openai", b.addr), "", "")).await;
        let r = call(gw.addr).await;
        assert_eq!(r.status.as_u16(), status, "{}", r.text());
        assert_eq!(r.json()["error"]["message"], format!("a says {status}"));
        assert_eq!(b.hits(), 0, "{status} must not fail over");
        gw.stop().await;
    }
}

#[tokio::test]
async fn triggers_are_configurable_per_route_and_the_last_failure_is_the_answer() {
    let a = FaultyUpstream::start("a", vec![Fault::Status(429, None)]).await;
    let b = FaultyUpstream::start("b", vec![Fault::Ok]).await;
    let gw = TestGateway::start(&two(
        ("openai", a.addr),
        ("openai", b.addr),
        "failover = { on = [\"503\"] }",
        "",
    ))
    .await;
    let r = call(gw.addr).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(b.hits(), 0);
    gw.stop().await;

    // Both fail: the client gets the last upstream's own error.
    let a = FaultyUpstream::start("a", vec![Fault::Status(503, None)]).await;
    let b = FaultyUpstream::start("b", vec![Fault::Status(500, None)]).await;
    let gw = TestGateway::start(&two(("openai", a.addr), ("openai", b.addr), "", "")).await;
    let r = call(gw.addr).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.json()["error"]["message"], "b says 500");
    gw.stop().await;
}

#[tokio::test]
async fn the_retry_budget_caps_retries_under_a_total_outage() {
    let a = FaultyUpstream::start("a", vec![Fault::Status(503, None)]).await;
    let b = FaultyUpstream::start("b", vec![Fault::Status(503, None)]).await;
    // No breaker, so only the budget stands between the outage and a retry per call.
    let gw = TestGateway::start(&two(
        ("openai", a.addr),
        ("openai", b.addr),
        "",
        "[failover]\nretry_budget = { percent = 20, min_per_second = 1 }\nbreaker = { consecutive_failures = 0, error_rate_percent = 0 }\n[audit]\nsync = \"none\"\n",
    ))
    .await;
    let calls = 200;
    let started = std::time::Instant::now();
    for _ in 0..calls {
        assert_eq!(call(gw.addr).await.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    let secs = started.elapsed().as_secs() as usize + 1;
    let attempts = a.hits() + b.hits();
    // 20% of the calls, the initial floor of one, and one a second.
    let most = calls + calls / 5 + 1 + secs;
    assert!(
        attempts <= most,
        "{attempts} attempts for {calls} calls (at most {most})"
    );
    assert!(attempts > calls, "some calls were retried: {attempts}");
    gw.stop().await;
}

#[tokio::test]
async fn the_circuit_opens_after_failures_ejects_then_probes_and_closes() {
    let a = FaultyUpstream::start("a", vec![Fault::Status(500, None)]).await;
    let b = FaultyUpstream::start("b", vec![Fault::Ok]).await;
    let gw = TestGateway::start(&two(
        ("openai", a.addr),
        ("openai", b.addr),
        "",
        "[failover]\nbreaker = { consecutive_failures = 3, error_rate_percent = 0, cooldown_ms = 400 }\n",
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(call(gw.addr).await.status, StatusCode::OK);
    }
    assert_eq!(a.hits(), 3);
    // Open: calls go straight to b.
    for _ in 0..5 {
        let r = call(gw.addr).await;
        assert_eq!(r.json()["choices"][0]["message"]["content"], "from b");
    }
    assert_eq!(a.hits(), 3, "an open circuit is not tried");
    let ready = send(gw.addr, request(Method::GET, "/readyz", &[], ""))
        .await
        .json();
    let dep = ready["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["upstream"] == "a")
        .cloned()
        .unwrap();
    assert_eq!(dep["circuit"], "open", "{ready}");
    // After the cool-down one probe goes to a; healthy again, the circuit closes.
    a.set(vec![Fault::Ok]);
    tokio::time::sleep(Duration::from_millis(450)).await;
    let r = call(gw.addr).await;
    assert_eq!(r.json()["choices"][0]["message"]["content"], "from a");
    let ready = send(gw.addr, request(Method::GET, "/readyz", &[], ""))
        .await
        .json();
    assert!(
        ready["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["circuit"] == "closed"),
        "{ready}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn retry_after_ejects_the_deployment_for_that_long() {
    let a = FaultyUpstream::start("a", vec![Fault::Status(429, Some("1")), Fault::Ok]).await;
    let b = FaultyUpstream::start("b", vec![Fault::Ok]).await;
    let gw = TestGateway::start(&two(("openai", a.addr), ("openai", b.addr), "", "")).await;
    assert_eq!(
        call(gw.addr).await.json()["choices"][0]["message"]["content"],
        "from b"
    );
    // Ejected for a second: not tried, though its circuit opened on one failure only.
    assert_eq!(
        call(gw.addr).await.json()["choices"][0]["message"]["content"],
        "from b"
    );
    assert_eq!(a.hits(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        call(gw.addr).await.json()["choices"][0]["message"]["content"],
        "from a"
    );
    gw.stop().await;
}

#[tokio::test]
async fn with_every_deployment_ejected_the_call_is_refused_with_retry_after() {
    let a = FaultyUpstream::start("a", vec![Fault::Status(503, Some("60"))]).await;
    let b = FaultyUpstream::start("b", vec![Fault::Status(503, Some("60"))]).await;
    let gw = TestGateway::start(&two(("openai", a.addr), ("openai", b.addr), "", "")).await;
    assert_eq!(call(gw.addr).await.status, StatusCode::SERVICE_UNAVAILABLE);
    let r = call(gw.addr).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["error"]["code"], "upstream_unavailable", "{}", r.text());
    let secs: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((55..=60).contains(&secs), "{secs}");
    assert_eq!((a.hits(), b.hits()), (1, 1));
    gw.stop().await;
}

#[tokio::test]
async fn weights_split_traffic_within_five_percent_over_a_thousand_calls() {
    let a = FaultyUpstream::start("a", vec![Fault::Ok]).await;
    let b = FaultyUpstream::start("b", vec![Fault::Ok]).await;
    let cfg = two(("openai", a.addr), ("openai", b.addr), "", "").replace(
        "upstream = \"a\"\nupstream_model = \"model-a\"\nfallbacks = [{ upstream = \"b\", model = \"model-b\" }]",
        "groups = [{ deployments = [{ upstream = \"a\", weight = 3 }, { upstream = \"b\", weight = 1 }] }]",
    ) + "[audit]\nsync = \"none\"\n";
    let gw = TestGateway::start(&cfg).await;
    for _ in 0..1000 {
        assert_eq!(call(gw.addr).await.status, StatusCode::OK);
    }
    let share = a.hits() as f64 / 1000.0;
    assert!((share - 0.75).abs() <= 0.05, "a took {share}");
    assert_eq!(a.hits() + b.hits(), 1000);
    gw.stop().await;
}

#[tokio::test]
async fn a_fallback_is_governed_the_model_lock_and_the_policy_decide_for_it() {
    let a = FaultyUpstream::start("a", vec![Fault::Status(503, None)]).await;
    let b = FaultyUpstream::start("b", vec![Fault::Ok]).await;
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    lattice_tests::allow_with_obligations(&policies, r#"{"model_lock": {"providers": ["a"]}}"#);
    let cfg = format!(
        "{}\n[authorization]\npolicy_dir = \"{}\"\n",
        two(("openai", a.addr), ("anthropic", b.addr), "", ""),
        policies.display()
    );
    let gw = TestGateway::start_in(dir, &cfg).await;
    let r = call(gw.addr).await;
    // b is outside the lock: not tried; the client gets a's failure.
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(b.hits(), 0);
    let attempts = gw.records("call.attempt", 2).await;
    assert_eq!(attempts[1]["upstream"], "b");
    assert_eq!(attempts[1]["result"], "skipped");
    gw.stop().await;
}

#[tokio::test]
async fn a_stream_that_fails_before_its_head_moves_too() {
    let a = FaultyUpstream::start("a", vec![Fault::Status(503, None)]).await;
    let b = FaultyUpstream::start("b", vec![Fault::Ok]).await;
    let gw = TestGateway::start(&two(("openai", a.addr), ("openai", b.addr), "", "")).await;
    let r = send(
        gw.addr,
        request(
            Method::POST,
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            chat(true),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let text = r.text();
    assert!(
        text.contains("b0 ") && text.contains("b3 ") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_route_of_one_deployment_is_never_ejected_by_its_own_breaker() {
    // A per-model 429 with a long Retry-After must not turn into a minute of 503s from us: with
    // nowhere else to go, the next call goes to the upstream, whose own answer is the truth.
    let a = FaultyUpstream::start("a", vec![Fault::Status(429, Some("60")), Fault::Ok]).await;
    let gw = TestGateway::start(&format!(
        r#"
[server]
listen = "127.0.0.1:0"

[upstreams.a]
kind = "openai"
base_url = "http://{}/v1"
api_key = "key-a"

[[routes]]
model = "*"
upstream = "a"
"#,
        a.addr
    ))
    .await;
    let first = call(gw.addr).await;
    assert_eq!(first.status, StatusCode::TOO_MANY_REQUESTS, "{}", first.text());
    let second = call(gw.addr).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text());
    assert_eq!(second.json()["choices"][0]["message"]["content"], "from a");
    assert_eq!(a.hits(), 2);
    gw.stop().await;
}
