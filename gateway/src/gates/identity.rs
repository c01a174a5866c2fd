//! The identity gate: who is calling. Tries the configured methods in order and records the
//! [`Principal`] for every later gate; a call with no credential, or a bad one, is refused with
//! 401 and a reason that names no key material.
//!
//! API keys are read from `Authorization: Bearer` (OpenAI SDKs) or `x-api-key` (Anthropic SDKs)
//! and checked against the key store in the data dir, which is reloaded when the file changes,
//! so `lattice keys revoke` takes effect without a restart. A lookup is one map access and one
//! SHA-256 of the presented key; the principal is built once per key, not per call.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::AUTHORIZATION;
use http::{HeaderName, StatusCode};

use super::{Call, Denial, Gate, Principal};
use crate::config::{Config, IdentityMethod, TeamFrom};
use crate::keys::{KeyRejection, KeyStore, now_secs};

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// The key store with a principal prebuilt for every key.
struct Keys {
    store: KeyStore,
    principals: HashMap<String, Arc<Principal>>,
}

impl Keys {
    fn load(data_dir: &std::path::Path) -> Result<Keys, String> {
        let store = KeyStore::open(data_dir).map_err(|e| e.to_string())?;
        let principals = store
            .records()
            .map(|r| {
                let p = Principal {
                    id: r.id.clone(),
                    kind: "api_key",
                    user: r.user.clone(),
                    team: r.team.clone(),
                    roles: r.roles.clone(),
                    attributes: Default::default(),
                };
                (r.id.clone(), Arc::new(p))
            })
            .collect();
        Ok(Keys { store, principals })
    }
}

pub struct Identity {
    methods: Vec<IdentityMethod>,
    team_from: TeamFrom,
    keys: Arc<ArcSwap<Keys>>,
    /// Kept alive for as long as the gate: dropping it stops the reloads.
    _watcher: notify::RecommendedWatcher,
}

impl Identity {
    pub fn from_config(config: &Config) -> Result<Option<Identity>, String> {
        if config.identity.is_empty() {
            return Ok(None);
        }
        let dir: PathBuf = config.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| format!("data_dir {}: {e}", dir.display()))?;
        let keys = Arc::new(ArcSwap::from_pointee(Keys::load(&dir)?));
        let reload = keys.clone();
        let watched = dir.clone();
        let watcher = crate::watch::watch_dir(&dir, "lattice-keys-watch", move || {
            match Keys::load(&watched) {
                Ok(k) => {
                    tracing::info!(keys = k.principals.len(), "API keys reloaded");
                    reload.store(Arc::new(k));
                }
                // Keep the keys in force; a half-written file is replaced atomically anyway.
                Err(e) => tracing::error!(error = %e, "API keys not reloaded"),
            }
            true
        })
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
        Ok(Some(Identity {
            methods: config.identity.clone(),
            team_from: config.mtls_team_from,
            keys,
            _watcher: watcher,
        }))
    }
}

fn unauthenticated(code: &'static str, message: &'static str) -> Denial {
    Denial {
        gate: "identity",
        code,
        status: StatusCode::UNAUTHORIZED,
        message: message.into(),
        retry_after: None,
    }
}

/// The principal a verified client certificate maps to: id = the SPIFFE URI SAN, else the
/// subject; user = the subject CN (else the SPIFFE id's last segment); team per `team_from`.
fn mtls_principal(
    leaf: &rustls_pki_types::CertificateDer<'_>,
    team_from: TeamFrom,
) -> Option<Arc<Principal>> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let subject = cert.subject();
    let first = |mut it: Box<dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>> + '_>| {
        it.next().and_then(|a| a.as_str().ok()).map(str::to_string)
    };
    let cn = first(Box::new(subject.iter_common_name()));
    let o = first(Box::new(subject.iter_organization()));
    let ou = first(Box::new(subject.iter_organizational_unit()));
    let mut spiffe = None;
    let mut dns = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::URI(u)
                    if u.starts_with("spiffe://") && spiffe.is_none() =>
                {
                    spiffe = Some(u.to_string());
                }
                x509_parser::extensions::GeneralName::DNSName(d) => dns.push(d.to_string()),
                _ => {}
            }
        }
    }
    let spiffe_path: Vec<&str> = spiffe
        .as_deref()
        .and_then(|s| s.strip_prefix("spiffe://"))
        .and_then(|s| s.split_once('/'))
        .map(|(_, path)| path.split('/').filter(|p| !p.is_empty()).collect())
        .unwrap_or_default();
    let team = match team_from {
        TeamFrom::O => o.clone(),
        TeamFrom::Ou => ou.clone(),
        TeamFrom::SpiffePath => spiffe_path.first().map(|s| s.to_string()),
    };
    let user = cn.clone().or_else(|| spiffe_path.last().map(|s| s.to_string()));
    let mut attributes = std::collections::BTreeMap::new();
    for (k, v) in [
        ("spiffe_id", &spiffe),
        ("subject_cn", &cn),
        ("subject_o", &o),
        ("subject_ou", &ou),
    ] {
        if let Some(v) = v {
            attributes.insert(k.to_string(), v.clone());
        }
    }
    if !dns.is_empty() {
        attributes.insert("dns_names".to_string(), dns.join(","));
    }
    Some(Arc::new(Principal {
        id: spiffe.unwrap_or_else(|| subject.to_string()),
        kind: "mtls",
        user: user.unwrap_or_default(),
        team: team.unwrap_or_default(),
        roles: Vec::new(),
        attributes,
    }))
}

/// The API key a client presented, if any.
fn presented_key(headers: &http::HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some(v[7..].trim());
        }
    }
    headers
        .get(X_API_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

impl Gate for Identity {
    fn name(&self) -> &'static str {
        "identity"
    }

    fn check(&self, call: &mut Call<'_>) -> Result<(), Denial> {
        for method in &self.methods {
            match method {
                IdentityMethod::Mtls => {
                    // Only the verified TLS session counts; no header can stand in for it.
                    let Some(leaf) = call.conn.peer_certs.as_ref().and_then(|c| c.first()) else {
                        continue;
                    };
                    let principal = call
                        .conn
                        .mtls_principal
                        .get_or_init(|| mtls_principal(leaf, self.team_from));
                    return match principal {
                        Some(p) => {
                            call.principal = Some(p.clone());
                            Ok(())
                        }
                        None => Err(unauthenticated(
                            "invalid_client_certificate",
                            "the client certificate could not be read",
                        )),
                    };
                }
                IdentityMethod::ApiKey => {
                    let Some(key) = presented_key(call.headers) else {
                        continue;
                    };
                    let keys = self.keys.load();
                    return match keys.store.verify(key, now_secs()) {
                        Ok(record) => {
                            call.principal = keys.principals.get(&record.id).cloned();
                            Ok(())
                        }
                        Err(KeyRejection::Invalid) => {
                            Err(unauthenticated("invalid_api_key", "the API key is not valid"))
                        }
                        Err(KeyRejection::Expired) => {
                            Err(unauthenticated("expired_api_key", "the API key has expired"))
                        }
                        Err(KeyRejection::Revoked) => {
                            Err(unauthenticated("revoked_api_key", "the API key has been revoked"))
                        }
                    };
                }
            }
        }
        Err(unauthenticated(
            "missing_credential",
            "no credential: send a gateway API key as `Authorization: Bearer <key>` or `x-api-key: <key>`",
        ))
    }
}
