//! Translation between dialects over real sockets: an OpenAI client on an Anthropic-kind
//! upstream and the reverse, JSON and streams (arriving in 29-byte pieces), with the gates
//! (budgets from the upstream's usage, the audit record naming both dialects), refusals of what
//! the target cannot carry, upstream errors in the client's terms, and broken streams.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use lattice_tests::{Behavior, MockUpstream, Reply, Script, Scripted, TestGateway, config, request, send};
use serde_json::{Value, json};

const SSE: &str = "text/event-stream";

const BUDGETS: &str = r#"
[budgets]
unknown_model = "default"
default_price = { input = 1.0, output = 2.0, cached_input = 0.1, cache_write = 1.25 }
"#;

fn pieces(events: &[Value], anthropic: bool) -> Vec<Bytes> {
    let mut all = String::new();
    for e in events {
        if anthropic {
            all.push_str(&format!("event: {}\n", e["type"].as_str().unwrap()));
        }
        all.push_str(&format!("data: {e}\n\n"));
    }
    if !anthropic {
        all.push_str("data: [DONE]\n\n");
    }
    all.as_bytes().chunks(29).map(Bytes::copy_from_slice).collect()
}

/// An Anthropic message with text, a tool call and cached usage.
fn anthropic_message() -> Value {
    json!({"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-sonnet-4",
           "content": [{"type": "text", "text": "Checking."},
                       {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}],
           "stop_reason": "tool_use", "stop_sequence": null,
           "usage": {"input_tokens": 10, "output_tokens": 7, "cache_read_input_tokens": 100,
                     "cache_creation_input_tokens": 20}})
}

fn anthropic_stream() -> Vec<Value> {
    vec![
        json!({"type": "message_start", "message": {"id": "msg_02", "type": "message", "role": "assistant",
               "model": "claude-sonnet-4", "content": [], "stop_reason": null, "stop_sequence": null,
               "usage": {"input_tokens": 10, "output_tokens": 1, "cache_read_input_tokens": 100}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "ping"}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Check"}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "ing."}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_02", "name": "get_weather", "input": {}}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": "}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}}),
        json!({"type": "content_block_stop", "index": 1}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 7}}),
        json!({"type": "message_stop"}),
    ]
}

fn openai_completion() -> Value {
    json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
           "choices": [{"index": 0, "finish_reason": "length", "logprobs": null,
                        "message": {"role": "assistant", "content": "Cut sh"}}],
           "usage": {"prompt_tokens": 50, "completion_tokens": 3, "total_tokens": 53,
                     "prompt_tokens_details": {"cached_tokens": 40}}})
}

fn openai_stream() -> Vec<Value> {
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    vec![
        chunk(json!({"role": "assistant", "content": ""}), Value::Null),
        chunk(json!({"content": "On it."}), Value::Null),
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
            Value::Null,
        ),
        chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Oslo\"}"}}]}),
            Value::Null,
        ),
        chunk(json!({}), json!("tool_calls")),
        json!({"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o", "choices": [],
               "usage": {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}}),
    ]
}

/// An upstream answering in the dialect it is called in (by path), JSON or stream.
fn script() -> Script {
    Arc::new(|path: &str, req: &Value| {
        let stream = req["stream"].as_bool().unwrap_or(false);
        let anthropic = path.ends_with("/v1/messages");
        let pieces = match (anthropic, stream) {
            (true, false) => vec![Bytes::from(anthropic_message().to_string())],
            (true, true) => pieces(&anthropic_stream(), true),
            (false, false) => vec![Bytes::from(openai_completion().to_string())],
            (false, true) => pieces(&openai_stream(), false),
        };
        Scripted {
            content_type: if stream { SSE } else { "application/json" },
            encoding: None,
            pieces,
        }
    })
}

async fn start(extra: &str, script: Script) -> (MockUpstream, TestGateway) {
    let up = MockUpstream::start(Behavior {
        script: Some(script),
        ..Default::default()
    })
    .await;
    let gw = TestGateway::start(&format!("{}{extra}", config(up.addr, "", ""))).await;
    (up, gw)
}

async fn openai_call(gw: &TestGateway, body: Value) -> Reply {
    let headers = [
        ("content-type", "application/json"),
        ("authorization", "Bearer sk-client"),
        ("openai-organization", "org-client"),
    ];
    send(
        gw.addr,
        request(Method::POST, "/v1/chat/completions", &headers, body.to_string()),
    )
    .await
}

async fn anthropic_call(gw: &TestGateway, body: Value) -> Reply {
    let headers = [
        ("content-type", "application/json"),
        ("anthropic-version", "2023-06-01"),
        ("anthropic-beta", "some-beta"),
        ("x-api-key", "sk-ant-client"),
    ];
    send(
        gw.addr,
        request(Method::POST, "/v1/messages", &headers, body.to_string()),
    )
    .await
}

fn data_events(r: &Reply) -> Vec<String> {
    r.text()
        .split("\n\n")
        .filter_map(|e| {
            e.lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_string)
        })
        .collect()
}

#[tokio::test]
async fn an_openai_client_calls_an_anthropic_upstream_in_the_upstreams_own_wire() {
    let (up, gw) = start(BUDGETS, script()).await;
    let body = json!({"model": "claude-sonnet-4", "max_tokens": 100,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}],
        "tools": [{"type": "function", "function": {"name": "get_weather",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]});
    let r = openai_call(&gw, body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    // What the upstream received: its own surface, its own credential header, its own body.
    let sent = up.last();
    assert_eq!(sent.uri.path(), "/v1/messages");
    assert_eq!(sent.headers["x-api-key"], "sk-gateway-anthropic");
    assert_eq!(sent.headers["anthropic-version"], "2023-06-01");
    assert!(sent.headers.get("authorization").is_none());
    assert!(
        sent.headers.get("openai-organization").is_none(),
        "the client's dialect headers stay behind"
    );
    let upstream_body: Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(upstream_body["system"][0]["text"], "Be brief.");
    assert_eq!(upstream_body["max_tokens"], 100);
    assert_eq!(
        upstream_body["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]}])
    );
    assert_eq!(
        upstream_body["tools"][0]["input_schema"]["properties"]["city"]["type"],
        "string"
    );
    // What the client received: an OpenAI completion.
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], "Checking.");
    assert_eq!(choice["message"]["tool_calls"][0]["id"], "toolu_01");
    assert_eq!(
        choice["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    let args: Value = serde_json::from_str(
        choice["message"]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    // Cached and cache-write tokens count as prompt tokens, the cached ones reported apart.
    assert_eq!(v["usage"]["prompt_tokens"], 130);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 100);
    assert_eq!(v["usage"]["completion_tokens"], 7);
    // The records name both dialects; the budget meter read the upstream's own usage.
    let decision = &gw.records("call.decision", 1).await[0];
    assert_eq!(decision["dialect"], "openai");
    assert_eq!(decision["upstream_dialect"], "anthropic");
    let end = &gw.records("call.end", 1).await[0];
    assert_eq!(
        end["spend"]["usage"],
        json!({"input": 10, "output": 7, "cached_input": 100, "cache_write": 20}),
        "{end}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn an_anthropic_stream_reaches_an_openai_client_event_by_event() {
    let (_up, gw) = start(BUDGETS, script()).await;
    let body = json!({"model": "claude-sonnet-4", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "Weather in Paris?"}]});
    let r = openai_call(&gw, body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(r.headers["content-type"].to_str().unwrap().starts_with(SSE));
    let events = data_events(&r);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c.pointer("/choices/0/delta/content").and_then(Value::as_str))
        .collect();
    assert_eq!(text, "Checking.");
    let args: String = chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/choices/0/delta/tool_calls/0/function/arguments")
                .and_then(Value::as_str)
        })
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"city": "Paris"})
    );
    let finish: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c.pointer("/choices/0/finish_reason").and_then(Value::as_str))
        .collect();
    assert_eq!(finish, ["tool_calls"]);
    let usage = chunks
        .iter()
        .find_map(|c| c.get("usage").filter(|u| u.is_object()))
        .unwrap();
    assert_eq!(usage["prompt_tokens"], 110);
    assert_eq!(usage["completion_tokens"], 7);
    let end = &gw.records("call.end", 1).await[0];
    assert_eq!(end["outcome"], "complete", "{end}");
    assert_eq!(end["spend"]["usage"]["output"], 7, "{end}");
    assert_eq!(end["spend"]["usage"]["cached_input"], 100, "{end}");
    gw.stop().await;
}

#[tokio::test]
async fn an_anthropic_client_calls_an_openai_upstream_json_and_stream() {
    let (up, gw) = start("", script()).await;
    let body = json!({"model": "gpt-4o", "max_tokens": 3, "system": "Be brief.",
                      "messages": [{"role": "user", "content": "Say a long thing"}]});
    let r = anthropic_call(&gw, body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let sent = up.last();
    assert_eq!(sent.uri.path(), "/v1/chat/completions");
    assert_eq!(sent.headers["authorization"], "Bearer sk-gateway-openai");
    assert!(sent.headers.get("x-api-key").is_none());
    assert!(sent.headers.get("anthropic-beta").is_none());
    let upstream_body: Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(
        upstream_body["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(upstream_body["max_completion_tokens"], 3);
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"], json!([{"type": "text", "text": "Cut sh"}]));
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["usage"]["input_tokens"], 10);
    assert_eq!(v["usage"]["cache_read_input_tokens"], 40);

    let body = json!({"model": "gpt-4o", "max_tokens": 30, "stream": true,
                      "messages": [{"role": "user", "content": "Weather in Oslo?"}]});
    let r = anthropic_call(&gw, body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let upstream_body: Value = serde_json::from_slice(&up.last().body).unwrap();
    assert_eq!(upstream_body["stream_options"]["include_usage"], true);
    let text = r.text();
    let names: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("event: ")).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let events: Vec<Value> = data_events(&r)
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let args: String = events
        .iter()
        .filter_map(|e| e.pointer("/delta/partial_json").and_then(Value::as_str))
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"city": "Oslo"})
    );
    let delta = events.iter().find(|e| e["type"] == "message_delta").unwrap();
    assert_eq!(delta["delta"]["stop_reason"], "tool_use");
    assert_eq!(delta["usage"]["output_tokens"], 9);
    assert_eq!(delta["usage"]["input_tokens"], 30);
    gw.stop().await;
}

#[tokio::test]
async fn what_the_target_cannot_carry_is_refused_before_the_upstream_unless_configured_to_drop() {
    let (up, gw) = start("", script()).await;
    for (field, value) in [("logprobs", json!(true)), ("n", json!(2)), ("seed", json!(7))] {
        let mut body = json!({"model": "claude-sonnet-4", "messages": [{"role": "user", "content": "hi"}]});
        body[field] = value;
        let r = openai_call(&gw, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{field}: {}", r.text());
        let e = &r.json()["error"];
        assert_eq!(e["code"], "unsupported_parameter");
        assert_eq!(e["type"], "invalid_request_error");
        assert!(
            e["message"].as_str().unwrap().contains(&format!("`{field}`")),
            "{e}"
        );
    }
    // An Anthropic server tool has no OpenAI twin.
    let body = json!({"model": "gpt-4o", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}],
                      "tools": [{"type": "web_search_20250305", "name": "web_search"}]});
    let r = anthropic_call(&gw, body).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
    assert!(up.recorded().is_empty(), "nothing refused reaches the upstream");
    gw.stop().await;

    let drop = "[translation.fields]\nlogprobs = \"drop\"\n";
    let (up, gw) = start(drop, script()).await;
    let body = json!({"model": "claude-sonnet-4", "logprobs": true, "user": "u-1",
                      "metadata": {"k": "v"}, "messages": [{"role": "user", "content": "hi"}]});
    let r = openai_call(&gw, body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let dropped = r.headers["x-lattice-dropped-fields"].to_str().unwrap();
    assert_eq!(dropped, "logprobs, metadata");
    let upstream_body: Value = serde_json::from_slice(&up.last().body).unwrap();
    assert!(upstream_body.get("logprobs").is_none());
    assert_eq!(upstream_body["metadata"], json!({"user_id": "u-1"}));
    let decision = &gw.records("call.decision", 1).await[0];
    assert_eq!(decision["dropped"], json!(["logprobs", "metadata"]));
    gw.stop().await;
}

#[tokio::test]
async fn upstream_errors_reach_each_client_in_its_own_terms() {
    for (status, client_anthropic, want_status, want_type) in [
        (529u16, false, 503u16, "service_unavailable"),
        (429, false, 429, "rate_limit_exceeded"),
        (503, true, 529, "overloaded_error"),
        (429, true, 429, "rate_limit_error"),
        (400, true, 400, "invalid_request_error"),
    ] {
        let up = MockUpstream::start(Behavior {
            status: Some(StatusCode::from_u16(status).unwrap()),
            ..Default::default()
        })
        .await;
        let gw = TestGateway::start(&config(up.addr, "", "")).await;
        let r = if client_anthropic {
            anthropic_call(
                &gw,
                json!({"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await
        } else {
            openai_call(
                &gw,
                json!({"model": "claude-x", "messages": [{"role": "user", "content": "hi"}]}),
            )
            .await
        };
        assert_eq!(r.status.as_u16(), want_status, "{status}: {}", r.text());
        let v = r.json();
        if client_anthropic {
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], want_type);
            assert_eq!(v["error"]["message"], "upstream says no");
        } else {
            assert_eq!(v["error"]["type"], want_type);
            assert_eq!(v["error"]["message"], "upstream says no");
        }
        gw.stop().await;
    }
}

#[tokio::test]
async fn a_stream_that_breaks_mid_event_ends_with_an_error_event_never_silently() {
    let broken: Script = Arc::new(|_path: &str, _req: &Value| {
        let mut all: Vec<u8> = pieces(&anthropic_stream()[..4], true).concat();
        all.extend_from_slice(b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"ind");
        Scripted {
            content_type: SSE,
            encoding: None,
            pieces: all.chunks(29).map(Bytes::copy_from_slice).collect(),
        }
    });
    let (_up, gw) = start("", broken).await;
    let body =
        json!({"model": "claude-sonnet-4", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let r = openai_call(&gw, body).await;
    assert_eq!(r.status, StatusCode::OK);
    let events = data_events(&r);
    assert!(
        !events.iter().any(|e| e == "[DONE]"),
        "a broken stream must not look complete: {events:?}"
    );
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("middle of an event"),
        "{last}"
    );
    assert!(
        events.iter().any(|e| e.contains("\"Check\"")),
        "what arrived whole went out first"
    );
    let end = &gw.records("call.end", 1).await[0];
    assert_eq!(end["outcome"], "upstream_failed", "{end}");
    gw.stop().await;
}
