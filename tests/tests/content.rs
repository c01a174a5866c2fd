//! Content gates over real sockets: PII in answers (JSON and streams, both dialects), the tool
//! gate (offered tools and the model's tool calls) and the model lock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use lattice_tests::{
    Behavior, MockUpstream, Reply, Script, Scripted, TestGateway, allow_with_obligations, config, request,
    send,
};
use serde_json::{Value, json};

const SSE: &str = "text/event-stream";

/// The PII an answer carries in these tests, and what must never reach the client.
const EMAIL: &str = "ana.lopez@example.com";
const CARD: &str = "4111 1111 1111 1111";
const ANSWER: &str = "Write to ana.lopez@example.com, card 4111 1111 1111 1111, thanks.";

fn openai_sse(events: Vec<Value>) -> Vec<Bytes> {
    let mut out: Vec<Bytes> = events
        .into_iter()
        .map(|e| Bytes::from(format!("data: {e}\n\n")))
        .collect();
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

fn openai_chunk(delta: Value, finish: Value) -> Value {
    json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
}

fn anthropic_sse(events: Vec<Value>) -> Vec<Bytes> {
    events
        .into_iter()
        .map(|e| Bytes::from(format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap())))
        .collect()
}

fn anthropic_start() -> Value {
    json!({"type": "message_start", "message": {"id": "m1", "type": "message", "role": "assistant",
           "content": [], "model": "claude", "stop_reason": null, "stop_sequence": null,
           "usage": {"input_tokens": 3, "output_tokens": 1}}})
}

/// An upstream that answers `text`: JSON, or a stream of one event per character (the SSE
/// bytes themselves also arrive in pieces that cut events apart).
fn text_script(text: &'static str) -> Script {
    Arc::new(move |path: &str, req: &Value| {
        let stream = req["stream"].as_bool().unwrap_or(false);
        let anthropic = path.ends_with("/v1/messages");
        let chars = text.chars().map(String::from);
        let pieces: Vec<Bytes> = match (anthropic, stream) {
            (false, false) => vec![Bytes::from(
                json!({"id": "x", "object": "chat.completion", "created": 1, "model": "gpt-4o",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": text}}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}})
                .to_string(),
            )],
            (true, false) => vec![Bytes::from(
                json!({"id": "m", "type": "message", "role": "assistant", "model": "claude",
                       "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                       "stop_sequence": null, "usage": {"input_tokens": 3, "output_tokens": 9}})
                .to_string(),
            )],
            (false, true) => {
                let mut ev = vec![openai_chunk(
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                )];
                ev.extend(chars.map(|c| openai_chunk(json!({"content": c}), Value::Null)));
                ev.push(openai_chunk(json!({}), json!("stop")));
                split_reads(openai_sse(ev))
            }
            (true, true) => {
                let mut ev = vec![
                    anthropic_start(),
                    json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                ];
                ev.extend(chars.map(|c| {
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": c}})
                }));
                ev.push(json!({"type": "content_block_stop", "index": 0}));
                ev.push(json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 9}}));
                ev.push(json!({"type": "message_stop"}));
                split_reads(anthropic_sse(ev))
            }
        };
        Scripted {
            content_type: if stream { SSE } else { "application/json" },
            encoding: None,
            pieces,
        }
    })
}

/// The same bytes in pieces of 29: events and their JSON cut at arbitrary points.
fn split_reads(events: Vec<Bytes>) -> Vec<Bytes> {
    let all: Vec<u8> = events.concat();
    all.chunks(29).map(Bytes::copy_from_slice).collect()
}

async fn chat(gw: &TestGateway, anthropic: bool, body: Value) -> Reply {
    let (path, mut headers) = if anthropic {
        ("/v1/messages", vec![("anthropic-version", "2023-06-01")])
    } else {
        ("/v1/chat/completions", vec![])
    };
    headers.push(("content-type", "application/json"));
    // The SDKs ask for compressed answers; the gateway asks its upstream for plain ones.
    headers.push(("accept-encoding", "gzip, br"));
    send(gw.addr, request(Method::POST, path, &headers, body.to_string())).await
}

/// The text a client got: a JSON answer's, or the deltas of a stream, in either dialect.
fn answer_text(r: &Reply, anthropic: bool, stream: bool) -> String {
    if !stream {
        let v = r.json();
        return if anthropic {
            v["content"][0]["text"].as_str().unwrap_or("").to_string()
        } else {
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or("")
                .to_string()
        };
    }
    events(r)
        .iter()
        .filter_map(|v| {
            if anthropic {
                v.pointer("/delta/text")
            } else {
                v.pointer("/choices/0/delta/content")
            }
            .and_then(Value::as_str)
            .map(str::to_string)
        })
        .collect()
}

/// The JSON events of a stream (`[DONE]` left out).
fn events(r: &Reply) -> Vec<Value> {
    r.text()
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// The `call.end` records, once there are `n` (a call's end record is written when its response
/// body is dropped, which can be just after the client has read it).
async fn end_records(gw: &TestGateway, n: usize) -> Vec<Value> {
    gw.records("call.end", n).await
}

#[tokio::test]
async fn pii_in_answers_is_redacted_in_json_and_streams_of_both_dialects() {
    let up = MockUpstream::start(Behavior {
        script: Some(text_script(ANSWER)),
        ..Default::default()
    })
    .await;
    let pii = "[pii]\nresponse = { default = \"redact\", card = \"mask\" }\n";
    let gw = TestGateway::start(&format!("{}{pii}", config(up.addr, "", ""))).await;
    for anthropic in [false, true] {
        for stream in [false, true] {
            let model = if anthropic { "claude-3-5-haiku" } else { "gpt-4o" };
            let body = json!({"model": model, "max_tokens": 50, "stream": stream,
                              "messages": [{"role": "user", "content": "contact?"}]});
            let r = chat(&gw, anthropic, body).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            assert!(up.last().headers.get("accept-encoding").is_none());
            let raw = r.text();
            assert!(!raw.contains(EMAIL) && !raw.contains(CARD), "leaked: {raw}");
            assert_eq!(
                answer_text(&r, anthropic, stream),
                "Write to [EMAIL_1], card ***************1111, thanks.",
                "anthropic={anthropic} stream={stream}"
            );
        }
    }
    // What was found in the answers is in their end records, never the values.
    let ends = end_records(&gw, 4).await;
    assert_eq!(ends.len(), 4);
    for e in &ends {
        assert!(!e.to_string().contains(EMAIL));
        let found: Vec<(String, String, u64)> = e["content"]["pii"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["kind"].as_str().unwrap().into(),
                    f["direction"].as_str().unwrap().into(),
                    f["count"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            found,
            vec![
                ("card".into(), "response".into(), 1),
                ("email".into(), "response".into(), 1)
            ],
            "{e}"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn pii_in_translated_answers_is_redacted_in_the_clients_dialect() {
    // Each client calls the model of the other dialect: the upstream answers in its own, the
    // gateway translates, and the filter reads what the client will see.
    let up = MockUpstream::start(Behavior {
        script: Some(text_script(ANSWER)),
        ..Default::default()
    })
    .await;
    let pii = "[pii]\nresponse = { default = \"redact\", card = \"mask\" }\n";
    let gw = TestGateway::start(&format!("{}{pii}", config(up.addr, "", ""))).await;
    for anthropic in [false, true] {
        for stream in [false, true] {
            let model = if anthropic { "gpt-4o" } else { "claude-3-5-haiku" };
            let body = json!({"model": model, "max_tokens": 50, "stream": stream,
                              "messages": [{"role": "user", "content": "contact?"}]});
            let r = chat(&gw, anthropic, body).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            let upstream_path = up.last().uri.path().to_string();
            assert_eq!(
                upstream_path.ends_with("/v1/messages"),
                !anthropic,
                "{upstream_path}"
            );
            let raw = r.text();
            assert!(!raw.contains(EMAIL) && !raw.contains(CARD), "leaked: {raw}");
            assert_eq!(
                answer_text(&r, anthropic, stream),
                "Write to [EMAIL_1], card ***************1111, thanks.",
                "anthropic={anthropic} stream={stream}"
            );
        }
    }
    let ends = end_records(&gw, 4).await;
    for e in &ends {
        assert!(!e.to_string().contains(EMAIL), "{e}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_blocked_kind_in_an_answer_stops_it_before_the_value_goes_out() {
    let up = MockUpstream::start(Behavior {
        script: Some(text_script(ANSWER)),
        ..Default::default()
    })
    .await;
    let pii = "[pii]\nresponse = { email = \"block\" }\n";
    let gw = TestGateway::start(&format!("{}{pii}", config(up.addr, "", ""))).await;
    for anthropic in [false, true] {
        let model = if anthropic { "claude-3-5-haiku" } else { "gpt-4o" };
        let r = chat(
            &gw,
            anthropic,
            json!({"model": model, "max_tokens": 50, "messages": []}),
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(!r.text().contains(EMAIL));
        let e = r.json();
        // Both dialects put the message at error.message.
        let msg = &e["error"]["message"];
        assert!(msg.as_str().unwrap().contains("detector `email`"), "{e}");

        let r = chat(
            &gw,
            anthropic,
            json!({"model": model, "max_tokens": 50, "stream": true, "messages": []}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
        let raw = r.text();
        assert!(!raw.contains("ana.lopez"), "{raw}");
        // The text before the address went out; then the error event ended the stream.
        assert_eq!(answer_text(&r, anthropic, true), "Write to ");
        let last = events(&r).pop().unwrap();
        if anthropic {
            assert_eq!(last["type"], "error");
        } else {
            assert_eq!(last["error"]["code"], "pii_blocked");
        }
    }
    // Each stopped answer says so in its end record: JSON refused by the pii gate, streams
    // stopped.
    let ends = end_records(&gw, 4).await;
    assert!(
        ends.iter().all(|e| e["content"]["stopped"] == "pii_blocked"),
        "{ends:?}"
    );
    let outcomes: Vec<&str> = ends.iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == "stopped").count(),
        2,
        "{outcomes:?}"
    );
    assert!(
        ends.iter()
            .filter(|e| e["status"] == 403)
            .all(|e| e["reason"] == "pii"),
        "{ends:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn an_answer_compressed_anyway_is_not_passed_on_unchecked() {
    let script: Script = Arc::new(|_: &str, req: &Value| Scripted {
        content_type: if req["stream"] == true {
            SSE
        } else {
            "application/json"
        },
        encoding: Some("gzip"),
        pieces: vec![Bytes::from_static(b"\x1f\x8b\x08\x00compressed")],
    });
    let up = MockUpstream::start(Behavior {
        script: Some(script),
        ..Default::default()
    })
    .await;
    let pii = "[pii]\nresponse = { email = \"redact\" }\n";
    let gw = TestGateway::start(&format!("{}{pii}", config(up.addr, "", ""))).await;
    for stream in [false, true] {
        let r = chat(
            &gw,
            false,
            json!({"model": "gpt-4o", "stream": stream, "messages": []}),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        assert_eq!(r.json()["error"]["code"], "answer_unscanned");
    }
    gw.stop().await;
}

/// A policy that allows everything and sets these obligations.
fn policy_config(up: std::net::SocketAddr, obligations: &str, extra: &str) -> (tempfile::TempDir, String) {
    let pol = tempfile::tempdir().unwrap();
    allow_with_obligations(pol.path(), obligations);
    let cfg = format!(
        "[authorization]\npolicy_dir = \"{}\"\n{}{extra}",
        pol.path().display(),
        config(up, "", "")
    );
    (pol, cfg)
}

/// An upstream whose model calls `shell` and then `web_search`.
fn tool_script() -> Script {
    Arc::new(|path: &str, req: &Value| {
        let stream = req["stream"].as_bool().unwrap_or(false);
        let anthropic = path.ends_with("/v1/messages");
        let pieces = match (anthropic, stream) {
            (false, false) => vec![Bytes::from(
                json!({"id": "x", "object": "chat.completion", "created": 1, "model": "gpt-4o",
                       "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                         "tool_calls": [
                           {"id": "t0", "type": "function", "function": {"name": "shell", "arguments": "{\"cmd\":\"rm -rf /\"}"}},
                           {"id": "t1", "type": "function", "function": {"name": "web_search", "arguments": "{\"q\":\"rust\"}"}}]}}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}})
                .to_string(),
            )],
            (true, false) => vec![Bytes::from(
                json!({"id": "m", "type": "message", "role": "assistant", "model": "claude", "stop_reason": "tool_use",
                       "stop_sequence": null, "usage": {"input_tokens": 3, "output_tokens": 9},
                       "content": [{"type": "text", "text": "Looking."},
                                   {"type": "tool_use", "id": "t0", "name": "shell", "input": {"cmd": "rm -rf /"}},
                                   {"type": "tool_use", "id": "t1", "name": "web_search", "input": {"q": "rust"}}]})
                .to_string(),
            )],
            (false, true) => split_reads(openai_sse(vec![
                openai_chunk(json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "t0", "type": "function", "function": {"name": "shell", "arguments": ""}}]}), Value::Null),
                openai_chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"cmd\":\"rm -rf /\"}"}}]}), Value::Null),
                openai_chunk(json!({"tool_calls": [{"index": 1, "id": "t1", "type": "function", "function": {"name": "web_search", "arguments": ""}}]}), Value::Null),
                openai_chunk(json!({"tool_calls": [{"index": 1, "function": {"arguments": "{\"q\":\"rust\"}"}}]}), Value::Null),
                openai_chunk(json!({}), json!("tool_calls")),
            ])),
            (true, true) => split_reads(anthropic_sse(vec![
                anthropic_start(),
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Looking."}}),
                json!({"type": "content_block_stop", "index": 0}),
                json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "t0", "name": "shell", "input": {}}}),
                json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"cmd\": \"rm -rf /\"}"}}),
                json!({"type": "content_block_stop", "index": 1}),
                json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "t1", "name": "web_search", "input": {}}}),
                json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"q\": \"rust\"}"}}),
                json!({"type": "content_block_stop", "index": 2}),
                json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 9}}),
                json!({"type": "message_stop"}),
            ])),
        };
        Scripted {
            content_type: if stream { SSE } else { "application/json" },
            encoding: None,
            pieces,
        }
    })
}

fn offered(anthropic: bool, names: &[&str]) -> Value {
    let tools: Vec<Value> = names
        .iter()
        .map(|n| {
            if anthropic {
                json!({"name": n, "input_schema": {"type": "object"}})
            } else {
                json!({"type": "function", "function": {"name": n, "parameters": {"type": "object"}}})
            }
        })
        .collect();
    Value::Array(tools)
}

/// The tool names a client can see called in an answer, in order.
fn called(r: &Reply, anthropic: bool, stream: bool) -> Vec<String> {
    let name = |v: &Value, ptr: &str| v.pointer(ptr).and_then(Value::as_str).map(str::to_string);
    match (anthropic, stream) {
        (false, false) => r.json()["choices"][0]["message"]["tool_calls"]
            .as_array()
            .map(|a| a.iter().filter_map(|c| name(c, "/function/name")).collect())
            .unwrap_or_default(),
        (true, false) => r.json()["content"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["type"] == "tool_use")
            .filter_map(|b| name(b, "/name"))
            .collect(),
        (false, true) => events(r)
            .iter()
            .filter_map(|v| {
                v.pointer("/choices/0/delta/tool_calls")
                    .and_then(Value::as_array)
                    .cloned()
            })
            .flatten()
            .filter_map(|c| name(&c, "/function/name"))
            .collect(),
        (true, true) => events(r)
            .iter()
            .filter(|v| v["type"] == "content_block_start" && v["content_block"]["type"] == "tool_use")
            .filter_map(|v| name(v, "/content_block/name"))
            .collect(),
    }
}

#[tokio::test]
async fn disallowed_tools_are_neither_offered_to_nor_callable_by_the_model() {
    let up = MockUpstream::start(Behavior {
        script: Some(tool_script()),
        ..Default::default()
    })
    .await;
    let (_pol, cfg) = policy_config(
        up.addr,
        r#"{"allowed_tools": ["web_search"]}"#,
        "[tools]\noffered = \"filter\"\ncalls = \"remove\"\n",
    );
    let gw = TestGateway::start(&cfg).await;
    for anthropic in [false, true] {
        for stream in [false, true] {
            let model = if anthropic { "claude-3-5-haiku" } else { "gpt-4o" };
            let body = json!({"model": model, "max_tokens": 50, "stream": stream,
                              "tools": offered(anthropic, &["shell", "web_search"]),
                              "messages": [{"role": "user", "content": "look up rust"}]});
            let r = chat(&gw, anthropic, body).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            // The upstream was offered only the allowed tool ...
            let sent: Value = serde_json::from_slice(&up.last().body).unwrap();
            assert_eq!(sent["tools"], offered(anthropic, &["web_search"]));
            // ... and the model's call of the other never reached the client.
            let what = format!("anthropic={anthropic} stream={stream}");
            assert_eq!(called(&r, anthropic, stream), vec!["web_search"], "{what}");
            assert!(
                !r.text().contains("shell") && !r.text().contains("rm -rf"),
                "{what}: {}",
                r.text()
            );
            if stream && !anthropic {
                // Indexes stay dense: the kept call is now index 0.
                let indexes: Vec<u64> = events(&r)
                    .iter()
                    .filter_map(|v| {
                        v.pointer("/choices/0/delta/tool_calls/0/index")
                            .and_then(Value::as_u64)
                    })
                    .collect();
                assert!(indexes.iter().all(|i| *i == 0), "{indexes:?}");
            }
        }
    }
    let ends = end_records(&gw, 4).await;
    assert!(
        ends.iter()
            .all(|e| e["content"]["tool_calls_removed"] == json!(["shell"])),
        "{ends:?}"
    );
    gw.stop().await;

    // The defaults: a request offering a disallowed tool is refused and never sent ...
    let (_pol, cfg) = policy_config(up.addr, r#"{"allowed_tools": ["web_search"]}"#, "");
    let gw = TestGateway::start(&cfg).await;
    let before = up.recorded().len();
    for anthropic in [false, true] {
        let model = if anthropic { "claude-3-5-haiku" } else { "gpt-4o" };
        let body = json!({"model": model, "max_tokens": 50, "tools": offered(anthropic, &["shell"]), "messages": []});
        let r = chat(&gw, anthropic, body).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(
            r.text().contains("the tool `shell` is not allowed"),
            "{}",
            r.text()
        );
    }
    assert_eq!(up.recorded().len(), before);
    // ... and a model calling one anyway has its answer stopped.
    for anthropic in [false, true] {
        let model = if anthropic { "claude-3-5-haiku" } else { "gpt-4o" };
        let body = json!({"model": model, "max_tokens": 50, "tools": offered(anthropic, &["web_search"]), "messages": []});
        let r = chat(&gw, anthropic, body.clone()).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN);
        assert!(
            r.text().contains("tool_call_blocked") || r.text().contains("the tool `shell`"),
            "{}",
            r.text()
        );
        assert!(!r.text().contains("rm -rf"));
        let mut body = body;
        body["stream"] = true.into();
        let r = chat(&gw, anthropic, body).await;
        assert!(!r.text().contains("rm -rf"), "{}", r.text());
        assert!(called(&r, anthropic, true).is_empty());
        assert!(
            r.text().contains("the model called the tool `shell`"),
            "{}",
            r.text()
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_locked_principal_reaches_no_other_model_by_alias_or_override() {
    let up = MockUpstream::start(Behavior::default()).await;
    async fn call(gw: &TestGateway, model: &str) -> Reply {
        let anthropic = model.starts_with("claude");
        chat(
            gw,
            anthropic,
            json!({"model": model, "max_tokens": 5, "messages": []}),
        )
        .await
    }

    // Locked to OpenAI's gpt-4o family.
    let (_pol, cfg) = policy_config(
        up.addr,
        r#"{"model_lock": {"models": ["gpt-4o*"], "providers": ["openai"]}}"#,
        "",
    );
    let gw = TestGateway::start(&cfg).await;
    assert_eq!(call(&gw, "gpt-4o").await.status, StatusCode::OK);
    let r = call(&gw, "claude-3-5-haiku").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["error"]["type"], "permission_error");
    let r = call(&gw, "gpt-3.5-turbo").await;
    assert_eq!(r.json()["error"]["code"], "model_locked");
    // `fast` is an alias the lock does not name, even though it is served by gpt-4o-mini.
    assert_eq!(call(&gw, "fast").await.json()["error"]["code"], "model_locked");
    // The mock `demo` model is another provider.
    assert_eq!(call(&gw, "demo").await.json()["error"]["code"], "model_locked");
    gw.stop().await;

    // Locked to `fast`: a name that is served by a model outside the lock is refused too.
    let (_pol, cfg) = policy_config(up.addr, r#"{"model_lock": {"models": ["fast"]}}"#, "");
    let gw = TestGateway::start(&cfg).await;
    let r = call(&gw, "fast").await;
    assert_eq!(r.json()["error"]["code"], "model_locked", "{}", r.text());
    assert!(r.text().contains("served by model `gpt-4o-mini`"), "{}", r.text());
    gw.stop().await;

    // A policy override that leaves the lock is refused, not followed.
    let (_pol, cfg) = policy_config(
        up.addr,
        r#"{"model": "claude-3-5-haiku", "model_lock": {"providers": ["openai"]}}"#,
        "",
    );
    let gw = TestGateway::start(&cfg).await;
    let before = up.recorded().len();
    let r = call(&gw, "gpt-4o").await;
    assert_eq!(r.json()["error"]["code"], "model_locked", "{}", r.text());
    assert_eq!(up.recorded().len(), before);
    gw.stop().await;

    // A malformed lock fails closed.
    let (_pol, cfg) = policy_config(up.addr, r#"{"model_lock": ["gpt-4o"]}"#, "");
    let gw = TestGateway::start(&cfg).await;
    assert_eq!(
        call(&gw, "gpt-4o").await.json()["error"]["code"],
        "policy_invalid"
    );
    gw.stop().await;
}

/// Posts `body` to the OpenAI chat surface as it is.
async fn post_openai(gw: &TestGateway, body: impl Into<Bytes>) -> Reply {
    send(
        gw.addr,
        request(
            Method::POST,
            "/v1/chat/completions",
            &[("content-type", "application/json")],
            body,
        ),
    )
    .await
}

/// Bodies that parse, but not one way only: with a content rule on, each is refused (400 in the
/// client's dialect) and never reaches the upstream. Before, the request scan gave up on them
/// and let them pass with the secret.
#[tokio::test]
async fn bodies_the_content_rules_cannot_read_one_way_are_refused_not_forwarded() {
    let up = MockUpstream::start(Behavior::default()).await;
    let pii = "[pii]\nrequest = { default = \"redact\", secret = \"block\" }\n";
    let gw = TestGateway::start(&format!("{}{pii}", config(up.addr, "", ""))).await;
    let key = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKL";
    let msg = |extra: &str, content: &str| {
        format!(
            r#"{{"model":"gpt-4o","max_tokens":5,{extra}"messages":[{{"role":"user","content":{content}}}]}}"#
        )
        .into_bytes()
    };
    let deep = format!(r#""metadata":{{"x":{}1{}}},"#, "[".repeat(300), "]".repeat(300));
    let mut not_utf8 = msg("", &format!("\"{key} and \u{1}\""));
    let at = not_utf8.iter().position(|&b| b == 1).unwrap();
    not_utf8[at] = 0xff;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a lone surrogate", msg("", &format!(r#""{key} \ud800""#))),
        (
            "a number beyond f64",
            msg(r#""temperature":1e999,"#, &format!("\"{key}\"")),
        ),
        ("a byte that is not UTF-8", not_utf8),
        ("deep nesting", msg(&deep, &format!("\"{key}\""))),
        ("a duplicate key", {
            let mut b = msg("", "\"hi\"");
            let s = String::from_utf8(b.clone()).unwrap();
            b = s
                .replace(
                    r#""content":"hi""#,
                    &format!(r#""content":"{key}","content":"hi""#),
                )
                .into_bytes();
            b
        }),
    ];
    // The control: without an oddity, the secret is what refuses the call.
    let r = post_openai(&gw, msg("", &format!("\"{key}\""))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "pii_blocked");
    for (what, body) in cases {
        let before = up.recorded().len();
        let r = post_openai(&gw, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "unreadable_body", "{what}");
        assert!(!r.text().contains(key), "{what}");
        assert_eq!(up.recorded().len(), before, "{what} reached the upstream");
    }
    // An escape that splits a value for the raw scan (`\/`) is read as the upstream reads it.
    let escaped = msg("", r#""wJalrXUtnFEMI\/K7MDENG\/bPxRfiCYEXAMPLEKEY""#);
    let r = post_openai(&gw, escaped).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "pii_blocked");
    // In the Anthropic dialect too, as its SDK's error.
    let body = format!(
        r#"{{"model":"claude-3-5-haiku","max_tokens":5,"messages":[{{"role":"user","content":"{key}","content":"hi"}}]}}"#
    );
    let r = send(
        gw.addr,
        request(
            Method::POST,
            "/v1/messages",
            &[
                ("content-type", "application/json"),
                ("anthropic-version", "2023-06-01"),
            ],
            body,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["type"], "error");
    assert!(!r.text().contains(key));
    assert!(
        up.recorded().is_empty(),
        "an unreadable body reached the upstream"
    );
    gw.stop().await;
}

/// The tool gate's filter re-reads the body: one it cannot read is refused, not forwarded with
/// the disallowed tool still in it.
#[tokio::test]
async fn the_tool_filter_refuses_a_body_it_cannot_read() {
    let up = MockUpstream::start(Behavior {
        script: Some(tool_script()),
        ..Default::default()
    })
    .await;
    let (_pol, cfg) = policy_config(
        up.addr,
        r#"{"allowed_tools": ["web_search"]}"#,
        "[tools]\noffered = \"filter\"\ncalls = \"remove\"\n",
    );
    let gw = TestGateway::start(&cfg).await;
    let tools = offered(false, &["shell", "web_search"]);
    for oddity in [
        r#""temperature":1e999"#,
        r#""user":"a","user":"b""#,
        r#""user":"\udfff""#,
    ] {
        let body = format!(r#"{{"model":"gpt-4o","max_tokens":5,{oddity},"tools":{tools},"messages":[]}}"#);
        let r = post_openai(&gw, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{oddity}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "unreadable_body");
    }
    assert!(
        up.recorded().is_empty(),
        "a body offering `shell` reached the upstream"
    );
    gw.stop().await;
}

/// An answer meant as JSON that does not read one way only is not passed on: a JSON answer is
/// refused (502), a stream is stopped with an error event before the event goes out.
#[tokio::test]
async fn answers_the_filter_cannot_read_one_way_are_not_passed_on() {
    // `\u0040` hides the e-mail's `@` from a scan of the raw bytes; the lone surrogate made the
    // parse fail, so the filter used to fall back to that raw scan and pass it on.
    const HIDDEN: &str = r#"write to ana.lopez\u0040example.com \ud800"#;
    let script: Script = Arc::new(|_: &str, req: &Value| {
        let json_answer = format!(
            r#"{{"id":"x","object":"chat.completion","created":1,"model":"gpt-4o","choices":[{{"index":0,"finish_reason":"stop","message":{{"role":"assistant","content":"{HIDDEN}"}}}}]}}"#
        );
        if req["stream"] == true {
            let event = format!(
                r#"{{"id":"c1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{{"index":0,"delta":{{"content":"{EMAIL}","content":"hi"}},"finish_reason":null}}]}}"#
            );
            Scripted {
                content_type: SSE,
                encoding: None,
                pieces: vec![
                    Bytes::from(format!(
                        "data: {}\n\n",
                        openai_chunk(json!({"content": "Hello. "}), Value::Null)
                    )),
                    Bytes::from(format!("data: {event}\n\n")),
                    Bytes::from_static(b"data: [DONE]\n\n"),
                ],
            }
        } else {
            Scripted {
                content_type: "application/json",
                encoding: None,
                pieces: vec![Bytes::from(json_answer)],
            }
        }
    });
    let up = MockUpstream::start(Behavior {
        script: Some(script),
        ..Default::default()
    })
    .await;
    let pii = "[pii]\nresponse = { email = \"redact\" }\n";
    let gw = TestGateway::start(&format!("{}{pii}", config(up.addr, "", ""))).await;
    let r = chat(&gw, false, json!({"model": "gpt-4o", "messages": []})).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "answer_unscanned");
    assert!(!r.text().contains("example.com"), "{}", r.text());

    let r = chat(
        &gw,
        false,
        json!({"model": "gpt-4o", "stream": true, "messages": []}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(!r.text().contains(EMAIL), "{}", r.text());
    let evs = events(&r);
    assert_eq!(evs[0]["choices"][0]["delta"]["content"], "Hello. ");
    assert_eq!(
        evs.last().unwrap()["error"]["code"],
        "answer_unscanned",
        "{}",
        r.text()
    );
    let ends = end_records(&gw, 2).await;
    assert!(
        ends.iter()
            .all(|e| e["outcome"] == "stopped" || e["status"] == 502),
        "{ends:?}"
    );
    gw.stop().await;
}

/// OpenAI's legacy `functions` and streamed `function_call` are tools like any other: offering
/// one not allowed is refused, and a stream that calls one is stopped.
#[tokio::test]
async fn legacy_functions_are_governed_like_tools() {
    let script: Script = Arc::new(|_: &str, _: &Value| Scripted {
        content_type: SSE,
        encoding: None,
        pieces: openai_sse(vec![
            openai_chunk(
                json!({"role": "assistant", "function_call": {"name": "shell", "arguments": ""}}),
                Value::Null,
            ),
            openai_chunk(
                json!({"function_call": {"arguments": "{\"cmd\":\"rm -rf /\"}"}}),
                Value::Null,
            ),
            openai_chunk(json!({}), json!("function_call")),
        ]),
    });
    let up = MockUpstream::start(Behavior {
        script: Some(script),
        ..Default::default()
    })
    .await;
    let (_pol, cfg) = policy_config(up.addr, r#"{"allowed_tools": ["web_search"]}"#, "");
    let gw = TestGateway::start(&cfg).await;
    let r = chat(
        &gw,
        false,
        json!({"model": "gpt-4o", "functions": [{"name": "shell", "parameters": {}}], "messages": []}),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "tool_not_allowed");
    assert!(
        up.recorded().is_empty(),
        "a request offering `shell` reached the upstream"
    );
    let r = chat(
        &gw,
        false,
        json!({"model": "gpt-4o", "stream": true, "functions": [{"name": "web_search", "parameters": {}}], "messages": []}),
    )
    .await;
    assert!(!r.text().contains("rm -rf"), "{}", r.text());
    assert_eq!(
        events(&r).last().unwrap()["error"]["code"],
        "tool_call_blocked",
        "{}",
        r.text()
    );
    gw.stop().await;
}

/// A Gemini-kind upstream beside the others, for the gates across translation.
const GEMINI_UPSTREAM: &str = "\n[upstreams.gem]\nkind = \"gemini\"\nbase_url = \"http://UP\"\n\n[[routes]]\nmodel = \"gemini-*\"\nupstream = \"gem\"\n";

/// An upstream that answers Gemini calls by calling `shell` and `web_search`, OpenAI calls with
/// text.
fn gemini_tool_script() -> Script {
    Arc::new(|path: &str, _req: &Value| {
        let answer = json!({"candidates": [{"content": {"role": "model", "parts": [
                      {"functionCall": {"name": "shell", "args": {"cmd": "rm -rf /"}}},
                      {"functionCall": {"name": "web_search", "args": {"q": "rust"}}}]},
                   "finishReason": "STOP", "index": 0}],
                   "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 9, "totalTokenCount": 12}});
        if path.ends_with(":streamGenerateContent") {
            return Scripted {
                content_type: "text/event-stream",
                encoding: None,
                pieces: vec![Bytes::from(format!("data: {answer}\r\n\r\n"))],
            };
        }
        let body = if path.ends_with(":generateContent") {
            answer
        } else {
            json!({"id": "x", "object": "chat.completion", "created": 1, "model": "gpt-4o",
                   "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}],
                   "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
        };
        Scripted {
            content_type: "application/json",
            encoding: None,
            pieces: vec![Bytes::from(body.to_string())],
        }
    })
}

#[tokio::test]
async fn the_tool_gate_holds_across_translation_and_fails_closed_where_it_cannot_read_the_answer() {
    let up = MockUpstream::start(Behavior {
        script: Some(gemini_tool_script()),
        ..Default::default()
    })
    .await;
    let extra = format!(
        "[tools]\noffered = \"filter\"\ncalls = \"remove\"\n{}",
        GEMINI_UPSTREAM.replace("UP", &up.addr.to_string())
    );
    let (_pol, cfg) = policy_config(up.addr, r#"{"allowed_tools": ["web_search"]}"#, &extra);
    let gw = TestGateway::start(&cfg).await;

    // An OpenAI client on a Gemini upstream: Gemini is offered only the allowed tool, and the
    // model's call of the other never reaches the client.
    let body = json!({"model": "gemini-2.5-flash", "tools": offered(false, &["shell", "web_search"]),
                      "messages": [{"role": "user", "content": "look up rust"}]});
    let r = chat(&gw, false, body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let sent: Value = serde_json::from_slice(&up.last().body).unwrap();
    let declared: Vec<&str> = sent["tools"][0]["functionDeclarations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(declared, ["web_search"]);
    assert_eq!(called(&r, false, false), vec!["web_search"]);
    assert!(!r.text().contains("rm -rf"), "{}", r.text());

    // A Gemini client: its offered tools are read from `functionDeclarations` and filtered, and
    // the model's call of the other is taken out of its answer, JSON and stream, read through
    // the canonical model.
    let headers = [("content-type", "application/json")];
    let gemini_body = json!({"contents": [{"role": "user", "parts": [{"text": "look up rust"}]}],
        "tools": [{"functionDeclarations": [{"name": "shell"}, {"name": "web_search"}]}]});
    for method in ["generateContent", "streamGenerateContent?alt=sse"] {
        let path = format!("/v1beta/models/gemini-2.5-flash:{method}");
        let r = send(
            gw.addr,
            request(Method::POST, &path, &headers, gemini_body.to_string()),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{method}: {}", r.text());
        let sent: Value = serde_json::from_slice(&up.last().body).unwrap();
        assert_eq!(
            sent["tools"],
            json!([{"functionDeclarations": [{"name": "web_search"}]}]),
            "{method}"
        );
        let text = r.text();
        assert!(text.contains("\"web_search\""), "{method}: {text}");
        assert!(
            !text.contains("shell") && !text.contains("rm -rf"),
            "{method}: {text}"
        );
    }
    // A built-in tool the caller may not use is taken out of the offer too.
    let builtin = json!({"contents": [{"role": "user", "parts": [{"text": "look up rust"}]}],
        "tools": [{"functionDeclarations": [{"name": "web_search"}], "codeExecution": {}}]});
    let path = "/v1beta/models/gemini-2.5-flash:generateContent";
    let r = send(
        gw.addr,
        request(Method::POST, path, &headers, builtin.to_string()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let sent: Value = serde_json::from_slice(&up.last().body).unwrap();
    assert_eq!(
        sent["tools"],
        json!([{"functionDeclarations": [{"name": "web_search"}]}])
    );
    gw.stop().await;

    // With `offered = "refuse"` the disallowed tool is refused in Gemini's terms.
    let (_pol, cfg) = policy_config(
        up.addr,
        r#"{"allowed_tools": ["web_search"]}"#,
        &GEMINI_UPSTREAM.replace("UP", &up.addr.to_string()),
    );
    let gw = TestGateway::start(&cfg).await;
    let r = send(
        gw.addr,
        request(
            Method::POST,
            "/v1beta/models/gpt-4o:generateContent",
            &headers,
            gemini_body.to_string(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(r.json()["error"]["status"], "PERMISSION_DENIED");
    assert!(r.text().contains("shell"), "{}", r.text());
    // Gemini's built-in tools are tools too: code execution is not `web_search`.
    let builtin = json!({"contents": [{"role": "user", "parts": [{"text": "run it"}]}],
        "tools": [{"functionDeclarations": [{"name": "web_search"}], "codeExecution": {}}]});
    let r = send(
        gw.addr,
        request(
            Method::POST,
            "/v1beta/models/gpt-4o:generateContent",
            &headers,
            builtin.to_string(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert!(r.text().contains("codeExecution"), "{}", r.text());
    gw.stop().await;
}

#[tokio::test]
async fn the_model_lock_holds_for_gemini_clients_and_gemini_upstreams() {
    let up = MockUpstream::start(Behavior {
        script: Some(gemini_tool_script()),
        ..Default::default()
    })
    .await;
    let (_pol, cfg) = policy_config(
        up.addr,
        r#"{"model_lock": {"providers": ["openai"]}}"#,
        &GEMINI_UPSTREAM.replace("UP", &up.addr.to_string()),
    );
    let gw = TestGateway::start(&cfg).await;
    let headers = [("content-type", "application/json")];
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}).to_string();
    // Locked to OpenAI: a Gemini model is refused, whichever dialect asks for it ...
    let r = send(
        gw.addr,
        request(
            Method::POST,
            "/v1beta/models/gemini-2.5-flash:generateContent",
            &headers,
            body.clone(),
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(r.json()["error"]["status"], "PERMISSION_DENIED");
    let r = chat(
        &gw,
        false,
        json!({"model": "gemini-2.5-flash", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(r.json()["error"]["code"], "model_locked", "{}", r.text());
    // ... and an OpenAI model is reached from a Gemini client, translated.
    let r = send(
        gw.addr,
        request(
            Method::POST,
            "/v1beta/models/gpt-4o:generateContent",
            &headers,
            body,
        ),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["candidates"][0]["content"]["parts"][0]["text"], "ok");
    gw.stop().await;
}

#[tokio::test]
async fn pii_in_answers_is_redacted_for_gemini_and_ollama_clients_streams_included() {
    let up = MockUpstream::start(Behavior::default()).await;
    let cfg = format!(
        "{}\n[pii]\nresponse = {{ default = \"redact\" }}\n",
        config(up.addr, "", "")
    );
    let gw = TestGateway::start(&cfg).await;
    let headers = [("content-type", "application/json")];
    // The mock echoes the prompt: the answer carries the address, which must not reach the client.
    let prompt = "mail jane.doe@example.com today";
    let gemini = json!({"contents": [{"role": "user", "parts": [{"text": prompt}]}]}).to_string();
    let ollama = |stream: bool| {
        json!({"model": "demo", "stream": stream, "messages": [{"role": "user", "content": prompt}]})
            .to_string()
    };
    for (path, body) in [
        ("/v1beta/models/demo:generateContent", gemini.clone()),
        ("/v1beta/models/demo:streamGenerateContent?alt=sse", gemini),
        ("/api/chat", ollama(false)),
        ("/api/chat", ollama(true)),
    ] {
        let r = send(gw.addr, request(Method::POST, path, &headers, body)).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        let text = r.text();
        assert!(!text.contains("jane.doe@example.com"), "{path}: {text}");
        assert!(
            text.contains("mail "),
            "{path}: the rest of the answer is kept: {text}"
        );
    }
    gw.stop().await;
}
