//! The outbound HTTP client (rustls with the webpki roots, pooled) the upstreams, the JWKS
//! fetcher, the audit witness and the budget webhook share the construction of.
//!
//! Must not touch: configuration or the request path.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

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
