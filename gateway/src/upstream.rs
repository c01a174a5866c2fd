//! Upstreams: where calls go, and how the gateway authenticates to them.
//!
//! Each HTTP upstream owns a pooled keep-alive client (TCP_NODELAY, per-upstream connect
//! timeout; rustls with the Mozilla root set for `https://`), the precomputed `Host` header and
//! the credential header the gateway injects. The client's own credential never reaches here.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderName, HeaderValue};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lattice_providers::{Dialect, Surface, mock::MockOptions};

use crate::config::{ProviderKind, UpstreamConfig};

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    pub kind: ProviderKind,
    pub target: Target,
}

#[derive(Debug)]
pub enum Target {
    Mock(MockOptions),
    Http(Box<HttpTarget>),
}

pub struct HttpTarget {
    pub client: HttpClient,
    pub scheme: Scheme,
    pub authority: Authority,
    /// The base URL's path without a trailing slash (`/v1` for OpenAI-style bases).
    pub base_path: String,
    /// Upstream path per surface, precomputed for requests without a query string.
    paths: [PathAndQuery; 4],
    pub host: HeaderValue,
    /// The credential header to inject (marked sensitive so it is never logged by hyper).
    pub auth: Option<(HeaderName, HeaderValue)>,
    pub timeout: Duration,
}

impl std::fmt::Debug for HttpTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTarget")
            .field("scheme", &self.scheme)
            .field("authority", &self.authority)
            .field("base_path", &self.base_path)
            .field("auth", &self.auth.as_ref().map(|(n, _)| n))
            .finish_non_exhaustive()
    }
}

fn surface_index(s: Surface) -> usize {
    match s {
        Surface::ChatCompletions => 0,
        Surface::Embeddings => 1,
        Surface::Messages => 2,
        Surface::CountTokens => 3,
    }
}

const SURFACES: [Surface; 4] = [
    Surface::ChatCompletions,
    Surface::Embeddings,
    Surface::Messages,
    Surface::CountTokens,
];

#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    #[error("upstream {0}: {1}")]
    Invalid(String, String),
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig) -> Result<Upstream, UpstreamSetupError> {
        let invalid = |m: String| UpstreamSetupError::Invalid(cfg.name.clone(), m);
        let target = match (cfg.kind, &cfg.base_url) {
            (ProviderKind::Mock, _) => Target::Mock(MockOptions {
                chunk_delay: cfg.chunk_delay,
            }),
            (_, None) => return Err(invalid("no base_url".into())),
            (kind, Some(url)) => {
                let scheme = url.scheme().cloned().unwrap_or(Scheme::HTTP);
                let authority = url
                    .authority()
                    .cloned()
                    .ok_or_else(|| invalid("no host".into()))?;
                let base_path = url.path().trim_end_matches('/').to_string();
                let mut paths = Vec::with_capacity(4);
                for s in SURFACES {
                    let p = format!("{base_path}{}", s.upstream_suffix());
                    paths.push(PathAndQuery::try_from(p).map_err(|e| invalid(e.to_string()))?);
                }
                let paths: [PathAndQuery; 4] = paths.try_into().map_err(|_| invalid("paths".into()))?;
                let host = HeaderValue::from_str(authority.as_str()).map_err(|e| invalid(e.to_string()))?;
                let auth = match &cfg.api_key {
                    None => None,
                    Some(key) => {
                        let (name, value) = match kind {
                            ProviderKind::Anthropic => {
                                (HeaderName::from_static("x-api-key"), key.expose().to_string())
                            }
                            _ => (http::header::AUTHORIZATION, format!("Bearer {}", key.expose())),
                        };
                        let mut value = HeaderValue::try_from(value)
                            .map_err(|_| invalid("api_key is not a valid header value".into()))?;
                        value.set_sensitive(true);
                        Some((name, value))
                    }
                };
                Target::Http(Box::new(HttpTarget {
                    client: build_client(cfg.connect_timeout).map_err(|e| invalid(e.to_string()))?,
                    scheme,
                    authority,
                    base_path,
                    paths,
                    host,
                    auth,
                    timeout: cfg.timeout,
                }))
            }
        };
        Ok(Upstream {
            name: cfg.name.as_str().into(),
            kind: cfg.kind,
            target,
        })
    }

    /// Whether this upstream serves calls in `dialect` (the mock speaks both).
    pub fn speaks(&self, dialect: Dialect) -> bool {
        match self.kind {
            ProviderKind::Mock => true,
            ProviderKind::Openai => dialect == Dialect::OpenAi,
            ProviderKind::Anthropic => dialect == Dialect::Anthropic,
        }
    }
}

impl HttpTarget {
    /// The upstream path and query for `surface`, keeping the client's query string.
    pub fn path_and_query(&self, surface: Surface, query: Option<&str>) -> Result<PathAndQuery, http::Error> {
        let base = &self.paths[surface_index(surface)];
        match query {
            None => Ok(base.clone()),
            Some(q) => Ok(PathAndQuery::try_from(format!("{}?{q}", base.path()))?),
        }
    }
}

pub(crate) fn build_client(connect_timeout: Duration) -> Result<HttpClient, rustls::Error> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.enforce_http(false);
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .build(https))
}

/// Posts JSON events (budget thresholds) to a configured URL, in the background: a slow or
/// failing receiver never holds up a call. Failures are logged, not retried.
pub struct WebhookClient {
    url: http::Uri,
    client: Option<HttpClient>,
}

impl WebhookClient {
    pub fn new(url: http::Uri) -> WebhookClient {
        let client = build_client(Duration::from_secs(5))
            .map_err(
                |e| tracing::error!(error = %e, "webhook client could not be built; events are logged only"),
            )
            .ok();
        WebhookClient { url, client }
    }

    pub fn post(&self, event: serde_json::Value) {
        let Some(client) = self.client.clone() else { return };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut req = http::Request::new(Full::new(Bytes::from(event.to_string())));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = self.url.clone();
        req.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        rt.spawn(async move {
            match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
                Ok(Ok(resp)) if resp.status().is_success() => {}
                Ok(Ok(resp)) => tracing::warn!(
                    status = resp.status().as_u16(),
                    "budget webhook refused the event"
                ),
                Ok(Err(e)) => tracing::warn!(error = %e, "budget webhook unreachable"),
                Err(_) => tracing::warn!("budget webhook timed out"),
            }
        });
    }
}
