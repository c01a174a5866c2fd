//! Upstreams: where calls go, and how the gateway authenticates to them.
//!
//! Each HTTP upstream owns a pooled keep-alive client (TCP_NODELAY, per-upstream connect
//! timeout; rustls with the Mozilla root set for `https://`), the precomputed `Host` header and
//! the credential header the gateway injects. The client's own credential never reaches here.

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderName, HeaderValue};
use lattice_providers::{Dialect, Surface, mock::MockOptions};

use crate::config::{ProviderKind, UpstreamConfig};

pub use crate::client::HttpClient;
use crate::client::build_client;

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
    /// Upstream path per surface, precomputed for requests without a query string (Gemini's
    /// is the prefix its model and method follow).
    paths: [PathAndQuery; SURFACES.len()],
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
        Surface::GenerateContent => 4,
        Surface::StreamGenerateContent => 5,
        Surface::OllamaChat => 6,
        Surface::GeminiCountTokens => 7,
    }
}

const SURFACES: [Surface; 8] = [
    Surface::ChatCompletions,
    Surface::Embeddings,
    Surface::Messages,
    Surface::CountTokens,
    Surface::GenerateContent,
    Surface::StreamGenerateContent,
    Surface::OllamaChat,
    Surface::GeminiCountTokens,
];

/// Whether `model` can stand in a Gemini path segment as it is (`models/{model}:method`): no
/// character that would end the segment, start a query, or need escaping.
pub fn path_safe_model(model: &str) -> bool {
    !model.is_empty()
        && model.len() <= 256
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

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
                let mut paths = Vec::with_capacity(SURFACES.len());
                for s in SURFACES {
                    let p = format!("{base_path}{}", s.upstream_suffix());
                    paths.push(PathAndQuery::try_from(p).map_err(|e| invalid(e.to_string()))?);
                }
                let paths: [PathAndQuery; SURFACES.len()] =
                    paths.try_into().map_err(|_| invalid("paths".into()))?;
                let host = HeaderValue::from_str(authority.as_str()).map_err(|e| invalid(e.to_string()))?;
                let auth = match &cfg.api_key {
                    None => None,
                    Some(key) => {
                        let (name, value) = match kind {
                            ProviderKind::Anthropic => {
                                (HeaderName::from_static("x-api-key"), key.expose().to_string())
                            }
                            ProviderKind::Gemini => (
                                HeaderName::from_static("x-goog-api-key"),
                                key.expose().to_string(),
                            ),
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

    /// The dialect this upstream is called in for a client of `client`'s (the mock speaks
    /// every dialect, so it is never translated to).
    pub fn dialect_for(&self, client: Dialect) -> Dialect {
        match self.kind {
            ProviderKind::Mock => client,
            ProviderKind::Openai => Dialect::OpenAi,
            ProviderKind::Anthropic => Dialect::Anthropic,
            ProviderKind::Gemini => Dialect::Gemini,
            ProviderKind::Ollama => Dialect::Ollama,
        }
    }

    /// Whether this upstream serves calls in `dialect` (the mock speaks every one).
    pub fn speaks(&self, dialect: Dialect) -> bool {
        self.dialect_for(dialect) == dialect
    }
}

impl HttpTarget {
    /// The upstream path and query for `surface`, keeping the client's query string. A Gemini
    /// path names `model` (which the caller has checked with [`path_safe_model`]).
    pub fn path_and_query(
        &self,
        surface: Surface,
        model: &str,
        query: Option<&str>,
    ) -> Result<PathAndQuery, http::Error> {
        let base = &self.paths[surface_index(surface)];
        if let Some(method) = surface.gemini_method() {
            return Ok(PathAndQuery::try_from(format!("{}{model}{method}", base.path()))?);
        }
        match query {
            None => Ok(base.clone()),
            Some(q) => Ok(PathAndQuery::try_from(format!("{}?{q}", base.path()))?),
        }
    }
}
