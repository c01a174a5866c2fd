//! The live policy: the bundle in force, swapped atomically when its files change.
//!
//! A change (seen by a file watcher, or asked for with [`PolicyStore::reload`], e.g. on SIGHUP)
//! compiles the new bundle off the request path and runs its own `test_*` rules. A bundle that
//! fails to compile or fails a test is refused: the previous one keeps deciding, and the error
//! is logged and kept for `/readyz`. Readers take the current bundle with one atomic load.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption, Guard};

use super::{Bundle, PolicyError};

pub struct PolicyStore {
    dir: PathBuf,
    limit: Duration,
    current: ArcSwap<Bundle>,
    last_error: ArcSwapOption<String>,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
}

impl std::fmt::Debug for PolicyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Loads a bundle and refuses it when one of its own tests fails.
fn load_checked(dir: &Path, limit: Duration) -> Result<Bundle, PolicyError> {
    let bundle = Bundle::load(dir, limit)?;
    let failed: Vec<String> = bundle
        .run_tests()
        .into_iter()
        .filter(|t| !t.passed)
        .map(|t| t.name)
        .collect();
    if failed.is_empty() {
        Ok(bundle)
    } else {
        Err(PolicyError::Bundle {
            dir: dir.to_path_buf(),
            message: format!("its own tests fail: {}", failed.join(", ")),
        })
    }
}

impl PolicyStore {
    /// Loads the bundle in `dir`; it must compile and pass its tests.
    pub fn open(dir: &Path, limit: Duration) -> Result<Arc<PolicyStore>, PolicyError> {
        let bundle = load_checked(dir, limit)?;
        tracing::info!(dir = %dir.display(), sha256 = bundle.sha256(), engine = bundle.engine_name(), "policy bundle loaded");
        Ok(Arc::new(PolicyStore {
            dir: dir.to_path_buf(),
            limit,
            current: ArcSwap::from_pointee(bundle),
            last_error: ArcSwapOption::empty(),
            watcher: Mutex::new(None),
        }))
    }

    /// The bundle in force.
    pub fn current(&self) -> Guard<Arc<Bundle>> {
        self.current.load()
    }

    /// Why the last reload was refused, until a reload succeeds.
    pub fn last_error(&self) -> Option<Arc<String>> {
        self.last_error.load_full()
    }

    /// Loads the directory again: swaps the bundle in when it is good, keeps the old one and
    /// records the error when not. Returns the SHA-256 in force afterwards.
    pub fn reload(&self) -> Result<String, String> {
        match load_checked(&self.dir, self.limit) {
            Ok(bundle) => {
                let sha = bundle.sha256().to_string();
                if sha != self.current.load().sha256() {
                    tracing::info!(dir = %self.dir.display(), sha256 = %sha, engine = bundle.engine_name(), "policy bundle reloaded");
                    self.current.store(Arc::new(bundle));
                }
                self.last_error.store(None);
                Ok(sha)
            }
            Err(e) => {
                let msg = e.to_string();
                tracing::error!(error = %msg, kept = self.current.load().sha256(), "policy bundle refused; the previous one stays in force");
                self.last_error.store(Some(Arc::new(msg.clone())));
                Err(msg)
            }
        }
    }

    /// Starts watching the directory: changes are reloaded on a background thread.
    pub fn watch(self: &Arc<Self>) -> Result<(), notify::Error> {
        let store: Weak<PolicyStore> = Arc::downgrade(self);
        let watcher =
            crate::watch::watch_dir(&self.dir, "lattice-policy-watch", move || match store.upgrade() {
                Some(s) => {
                    let _ = s.reload();
                    true
                }
                None => false,
            })?;
        if let Ok(mut slot) = self.watcher.lock() {
            *slot = Some(watcher);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use regorus::Value;
    use std::time::Instant;

    const POLICY: &str = r#"package lattice.authz
import rego.v1
default allow := false
allow if input.user in data.lattice.users
decision := {"allow": allow, "reasons": set(), "obligations": {}}
test_ana if allow with input as {"user": "ana"}
"#;

    fn write(dir: &Path, name: &str, text: &str) {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        // Write then rename, as editors do, so a reload never sees half a file.
        let tmp = dir.join(format!(".{}.tmp", name.replace('/', "_")));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, p).unwrap();
    }

    fn allows(store: &PolicyStore, user: &str) -> bool {
        let input = Value::from_json_str(&format!(r#"{{"user":"{user}"}}"#)).unwrap();
        store.current().decide(input).unwrap().allow
    }

    /// Polls `cond` for up to 2 s (the issue's bound for a policy edit to take effect).
    fn within_2s(what: &str, cond: impl Fn() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(start.elapsed() < Duration::from_secs(2), "not within 2 s: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn edits_take_effect_and_broken_edits_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "lattice/authz.rego", POLICY);
        write(d, "lattice/data.json", r#"{"users":["ana"]}"#);
        let store = PolicyStore::open(d, Duration::from_millis(200)).unwrap();
        store.watch().unwrap();
        assert!(allows(&store, "ana") && !allows(&store, "bob"));
        let first = store.current().sha256().to_string();

        write(d, "lattice/data.json", r#"{"users":["ana","bob"]}"#);
        within_2s("a data edit", || allows(&store, "bob"));
        assert_ne!(store.current().sha256(), first);
        let good = store.current().sha256().to_string();

        write(
            d,
            "lattice/authz.rego",
            "package lattice.authz\nthis is not rego\n",
        );
        within_2s("a broken edit is reported", || store.last_error().is_some());
        assert_eq!(
            store.current().sha256(),
            good,
            "the broken bundle must not be swapped in"
        );
        assert!(allows(&store, "bob"));

        // Compiles, but fails its own test: refused too.
        write(
            d,
            "lattice/authz.rego",
            &POLICY.replace("allow if input.user in data.lattice.users", "allow if false"),
        );
        within_2s("a bundle failing its tests is refused", || {
            store.last_error().is_some_and(|e| e.contains("test_ana"))
        });
        assert!(allows(&store, "bob"));

        write(d, "lattice/authz.rego", POLICY);
        within_2s("the fixed bundle is back", || store.last_error().is_none());
        assert!(allows(&store, "ana") && allows(&store, "bob"));
    }

    #[test]
    fn a_bundle_failing_its_tests_does_not_open() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "p.rego",
            &POLICY.replace("allow if input.user in data.lattice.users", "allow if false"),
        );
        let e = PolicyStore::open(dir.path(), Duration::from_millis(200)).unwrap_err();
        assert!(e.to_string().contains("test_ana"), "{e}");
    }
}
