//! Who is calling: the [`Principal`] every gate after identity reads, and the stores it is
//! proven against: API keys ([`keys`]), JWT bearer tokens and their signing keys ([`jwt`], with
//! the `ring` verifiers in [`jwt_crypto`]). The identity gate (`crate::gates::identity`) asks
//! them in the configured order.
//!
//! Must not touch: gates, routes or the request path; they depend on this module, not back.

pub mod jwt;
pub mod jwt_crypto;
pub mod keys;

use std::collections::BTreeMap;

/// Who is calling: set by the identity gate, read by every later gate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Principal {
    /// The key id, the certificate's SPIFFE id or subject, or the token's subject.
    pub id: String,
    /// How the caller was identified: `api_key`, `mtls` or `jwt`.
    pub kind: &'static str,
    pub user: String,
    pub team: String,
    pub roles: Vec<String>,
    pub attributes: BTreeMap<String, String>,
}
