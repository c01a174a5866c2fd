//! JWT bearer tokens (OAuth2 / OIDC): the signing keys (a JWKS file or URL) and the verifier
//! the identity gate asks.
//!
//! A token is accepted when its signature verifies with a key of the JWKS in force, under an
//! algorithm the configuration allows and the key's type fits (an RSA key never verifies an
//! HS256 token: no key confusion), its `iss` is the configured issuer, its `aud` names a
//! configured audience, and `exp` / `nbf` hold within the leeway. `exp`, `iss`, `aud` and `sub`
//! are required. Claims are mapped to the principal by configured paths.
//!
//! Verifying costs tens of microseconds (RSA, ECDSA), so a verified token's principal is cached
//! (`moka`) until the token expires or the key set changes; a cache hit is one hash lookup.
//! Rejections are never cached. The key set lives in an [`ArcSwapOption`]: a JWKS file is
//! reloaded when it changes, a JWKS URL is fetched at start, every `refresh`, and early (at most
//! every [`MIN_REFETCH`]) when a token names a `kid` the set does not have. A failed reload keeps
//! the keys in force. Until a first key set is loaded, tokens cannot be checked and calls are
//! refused with 503 (fail closed).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde_json::Value;
use sha2::{Digest, Sha256};

use http::Uri;
use serde::Deserialize;
use std::path::PathBuf;

use super::Principal;

/// The JWT signature algorithms the gateway verifies. `none` and the algorithms a key could be
/// confused with are never accepted; HS256 must be named explicitly (it needs a shared secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    RS256,
    ES256,
    HS256,
}

/// Where the token signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A JWKS document on disk, reloaded when it changes.
    File(PathBuf),
    /// A JWKS endpoint, fetched at start and every `refresh` (and early, for an unknown `kid`).
    Url(Uri),
}

/// JWT bearer tokens (OAuth2 / OIDC access or ID tokens).
#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<JwtAlgorithm>,
    pub jwks: JwksSource,
    pub refresh: Duration,
    pub leeway_secs: u64,
    /// Claim paths (dotted, e.g. `realm_access.roles`) for the principal's fields.
    pub user_claim: String,
    pub team_claim: String,
    pub roles_claim: String,
    /// Principal attribute name -> claim path.
    pub attribute_claims: BTreeMap<String, String>,
}

/// The shortest time between two fetches of a JWKS URL, however many unknown `kid`s arrive.
pub const MIN_REFETCH: Duration = Duration::from_secs(10);
/// The largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Verified tokens kept; a token is usually reused for many calls.
const CACHE_ENTRIES: u64 = 10_000;

fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::HS256 => Algorithm::HS256,
    }
}

/// One usable signing key and the one algorithm it verifies.
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// A parsed JWKS: the keys the gateway can use, and the document's SHA-256.
pub struct KeySet {
    keys: Vec<Key>,
    sha256: String,
    /// Bumped on every change of the key set: cached verifications of an older one are void.
    generation: u64,
}

impl KeySet {
    /// Parses a JWKS document. Keys the gateway cannot use (encryption keys, other curves,
    /// algorithms not allowed) are skipped; a document with no usable key is an error.
    fn parse(bytes: &[u8], allowed: &[Algorithm]) -> Result<KeySet, String> {
        let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
                continue;
            }
            // The one algorithm this key can verify, from its type (and curve).
            let alg = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
                AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
                _ => continue,
            };
            // A key that names its algorithm must name this one.
            let fits = match jwk.common.key_algorithm {
                None => true,
                Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
                Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
                Some(KeyAlgorithm::HS256) => alg == Algorithm::HS256,
                Some(_) => false,
            };
            if !fits {
                continue;
            }
            if !allowed.contains(&alg) {
                continue;
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                let kid = jwk.common.key_id.as_deref().unwrap_or("(no kid)");
                format!("key {kid}: {e}")
            })?;
            keys.push(Key {
                kid: jwk.common.key_id.clone(),
                alg,
                key,
            });
        }
        if keys.is_empty() {
            return Err("the JWKS has no signing key for the allowed algorithms".into());
        }
        Ok(KeySet {
            keys,
            sha256: crate::hex::encode(&Sha256::digest(bytes)),
            generation: 0,
        })
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The token signing keys in force, kept current from a file or a URL.
pub struct Jwks {
    allowed: Vec<Algorithm>,
    current: ArcSwapOption<KeySet>,
    last_error: ArcSwapOption<String>,
    generations: AtomicU64,
    /// Wakes the URL fetcher early (an unknown `kid`).
    refetch: Arc<tokio::sync::Notify>,
    loaded: tokio::sync::Notify,
    watcher: std::sync::Mutex<Option<notify::RecommendedWatcher>>,
}

impl Jwks {
    /// A file source is read now (an unreadable or unusable file is an error); a URL source is
    /// fetched by a task started here, so this must run inside a Tokio runtime.
    pub fn start(config: &JwtConfig) -> Result<Arc<Jwks>, String> {
        let jwks = Arc::new(Jwks::empty(
            config.algorithms.iter().copied().map(algorithm).collect(),
        ));
        match &config.jwks {
            JwksSource::File(path) => {
                let set =
                    read_file(path, &jwks.allowed).map_err(|e| format!("identity.jwt.jwks_file: {e}"))?;
                jwks.install(set);
                let weak = Arc::downgrade(&jwks);
                let file = path.clone();
                let watcher = crate::watch::watch_file(path, "lattice-jwks-watch", move || {
                    let Some(j) = weak.upgrade() else { return false };
                    match read_file(&file, &j.allowed) {
                        Ok(set) => j.install(set),
                        Err(e) => j.failed(e),
                    }
                    true
                })
                .map_err(|e| format!("cannot watch {}: {e}", path.display()))?;
                if let Ok(mut slot) = jwks.watcher.lock() {
                    *slot = Some(watcher);
                }
            }
            JwksSource::Url(uri) => {
                let client = crate::client::build_client(FETCH_TIMEOUT)
                    .map_err(|e| format!("identity.jwt.jwks_url: {e}"))?;
                tokio::spawn(fetch_loop(
                    Arc::downgrade(&jwks),
                    client,
                    uri.clone(),
                    config.refresh,
                ));
            }
        }
        Ok(jwks)
    }

    /// A fixed key set from a JWKS document, never reloaded (tests, benchmarks, embedding).
    pub fn from_document(bytes: &[u8], config: &JwtConfig) -> Result<Arc<Jwks>, String> {
        let jwks = Jwks::empty(config.algorithms.iter().copied().map(algorithm).collect());
        jwks.install(KeySet::parse(bytes, &jwks.allowed)?);
        Ok(Arc::new(jwks))
    }

    fn empty(allowed: Vec<Algorithm>) -> Jwks {
        Jwks {
            allowed,
            current: ArcSwapOption::empty(),
            last_error: ArcSwapOption::empty(),
            generations: AtomicU64::new(0),
            refetch: Arc::new(tokio::sync::Notify::new()),
            loaded: tokio::sync::Notify::new(),
            watcher: std::sync::Mutex::new(None),
        }
    }

    /// The key set in force, if one has loaded.
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    /// Why the last load failed, until one succeeds.
    pub fn last_error(&self) -> Option<Arc<String>> {
        self.last_error.load_full()
    }

    /// Waits until a first key set has loaded, for at most `limit`; false when none has.
    pub async fn wait_loaded(&self, limit: Duration) -> bool {
        let loaded = self.loaded.notified();
        if self.current.load().is_some() {
            return true;
        }
        let _ = tokio::time::timeout(limit, loaded).await;
        self.current.load().is_some()
    }

    fn install(&self, mut set: KeySet) {
        if let Some(old) = self.current.load().as_ref()
            && old.sha256 == set.sha256
        {
            self.last_error.store(None);
            return;
        }
        set.generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(keys = set.keys.len(), sha256 = %set.sha256, "JWT signing keys loaded");
        self.current.store(Some(Arc::new(set)));
        self.last_error.store(None);
        self.loaded.notify_waiters();
    }

    fn failed(&self, error: String) {
        let kept = self.current.load().as_ref().map(|s| s.sha256.clone());
        tracing::error!(error = %error, kept = ?kept, "JWT signing keys not (re)loaded; the keys in force stay");
        self.last_error.store(Some(Arc::new(error)));
    }
}

fn read_file(path: &Path, allowed: &[Algorithm]) -> Result<KeySet, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    KeySet::parse(&bytes, allowed).map_err(|e| format!("{}: {e}", path.display()))
}

async fn fetch(
    client: &crate::client::HttpClient,
    uri: &http::Uri,
    allowed: &[Algorithm],
) -> Result<KeySet, String> {
    let req = http::Request::get(uri.clone())
        .header(http::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(FETCH_TIMEOUT, client.request(req))
        .await
        .map_err(|_| format!("GET {uri}: no answer within {FETCH_TIMEOUT:?}"))?
        .map_err(|e| format!("GET {uri}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("GET {uri}: status {}", resp.status()));
    }
    let body = tokio::time::timeout(
        FETCH_TIMEOUT,
        Limited::new(resp.into_body(), MAX_JWKS_BYTES).collect(),
    )
    .await
    .map_err(|_| format!("GET {uri}: body not received within {FETCH_TIMEOUT:?}"))?
    .map_err(|e| format!("GET {uri}: {e}"))?
    .to_bytes();
    KeySet::parse(&body, allowed).map_err(|e| format!("GET {uri}: {e}"))
}

/// Keeps a JWKS URL's keys current until the [`Jwks`] is dropped.
async fn fetch_loop(
    jwks: std::sync::Weak<Jwks>,
    client: crate::client::HttpClient,
    uri: http::Uri,
    refresh: Duration,
) {
    loop {
        let Some(j) = jwks.upgrade() else { return };
        let fetched = tokio::time::Instant::now();
        let wait = match fetch(&client, &uri, &j.allowed).await {
            Ok(set) => {
                j.install(set);
                refresh
            }
            Err(e) => {
                j.failed(e);
                refresh.min(MIN_REFETCH)
            }
        };
        // Hold no strong reference while waiting, so dropping the gateway ends the loop.
        let refetch = j.refetch.clone();
        drop(j);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            // An unknown `kid`: fetch now, unless the last fetch was less than MIN_REFETCH ago.
            _ = refetch.notified() => tokio::time::sleep_until(fetched + MIN_REFETCH).await,
        }
    }
}

/// Why a token was refused. Every message is safe to return: none names a claim's value or
/// key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtRejection {
    #[error("the bearer token is malformed")]
    Malformed,
    #[error("the bearer token's algorithm is not accepted")]
    Algorithm,
    #[error("the bearer token is signed with an unknown key")]
    UnknownKey,
    #[error("the bearer token's signature is not valid")]
    Signature,
    #[error("the bearer token has expired")]
    Expired,
    #[error("the bearer token is not valid yet")]
    NotYetValid,
    #[error("the bearer token's issuer is not accepted")]
    Issuer,
    #[error("the bearer token's audience is not accepted")]
    Audience,
    #[error("the bearer token lacks a required claim (exp, iss, aud, sub)")]
    MissingClaim,
    /// No key set has loaded yet: the gateway cannot decide (503).
    #[error("the token signing keys are not available; the call is refused")]
    KeysUnavailable,
}

impl JwtRejection {
    pub fn code(self) -> &'static str {
        match self {
            JwtRejection::Expired => "expired_token",
            JwtRejection::KeysUnavailable => "identity_unavailable",
            _ => "invalid_token",
        }
    }
}

#[derive(Clone)]
struct Verified {
    principal: Arc<Principal>,
    exp: u64,
    generation: u64,
}

/// Checks bearer tokens against the key set in force and maps their claims to a principal.
pub struct JwtVerifier {
    jwks: Arc<Jwks>,
    /// One per allowed algorithm: jsonwebtoken refuses a validation whose algorithms span key
    /// families (its guard against key confusion).
    validations: Vec<(Algorithm, Validation)>,
    leeway: u64,
    config: JwtConfig,
    cache: moka::sync::Cache<Box<str>, Verified>,
}

impl JwtVerifier {
    pub fn new(config: &JwtConfig, jwks: Arc<Jwks>) -> JwtVerifier {
        crate::identity::jwt_crypto::install();
        let validations = config
            .algorithms
            .iter()
            .map(|&a| {
                let alg = algorithm(a);
                let mut v = Validation::new(alg);
                v.leeway = config.leeway_secs;
                v.validate_nbf = true;
                v.set_issuer(&[&config.issuer]);
                v.set_audience(&config.audiences);
                v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                (alg, v)
            })
            .collect();
        JwtVerifier {
            jwks,
            validations,
            leeway: config.leeway_secs,
            config: config.clone(),
            // Entries also end with their token (checked on every hit) or their key set.
            cache: moka::sync::Cache::builder()
                .max_capacity(CACHE_ENTRIES)
                .time_to_live(config.refresh.max(Duration::from_secs(60)))
                .build(),
        }
    }

    /// The principal `token` stands for at `now` (unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<Arc<Principal>, JwtRejection> {
        let set = self.jwks.current().ok_or(JwtRejection::KeysUnavailable)?;
        if let Some(hit) = self.cache.get(token)
            && hit.generation == set.generation
        {
            return if hit.exp.saturating_add(self.leeway) > now {
                Ok(hit.principal)
            } else {
                self.cache.invalidate(token);
                Err(JwtRejection::Expired)
            };
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtRejection::Malformed)?;
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg) else {
            return Err(JwtRejection::Algorithm);
        };
        let mut candidates = set
            .keys
            .iter()
            .filter(|k| k.alg == header.alg && (header.kid.is_none() || k.kid == header.kid))
            .peekable();
        if candidates.peek().is_none() {
            if header.kid.is_some() {
                // Perhaps the issuer rotated its keys: fetch early (rate-limited by the loop).
                self.jwks.refetch.notify_one();
            }
            return Err(JwtRejection::UnknownKey);
        }
        let mut last = JwtRejection::Signature;
        for key in candidates {
            match jsonwebtoken::decode::<Value>(token, &key.key, validation) {
                Ok(data) => {
                    let (principal, exp) = self.principal(&data.claims)?;
                    let verified = Verified {
                        principal: Arc::new(principal),
                        exp,
                        generation: set.generation,
                    };
                    self.cache.insert(token.into(), verified.clone());
                    return Ok(verified.principal);
                }
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => JwtRejection::Signature,
                        ErrorKind::ExpiredSignature => JwtRejection::Expired,
                        ErrorKind::ImmatureSignature => JwtRejection::NotYetValid,
                        ErrorKind::InvalidIssuer => JwtRejection::Issuer,
                        ErrorKind::InvalidAudience => JwtRejection::Audience,
                        ErrorKind::MissingRequiredClaim(_) => JwtRejection::MissingClaim,
                        ErrorKind::InvalidAlgorithm => JwtRejection::Algorithm,
                        _ => JwtRejection::Malformed,
                    };
                    // Only a wrong signature makes another key with no `kid` worth a try.
                    if last != JwtRejection::Signature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    fn principal(&self, claims: &Value) -> Result<(Principal, u64), JwtRejection> {
        let exp = claims
            .get("exp")
            .and_then(Value::as_u64)
            .ok_or(JwtRejection::MissingClaim)?;
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or(JwtRejection::MissingClaim)?;
        let c = &self.config;
        let user = claim(claims, &c.user_claim)
            .and_then(scalar)
            .unwrap_or_else(|| sub.to_string());
        let team = claim(claims, &c.team_claim)
            .and_then(|v| match v {
                Value::Array(a) => a.first().and_then(scalar),
                v => scalar(v),
            })
            .unwrap_or_default();
        let roles = match claim(claims, &c.roles_claim) {
            Some(Value::Array(a)) => a.iter().filter_map(scalar).collect(),
            // OAuth `scope` style: one string, space-separated.
            Some(Value::String(s)) => s.split_whitespace().map(str::to_string).collect(),
            _ => Vec::new(),
        };
        let mut attributes = BTreeMap::new();
        attributes.insert("issuer".to_string(), c.issuer.clone());
        for (name, path) in &c.attribute_claims {
            if let Some(v) = claim(claims, path).and_then(scalar) {
                attributes.insert(name.clone(), v);
            }
        }
        Ok((
            Principal {
                id: sub.to_string(),
                kind: "jwt",
                user,
                team,
                roles,
                attributes,
            },
            exp,
        ))
    }
}

/// The value at a dotted claim path (`realm_access.roles`).
fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(claims, |v, name| v.get(name))
}

/// A string, number or boolean claim as text.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Whether a bearer credential has a JWT's shape (three base64url parts, a JSON header): how
/// the identity gate tells a token from a gateway API key in the same header.
pub fn looks_like_jwt(s: &str) -> bool {
    s.starts_with("eyJ") && s.bytes().filter(|&b| b == b'.').count() == 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    const SECRET: &[u8] = b"a-shared-secret-of-32-bytes-or-more!";

    fn config(algorithms: Vec<JwtAlgorithm>) -> JwtConfig {
        JwtConfig {
            issuer: "https://idp.test".into(),
            audiences: vec!["lattice".into()],
            algorithms,
            jwks: JwksSource::File("unused".into()),
            refresh: Duration::from_secs(300),
            leeway_secs: 30,
            user_claim: "email".into(),
            team_claim: "groups".into(),
            roles_claim: "realm_access.roles".into(),
            attribute_claims: [("cost_center".to_string(), "cc".to_string())].into(),
        }
    }

    fn oct_jwks(kid: &str) -> Vec<u8> {
        use base64::Engine;
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
        format!(r#"{{"keys":[{{"kty":"oct","kid":"{kid}","k":"{k}"}}]}}"#).into_bytes()
    }

    fn verifier(algorithms: Vec<JwtAlgorithm>, jwks: &[u8]) -> JwtVerifier {
        let c = config(algorithms);
        JwtVerifier::new(&c, Jwks::from_document(jwks, &c).unwrap())
    }

    fn token(kid: &str, claims: Value) -> String {
        crate::identity::jwt_crypto::install();
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(kid.into());
        encode(&h, &claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    fn claims(now: u64) -> Value {
        serde_json::json!({"iss": "https://idp.test", "aud": ["other", "lattice"], "sub": "u-1",
            "exp": now + 600, "email": "ana@example.com", "groups": ["research", "x"],
            "realm_access": {"roles": ["developer", "admin"]}, "cc": 17})
    }

    #[test]
    fn claims_map_to_the_principal_and_hits_come_from_the_cache() {
        let v = verifier(vec![JwtAlgorithm::HS256], &oct_jwks("k1"));
        let now = crate::identity::keys::now_secs();
        let t = token("k1", claims(now));
        let p = v.verify(&t, now).unwrap();
        assert_eq!(
            (p.id.as_str(), p.kind, p.user.as_str(), p.team.as_str()),
            ("u-1", "jwt", "ana@example.com", "research")
        );
        assert_eq!(p.roles, ["developer", "admin"]);
        assert_eq!(p.attributes["cost_center"], "17");
        assert_eq!(p.attributes["issuer"], "https://idp.test");
        assert!(
            Arc::ptr_eq(&p, &v.verify(&t, now).unwrap()),
            "a second call is a cache hit"
        );
        // A cached token still expires (past the leeway).
        assert_eq!(v.verify(&t, now + 600 + 31).unwrap_err(), JwtRejection::Expired);
    }

    #[test]
    fn every_bad_token_is_refused_with_its_reason() {
        let v = verifier(vec![JwtAlgorithm::HS256], &oct_jwks("k1"));
        let now = crate::identity::keys::now_secs();
        let with = |f: &dyn Fn(&mut Value)| {
            let mut c = claims(now);
            f(&mut c);
            token("k1", c)
        };
        let cases: Vec<(String, JwtRejection)> = vec![
            (with(&|c| c["exp"] = (now - 120).into()), JwtRejection::Expired),
            (
                with(&|c| c["nbf"] = (now + 120).into()),
                JwtRejection::NotYetValid,
            ),
            (
                with(&|c| c["iss"] = "https://evil.test".into()),
                JwtRejection::Issuer,
            ),
            (
                with(&|c| c["aud"] = "someone-else".into()),
                JwtRejection::Audience,
            ),
            (
                with(&|c| drop(c.as_object_mut().unwrap().remove("sub"))),
                JwtRejection::MissingClaim,
            ),
            (
                with(&|c| drop(c.as_object_mut().unwrap().remove("exp"))),
                JwtRejection::MissingClaim,
            ),
            (token("k2", claims(now)), JwtRejection::UnknownKey),
            ("eyJ.not.atoken".into(), JwtRejection::Malformed),
        ];
        for (t, want) in cases {
            assert_eq!(v.verify(&t, now).unwrap_err(), want, "{t}");
        }
        // Within the leeway an expired token still passes (clock skew).
        assert!(v.verify(&with(&|c| c["exp"] = (now - 10).into()), now).is_ok());
        // A tampered payload breaks the signature.
        let good = token("k1", claims(now));
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged = {
            use base64::Engine;
            let mut c = claims(now);
            c["groups"] = serde_json::json!(["admins"]);
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(c.to_string())
        };
        parts[1] = &forged;
        assert_eq!(
            v.verify(&parts.join("."), now).unwrap_err(),
            JwtRejection::Signature
        );
        // `alg: none` and algorithms not configured are refused before any key is tried.
        let none = format!("{}.{}.", "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0", parts[1]);
        assert!(matches!(
            v.verify(&none, now).unwrap_err(),
            JwtRejection::Malformed | JwtRejection::Algorithm
        ));
    }

    #[test]
    fn an_hs256_key_is_not_used_unless_hs256_is_allowed() {
        let e = KeySet::parse(&oct_jwks("k1"), &[Algorithm::RS256, Algorithm::ES256])
            .err()
            .unwrap();
        assert!(e.contains("no signing key"), "{e}");
        assert!(KeySet::parse(b"{\"keys\": 3}", &[Algorithm::HS256]).is_err());
    }

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig"));
        assert!(!looks_like_jwt("lk_0123456789ab_ffff"));
        assert!(!looks_like_jwt("eyJ.only-one-dot"));
    }
}
