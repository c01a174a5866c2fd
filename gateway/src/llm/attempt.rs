//! Phase 4: one try at the upstream a [`Plan`] names. It returns the upstream's answer, or a
//! typed failure that says where it came from and whether another try could succeed; it
//! renders nothing, so a failover loop can wrap it.
//!
//! Owns: the upstream request (URI, header hygiene, credential injection) and the mock's
//! answer. Must not touch: the audit record or the response stages (`super::respond`).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use lattice_providers::CallView;
use lattice_providers::mock::{self, MockReply};

use super::Plan;
use crate::config::ProviderKind;
use crate::failover::Trigger;
use crate::reply::Rejection;
use crate::request::X_REQUEST_ID;
use crate::upstream::Target;

const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
const DEFAULT_ANTHROPIC_VERSION: HeaderValue = HeaderValue::from_static("2023-06-01");

/// What an upstream answered (any status: an error answer is still an answer).
pub enum Answer {
    Mock(MockReply),
    Http {
        response: http::Response<Incoming>,
        /// The upstream's time limit, which also bounds reading a JSON answer whole.
        timeout: Duration,
    },
}

/// Why an attempt got no answer.
#[derive(Debug)]
pub enum AttemptError {
    /// The TCP connection could not be made.
    Connect(Arc<str>),
    /// The TLS handshake failed.
    Tls(Arc<str>),
    /// No answer within the upstream's time limit (or the connect timed out).
    Timeout(Arc<str>),
    /// The connection failed after the request was sent, before an answer.
    Failed(Arc<str>),
    /// The request could not be built (a gateway fault, not the upstream's).
    Internal,
}

impl AttemptError {
    /// The failover trigger this is; `None`: a gateway fault, never retried.
    pub fn trigger(&self) -> Option<Trigger> {
        match self {
            AttemptError::Connect(_) => Some(Trigger::Connect),
            AttemptError::Tls(_) => Some(Trigger::Tls),
            AttemptError::Timeout(_) => Some(Trigger::Timeout),
            AttemptError::Failed(_) => Some(Trigger::Reset),
            AttemptError::Internal => None,
        }
    }

    pub(crate) fn rejection(self) -> Rejection {
        match self {
            AttemptError::Connect(u) | AttemptError::Tls(u) => Rejection::UpstreamConnect(u),
            AttemptError::Timeout(u) => Rejection::UpstreamTimeout(u),
            AttemptError::Failed(u) => Rejection::UpstreamFailed(u),
            AttemptError::Internal => Rejection::Internal,
        }
    }
}

/// One attempt at `plan`'s upstream, with the response head due within `limit` (at most the
/// deployment's first-byte timeout, else the upstream's `timeout_ms`).
pub async fn attempt(
    plan: &Plan,
    view: &CallView<'_>,
    query: Option<&str>,
    mut headers: HeaderMap,
    rid: &HeaderValue,
    limit: Option<Duration>,
) -> Result<Answer, AttemptError> {
    let upstream = &plan.deployment.upstream;
    let t = match &upstream.target {
        Target::Mock(opts) => {
            let renamed;
            let view = match (plan.send_model.as_deref(), plan.ask_usage) {
                (None, false) => view,
                (m, _) => {
                    renamed = CallView {
                        model: m.map_or_else(|| view.model.clone(), |m| Cow::Owned(m.to_string())),
                        include_usage: view.include_usage || plan.ask_usage,
                        ..view.clone()
                    };
                    &renamed
                }
            };
            return Ok(Answer::Mock(mock::respond(view, &plan.body, opts)));
        }
        Target::Http(t) => t,
    };
    // The query came from a parsed request URI, so it always forms a valid path-and-query.
    // A translated call goes to the upstream's own surface; the client's query string belongs
    // to the client's dialect and stays behind.
    let query = if plan.translation.is_some() { None } else { query };
    let model = plan.send_model.as_deref().unwrap_or(&view.model);
    let pq = t
        .path_and_query(plan.surface, model, query)
        .map_err(|_| AttemptError::Internal)?;
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(t.scheme.clone());
    uri.authority = Some(t.authority.clone());
    uri.path_and_query = Some(pq);
    let uri = Uri::from_parts(uri).map_err(|_| AttemptError::Internal)?;

    strip_request_headers(&mut headers);
    if plan.translation.is_some() {
        // Headers of the client's dialect (`anthropic-beta`, `openai-organization`, ...) mean
        // nothing to an upstream of another.
        strip(&mut headers, |n| {
            n.starts_with("anthropic-") || n.starts_with("openai-")
        });
    }
    headers.insert(header::HOST, t.host.clone());
    if let Some((name, value)) = &t.auth {
        headers.insert(name.clone(), value.clone());
    }
    if upstream.kind == ProviderKind::Anthropic && !headers.contains_key(&ANTHROPIC_VERSION) {
        headers.insert(ANTHROPIC_VERSION, DEFAULT_ANTHROPIC_VERSION);
    }
    headers.insert(X_REQUEST_ID, rid.clone());

    let mut req = Request::new(Full::new(plan.body.clone()));
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;

    let name = &upstream.name;
    let head_within = plan
        .deployment
        .first_byte_timeout
        .unwrap_or(t.timeout)
        .min(limit.unwrap_or(Duration::MAX));
    match tokio::time::timeout(head_within, t.client.request(req)).await {
        Ok(Ok(response)) => Ok(Answer::Http {
            response,
            timeout: t.timeout,
        }),
        Ok(Err(e)) => {
            tracing::warn!(target: "lattice::upstream", upstream = %name, error = %ErrorChain(&e), "upstream request failed");
            Err(if !e.is_connect() {
                AttemptError::Failed(name.clone())
            } else if is_timeout(&e) {
                AttemptError::Timeout(name.clone())
            } else if is_tls(&e) {
                AttemptError::Tls(name.clone())
            } else {
                AttemptError::Connect(name.clone())
            })
        }
        Err(_) => Err(AttemptError::Timeout(name.clone())),
    }
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A TLS failure: rustls's error, which hyper-rustls hands on inside an `io::Error`.
fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|i| i.downcast_ref::<rustls::Error>().is_some())
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Displays an error with its sources; hyper's errors carry no headers, so no credential.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cur = self.0.source();
        while let Some(e) = cur {
            write!(f, ": {e}")?;
            cur = e.source();
        }
        Ok(())
    }
}

/// RFC 9110 7.6.1 connection-specific headers, plus `transfer-encoding` (each leg frames its
/// own body). `proxy-authorization` / `proxy-authenticate` are for this hop only too.
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// The client's credentials for the gateway itself: never forwarded upstream.
fn is_client_credential(name: &str) -> bool {
    matches!(name, "authorization" | "x-api-key" | "api-key" | "x-goog-api-key")
}

/// Removes the headers `doomed` selects and any named in `Connection`. One pass over the keys
/// with a string match (header names are lower-case): most requests carry few of them, and a
/// miss costs a comparison, not a hashed lookup.
fn strip(h: &mut HeaderMap, doomed: fn(&str) -> bool) {
    let mut found: Vec<HeaderName> = h.keys().filter(|k| doomed(k.as_str())).cloned().collect();
    if found.contains(&header::CONNECTION) {
        found.extend(
            h.get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()),
        );
    }
    for n in &found {
        h.remove(n);
    }
}

/// What an answer loses before it goes to the client: hop-by-hop headers.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    strip(h, is_hop_by_hop);
}

/// What a request loses before it goes upstream: hop-by-hop headers, the client's own
/// credentials, and `host` / `content-length`, which the upstream leg sets itself.
/// Also `accept-encoding`: the gateway reads answers (usage, content rules), so it asks for
/// them uncompressed.
fn strip_request_headers(h: &mut HeaderMap) {
    strip(h, |n| {
        is_hop_by_hop(n)
            || is_client_credential(n)
            || n == "host"
            || n == "content-length"
            || n == "accept-encoding"
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn request_headers_lose_credentials_and_hop_by_hop() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer client"),
            ("x-api-key", "client"),
            ("connection", "keep-alive, x-custom-hop"),
            ("x-custom-hop", "1"),
            ("te", "trailers"),
            ("anthropic-beta", "tools-2024"),
            ("openai-organization", "org"),
            ("host", "gw"),
            ("content-length", "3"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        strip_request_headers(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, vec!["anthropic-beta", "openai-organization"]);
    }
}
