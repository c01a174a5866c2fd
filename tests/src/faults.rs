//! A fault-injecting upstream: raw TCP, so it can fail the ways real upstreams do (a reset in
//! the middle of the response head, a hang before it or between events, a stream that dies
//! after some content, a broken event) as well as answer with any status.
//!
//! Each request takes the next fault of its script; when the script is used up, the last one
//! repeats. A healthy answer names the upstream (`from NAME`) so a test sees who answered.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// How one request is answered.
#[derive(Debug, Clone)]
pub enum Fault {
    /// A healthy answer: JSON, or a stream of `events` content events, in the dialect the
    /// path says (OpenAI, or Anthropic for `/v1/messages`).
    Ok,
    /// This status, with an error body in the path's dialect and `Retry-After` when given.
    Status(u16, Option<&'static str>),
    /// Half a response head, then the connection is reset.
    ResetMidHeaders,
    /// The request is read and never answered.
    HangBeforeHeaders,
    /// A stream's head and this many content events, then silence.
    HangAfterEvents(usize),
    /// A stream's head and this many content events, then the connection closes.
    DieAfterEvents(usize),
    /// A stream's head and one event that is not JSON, then the connection closes.
    BrokenEvent,
}

/// See the module documentation.
pub struct FaultyUpstream {
    pub addr: SocketAddr,
    /// Requests received.
    pub hits: Arc<AtomicUsize>,
    /// Their bodies, in order.
    pub bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    script: Arc<Mutex<VecDeque<Fault>>>,
    _stop: oneshot::Sender<()>,
}

/// How many content events a healthy stream has.
pub const EVENTS: usize = 4;

impl FaultyUpstream {
    pub async fn start(name: &str, script: Vec<Fault>) -> FaultyUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let (h, b, s, name) = (hits.clone(), bodies.clone(), script.clone(), name.to_string());
        tokio::spawn(async move {
            loop {
                let (sock, _) = tokio::select! {
                    _ = &mut stopped => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let _ = sock.set_nodelay(true);
                let (h, b, s, name) = (h.clone(), b.clone(), s.clone(), name.clone());
                tokio::spawn(async move { serve(sock, &name, &h, &b, &s).await });
            }
        });
        FaultyUpstream {
            addr,
            hits,
            bodies,
            script,
            _stop: stop,
        }
    }

    /// Replaces what the next requests get.
    pub fn set(&self, script: Vec<Fault>) {
        *self.script.lock().unwrap() = VecDeque::from(script);
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// An address where nothing listens: connections to it are refused.
pub async fn refusing_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Reads one request (head and `content-length` body); `None` when the client went away.
async fn read_request(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())
                        .flatten()
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 8192];
                let n = sock.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..end + 4 + len].to_vec();
            buf.drain(..end + 4 + len);
            let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
            return Some((path, body));
        }
        let mut chunk = [0u8; 8192];
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn serve(
    mut sock: TcpStream,
    name: &str,
    hits: &AtomicUsize,
    bodies: &Mutex<Vec<serde_json::Value>>,
    script: &Mutex<VecDeque<Fault>>,
) {
    let mut buf = Vec::new();
    while let Some((path, body)) = read_request(&mut sock, &mut buf).await {
        hits.fetch_add(1, Ordering::SeqCst);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        bodies.lock().unwrap().push(v.clone());
        let fault = {
            let mut s = script.lock().unwrap();
            if s.len() > 1 {
                s.pop_front()
            } else {
                s.front().cloned()
            }
        }
        .unwrap_or(Fault::Ok);
        let anthropic = path.ends_with("/v1/messages");
        let stream = v["stream"].as_bool().unwrap_or(false);
        let keep = match fault {
            Fault::Ok if stream => {
                write_stream(&mut sock, name, anthropic, EVENTS, true).await;
                false
            }
            Fault::Ok => {
                let text = format!("from {name}");
                let body = if anthropic {
                    serde_json::json!({"id":"msg_1","type":"message","role":"assistant","model":v["model"],
                        "content":[{"type":"text","text":text}],"stop_reason":"end_turn","stop_sequence":null,
                        "usage":{"input_tokens":3,"output_tokens":3}})
                } else {
                    serde_json::json!({"id":"chatcmpl-1","object":"chat.completion","created":1,"model":v["model"],
                        "choices":[{"index":0,"message":{"role":"assistant","content":text},"finish_reason":"stop"}],
                        "usage":{"prompt_tokens":3,"completion_tokens":3,"total_tokens":6}})
                };
                write_json(&mut sock, 200, None, &body.to_string()).await
            }
            Fault::Status(status, retry_after) => {
                let body = if anthropic {
                    let kind = match status {
                        429 => "rate_limit_error",
                        529 => "overloaded_error",
                        s if s >= 500 => "api_error",
                        _ => "invalid_request_error",
                    };
                    serde_json::json!({"type":"error","error":{"type":kind,"message":format!("{name} says {status}")}})
                } else {
                    serde_json::json!({"error":{"message":format!("{name} says {status}"),"type":"upstream_error","code":status.to_string()}})
                };
                write_json(&mut sock, status, retry_after, &body.to_string()).await
            }
            Fault::ResetMidHeaders => {
                let _ = sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-ty").await;
                // A zero linger does not block: the close sends a reset at once.
                #[allow(deprecated)]
                let _ = sock.set_linger(Some(Duration::ZERO));
                false
            }
            Fault::HangBeforeHeaders => {
                // Until the gateway gives up and closes.
                let mut chunk = [0u8; 1];
                let _ = sock.read(&mut chunk).await;
                false
            }
            Fault::HangAfterEvents(n) => {
                write_stream(&mut sock, name, anthropic, n, false).await;
                let mut chunk = [0u8; 1];
                let _ = sock.read(&mut chunk).await;
                false
            }
            Fault::DieAfterEvents(n) => {
                write_stream(&mut sock, name, anthropic, n, false).await;
                false
            }
            Fault::BrokenEvent => {
                let _ = sock.write_all(STREAM_HEAD.as_bytes()).await;
                let _ = sock
                    .write_all(&chunk(b"data: {\"choices\":[{\"delta\"\n\n"))
                    .await;
                false
            }
        };
        if !keep {
            return;
        }
    }
}

const STREAM_HEAD: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";

/// One chunk of a chunked body.
fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// Whether the connection may carry another request.
async fn write_json(sock: &mut TcpStream, status: u16, retry_after: Option<&str>, body: &str) -> bool {
    let mut head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(r) = retry_after {
        head.push_str(&format!("retry-after: {r}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(body);
    sock.write_all(head.as_bytes()).await.is_ok()
}

/// A stream's head, a lifecycle frame, `n` content events (`w0 `, `w1 `, ...) and, when
/// `end`, its proper end (usage, finish and `[DONE]`, or `message_delta` and `message_stop`).
async fn write_stream(sock: &mut TcpStream, name: &str, anthropic: bool, n: usize, end: bool) {
    let mut frames: Vec<String> = Vec::new();
    if anthropic {
        frames.push(format!(
            "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_{name}\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"m\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{{\"input_tokens\":3,\"output_tokens\":1}}}}}}\n\n"
        ));
        frames.push("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".into());
        for i in 0..n {
            frames.push(format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{name}{i} \"}}}}\n\n"));
        }
        if end {
            frames.push(
                "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n".into(),
            );
            frames.push(format!("event: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\",\"stop_sequence\":null}},\"usage\":{{\"output_tokens\":{n}}}}}\n\n"));
            frames.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".into());
        }
    } else {
        let c = |delta: &str, finish: &str| {
            format!(
                "data: {{\"id\":\"chatcmpl-{name}\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"finish_reason\":{finish}}}]}}\n\n"
            )
        };
        frames.push(c("{\"role\":\"assistant\",\"content\":\"\"}", "null"));
        for i in 0..n {
            frames.push(c(&format!("{{\"content\":\"{name}{i} \"}}"), "null"));
        }
        if end {
            frames.push(c("{}", "\"stop\""));
            frames.push(format!("data: {{\"id\":\"chatcmpl-{name}\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[],\"usage\":{{\"prompt_tokens\":3,\"completion_tokens\":{n},\"total_tokens\":{}}}}}\n\n", n + 3));
            frames.push("data: [DONE]\n\n".into());
        }
    }
    if sock.write_all(STREAM_HEAD.as_bytes()).await.is_err() {
        return;
    }
    for f in frames {
        if sock.write_all(&chunk(f.as_bytes())).await.is_err() {
            return;
        }
        let _ = sock.flush().await;
        tokio::task::yield_now().await;
    }
    if end {
        let _ = sock.write_all(b"0\r\n\r\n").await;
    }
}
