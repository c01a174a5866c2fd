//! jsonwebtoken's cryptography over `ring`, the one crypto library the gateway already uses for
//! TLS: RS256, ES256 and HS256. Its RustCrypto backend verified a token's first call in 226 us
//! (RS256) and 447 us (ES256); through ring it takes 32.9 us and 93.3 us (`--bench identity`),
//! and the tree keeps one implementation of each algorithm. Installed once per process by
//! [`install`].

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::signature::{self, Signer, Verifier};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature as rs;

static RING: CryptoProvider = CryptoProvider {
    signer_factory,
    verifier_factory,
    // Only needed to build JWKs from keys, which the gateway never does.
    key_utils: KeyUtils::new_unimplemented(),
};

/// Makes ring jsonwebtoken's provider for this process (a no-op when one is installed).
pub fn install() {
    let _ = RING.install_default();
}

enum VerifyKey {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An EC point or a public key's bytes.
    Bytes(Vec<u8>),
    Hmac(ring::hmac::Key),
}

struct RingVerifier {
    alg: Algorithm,
    key: VerifyKey,
}

fn verifier_factory(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    let key = match (alg, key.kind()) {
        (Algorithm::RS256, DecodingKeyKind::RsaModulusExponent { n, e }) => VerifyKey::Rsa {
            n: n.clone(),
            e: e.clone(),
        },
        (Algorithm::ES256, DecodingKeyKind::SecretOrDer(point)) => VerifyKey::Bytes(point.clone()),
        (Algorithm::HS256, DecodingKeyKind::SecretOrDer(secret)) => {
            VerifyKey::Hmac(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret))
        }
        (Algorithm::RS256 | Algorithm::ES256 | Algorithm::HS256, _) => {
            return Err(ErrorKind::InvalidKeyFormat.into());
        }
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    };
    Ok(Box::new(RingVerifier { alg: *alg, key }))
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> std::result::Result<(), signature::Error> {
        let ok = match &self.key {
            VerifyKey::Rsa { n, e } => rs::RsaPublicKeyComponents { n, e }
                .verify(&rs::RSA_PKCS1_2048_8192_SHA256, msg, sig)
                .is_ok(),
            VerifyKey::Bytes(point) => rs::UnparsedPublicKey::new(&rs::ECDSA_P256_SHA256_FIXED, point)
                .verify(msg, sig)
                .is_ok(),
            VerifyKey::Hmac(key) => ring::hmac::verify(key, msg, sig).is_ok(),
        };
        if ok { Ok(()) } else { Err(signature::Error::new()) }
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

enum SignKey {
    Rsa(rs::RsaKeyPair),
    Ecdsa(rs::EcdsaKeyPair),
    Hmac(ring::hmac::Key),
}

struct RingSigner {
    alg: Algorithm,
    key: SignKey,
}

/// Signing (the tests and tools make tokens with the same library): RSA keys as PKCS#1 DER, EC
/// keys as PKCS#8 DER, as jsonwebtoken's `from_*_der` take them.
fn signer_factory(alg: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    let bytes = key.as_bytes();
    let key = match alg {
        Algorithm::RS256 => SignKey::Rsa(
            rs::RsaKeyPair::from_der(bytes).map_err(|e| ErrorKind::InvalidRsaKey(e.to_string()))?,
        ),
        Algorithm::ES256 => SignKey::Ecdsa(
            rs::EcdsaKeyPair::from_pkcs8(
                &rs::ECDSA_P256_SHA256_FIXED_SIGNING,
                bytes,
                &ring::rand::SystemRandom::new(),
            )
            .map_err(|_| ErrorKind::InvalidEcdsaKey)?,
        ),
        Algorithm::HS256 => SignKey::Hmac(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes)),
        _ => return Err(ErrorKind::UnsupportedAlgorithm.into()),
    };
    Ok(Box::new(RingSigner { alg: *alg, key }))
}

impl Signer<Vec<u8>> for RingSigner {
    fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
        let rng = ring::rand::SystemRandom::new();
        match &self.key {
            SignKey::Rsa(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(&rs::RSA_PKCS1_SHA256, &rng, msg, &mut sig)
                    .map_err(|_| signature::Error::new())?;
                Ok(sig)
            }
            SignKey::Ecdsa(k) => k
                .sign(&rng, msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| signature::Error::new()),
            SignKey::Hmac(k) => Ok(ring::hmac::sign(k, msg).as_ref().to_vec()),
        }
    }
}

impl JwtSigner for RingSigner {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}
