//! The listener's rustls configuration: one crypto provider for the whole tree (`ring`: it builds
//! on a fresh machine with only a C compiler), HTTP/2 and HTTP/1.1 by ALPN, and client
//! certificates `off | optional | required` verified against the configured CA.

use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::{ClientAuth, TlsConfig};

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn server_config(t: &TlsConfig) -> Result<Arc<ServerConfig>, String> {
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match t.client_auth {
        ClientAuth::Off => builder.with_no_client_auth(),
        mode => {
            let mut roots = RootCertStore::empty();
            for ca in &t.client_ca {
                roots
                    .add(ca.clone())
                    .map_err(|e| format!("server.tls.client_ca: {e}"))?;
            }
            let mut v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if mode == ClientAuth::Optional {
                v = v.allow_unauthenticated();
            }
            builder.with_client_cert_verifier(v.build().map_err(|e| format!("server.tls.client_ca: {e}"))?)
        }
    };
    let mut cfg = builder
        .with_single_cert(t.cert_chain.clone(), t.key.clone_key())
        .map_err(|e| format!("server.tls.cert / server.tls.key: {e}"))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
