//! The identity gate: who is calling. Tries the configured methods in order and records the
//! [`Principal`] for every later gate; a call with no credential, or a bad one, is refused with
//! 401 and a reason that names no key material.
//!
//! - `mtls`: the verified client certificate of the TLS session (never a header), mapped once per
//!   connection.
//! - `jwt`: an `Authorization: Bearer` value with a JWT's shape, verified by [`crate::identity::jwt`] (a
//!   verified token's principal is cached until the token expires or the keys change).
//! - `api_key`: `Authorization: Bearer` (OpenAI SDKs) or `x-api-key` (Anthropic SDKs), checked
//!   against the key store in the data dir. Each lookup `stat`s the store's file (about a
//!   microsecond) and reloads it when it changed, so a key from `lattice keys create` works, and
//!   one `lattice keys revoke`d fails, on the next call (a file watcher reloads it too). A lookup
//!   is one map access and one SHA-256 of the presented key (~0.3 us), so it needs no cache: a
//!   cache would cost as much (it hashes the key too) and would have to be invalidated on revoke.
//!   The principal is built once per key.
//!
//! A method whose credential is absent is skipped; the first method whose credential is present
//! decides, so a bad credential is refused even when a later method would have accepted another.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::AUTHORIZATION;
use http::{HeaderName, StatusCode};

use super::{Call, Denial, Gate, Principal};
use crate::config::{CertField, Config, IdentityMethod, MtlsMapping, TeamFrom};
use crate::identity::jwt::{Jwks, JwtRejection, JwtVerifier, looks_like_jwt};
use crate::identity::keys::{KeyRejection, KeyStore, now_secs};

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
/// Gemini's SDKs (and `?key=`, which the proxy moves here).
const X_GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");

/// The key store with a principal prebuilt for every key.
struct Keys {
    store: KeyStore,
    principals: HashMap<String, Arc<Principal>>,
    /// The file as it was when read (inode, length, mtime): a key store replaced since (keys
    /// are saved by write-then-rename) has another.
    stamp: Option<Stamp>,
}

type Stamp = (u64, u64, Option<std::time::SystemTime>);

fn stamp(file: &std::path::Path) -> Option<Stamp> {
    let m = std::fs::metadata(file).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some((ino, m.len(), m.modified().ok()))
}

impl Keys {
    fn load(data_dir: &std::path::Path) -> Result<Keys, String> {
        // Stamped before the read: a change during it is seen as a change next time.
        let stamp = stamp(&data_dir.join(crate::identity::keys::FILE));
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
        Ok(Keys {
            store,
            principals,
            stamp,
        })
    }
}

/// The key store in force, reloaded when its file changes.
struct ApiKeys {
    current: Arc<ArcSwap<Keys>>,
    dir: PathBuf,
    /// The store's file, `stat`ed on every lookup.
    file: PathBuf,
    /// Held while reloading; holds the stamp of a file that failed to load, so a
    /// broken store is not re-read for every bad key.
    reloading: std::sync::Mutex<Option<Stamp>>,
    /// Kept alive for as long as the gate: dropping it stops the reloads.
    _watcher: notify::RecommendedWatcher,
}

impl ApiKeys {
    fn open(dir: &std::path::Path) -> Result<ApiKeys, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("data_dir {}: {e}", dir.display()))?;
        let current = Arc::new(ArcSwap::from_pointee(Keys::load(dir)?));
        let reload = current.clone();
        let watched: PathBuf = dir.to_path_buf();
        let watcher = crate::watch::watch_file(
            &dir.join(crate::identity::keys::FILE),
            "lattice-keys-watch",
            move || {
                match Keys::load(&watched) {
                    Ok(k) => {
                        tracing::info!(keys = k.principals.len(), "API keys reloaded");
                        reload.store(Arc::new(k));
                    }
                    // Keep the keys in force; a half-written file is replaced atomically anyway.
                    Err(e) => tracing::error!(error = %e, "API keys not reloaded"),
                }
                true
            },
        )
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
        Ok(ApiKeys {
            current,
            dir: dir.to_path_buf(),
            file: dir.join(crate::identity::keys::FILE),
            reloading: std::sync::Mutex::new(None),
            _watcher: watcher,
        })
    }

    /// The key store may have changed since it was loaded (`lattice keys create` or `revoke`
    /// against the running gateway) without the file watcher having reloaded it yet: look at
    /// the store's file now (one `stat`, about a microsecond) and reload it when it changed.
    /// Called on every key lookup, so an issued key works and a revoked one stops on the next
    /// call. Only an editor of the data dir can change the file, so a flood of bad keys costs
    /// a `stat` each and no reload. True when the store in force is newer than the one the
    /// caller looked in.
    fn refresh(&self) -> bool {
        let seen = self.current.load().stamp;
        let now = stamp(&self.file);
        if now == seen {
            return false;
        }
        // One reload at a time; whoever waited finds it done.
        let Ok(mut failed) = self.reloading.lock() else {
            return false;
        };
        if self.current.load().stamp != seen {
            return true;
        }
        if now.is_some() && *failed == now {
            return false;
        }
        match Keys::load(&self.dir) {
            Ok(k) => {
                tracing::info!(keys = k.principals.len(), "API keys reloaded (the store changed)");
                self.current.store(Arc::new(k));
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "API keys not reloaded");
                *failed = now;
                false
            }
        }
    }
}

pub struct Identity {
    methods: Vec<IdentityMethod>,
    mtls: MtlsMapping,
    jwt: Option<JwtVerifier>,
    api_keys: Option<ApiKeys>,
    /// What a caller without a credential is told to send.
    missing: String,
}

impl Identity {
    /// `jwks`: the token signing keys, started by the caller when `[identity.jwt]` is set.
    pub fn from_config(config: &Config, jwks: Option<Arc<Jwks>>) -> Result<Option<Identity>, String> {
        let methods = &config.identity.methods;
        if methods.is_empty() {
            return Ok(None);
        }
        let jwt = match (&config.identity.jwt, jwks) {
            (Some(c), Some(j)) => Some(JwtVerifier::new(c, j)),
            (None, _) => None,
            (Some(_), None) => return Err("identity.jwt: the signing keys were not started".into()),
        };
        let missing = methods
            .iter()
            .map(|m| match m {
                IdentityMethod::Mtls => "a client certificate",
                IdentityMethod::Jwt => "a JWT as `Authorization: Bearer <token>`",
                IdentityMethod::ApiKey => {
                    "a gateway API key as `Authorization: Bearer <key>` or `x-api-key: <key>`"
                }
            })
            .collect::<Vec<_>>()
            .join(", or ");
        let api_keys = if methods.contains(&IdentityMethod::ApiKey) {
            Some(ApiKeys::open(&config.data_dir)?)
        } else {
            None
        };
        Ok(Some(Identity {
            methods: methods.clone(),
            mtls: config.identity.mtls.clone(),
            jwt,
            api_keys,
            missing: format!("no credential: send {missing}"),
        }))
    }
}

fn unauthenticated(code: &'static str, message: impl Into<std::borrow::Cow<'static, str>>) -> Denial {
    Denial {
        gate: "identity",
        code,
        status: StatusCode::UNAUTHORIZED,
        message: message.into(),
        retry_after: None,
    }
}

/// The principal a verified client certificate maps to: id = the SPIFFE URI SAN, else the
/// subject; user = the subject CN (else the SPIFFE id's last segment); team and roles per the
/// configured mapping.
fn mtls_principal(leaf: &rustls_pki_types::CertificateDer<'_>, map: &MtlsMapping) -> Option<Arc<Principal>> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let subject = cert.subject();
    let all = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| -> Vec<String> {
        it.filter_map(|a| a.as_str().ok()).map(str::to_string).collect()
    };
    let cn = all(&mut subject.iter_common_name()).into_iter().next();
    let o = all(&mut subject.iter_organization());
    let ou = all(&mut subject.iter_organizational_unit());
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
    let team = match map.team_from {
        TeamFrom::O => o.first().cloned(),
        TeamFrom::Ou => ou.first().cloned(),
        TeamFrom::SpiffePath => spiffe_path.first().map(|s| s.to_string()),
    };
    let mut roles: Vec<String> = Vec::new();
    for field in &map.roles_from {
        let values: Vec<String> = match field {
            CertField::O => o.clone(),
            CertField::Ou => ou.clone(),
            CertField::SpiffePath => spiffe_path.iter().skip(1).map(|s| s.to_string()).collect(),
        };
        for v in values {
            if !roles.contains(&v) {
                roles.push(v);
            }
        }
    }
    let user = cn.clone().or_else(|| spiffe_path.last().map(|s| s.to_string()));
    let mut attributes = std::collections::BTreeMap::new();
    for (k, v) in [
        ("spiffe_id", spiffe.clone()),
        ("subject_cn", cn),
        ("subject_o", (!o.is_empty()).then(|| o.join(","))),
        ("subject_ou", (!ou.is_empty()).then(|| ou.join(","))),
        ("dns_names", (!dns.is_empty()).then(|| dns.join(","))),
    ] {
        if let Some(v) = v {
            attributes.insert(k.to_string(), v);
        }
    }
    Some(Arc::new(Principal {
        id: spiffe.unwrap_or_else(|| subject.to_string()),
        kind: "mtls",
        user: user.unwrap_or_default(),
        team: team.unwrap_or_default(),
        roles,
        attributes,
    }))
}

/// The `Authorization: Bearer` credential, if any.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    (v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ")).then(|| v[7..].trim())
}

impl Gate for Identity {
    fn name(&self) -> &'static str {
        "identity"
    }

    fn check(&self, call: &mut Call<'_>) -> Result<(), Denial> {
        call.principal = Some(self.identify(call.headers, call.conn)?);
        Ok(())
    }
}

impl Identity {
    /// Who is calling, from the TLS session and the headers: what `check` records for a call,
    /// and what the sessions API asks before it reads a session.
    pub fn identify(
        &self,
        headers: &http::HeaderMap,
        conn: &super::ConnInfo,
    ) -> Result<Arc<Principal>, Denial> {
        let bearer = bearer(headers);
        // With JWTs configured, a JWT-shaped bearer is a token; no gateway key has that shape.
        let token = bearer.filter(|b| self.jwt.is_some() && looks_like_jwt(b));
        for method in &self.methods {
            match method {
                IdentityMethod::Mtls => {
                    // Only the verified TLS session counts; no header can stand in for it.
                    let Some(leaf) = conn.peer_certs.as_ref().and_then(|c| c.first()) else {
                        continue;
                    };
                    let principal = conn
                        .mtls_principal
                        .get_or_init(|| mtls_principal(leaf, &self.mtls));
                    return match principal {
                        Some(p) => Ok(p.clone()),
                        None => Err(unauthenticated(
                            "invalid_client_certificate",
                            "the client certificate could not be read",
                        )),
                    };
                }
                IdentityMethod::Jwt => {
                    let (Some(token), Some(jwt)) = (token, &self.jwt) else {
                        continue;
                    };
                    return jwt.verify(token, now_secs()).map_err(|r| {
                        // No keys yet: the gateway cannot decide (503), the token is not refused.
                        let unavailable = r == JwtRejection::KeysUnavailable;
                        Denial {
                            status: if unavailable {
                                StatusCode::SERVICE_UNAVAILABLE
                            } else {
                                StatusCode::UNAUTHORIZED
                            },
                            retry_after: unavailable.then_some(1),
                            ..unauthenticated(r.code(), r.to_string())
                        }
                    });
                }
                IdentityMethod::ApiKey => {
                    let Some(api_keys) = &self.api_keys else {
                        continue;
                    };
                    let key = match bearer {
                        Some(b) if token.is_none() => b,
                        _ => match headers
                            .get(X_API_KEY)
                            .or_else(|| headers.get(X_GOOG_API_KEY))
                            .and_then(|v| v.to_str().ok())
                        {
                            Some(k) => k.trim(),
                            None => continue,
                        },
                    };
                    let lookup = || {
                        let keys = api_keys.current.load();
                        keys.store
                            .verify(key, now_secs())
                            // Every stored key has a principal built when the store was loaded.
                            .and_then(|record| {
                                keys.principals
                                    .get(&record.id)
                                    .cloned()
                                    .ok_or(KeyRejection::Invalid)
                            })
                    };
                    // Looked up again when the store changed since it was loaded: a key issued
                    // or revoked a moment ago is decided by the store as it is now.
                    let found = match lookup() {
                        Err(KeyRejection::Expired) => Err(KeyRejection::Expired),
                        _ if api_keys.refresh() => lookup(),
                        found => found,
                    };
                    return found.map_err(|r| unauthenticated(r.code(), r.to_string()));
                }
            }
        }
        Err(unauthenticated("missing_credential", self.missing.clone()))
    }
}
