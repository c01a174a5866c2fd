//! Gemini- and Ollama-kind upstreams over real sockets: OpenAI and Anthropic clients reach them
//! by model name alone. Each upstream gets its own URL (Gemini's names the model and method,
//! `alt=sse` for a stream), its own credential header and its own body; its answers (Gemini SSE
//! chunks, Ollama NDJSON lines, arriving in 29-byte pieces) reach each client in its own
//! dialect, tool calls included, and are metered from the upstream's own usage.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use lattice_tests::{Behavior, MockUpstream, Reply, Script, Scripted, TestGateway, config, request, send};
use serde_json::{Value, json};

const EXTRA: &str = r#"
[upstreams.gem]
kind = "gemini"
base_url = "http://UP"
api_key = "gemini-gateway-key"

[upstreams.oll]
kind = "ollama"
base_url = "http://UP"

[[routes]]
model = "gemini-*"
upstream = "gem"

[[routes]]
model = "llama*"
upstream = "oll"

[budgets]
unknown_model = "default"
default_price = { input = 1.0, output = 2.0, cached_input = 0.1, cache_write = 1.25 }
"#;

fn pieces(all: String) -> Vec<Bytes> {
    all.as_bytes().chunks(29).map(Bytes::copy_from_slice).collect()
}

fn gemini_answer() -> Value {
    json!({"candidates": [{"content": {"role": "model", "parts": [
              {"text": "Checking."},
              {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
           "finishReason": "STOP", "index": 0}],
           "usageMetadata": {"promptTokenCount": 110, "candidatesTokenCount": 7, "totalTokenCount": 117,
                             "cachedContentTokenCount": 100},
           "modelVersion": "gemini-2.5-flash", "responseId": "resp-1"})
}

fn gemini_stream() -> String {
    let chunk = |parts: Value, finish: Option<&str>, usage: Value| {
        let mut c = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        if let Some(f) = finish {
            c["finishReason"] = f.into();
        }
        format!(
            "data: {}\r\n\r\n",
            json!({"candidates": [c], "usageMetadata": usage, "modelVersion": "gemini-2.5-flash", "responseId": "resp-2"})
        )
    };
    [
        chunk(json!([{"text": "Sun"}]), None, json!({"promptTokenCount": 12})),
        chunk(json!([{"text": "ny in Paris."}]), None, json!({"promptTokenCount": 12})),
        chunk(
            json!([{"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}]),
            Some("STOP"),
            json!({"promptTokenCount": 12, "candidatesTokenCount": 5, "thoughtsTokenCount": 3, "totalTokenCount": 20}),
        ),
    ]
    .concat()
}

fn ollama_answer() -> Value {
    json!({"model": "llama3.2", "created_at": "2026-12-02T10:00:00Z",
           "message": {"role": "assistant", "content": "Cut sh"},
           "done": true, "done_reason": "length", "total_duration": 5, "load_duration": 1,
           "prompt_eval_count": 21, "prompt_eval_duration": 1, "eval_count": 3, "eval_duration": 1})
}

fn ollama_stream() -> String {
    let line = |m: Value| {
        json!({"model": "llama3.2", "created_at": "2026-12-02T10:00:00Z", "message": m, "done": false})
            .to_string()
            + "\n"
    };
    [
        line(json!({"role": "assistant", "content": "On"})),
        line(json!({"role": "assistant", "content": " it."})),
        line(json!({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]})),
        json!({"model": "llama3.2", "created_at": "2026-12-02T10:00:01Z", "message": {"role": "assistant", "content": ""},
               "done": true, "done_reason": "stop", "total_duration": 9, "load_duration": 1,
               "prompt_eval_count": 30, "prompt_eval_duration": 1, "eval_count": 9, "eval_duration": 1})
        .to_string()
            + "\n",
    ]
    .concat()
}

/// Answers in the dialect its path names.
fn script() -> Script {
    Arc::new(|path: &str, req: &Value| {
        let (content_type, all) = if path.ends_with(":generateContent") {
            ("application/json", gemini_answer().to_string())
        } else if path.ends_with(":streamGenerateContent") {
            ("text/event-stream", gemini_stream())
        } else if path == "/api/chat" && req["stream"] == json!(false) {
            ("application/json", ollama_answer().to_string())
        } else if path == "/api/chat" {
            ("application/x-ndjson", ollama_stream())
        } else if path == "/v1/chat/completions" {
            let answer = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o",
                "choices": [{"index": 0, "finish_reason": "length", "logprobs": null,
                             "message": {"role": "assistant", "content": "Cut sh"}}],
                "usage": {"prompt_tokens": 50, "completion_tokens": 3, "total_tokens": 53,
                          "prompt_tokens_details": {"cached_tokens": 40}}});
            ("application/json", answer.to_string())
        } else {
            panic!("unexpected path {path}");
        };
        Scripted {
            content_type,
            encoding: None,
            pieces: pieces(all),
        }
    })
}

async fn start() -> (MockUpstream, TestGateway) {
    let up = MockUpstream::start(Behavior {
        script: Some(script()),
        ..Default::default()
    })
    .await;
    let extra = EXTRA.replace("UP", &up.addr.to_string());
    let gw = TestGateway::start(&format!("{}{extra}", config(up.addr, "", ""))).await;
    (up, gw)
}

async fn openai_call(gw: &TestGateway, body: Value) -> Reply {
    let headers = [
        ("content-type", "application/json"),
        ("authorization", "Bearer sk-client"),
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
        ("x-api-key", "sk-ant-client"),
    ];
    send(
        gw.addr,
        request(Method::POST, "/v1/messages", &headers, body.to_string()),
    )
    .await
}

fn data_events(r: &Reply) -> Vec<Value> {
    r.text()
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

async fn call_end(gw: &TestGateway) -> Value {
    gw.records("call.end", 1).await.remove(0)
}

const TOOLS: &str = r#"[{"type": "function", "function": {"name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]"#;

#[tokio::test]
async fn an_openai_client_calls_gemini_in_geminis_own_wire() {
    let (up, gw) = start().await;
    let body = json!({"model": "gemini-2.5-flash", "max_tokens": 100,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Paris?"}],
        "tools": serde_json::from_str::<Value>(TOOLS).unwrap()});
    let r = openai_call(&gw, body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let sent = up.last();
    assert_eq!(sent.uri.path(), "/v1beta/models/gemini-2.5-flash:generateContent");
    assert_eq!(sent.headers["x-goog-api-key"], "gemini-gateway-key");
    assert!(
        sent.headers.get("authorization").is_none(),
        "the client's key stays behind"
    );
    let upstream_body: Value = serde_json::from_slice(&sent.body).unwrap();
    assert!(
        upstream_body.get("model").is_none(),
        "Gemini's model is in the URL"
    );
    assert_eq!(
        upstream_body["systemInstruction"]["parts"][0]["text"],
        "Be brief."
    );
    assert_eq!(
        upstream_body["contents"][0]["parts"][0]["text"],
        "Weather in Paris?"
    );
    assert_eq!(upstream_body["generationConfig"]["maxOutputTokens"], 100);
    assert_eq!(
        upstream_body["tools"][0]["functionDeclarations"][0]["name"],
        "get_weather"
    );

    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    assert_eq!(choice["message"]["content"], "Checking.");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(),
        json!({"city": "Paris"})
    );
    assert!(
        !call["id"].as_str().unwrap().is_empty(),
        "a call without an id gets one"
    );
    assert_eq!(v["usage"]["prompt_tokens"], 110);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 100);
    let end = call_end(&gw).await;
    assert_eq!(
        end["spend"]["usage"],
        json!({"input": 10, "output": 7, "cached_input": 100}),
        "{end}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn an_anthropic_client_streams_from_gemini_event_by_event() {
    let (up, gw) = start().await;
    let body = json!({"model": "gemini-2.5-flash", "max_tokens": 50, "stream": true,
        "messages": [{"role": "user", "content": "Weather?"}],
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}]});
    let r = anthropic_call(&gw, body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let sent = up.last();
    assert_eq!(
        sent.uri.path(),
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    );
    assert_eq!(sent.uri.query(), Some("alt=sse"));
    assert!(sent.headers.get("anthropic-version").is_none());
    let events = data_events(&r);
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types.first(), Some(&"message_start"));
    assert_eq!(types.last(), Some(&"message_stop"));
    let text: String = events
        .iter()
        .filter_map(|e| e.pointer("/delta/text").and_then(Value::as_str))
        .collect();
    assert_eq!(text, "Sunny in Paris.");
    let tool = events
        .iter()
        .find(|e| e.pointer("/content_block/type") == Some(&json!("tool_use")))
        .unwrap();
    assert_eq!(tool["content_block"]["name"], "get_weather");
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
    assert_eq!(delta["usage"]["output_tokens"], 8, "thoughts are output: {delta}");
    let end = call_end(&gw).await;
    assert_eq!(end["outcome"], "complete", "{end}");
    assert_eq!(end["spend"]["usage"], json!({"input": 12, "output": 8}), "{end}");
    gw.stop().await;
}

#[tokio::test]
async fn an_openai_client_streams_from_ollama_ndjson_as_server_sent_events() {
    let (up, gw) = start().await;
    let body = json!({"model": "llama3.2", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Weather?"}],
        "tools": serde_json::from_str::<Value>(TOOLS).unwrap()});
    let r = openai_call(&gw, body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.headers["content-type"], "text/event-stream");
    let sent = up.last();
    assert_eq!(sent.uri.path(), "/api/chat");
    assert!(
        sent.headers.get("authorization").is_none(),
        "no key configured, none sent"
    );
    let upstream_body: Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(upstream_body["model"], "llama3.2");
    assert_eq!(upstream_body["stream"], true);
    assert_eq!(upstream_body["tools"][0]["function"]["name"], "get_weather");
    assert!(r.text().ends_with("data: [DONE]\n\n"), "{}", r.text());
    let chunks = data_events(&r);
    let text: String = chunks
        .iter()
        .filter_map(|c| c.pointer("/choices/0/delta/content").and_then(Value::as_str))
        .collect();
    assert_eq!(text, "On it.");
    let call = chunks
        .iter()
        .find_map(|c| c.pointer("/choices/0/delta/tool_calls/0/function/name"))
        .unwrap();
    assert_eq!(call, "get_weather");
    let finish = chunks
        .iter()
        .find_map(|c| c.pointer("/choices/0/finish_reason").filter(|f| !f.is_null()))
        .unwrap();
    assert_eq!(finish, "tool_calls");
    let usage = chunks
        .iter()
        .find_map(|c| c.get("usage").filter(|u| !u.is_null()))
        .unwrap();
    assert_eq!(usage["prompt_tokens"], 30);
    assert_eq!(usage["completion_tokens"], 9);
    let end = call_end(&gw).await;
    assert_eq!(end["spend"]["usage"], json!({"input": 30, "output": 9}), "{end}");
    gw.stop().await;
}

#[tokio::test]
async fn an_anthropic_client_gets_an_ollama_answer_whole_and_ollama_is_told_not_to_stream() {
    let (up, gw) = start().await;
    let body =
        json!({"model": "llama3.2", "max_tokens": 3, "messages": [{"role": "user", "content": "Say more"}]});
    let r = anthropic_call(&gw, body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let upstream_body: Value = serde_json::from_slice(&up.last().body).unwrap();
    assert_eq!(
        upstream_body["stream"], false,
        "Ollama streams unless told not to"
    );
    assert_eq!(upstream_body["options"]["num_predict"], 3);
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"], "Cut sh");
    assert_eq!(v["stop_reason"], "max_tokens");
    assert_eq!(v["usage"]["input_tokens"], 21);
    assert_eq!(v["usage"]["output_tokens"], 3);
    gw.stop().await;
}

#[tokio::test]
async fn a_model_name_that_would_change_geminis_url_is_refused_before_the_upstream() {
    let (up, gw) = start().await;
    for model in ["gemini-x/../../admin", "gemini-x?key=stolen", "gemini-x:other"] {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
        let r = openai_call(&gw, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{model}: {}", r.text());
    }
    assert!(
        up.requests.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );
    gw.stop().await;
}

// ------------------------------------------------------------- Gemini and Ollama clients ----

async fn gemini_call(gw: &TestGateway, path: &str, body: Value) -> Reply {
    let headers = [
        ("content-type", "application/json"),
        ("x-goog-api-key", "client-key"),
    ];
    send(gw.addr, request(Method::POST, path, &headers, body.to_string())).await
}

async fn ollama_call(gw: &TestGateway, body: Value) -> Reply {
    let headers = [("content-type", "application/json")];
    send(
        gw.addr,
        request(Method::POST, "/api/chat", &headers, body.to_string()),
    )
    .await
}

#[tokio::test]
async fn a_gemini_client_reaches_an_openai_upstream_with_the_model_from_its_url() {
    let (up, gw) = start().await;
    let body = json!({"systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [{"role": "user", "parts": [{"text": "Weather in Paris?"}]}],
        "generationConfig": {"maxOutputTokens": 40, "temperature": 0.5}});
    let r = gemini_call(&gw, "/v1beta/models/gpt-4o:generateContent?key=ignored", body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let sent = up.last();
    assert_eq!(sent.uri.path(), "/v1/chat/completions");
    assert_eq!(
        sent.uri.query(),
        None,
        "the client's query (and a key in it) stays behind"
    );
    assert!(sent.headers.get("x-goog-api-key").is_none());
    let b: Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(b["model"], "gpt-4o");
    assert_eq!(
        b["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert_eq!(b["max_completion_tokens"], 40);
    let v = r.json();
    assert_eq!(v["candidates"][0]["content"]["parts"][0]["text"], "Cut sh");
    assert_eq!(v["candidates"][0]["finishReason"], "MAX_TOKENS");
    assert_eq!(v["usageMetadata"]["promptTokenCount"], 50);
    assert_eq!(v["usageMetadata"]["cachedContentTokenCount"], 40);
    let decision = gw.records("call.decision", 1).await.remove(0);
    assert_eq!(decision["dialect"], "gemini", "{decision}");
    assert_eq!(decision["upstream_dialect"], "openai", "{decision}");
    gw.stop().await;
}

#[tokio::test]
async fn a_gemini_client_streams_from_the_mock_and_errors_come_in_its_dialect() {
    let (up, gw) = start().await;
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "one two three"}]}]});
    let r = gemini_call(
        &gw,
        "/v1beta/models/demo:streamGenerateContent?alt=sse",
        body.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.headers["content-type"], "text/event-stream");
    let chunks = data_events(&r);
    let text: String = chunks
        .iter()
        .filter_map(|c| {
            c.pointer("/candidates/0/content/parts/0/text")
                .and_then(Value::as_str)
        })
        .collect();
    assert_eq!(
        text,
        "Hello from the Lattice mock provider. You said: one two three"
    );
    let last = chunks.last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(last["usageMetadata"]["promptTokenCount"], 3);

    let r = gemini_call(&gw, "/v1beta/models/no-such-model:generateContent", body).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], 404);
    assert_eq!(v["error"]["status"], "NOT_FOUND", "{v}");
    let r = gemini_call(&gw, "/v1beta/models/demo:generateContent", json!({"contents": 7})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    assert_eq!(r.json()["error"]["status"], "INVALID_ARGUMENT");
    // Without `alt=sse`, Gemini would stream one JSON array: refused, not answered in events.
    for path in [
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=json",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?salt=sse",
    ] {
        let body = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});
        let r = gemini_call(&gw, path, body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["status"], "INVALID_ARGUMENT", "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("alt=sse"), "{v}");
    }
    assert!(
        up.requests.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );
    gw.stop().await;
}

#[tokio::test]
async fn an_ollama_client_streams_ndjson_from_an_anthropic_upstream_and_lists_models() {
    let up = MockUpstream::start(Behavior {
        script: Some(Arc::new(|_path: &str, _req: &Value| {
            let events = [
                json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                       "model": "claude-x", "content": [], "usage": {"input_tokens": 9, "output_tokens": 1}}}),
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi "}}),
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "there"}}),
                json!({"type": "content_block_stop", "index": 0}),
                json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2}}),
                json!({"type": "message_stop"}),
            ];
            let all: String = events
                .iter()
                .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
                .collect();
            Scripted {
                content_type: "text/event-stream",
                encoding: None,
                pieces: pieces(all),
            }
        })),
        ..Default::default()
    })
    .await;
    let gw = TestGateway::start(&config(up.addr, "", "")).await;
    // No `stream` field: Ollama streams.
    let r = ollama_call(
        &gw,
        json!({"model": "claude-x", "messages": [{"role": "user", "content": "hello"}]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.headers["content-type"], "application/x-ndjson");
    let sent: Value = serde_json::from_slice(&up.last().body).unwrap();
    assert_eq!(sent["stream"], true);
    let lines: Vec<Value> = r
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let text: String = lines
        .iter()
        .filter_map(|l| l.pointer("/message/content").and_then(Value::as_str))
        .collect();
    assert_eq!(text, "Hi there");
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    assert_eq!(last["prompt_eval_count"], 9);
    assert_eq!(last["eval_count"], 2);

    let r = send(gw.addr, request(Method::GET, "/api/tags", &[], String::new())).await;
    assert_eq!(r.status, StatusCode::OK);
    let names: Vec<String> = r.json()["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    assert!(names.contains(&"demo".to_string()), "{names:?}");
    gw.stop().await;
}

/// With answer rules, a Gemini or Ollama client's answers go through the filter by way of the
/// canonical model. An upstream's error is not an answer in any dialect: it reaches the client
/// with its own status, its strings scanned (an address in it redacted), not as a 502. A 2xx
/// answer the canonical model cannot read is refused (502 `answer_unscanned`) and recorded as
/// stopped by the content gate.
#[tokio::test]
async fn with_answer_rules_gemini_and_ollama_clients_get_upstream_errors_scanned_not_replaced() {
    const EMAIL: &str = "ops@corp.example";
    let script: Script = Arc::new(|path: &str, _req: &Value| {
        let body = if path.contains(":generateContent") {
            json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                             "message": format!("Quota exceeded; write to {EMAIL}")}})
        } else {
            json!({"error": format!("model not found; write to {EMAIL}")})
        };
        Scripted {
            content_type: "application/json",
            encoding: None,
            pieces: pieces(body.to_string()),
        }
    });
    let up = MockUpstream::start(Behavior {
        script: Some(script),
        status: Some(StatusCode::TOO_MANY_REQUESTS),
        ..Default::default()
    })
    .await;
    let extra = EXTRA.replace("UP", &up.addr.to_string());
    let pii = "[pii]\nresponse = { email = \"redact\" }\n";
    let gw = TestGateway::start(&format!("{}{extra}{pii}", config(up.addr, "", ""))).await;

    let body = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});
    let r = gemini_call(&gw, "/v1beta/models/gemini-2.5-flash:generateContent", body).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert!(!r.text().contains(EMAIL), "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Quota exceeded; write to "),
        "{v}"
    );

    let body = json!({"model": "llama3.2", "stream": false, "messages": [{"role": "user", "content": "hi"}]});
    let r = ollama_call(&gw, body).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text());
    assert!(!r.text().contains(EMAIL), "{}", r.text());
    assert!(
        r.json()["error"].as_str().unwrap().starts_with("model not found"),
        "{}",
        r.text()
    );
    gw.stop().await;

    // A 2xx answer with two candidates: the canonical model holds one.
    let script: Script = Arc::new(|_path: &str, _req: &Value| {
        let c =
            |t: &str| json!({"content": {"role": "model", "parts": [{"text": t}]}, "finishReason": "STOP"});
        Scripted {
            content_type: "application/json",
            encoding: None,
            pieces: pieces(json!({"candidates": [c("one"), c(EMAIL)]}).to_string()),
        }
    });
    let up = MockUpstream::start(Behavior {
        script: Some(script),
        ..Default::default()
    })
    .await;
    let extra = EXTRA.replace("UP", &up.addr.to_string());
    let gw = TestGateway::start(&format!("{}{extra}{pii}", config(up.addr, "", ""))).await;
    let body = json!({"contents": [{"role": "user", "parts": [{"text": "hi"}]}]});
    let r = gemini_call(&gw, "/v1beta/models/gemini-2.5-flash:generateContent", body).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(!r.text().contains(EMAIL), "{}", r.text());
    assert_eq!(r.json()["error"]["code"], 502, "{}", r.text());
    let end = call_end(&gw).await;
    assert_eq!(end["content"]["stopped"], "answer_unscanned", "{end}");
    gw.stop().await;
}
