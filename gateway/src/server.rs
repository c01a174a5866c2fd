//! Listeners: accept, TLS handshake (with a deadline), HTTP/1.1 or HTTP/2, graceful shutdown.
//!
//! Plain listeners speak HTTP/1.1 and HTTP/2 with prior knowledge (h2c); TLS listeners pick by
//! ALPN. `TCP_NODELAY` is set on every accepted socket (without it a new-connection request
//! waited 43 ms for a delayed ACK here).
//!
//! No connection is held open by a client that does not speak: every stage has a deadline.
//! The TLS handshake and the protocol detection of a plain connection (the first bytes, up to
//! the 24-byte HTTP/2 preface) must finish within `header_read_timeout`; HTTP/1.1 then bounds
//! each request head, and the idle time between requests, by the same deadline (hyper's
//! header-read timer); HTTP/2 pings the client every `http2_keep_alive_interval` and closes the
//! connection when a ping goes unanswered for `http2_keep_alive_timeout` (a peer that stops
//! mid-frame or never finishes its headers stops answering too), and closes one with no request
//! in flight for `http2_idle_timeout` (a real client stack answers pings). At most `max_connections` are
//! open at once: past it the listener stops accepting (new connections wait in the kernel's
//! queue) until one closes, which the deadlines above guarantee happens.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::gates::ConnInfo;
use crate::proxy;
use crate::state::State;

pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: Arc<State>,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    builders: Arc<Builders>,
    /// One permit per open connection.
    connections: Arc<tokio::sync::Semaphore>,
    max_connections: usize,
    /// `[server] metrics_listen`: `GET /metrics` for scrapers, without a key.
    metrics: Option<TcpListener>,
}

struct Builders {
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
    /// An HTTP/2 connection with no request in flight for this long is closed.
    h2_idle: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{file}: {message}")]
    Config { file: String, message: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

impl Server {
    /// Builds the request state and binds the listener; nothing is served until [`Server::run`].
    pub async fn bind(config: &Config) -> Result<Server, StartError> {
        Server::bind_with_audit_storage(config, None).await
    }

    /// [`Server::bind`], with the audit log on `storage` instead of `<data_dir>/audit` (tests
    /// inject faults this way).
    pub async fn bind_with_audit_storage(
        config: &Config,
        storage: Option<Arc<dyn lattice_audit::Storage>>,
    ) -> Result<Server, StartError> {
        let file = config.source.display().to_string();
        let state = State::new(config, storage).map_err(|message| StartError::Config {
            file: file.clone(),
            message,
        })?;
        // A JWKS URL gets a few seconds to answer before the listener opens, so a healthy
        // start is ready at once; past that, tokens are refused (503) until it answers.
        if let Some(jwks) = state.jwks()
            && !jwks.wait_loaded(Duration::from_secs(5)).await
        {
            tracing::error!(
                error = ?jwks.last_error().as_deref(),
                "no JWT signing keys yet; bearer tokens are refused until the JWKS loads"
            );
        }
        let tls = match &config.server.tls {
            None => None,
            Some(t) => Some(TlsAcceptor::from(crate::tls::server_config(t).map_err(
                |message| StartError::Config {
                    file: file.clone(),
                    message,
                },
            )?)),
        };
        let addr = config.server.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;

        let metrics = match config.server.metrics_listen {
            None => None,
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?,
            ),
        };
        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.server.header_read_timeout)
            .keep_alive(true);
        b.http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(config.server.http2_keep_alive_interval))
            .keep_alive_timeout(config.server.http2_keep_alive_timeout);
        let builders = Builders {
            h1: b.clone().http1_only(),
            h2: b.http2_only(),
            h2_idle: config.server.http2_idle_timeout,
        };

        Ok(Server {
            listener,
            local_addr,
            state: Arc::new(state),
            tls,
            handshake_timeout: config.server.header_read_timeout,
            builders: Arc::new(builders),
            connections: Arc::new(tokio::sync::Semaphore::new(config.server.max_connections)),
            max_connections: config.server.max_connections,
            metrics,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `GET /metrics` is served without a key, when `[server] metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The request state, for reloads from outside the request path (SIGHUP).
    pub fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    pub fn gate_names(&self) -> Vec<&'static str> {
        self.state.pipeline().names().collect()
    }

    /// Serves until `shutdown` resolves, then stops accepting and gives open connections up to
    /// `drain` to finish.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>, drain: Duration) {
        let graceful = GracefulShutdown::new();
        let metrics = self
            .metrics
            .take()
            .map(|l| tokio::spawn(serve_metrics(l, self.state.clone(), self.handshake_timeout)));
        tokio::pin!(shutdown);
        let mut at_cap_logged = false;
        loop {
            // A connection slot first: at the cap, stop accepting until a connection closes.
            let permit = match self.connections.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    if !at_cap_logged {
                        tracing::warn!(
                            max_connections = self.max_connections,
                            "at the connection limit: new connections wait until one closes"
                        );
                        at_cap_logged = true;
                    }
                    tokio::select! {
                        _ = &mut shutdown => break,
                        p = self.connections.clone().acquire_owned() => match p {
                            Ok(p) => p,
                            Err(_) => break,
                        },
                    }
                }
            };
            let (sock, remote) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            let _ = sock.set_nodelay(true);
            let watcher = graceful.watcher();
            let state = self.state.clone();
            let builders = self.builders.clone();
            let tls = self.tls.clone();
            let handshake_timeout = self.handshake_timeout;
            if self.connections.available_permits() > 0 {
                at_cap_logged = false;
            }
            tokio::spawn(async move {
                serve_conn(sock, remote, state, builders, tls, handshake_timeout, watcher).await;
                drop(permit);
            });
        }
        drop(self.listener);
        if let Some(m) = metrics {
            m.abort();
        }
        if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
            tracing::warn!("connections still open after the drain period; closing them");
        }
    }
}

/// The metrics listener: `GET /metrics` in Prometheus text, nothing else, no key (a scraper
/// sends none; bind it where only the scraper reaches). Spend reports stay behind the finance
/// role on the main listener.
async fn serve_metrics(listener: TcpListener, state: Arc<State>, header_timeout: Duration) {
    let mut h1 = hyper::server::conn::http1::Builder::new();
    h1.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    // A scraper needs one connection; a few are allowed, never the main listener's descriptors.
    let slots = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((sock, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let _ = sock.set_nodelay(true);
        let state = state.clone();
        let conn = h1.serve_connection(
            TokioIo::new(sock),
            service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let state = state.clone();
                async move {
                    let (status, ctype, body) =
                        if req.method() == hyper::Method::GET && req.uri().path() == "/metrics" {
                            (200, "text/plain; version=0.0.4", state.metrics_text())
                        } else {
                            (
                                404,
                                "text/plain",
                                "this listener serves GET /metrics only\n".to_string(),
                            )
                        };
                    let mut resp = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
                    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
                    resp.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(ctype),
                    );
                    Ok::<_, Infallible>(resp)
                }
            }),
        );
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
}

/// Open connections the metrics listener takes at most.
const METRICS_CONNECTIONS: usize = 16;

async fn serve_conn(
    sock: TcpStream,
    remote: SocketAddr,
    state: Arc<State>,
    builders: Arc<Builders>,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    watcher: hyper_util::server::graceful::Watcher,
) {
    let Some(acceptor) = tls else {
        // Which protocol: the first bytes decide, within the deadline.
        let (h2, sock) = match tokio::time::timeout(handshake_timeout, detect(sock)).await {
            Ok(Ok(Some(d))) => d,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::debug!(%remote, error = %e, "connection failed before its first request");
                return;
            }
            Err(_) => {
                tracing::debug!(%remote, "no request within the header read timeout: closed");
                return;
            }
        };
        let conn = Arc::new(ConnInfo::new(remote, false, None));
        serve_http(sock, h2, conn, state, &builders, watcher).await;
        return;
    };
    let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(sock)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%remote, "TLS handshake timed out");
            return;
        }
    };
    let (_, session) = stream.get_ref();
    let h2 = session.alpn_protocol() == Some(b"h2");
    let peer_certs = session
        .peer_certificates()
        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect());
    let conn = Arc::new(ConnInfo::new(remote, true, peer_certs));
    serve_http(stream, h2, conn, state, &builders, watcher).await;
}

/// Serves HTTP/2 (with its idle timeout) or HTTP/1.1 (through the framing check) on `io`, plain
/// or TLS alike.
async fn serve_http<IO>(
    io: IO,
    h2: bool,
    conn: Arc<ConnInfo>,
    state: Arc<State>,
    builders: &Builders,
    watcher: hyper_util::server::graceful::Watcher,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if h2 {
        let svc = service(state, conn.clone());
        let serving = watcher.watch(builders.h2.serve_connection(TokioIo::new(io), svc));
        tokio::select! {
            _ = serving => {}
            () = idle(&conn, builders.h2_idle) => {
                tracing::debug!(remote = ?conn.remote, "idle HTTP/2 connection closed");
            }
        }
    } else {
        let io = crate::framing::Checked::new(io, conn.framing.clone());
        let svc = service(state, conn);
        let _ = watcher
            .watch(builders.h1.serve_connection(TokioIo::new(io), svc))
            .await;
    }
}

/// Resolves once `conn` has had no request in flight for `limit`. hyper's HTTP/2 server has no
/// idle timeout, and a client stack answers its pings: without this, idle connections would
/// hold `max_connections` slots for ever. (Closing drops the socket: the client sees the
/// connection end, as after any idle timeout.)
async fn idle(conn: &ConnInfo, limit: Duration) {
    use std::sync::atomic::Ordering;
    let limit_ms = limit.as_millis() as u64;
    loop {
        let since = conn.idle_since_ms.load(Ordering::Relaxed);
        let now = crate::gates::unix_ms();
        let due = if conn.in_flight.load(Ordering::Acquire) > 0 {
            limit_ms
        } else if now.saturating_sub(since) >= limit_ms {
            return;
        } else {
            limit_ms - now.saturating_sub(since)
        };
        tokio::time::sleep(Duration::from_millis(due.max(10))).await;
    }
}

/// The HTTP/2 connection preface (RFC 9113 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads a plain connection's first bytes until they are the HTTP/2 preface (`true`) or cannot
/// become it (`false`: HTTP/1.1); `None` when the client closes first. The bytes read are
/// handed back in front of the stream.
async fn detect(mut sock: TcpStream) -> std::io::Result<Option<(bool, Prefixed<TcpStream>)>> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; H2_PREFACE.len()];
    let mut n = 0;
    while n < buf.len() && H2_PREFACE.starts_with(&buf[..n]) {
        let read = sock.read(&mut buf[n..]).await?;
        if read == 0 {
            return Ok(None);
        }
        n += read;
    }
    let h2 = n == buf.len() && &buf == H2_PREFACE;
    Ok(Some((
        h2,
        Prefixed {
            prefix: buf,
            start: 0,
            end: n,
            inner: sock,
        },
    )))
}

/// A stream with bytes already read put back in front of it.
struct Prefixed<S> {
    prefix: [u8; H2_PREFACE.len()],
    start: usize,
    end: usize,
    inner: S,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.start < self.end {
            let n = (self.end - self.start).min(out.remaining());
            let from = self.start;
            out.put_slice(&self.prefix[from..from + n]);
            self.start += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn service(
    state: Arc<State>,
    conn: Arc<ConnInfo>,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = hyper::Response<crate::body::ResponseBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<hyper::Response<crate::body::ResponseBody>, Infallible>> + Send,
> + Clone {
    service_fn(move |req| {
        let state = state.clone();
        let conn = conn.clone();
        async move {
            let in_flight = crate::gates::InFlight::start(conn.clone());
            let mut resp = proxy::handle(state, conn, req).await;
            resp.body_mut().hold(in_flight);
            Ok::<_, Infallible>(resp)
        }
    })
}
