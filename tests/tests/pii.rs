//! The PII gate over real sockets: what reaches the upstream, in both dialects.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use http::{Method, StatusCode};
use lattice_tests::{Behavior, MockUpstream, TestGateway, allow_with_obligations, config, request, send};

const PII: &str = r#"
[pii]
request = { default = "redact", card = "mask", secret = "block", ipv4 = "allow" }
"#;

#[tokio::test]
async fn personal_data_is_redacted_before_it_leaves_and_secrets_are_refused() {
    let up = MockUpstream::start(Behavior::default()).await;
    let gw = TestGateway::start(&format!("{}{PII}", config(up.addr, "", ""))).await;

    let openai = r#"{"model":"gpt-4o-mini","messages":[
        {"role":"system","content":"Escalate to ana.lopez@example.com or +44 20 7946 0958."},
        {"role":"user","content":[{"type":"text","text":"My card is 4111 1111 1111 1111, IBAN DE89 3704 0044 0532 0130 00, server 10.1.2.3, mail ana.lopez@example.com"}]},
        {"role":"tool","tool_call_id":"c1","content":"customer ssn 123-45-6789"}]}"#;
    let r = send(
        gw.addr,
        request(
            Method::POST,
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            openai,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let sent: serde_json::Value = serde_json::from_slice(&up.last().body).unwrap();
    let text = sent.to_string();
    for leaked in [
        "ana.lopez@example.com",
        "7946 0958",
        "4111 1111 1111",
        "DE89",
        "123-45-6789",
    ] {
        assert!(!text.contains(leaked), "{leaked} reached the upstream: {text}");
    }
    assert_eq!(
        sent["messages"][0]["content"],
        "Escalate to [EMAIL_1] or [PHONE_1]."
    );
    assert_eq!(
        sent["messages"][1]["content"][0]["text"],
        "My card is ***************1111, IBAN [IBAN_1], server 10.1.2.3, mail [EMAIL_1]"
    );
    assert_eq!(sent["messages"][2]["content"], "customer ssn [SSN_1]");
    assert_eq!(sent["model"], "gpt-4o-mini");

    // A secret is refused, in the client's dialect, naming the detector and never the value.
    let key = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKL";
    let anthropic = format!(
        r#"{{"model":"claude-3-5-haiku","max_tokens":10,"messages":[{{"role":"user","content":[{{"type":"tool_result","tool_use_id":"t1","content":"env: {key}"}}]}}]}}"#
    );
    let before = up.recorded().len();
    let r = send(
        gw.addr,
        request(
            Method::POST,
            "/v1/messages",
            &[
                ("content-type", "application/json"),
                ("anthropic-version", "2023-06-01"),
            ],
            anthropic,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let e = r.json();
    assert_eq!(e["type"], "error");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("detector `secret`"),
        "{e}"
    );
    assert!(!r.text().contains(key));
    assert_eq!(
        up.recorded().len(),
        before,
        "a blocked call must not reach the upstream"
    );

    // The built-in mock echoes the prompt it was sent: the redacted one.
    let demo = r#"{"model":"demo","messages":[{"role":"user","content":"write to bo@example.org"}]}"#;
    let r = send(
        gw.addr,
        request(
            Method::POST,
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            demo,
        ),
    )
    .await;
    let reply = r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reply.contains("[EMAIL_1]") && !reply.contains("bo@example.org"),
        "{reply}"
    );

    // What was found and done is in the audit log, never the values.
    let log = lattice_audit::DiskStorage::open(&gw.dir.path().join("lattice-data/audit")).unwrap();
    let mut decisions = Vec::new();
    lattice_audit::verify::for_each_record(&log, |r| {
        let payload = String::from_utf8_lossy(&r.event.payload).into_owned();
        assert!(
            !payload.contains("ana.lopez") && !payload.contains(key),
            "{payload}"
        );
        if r.event.kind == "call.decision" {
            decisions.push(serde_json::from_str::<serde_json::Value>(&payload).unwrap());
        }
    })
    .unwrap();
    let first = &decisions[0]["pii"];
    let found: Vec<(String, u64, String)> = first
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert_eq!(f["direction"], "request");
            (
                f["kind"].as_str().unwrap().into(),
                f["count"].as_u64().unwrap(),
                f["action"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        found,
        vec![
            ("card".into(), 1, "mask".into()),
            ("email".into(), 2, "redact".into()),
            ("iban".into(), 1, "redact".into()),
            ("ipv4".into(), 1, "allow".into()),
            ("phone".into(), 1, "redact".into()),
            ("ssn".into(), 1, "redact".into()),
        ]
    );
    assert_eq!(decisions[1]["gate"], "pii");
    assert_eq!(decisions[1]["pii"][0]["action"], "block");
    gw.stop().await;
}

#[tokio::test]
async fn a_policy_sets_pii_actions_for_requests_and_answers_and_malformed_ones_fail_closed() {
    let up = MockUpstream::start(Behavior::default()).await;
    let pol = tempfile::tempdir().unwrap();
    let write = |obligations: &str| allow_with_obligations(pol.path(), obligations);
    let cfg = format!(
        "[authorization]\npolicy_dir = \"{}\"\n{}",
        pol.path().display(),
        config(up.addr, "", "")
    );
    let chat = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"mail ana@example.com"}]}"#;
    let call = |addr, body: String| {
        send(
            addr,
            request(
                Method::POST,
                "/v1/chat/completions",
                &[("content-type", "application/json")],
                body,
            ),
        )
    };

    // No [pii] in the config: the policy alone asks for e-mail addresses to be blocked.
    write(r#"{"pii": {"request": {"email": "block"}}}"#);
    let gw = TestGateway::start(&cfg).await;
    let r = call(gw.addr, chat.to_string()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["error"]["code"], "pii_blocked");
    assert!(up.recorded().is_empty());
    gw.stop().await;

    // Response rules from the policy: the mock echoes the address it was sent, and the answer
    // is redacted on its way back (JSON and stream).
    write(r#"{"pii": {"response": {"email": "redact"}}}"#);
    let gw = TestGateway::start(&cfg).await;
    for stream in [false, true] {
        let demo = format!(
            r#"{{"model":"demo","stream":{stream},"messages":[{{"role":"user","content":"mail ana@example.com"}}]}}"#
        );
        let r = call(gw.addr, demo).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert!(!r.text().contains("ana@example.com"), "{}", r.text());
        assert!(r.text().contains("[EMAIL_1]"), "{}", r.text());
    }
    gw.stop().await;

    // A malformed rule fails closed.
    write(r#"{"pii": {"response": {"email": "shred"}}}"#);
    let gw = TestGateway::start(&cfg).await;
    let r = call(gw.addr, chat.to_string()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["error"]["code"], "policy_invalid");
    gw.stop().await;
}
