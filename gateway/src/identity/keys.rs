//! Gateway API keys: issued by `lattice keys create`, stored only as SHA-256 hashes.
//!
//! A key is `lk_<id>_<secret>`: a 12-hex-digit id that names the record (so a lookup is one map
//! access) and 64 hex digits of secret from the OS RNG. The store keeps the id, the SHA-256 of
//! the whole key, the principal it maps to (user, team, roles), and its creation, expiry and
//! revocation times; the key itself is shown once, at creation, and never written anywhere.
//! Verification compares hashes in constant time.
//!
//! The store is one JSON file in the data dir (`keys.json`), replaced atomically (write, fsync,
//! rename) on every change. Two CLI invocations writing at the same moment race: the last
//! rename wins.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const FILE: &str = "keys.json";
const PREFIX: &str = "lk_";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRecord {
    pub id: String,
    /// SHA-256 of the whole key, lower-case hex.
    pub sha256: String,
    pub user: String,
    pub team: String,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Unix seconds.
    pub created: u64,
    #[serde(default)]
    pub expires: Option<u64>,
    #[serde(default)]
    pub revoked: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    version: u32,
    keys: Vec<KeyRecord>,
}

/// Why a presented key was refused. The messages are safe to return to the client: they name
/// no key material and do not tell an unknown id from a wrong secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyRejection {
    #[error("the API key is not valid")]
    Invalid,
    #[error("the API key has expired")]
    Expired,
    #[error("the API key has been revoked")]
    Revoked,
}

impl KeyRejection {
    /// The machine-readable reason (OpenAI's `code`).
    pub fn code(self) -> &'static str {
        match self {
            KeyRejection::Invalid => "invalid_api_key",
            KeyRejection::Expired => "expired_api_key",
            KeyRejection::Revoked => "revoked_api_key",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}: not a key store: {1}")]
    Format(PathBuf, String),
    #[error("no key with id {0}")]
    NoSuchKey(String),
    #[error("the OS random source failed: {0}")]
    Random(String),
}

/// The keys, by id.
#[derive(Debug, Default, Clone)]
pub struct KeyStore {
    path: PathBuf,
    keys: BTreeMap<String, KeyRecord>,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn sha256_hex(s: &str) -> String {
    crate::hex::encode(&Sha256::digest(s.as_bytes()))
}

fn random_hex(bytes: usize) -> Result<String, StoreError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| StoreError::Random(e.to_string()))?;
    Ok(crate::hex::encode(&buf))
}

impl KeyStore {
    /// Opens the store in `data_dir`; a missing file is an empty store.
    pub fn open(data_dir: &Path) -> Result<KeyStore, StoreError> {
        let path = data_dir.join(FILE);
        let keys = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: KeyFile = serde_json::from_slice(&bytes)
                    .map_err(|e| StoreError::Format(path.clone(), e.to_string()))?;
                if file.version != 1 {
                    return Err(StoreError::Format(
                        path,
                        format!("unsupported version {}", file.version),
                    ));
                }
                file.keys.into_iter().map(|k| (k.id.clone(), k)).collect()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(StoreError::Io(path, e)),
        };
        Ok(KeyStore { path, keys })
    }

    pub fn records(&self) -> impl Iterator<Item = &KeyRecord> {
        self.keys.values()
    }

    /// Issues a key; returns its record and the key itself (shown once, never stored).
    pub fn create(
        &mut self,
        user: &str,
        team: &str,
        roles: &[String],
        expires: Option<u64>,
    ) -> Result<(KeyRecord, String), StoreError> {
        let id = loop {
            let id = random_hex(6)?;
            if !self.keys.contains_key(&id) {
                break id;
            }
        };
        let key = format!("{PREFIX}{id}_{}", random_hex(32)?);
        let record = KeyRecord {
            id: id.clone(),
            sha256: sha256_hex(&key),
            user: user.to_string(),
            team: team.to_string(),
            roles: roles.to_vec(),
            created: now_secs(),
            expires,
            revoked: None,
        };
        self.keys.insert(id, record.clone());
        self.save()?;
        Ok((record, key))
    }

    pub fn revoke(&mut self, id: &str) -> Result<KeyRecord, StoreError> {
        let record = self
            .keys
            .get_mut(id)
            .ok_or_else(|| StoreError::NoSuchKey(id.to_string()))?;
        if record.revoked.is_none() {
            record.revoked = Some(now_secs());
        }
        let record = record.clone();
        self.save()?;
        Ok(record)
    }

    /// The record a presented key belongs to, if it is valid at `now`.
    pub fn verify(&self, presented: &str, now: u64) -> Result<&KeyRecord, KeyRejection> {
        let id = presented
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('_'))
            .map(|(id, _)| id)
            .ok_or(KeyRejection::Invalid)?;
        let record = self.keys.get(id).ok_or(KeyRejection::Invalid)?;
        let mut hex = [0u8; 64];
        let hash = crate::hex::encode_into(&Sha256::digest(presented.as_bytes()), &mut hex);
        if !bool::from(hash.as_bytes().ct_eq(record.sha256.as_bytes())) {
            return Err(KeyRejection::Invalid);
        }
        if record.revoked.is_some() {
            return Err(KeyRejection::Revoked);
        }
        if record.expires.is_some_and(|e| e <= now) {
            return Err(KeyRejection::Expired);
        }
        Ok(record)
    }

    fn save(&self) -> Result<(), StoreError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io(dir.to_path_buf(), e))?;
        let file = KeyFile {
            version: 1,
            keys: self.keys.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| StoreError::Format(self.path.clone(), e.to_string()))?;
        let tmp = self.path.with_extension("json.tmp");
        let io = |e| StoreError::Io(tmp.clone(), e);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(|e| StoreError::Io(self.path.clone(), e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_verify_revoke_expire() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = KeyStore::open(dir.path()).unwrap();
        let (rec, key) = store
            .create("ana", "research", &["developer".into()], None)
            .unwrap();
        assert!(key.starts_with("lk_") && key.len() == 3 + 12 + 1 + 64, "{key}");
        let file = std::fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(!file.contains(&key[16..]), "the secret must never be stored");
        assert!(file.contains(&rec.sha256));

        // A fresh open (another process) sees the key.
        let other = KeyStore::open(dir.path()).unwrap();
        assert_eq!(other.verify(&key, now_secs()).unwrap().team, "research");

        // Wrong secret, unknown id, junk: all the same rejection.
        let mut wrong = key.clone();
        wrong.pop();
        wrong.push(if key.ends_with('0') { '1' } else { '0' });
        for bad in [wrong.as_str(), "lk_000000000000_00", "Bearer x", "", "lk_"] {
            assert_eq!(
                other.verify(bad, now_secs()).unwrap_err(),
                KeyRejection::Invalid,
                "{bad:?}"
            );
        }

        let (_, short) = store.create("bo", "support", &[], Some(now_secs() + 60)).unwrap();
        assert!(store.verify(&short, now_secs()).is_ok());
        assert_eq!(
            store.verify(&short, now_secs() + 61).unwrap_err(),
            KeyRejection::Expired
        );

        store.revoke(&rec.id).unwrap();
        let reopened = KeyStore::open(dir.path()).unwrap();
        assert_eq!(
            reopened.verify(&key, now_secs()).unwrap_err(),
            KeyRejection::Revoked
        );
        assert!(matches!(store.revoke("nope"), Err(StoreError::NoSuchKey(_))));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_corrupt_store_is_an_error_not_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "{not json").unwrap();
        assert!(matches!(KeyStore::open(dir.path()), Err(StoreError::Format(..))));
    }
}
