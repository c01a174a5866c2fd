//! Listeners: accept, TLS handshake (with a deadline), HTTP/1.1 or HTTP/2, graceful shutdown.
//!
//! Plain listeners speak HTTP/1.1 and HTTP/2 with prior knowledge (h2c); TLS listeners pick by
//! ALPN. `TCP_NODELAY` is set on every accepted socket (without it a new-connection request
//! waited 43 ms for a delayed ACK here).

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
use crate::proxy::{self, State};

pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: Arc<State>,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    builders: Arc<Builders>,
}

struct Builders {
    auto: auto::Builder<TokioExecutor>,
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
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

        let mut b = auto::Builder::new(TokioExecutor::new());
        b.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.server.header_read_timeout)
            .keep_alive(true);
        b.http2().timer(TokioTimer::new());
        let builders = Builders {
            h1: b.clone().http1_only(),
            h2: b.clone().http2_only(),
            auto: b,
        };

        Ok(Server {
            listener,
            local_addr,
            state: Arc::new(state),
            tls,
            handshake_timeout: config.server.header_read_timeout,
            builders: Arc::new(builders),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
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
    pub async fn run(self, shutdown: impl Future<Output = ()>, drain: Duration) {
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
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
            tokio::spawn(async move {
                serve_conn(sock, remote, state, builders, tls, handshake_timeout, watcher).await;
            });
        }
        drop(self.listener);
        if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
            tracing::warn!("connections still open after the drain period; closing them");
        }
    }
}

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
        let conn = Arc::new(ConnInfo {
            remote: Some(remote),
            tls: false,
            peer_certs: None,
            mtls_principal: Default::default(),
        });
        let svc = service(state, conn);
        let _ = watcher
            .watch(builders.auto.serve_connection(TokioIo::new(sock), svc))
            .await;
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
    let conn = Arc::new(ConnInfo {
        remote: Some(remote),
        tls: true,
        peer_certs,
        mtls_principal: Default::default(),
    });
    let svc = service(state, conn);
    let builder = if h2 { &builders.h2 } else { &builders.h1 };
    let _ = watcher
        .watch(builder.serve_connection(TokioIo::new(stream), svc))
        .await;
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
        async move { Ok::<_, Infallible>(proxy::handle(state, conn, req).await) }
    })
}
