//! What identifying a caller costs, per call: a gateway API key check, and a JWT check when the
//! token's principal is cached (every call after its first) and when it is not (its first call:
//! a signature verification, RS256 or ES256).
//!
//! `cargo bench -p lattice-gateway --bench identity` prints p50 / p99 over timed calls, then
//! criterion's own estimates of the repeatable ones.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use lattice_gateway::config::{JwksSource, JwtAlgorithm, JwtConfig};
use lattice_gateway::identity::jwt::{Jwks, JwtVerifier};
use lattice_gateway::identity::keys::{KeyStore, now_secs};
use rustls_pki_types::pem::PemObject;

fn report(name: &str, mut t: Vec<Duration>) {
    t.sort();
    let q = |p: f64| t[((t.len() as f64 * p) as usize).min(t.len() - 1)];
    println!(
        "{name}: p50 {:.2} us, p99 {:.2} us (n={})",
        q(0.50).as_secs_f64() * 1e6,
        q(0.99).as_secs_f64() * 1e6,
        t.len()
    );
}

fn timed(n: usize, mut f: impl FnMut(usize)) -> Vec<Duration> {
    (0..n)
        .map(|i| {
            let s = Instant::now();
            f(i);
            s.elapsed()
        })
        .collect()
}

fn identity(c: &mut Criterion) {
    // API keys: one map lookup and one SHA-256 of the presented key.
    let dir = tempfile::tempdir().unwrap();
    let mut store = KeyStore::open(dir.path()).unwrap();
    for i in 0..1_000 {
        store.create(&format!("u{i}"), "research", &[], None).unwrap();
    }
    let (_, key) = store.create("ana", "research", &[], None).unwrap();
    let now = now_secs();
    report(
        "api key",
        timed(20_000, |_| {
            std::hint::black_box(store.verify(&key, now).unwrap());
        }),
    );
    c.bench_function("api key verify (1,001 keys)", |b| {
        b.iter(|| store.verify(&key, now).unwrap())
    });

    // JWTs: the RSA test key of tests/fixtures and a fresh P-256 key.
    lattice_gateway::identity::jwt_crypto::install();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/jwt");
    let rsa = rustls_pki_types::PrivatePkcs1KeyDer::from_pem_file(fixtures.join("rs256.key")).unwrap();
    let rsa = EncodingKey::from_rsa_der(rsa.secret_pkcs1_der());
    let rsa_jwk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures.join("rs256.jwk.json")).unwrap()).unwrap();
    let ec_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ec = EncodingKey::from_ec_der(&ec_pair.serialize_der());
    let point = ec_pair.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let ec_jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "kid": "ec-1", "x": b64(&point[1..33]), "y": b64(&point[33..65])});
    let config = JwtConfig {
        issuer: "https://idp.test".into(),
        audiences: vec!["lattice".into()],
        algorithms: vec![JwtAlgorithm::RS256, JwtAlgorithm::ES256],
        jwks: JwksSource::File("unused".into()),
        refresh: Duration::from_secs(300),
        leeway_secs: 30,
        user_claim: "email".into(),
        team_claim: "groups".into(),
        roles_claim: "roles".into(),
        attribute_claims: Default::default(),
    };
    let doc = serde_json::json!({"keys": [rsa_jwk, ec_jwk]}).to_string();
    let verifier = JwtVerifier::new(&config, Jwks::from_document(doc.as_bytes(), &config).unwrap());
    let sign = |alg: Algorithm, i: usize| {
        let (kid, key) = if alg == Algorithm::RS256 {
            ("rsa-1", &rsa)
        } else {
            ("ec-1", &ec)
        };
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        let claims = serde_json::json!({"iss": "https://idp.test", "aud": "lattice", "sub": format!("user-{i}"),
            "email": "ana@example.com", "groups": ["research"], "roles": ["developer"], "exp": now + 3600, "jti": i});
        jsonwebtoken::encode(&h, &claims, key).unwrap()
    };
    for alg in [Algorithm::RS256, Algorithm::ES256] {
        // First sight of each token: a signature check.
        let tokens: Vec<String> = (0..2_000).map(|i| sign(alg, i)).collect();
        report(
            &format!("jwt {alg:?} first call (verify)"),
            timed(tokens.len(), |i| {
                std::hint::black_box(verifier.verify(&tokens[i], now).unwrap());
            }),
        );
        // Every later call: the cache.
        let token = &tokens[0];
        report(
            &format!("jwt {alg:?} cached"),
            timed(20_000, |_| {
                std::hint::black_box(verifier.verify(token, now).unwrap());
            }),
        );
        c.bench_function(&format!("jwt {alg:?} verify, cached"), |b| {
            b.iter(|| verifier.verify(token, now).unwrap())
        });
    }
}

criterion_group!(benches, identity);
criterion_main!(benches);
