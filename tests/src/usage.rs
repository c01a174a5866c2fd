//! An upstream that reports token usage as the providers do, and counts what it generated:
//! the ground truth the budget tests compare the gateway's ledger with.
//!
//! Every answer has 9 prompt tokens, 2 of them cached (OpenAI: `prompt_tokens` 9 with
//! `cached_tokens` 2; Anthropic: `input_tokens` 7 and `cache_read_input_tokens` 2), and
//! `max_tokens` output tokens (5 when the request sets none): one per streamed delta. A stream's
//! output token counts as generated once hyper takes its event to write it to the connection.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A stream body that counts each event's output tokens when hyper takes the event to write it.
pub struct CountingBody {
    rx: tokio::sync::mpsc::Receiver<(Bytes, u64)>,
    counters: Arc<Counters>,
    request_id: String,
}

impl http_body::Body for CountingBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        this.rx.poll_recv(cx).map(|o| {
            o.map(|(b, tokens)| {
                this.counters.add(&this.request_id, tokens);
                Ok(http_body::Frame::data(b))
            })
        })
    }
}

pub const PROMPT_TOKENS: u64 = 9;
pub const CACHED_TOKENS: u64 = 2;
pub const DEFAULT_OUTPUT: u64 = 5;

#[derive(Default)]
pub struct Counters {
    /// Output tokens generated (handed to the connection), over all calls.
    pub generated: AtomicU64,
    pub calls: AtomicU64,
    /// Calls whose request asked for stream usage (`stream_options.include_usage`).
    pub asked_usage: AtomicU64,
    /// Output tokens generated per call, by the request's `x-request-id`.
    pub by_request: std::sync::Mutex<std::collections::HashMap<String, u64>>,
}

impl Counters {
    fn add(&self, request_id: &str, tokens: u64) {
        self.generated.fetch_add(tokens, Ordering::SeqCst);
        *self
            .by_request
            .lock()
            .unwrap()
            .entry(request_id.to_string())
            .or_default() += tokens;
    }
}

pub struct UsageUpstream {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    _stop: oneshot::Sender<()>,
}

type Body = http_body_util::Either<Full<Bytes>, CountingBody>;

impl UsageUpstream {
    /// `pace`: the pause before each streamed event after the first.
    pub async fn start(pace: Option<Duration>) -> UsageUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let (stop, mut stopped) = oneshot::channel::<()>();
        let c = counters.clone();
        tokio::spawn(async move {
            loop {
                let (sock, _) = tokio::select! {
                    _ = &mut stopped => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let c = c.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let c = c.clone();
                        async move { Ok::<_, Infallible>(answer(req, c, pace).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        UsageUpstream {
            addr,
            counters,
            _stop: stop,
        }
    }

    pub fn generated(&self) -> u64 {
        self.counters.generated.load(Ordering::SeqCst)
    }
}

fn sse(event: Option<&str>, data: &serde_json::Value) -> Bytes {
    match event {
        Some(e) => Bytes::from(format!("event: {e}\ndata: {data}\n\n")),
        None => Bytes::from(format!("data: {data}\n\n")),
    }
}

async fn answer(req: Request<Incoming>, c: Arc<Counters>, pace: Option<Duration>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    c.calls.fetch_add(1, Ordering::SeqCst);
    // `x-test-overshoot: N`: generate N tokens past max_tokens (a misbehaving upstream).
    let overshoot = parts
        .headers
        .get("x-test-overshoot")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(0);
    let n = v["max_tokens"]
        .as_u64()
        .or(v["max_completion_tokens"].as_u64())
        .unwrap_or(DEFAULT_OUTPUT)
        + overshoot;
    let anthropic = parts.uri.path().ends_with("/v1/messages");
    let request_id = parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let stream = v["stream"].as_bool().unwrap_or(false);
    let include_usage = v["stream_options"]["include_usage"].as_bool().unwrap_or(false);
    if include_usage {
        c.asked_usage.fetch_add(1, Ordering::SeqCst);
    }
    let openai_usage = json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": n,
        "total_tokens": PROMPT_TOKENS + n, "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS}});
    let anthropic_usage = |output: u64| {
        json!({"input_tokens": PROMPT_TOKENS - CACHED_TOKENS, "cache_read_input_tokens": CACHED_TOKENS,
               "output_tokens": output})
    };
    if !stream {
        c.add(&request_id, n);
        let text: String = (0..n).map(|i| format!("t{i} ")).collect();
        let out = if anthropic {
            json!({"id": "msg_u", "type": "message", "role": "assistant", "model": v["model"],
                   "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                   "stop_sequence": null, "usage": anthropic_usage(n)})
        } else {
            json!({"id": "chatcmpl-u", "object": "chat.completion", "created": 1, "model": v["model"],
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop"}], "usage": openai_usage})
        };
        let mut r = Response::new(http_body_util::Either::Left(Full::new(Bytes::from(
            out.to_string(),
        ))));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        return r;
    }
    // (event, tokens it carries)
    let mut events: Vec<(Bytes, u64)> = Vec::new();
    if anthropic {
        events.push((
            sse(
                Some("message_start"),
                &json!({"type": "message_start", "message": {"id": "msg_u", "type": "message",
                "role": "assistant", "model": v["model"], "content": [], "stop_reason": null,
                "usage": anthropic_usage(1)}}),
            ),
            0,
        ));
        events.push((
            sse(
                Some("content_block_start"),
                &json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ),
            0,
        ));
        for i in 0..n {
            events.push((
                sse(
                    Some("content_block_delta"),
                    &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": format!("t{i} ")}}),
                ),
                1,
            ));
        }
        events.push((
            sse(
                Some("content_block_stop"),
                &json!({"type": "content_block_stop", "index": 0}),
            ),
            0,
        ));
        events.push((
            sse(
                Some("message_delta"),
                &json!({"type": "message_delta", "delta": {"stop_reason": "end_turn",
                "stop_sequence": null}, "usage": {"output_tokens": n}}),
            ),
            0,
        ));
        events.push((sse(Some("message_stop"), &json!({"type": "message_stop"})), 0));
    } else {
        let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
            let mut c = json!({"id": "chatcmpl-u", "object": "chat.completion.chunk", "created": 1,
                "model": v["model"], "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
            if include_usage {
                c["usage"] = serde_json::Value::Null;
            }
            c
        };
        events.push((
            sse(
                None,
                &chunk(json!({"role": "assistant", "content": ""}), json!(null)),
            ),
            0,
        ));
        for i in 0..n {
            events.push((
                sse(None, &chunk(json!({"content": format!("t{i} ")}), json!(null))),
                1,
            ));
        }
        events.push((sse(None, &chunk(json!({}), json!("stop"))), 0));
        if include_usage {
            events.push((
                sse(
                    None,
                    &json!({"id": "chatcmpl-u", "object": "chat.completion.chunk", "created": 1,
                    "model": v["model"], "choices": [], "usage": openai_usage}),
                ),
                0,
            ));
        }
        events.push((Bytes::from_static(b"data: [DONE]\n\n"), 0));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<(Bytes, u64)>(1);
    tokio::spawn(async move {
        for (i, ev) in events.into_iter().enumerate() {
            if i > 0
                && let Some(p) = pace
            {
                tokio::time::sleep(p).await;
            }
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    });
    let mut r = Response::new(http_body_util::Either::Right(CountingBody {
        rx,
        counters: c,
        request_id,
    }));
    *r.status_mut() = StatusCode::OK;
    r.headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    r
}
