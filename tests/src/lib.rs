//! Helpers for the whole-gateway integration tests (`tests/tests/*.rs`): an in-process mock
//! upstream written here that records what it receives, gateways started on free loopback ports
//! from a TOML text, and HTTP/1.1, h2c and TLS (optionally mTLS) clients.
//!
//! No global state: every test starts its own upstream and gateway, so tests run in parallel.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use lattice_gateway::{Config, Server};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, oneshot};

/// What the mock upstream received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// How the mock upstream answers.
#[derive(Clone, Default)]
pub struct Behavior {
    /// Events in a streamed answer (default 4).
    pub chunks: Option<usize>,
    /// When set, every event after the first waits for one permit: the test decides when the
    /// upstream sends more, so "forwarded as it arrives" needs no timing.
    pub gate: Option<Arc<Semaphore>>,
    /// Never answer (to test timeouts).
    pub hang: bool,
    /// Answer with this status and a fixed OpenAI-style error body (with a script: the
    /// script's body).
    pub status: Option<StatusCode>,
    /// Answer with what this returns for the request's path and JSON body: a content type and
    /// the body's pieces, each handed to the connection on its own.
    pub script: Option<Script>,
}

/// See [`Behavior::script`].
pub type Script = Arc<dyn Fn(&str, &serde_json::Value) -> Scripted + Send + Sync>;

/// A scripted answer.
pub struct Scripted {
    pub content_type: &'static str,
    /// A `content-encoding` to declare (the pieces are sent as they are).
    pub encoding: Option<&'static str>,
    pub pieces: Vec<Bytes>,
}

pub struct MockUpstream {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    /// Set when a streamed answer could not be delivered because the reader went away.
    pub cancelled: Arc<AtomicBool>,
    pub cancelled_notify: Arc<Notify>,
    /// Events of streamed answers actually handed to the connection.
    pub events_sent: Arc<AtomicUsize>,
    /// Set when a hanging answer was abandoned (its connection closed by the gateway).
    pub hang_abandoned: Arc<AtomicBool>,
    _stop: oneshot::Sender<()>,
}

impl MockUpstream {
    pub async fn start(behavior: Behavior) -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let cancelled = Arc::new(AtomicBool::new(false));
        let cancelled_notify = Arc::new(Notify::new());
        let events_sent = Arc::new(AtomicUsize::new(0));
        let hang_abandoned = Arc::new(AtomicBool::new(false));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let shared = Arc::new(Shared {
            behavior,
            requests: requests.clone(),
            cancelled: cancelled.clone(),
            cancelled_notify: cancelled_notify.clone(),
            events_sent: events_sent.clone(),
            hang_abandoned: hang_abandoned.clone(),
        });
        tokio::spawn(async move {
            loop {
                let (sock, _) = tokio::select! {
                    _ = &mut stopped => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(shared.answer(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        MockUpstream {
            addr,
            requests,
            cancelled,
            cancelled_notify,
            events_sent,
            hang_abandoned,
            _stop: stop,
        }
    }

    pub fn recorded(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.recorded().pop().expect("the upstream received no request")
    }
}

struct Shared {
    behavior: Behavior,
    requests: Arc<Mutex<Vec<Recorded>>>,
    cancelled: Arc<AtomicBool>,
    cancelled_notify: Arc<Notify>,
    events_sent: Arc<AtomicUsize>,
    hang_abandoned: Arc<AtomicBool>,
}

/// Sets its flag when dropped: hyper drops a request's handler when its connection closes.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

type MockBody = http_body_util::Either<Full<Bytes>, ChannelBody>;

impl Shared {
    async fn answer(&self, req: Request<Incoming>) -> Response<MockBody> {
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
        self.requests.lock().unwrap().push(Recorded {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            body: body.clone(),
        });
        if self.behavior.hang {
            let _abandoned = SetOnDrop(self.hang_abandoned.clone());
            std::future::pending::<()>().await;
        }
        if let Some(status) = self.behavior.status.filter(|_| self.behavior.script.is_none()) {
            return json(
                status,
                r#"{"error":{"message":"upstream says no","type":"upstream_error","code":"x"}}"#,
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if let Some(script) = &self.behavior.script {
            let Scripted {
                content_type,
                encoding,
                pieces,
            } = script(parts.uri.path(), &v);
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
            tokio::spawn(async move {
                for p in pieces {
                    if tx.send(p).await.is_err() {
                        return;
                    }
                    tokio::task::yield_now().await;
                }
            });
            let mut resp = Response::new(http_body_util::Either::Right(ChannelBody(rx)));
            if let Some(status) = self.behavior.status {
                *resp.status_mut() = status;
            }
            resp.headers_mut()
                .insert("content-type", content_type.parse().unwrap());
            if let Some(e) = encoding {
                resp.headers_mut().insert("content-encoding", e.parse().unwrap());
            }
            return resp;
        }
        let model = v["model"].as_str().unwrap_or("").to_string();
        let stream = v["stream"].as_bool().unwrap_or(false);
        let path = parts.uri.path().to_string();
        let anthropic = path.ends_with("/v1/messages");
        if path.ends_with("/embeddings") {
            return json(
                StatusCode::OK,
                r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5,0.5]}],"model":"m","usage":{"prompt_tokens":1,"total_tokens":1}}"#,
            );
        }
        if path.ends_with("/count_tokens") {
            return json(StatusCode::OK, r#"{"input_tokens":42}"#);
        }
        if !stream {
            let text = if anthropic {
                serde_json::json!({"id":"msg_up","type":"message","role":"assistant","model":model,
                    "content":[{"type":"text","text":"upstream says hi"}],"stop_reason":"end_turn",
                    "stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":3}})
            } else {
                serde_json::json!({"id":"chatcmpl-up","object":"chat.completion","created":1,"model":model,
                    "choices":[{"index":0,"message":{"role":"assistant","content":"upstream says hi"},"finish_reason":"stop"}],
                    "usage":{"prompt_tokens":3,"completion_tokens":3,"total_tokens":6}})
            };
            return json(StatusCode::OK, &text.to_string());
        }
        let n = self.behavior.chunks.unwrap_or(4);
        let events: Vec<Bytes> = (0..n)
            .map(|i| {
                if anthropic {
                    Bytes::from(format!(
                        "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"w{i} \"}}}}\n\n"
                    ))
                } else {
                    Bytes::from(format!(
                        "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{i} \"}}}}]}}\n\n"
                    ))
                }
            })
            .chain(std::iter::once(Bytes::from_static(if anthropic {
                b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"
            } else {
                b"data: [DONE]\n\n"
            })))
            .collect();
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let gate = self.behavior.gate.clone();
        let cancelled = self.cancelled.clone();
        let notify = self.cancelled_notify.clone();
        let sent = self.events_sent.clone();
        tokio::spawn(async move {
            for (i, ev) in events.into_iter().enumerate() {
                if i > 0
                    && let Some(g) = &gate
                {
                    g.acquire().await.unwrap().forget();
                }
                if tx.send(ev).await.is_err() {
                    cancelled.store(true, Ordering::SeqCst);
                    notify.notify_waiters();
                    return;
                }
                sent.fetch_add(1, Ordering::SeqCst);
            }
        });
        let mut resp = Response::new(http_body_util::Either::Right(ChannelBody(rx)));
        resp.headers_mut()
            .insert("content-type", "text/event-stream".parse().unwrap());
        resp.headers_mut()
            .insert("x-upstream-header", "kept".parse().unwrap());
        resp.headers_mut()
            .insert("connection", "keep-alive".parse().unwrap());
        resp
    }
}

fn json(status: StatusCode, body: &str) -> Response<MockBody> {
    let mut r = Response::new(http_body_util::Either::Left(Full::new(Bytes::from(
        body.to_string(),
    ))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r.headers_mut()
        .insert("x-upstream-header", "kept".parse().unwrap());
    r
}

pub mod faults;
pub mod usage;

/// A streamed body fed by a channel: the sender learns when the reader has gone.
pub struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

// ---------------------------------------------------------------------------------------------
// Gateways.

pub struct TestGateway {
    pub addr: SocketAddr,
    /// The metrics listener, with `[server] metrics_listen`.
    pub metrics_addr: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestGateway {
    /// The payloads of the gateway's audit records of `kind` (`call.decision`, `call.end`, ...),
    /// once there are at least `n` (records are written as the response ends, so a test that
    /// has its answer may still have to wait a moment for them).
    pub async fn records(&self, kind: &str, n: usize) -> Vec<serde_json::Value> {
        for _ in 0..200 {
            let log = lattice_audit::DiskStorage::open(&self.dir.path().join("lattice-data/audit"))
                .expect("the audit log opens");
            let mut out = Vec::new();
            lattice_audit::verify::for_each_record(&log, |r| {
                if r.event.kind == kind {
                    out.push(serde_json::from_slice(&r.event.payload).unwrap_or_default());
                }
            })
            .expect("the audit log reads");
            if out.len() >= n {
                return out;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("fewer than {n} {kind} records");
    }

    /// Starts a gateway from `toml` (relative paths resolve against a fresh temp dir, which
    /// [`TestGateway::dir`] keeps alive). Use `listen = "127.0.0.1:0"`.
    pub async fn start(toml: &str) -> TestGateway {
        let dir = tempfile::tempdir().unwrap();
        TestGateway::start_in(dir, toml).await
    }

    pub async fn start_in(dir: tempfile::TempDir, toml: &str) -> TestGateway {
        TestGateway::start_with(dir, toml, None).await
    }

    /// A gateway whose audit log lives on `audit` (a fault-injecting storage, say).
    pub async fn start_with(
        dir: tempfile::TempDir,
        toml: &str,
        audit: Option<Arc<dyn lattice_audit::Storage>>,
    ) -> TestGateway {
        let path = dir.path().join("lattice.toml");
        std::fs::write(&path, toml).unwrap();
        let config = Config::from_str_with_env(&path, toml, &|_| None).unwrap_or_else(|e| panic!("{e}"));
        let server = Server::bind_with_audit_storage(&config, audit)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = server.local_addr();
        let metrics_addr = server.metrics_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(
                    async {
                        let _ = stopped.await;
                    },
                    Duration::from_secs(1),
                )
                .await
        });
        TestGateway {
            addr,
            metrics_addr,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// The standard test configuration: OpenAI- and Anthropic-kind upstreams pointing at `up`, the
/// built-in mock as `demo`, a renaming alias and two deny rules. `server_extra` lands in
/// `[server]`, `upstream_extra` in both HTTP upstreams.
/// Writes into `dir` a policy bundle that allows every call and sets `obligations` (a JSON
/// object), replacing what was there.
pub fn allow_with_obligations(dir: &Path, obligations: &str) {
    std::fs::write(
        dir.join("p.rego"),
        format!(
            "package lattice.authz\nimport rego.v1\ndecision := {{\"allow\": true, \"reasons\": [], \"obligations\": {obligations}}}\n"
        ),
    )
    .unwrap();
}

pub fn config(up: SocketAddr, server_extra: &str, upstream_extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
{server_extra}

[upstreams.oa]
kind = "openai"
base_url = "http://{up}/v1"
api_key = "sk-gateway-openai"
{upstream_extra}

[upstreams.an]
kind = "anthropic"
base_url = "http://{up}"
api_key = "sk-gateway-anthropic"
{upstream_extra}

[upstreams.mock]
kind = "mock"

[[routes]]
model = "gpt-*"
upstream = "oa"

[[routes]]
model = "claude-*"
upstream = "an"

[[routes]]
model = "fast"
upstream = "oa"
upstream_model = "gpt-4o-mini"

[[routes]]
model = "demo"
upstream = "mock"
aliases = ["demo-alias"]

[[deny]]
model = "forbidden-*"
status = 403
message = "blocked by the test gate"

[[deny]]
model = "limited"
status = 429
message = "slow down"
"#
    )
}

// ---------------------------------------------------------------------------------------------
// Clients.

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request with a body, ready for [`send`].
pub fn request(
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body.into())).unwrap()
}

/// Sends one request over a fresh HTTP/1.1 connection and returns the response head and body
/// stream.
pub async fn send_streaming(addr: SocketAddr, mut req: Request<Full<Bytes>>) -> Response<Incoming> {
    let sock = TcpStream::connect(addr).await.unwrap();
    sock.set_nodelay(true).unwrap();
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(sock))
        .await
        .unwrap();
    tokio::spawn(conn);
    if !req.headers().contains_key("host") {
        req.headers_mut()
            .insert("host", addr.to_string().parse().unwrap());
    }
    tx.send_request(req).await.unwrap()
}

/// Sends one request over a fresh HTTP/1.1 connection and collects the response.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    collect(send_streaming(addr, req).await).await
}

pub async fn collect(resp: Response<Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(Duration::from_secs(20), body.collect())
        .await
        .expect("response body timed out")
        .unwrap()
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// Sends one request over HTTP/2 with prior knowledge (h2c).
pub async fn send_h2c(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    let sock = TcpStream::connect(addr).await.unwrap();
    let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(sock))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (mut parts, body) = req.into_parts();
    parts.uri = format!("http://{addr}{}", parts.uri).parse().unwrap();
    parts.version = Version::HTTP_2;
    collect(tx.send_request(Request::from_parts(parts, body)).await.unwrap()).await
}

/// A TLS client: trusts `ca`, presents `client` (cert, key) when given, offers `alpn`.
pub fn tls_client(ca: &Path, client: Option<(&Path, &Path)>, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match client {
        None => b.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            b.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
                .unwrap()
        }
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// One request over TLS to `localhost`; `Err` when the handshake or the request fails (with
/// TLS 1.3 a refused client certificate surfaces on the first read, not in the handshake).
pub async fn send_tls(
    addr: SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    req: Request<Full<Bytes>>,
) -> Result<(Version, Reply), String> {
    let sock = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), sock)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let (mut parts, body) = req.into_parts();
    let resp = if h2 {
        let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        parts.uri = format!("https://localhost:{}{}", addr.port(), parts.uri)
            .parse()
            .unwrap();
        parts.version = Version::HTTP_2;
        tx.send_request(Request::from_parts(parts, body))
            .await
            .map_err(|e| format!("request: {e}"))?
    } else {
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("h1: {e}"))?;
        tokio::spawn(conn);
        parts.headers.insert("host", "localhost".parse().unwrap());
        tx.send_request(Request::from_parts(parts, body))
            .await
            .map_err(|e| format!("request: {e}"))?
    };
    let version = resp.version();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
    Ok((
        version,
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        },
    ))
}

pub const CHAT: &str = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}"#;

// ---------------------------------------------------------------------------------------------
// A one-document HTTP server (a JWKS endpoint in the identity tests).

pub struct DocServer {
    pub addr: SocketAddr,
    /// The status and body every GET answers with; replace it to change the document.
    pub doc: Arc<Mutex<(StatusCode, Bytes)>>,
    pub hits: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

impl DocServer {
    pub async fn start(status: StatusCode, body: impl Into<Bytes>) -> DocServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let doc = Arc::new(Mutex::new((status, body.into())));
        let hits = Arc::new(AtomicUsize::new(0));
        let (stop, mut stopped) = oneshot::channel::<()>();
        let (d, h) = (doc.clone(), hits.clone());
        tokio::spawn(async move {
            loop {
                let (sock, _) = tokio::select! {
                    _ = &mut stopped => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let (d, h) = (d.clone(), h.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: Request<Incoming>| {
                        h.fetch_add(1, Ordering::SeqCst);
                        let (status, body) = d.lock().unwrap().clone();
                        async move {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(body))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        DocServer {
            addr,
            doc,
            hits,
            _stop: stop,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A disk whose syncs can be made to fail (the audit log's "disk full, fsync error").

pub struct FailingDisk {
    inner: lattice_audit::DiskStorage,
    pub fail: Arc<AtomicBool>,
}

impl FailingDisk {
    pub fn new(dir: &Path) -> FailingDisk {
        FailingDisk {
            inner: lattice_audit::DiskStorage::open(dir).unwrap(),
            fail: Arc::new(AtomicBool::new(false)),
        }
    }
}

struct FailingFile {
    inner: Box<dyn lattice_audit::storage::AppendFile>,
    fail: Arc<AtomicBool>,
}

impl lattice_audit::storage::AppendFile for FailingFile {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.append(bytes)
    }

    fn sync(&mut self) -> std::io::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
        }
        self.inner.sync()
    }
}

impl lattice_audit::Storage for FailingDisk {
    fn list(&self) -> std::io::Result<Vec<String>> {
        self.inner.list()
    }
    fn read(&self, name: &str) -> std::io::Result<Vec<u8>> {
        self.inner.read(name)
    }
    fn read_at(&self, name: &str, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        self.inner.read_at(name, offset, len)
    }
    fn create(&self, name: &str) -> std::io::Result<Box<dyn lattice_audit::storage::AppendFile>> {
        let inner = self.inner.create(name)?;
        Ok(Box::new(FailingFile {
            inner,
            fail: self.fail.clone(),
        }))
    }
    fn open_append(&self, name: &str) -> std::io::Result<Box<dyn lattice_audit::storage::AppendFile>> {
        let inner = self.inner.open_append(name)?;
        Ok(Box::new(FailingFile {
            inner,
            fail: self.fail.clone(),
        }))
    }
    fn truncate(&self, name: &str, len: u64) -> std::io::Result<()> {
        self.inner.truncate(name, len)
    }
    fn write_new(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.write_new(name, bytes)
    }
    fn sync_dir(&self) -> std::io::Result<()> {
        self.inner.sync_dir()
    }
}
