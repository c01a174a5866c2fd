//! Reacting to file changes: one watcher thread per directory, changes debounced, the callback
//! run off the request path. Used by the policy store and the API key store.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};

/// Quiet time after the last event before `on_change` runs: an editor's save is several events.
pub const SETTLE: Duration = Duration::from_millis(100);

/// Watches `dir` (recursively) and calls `on_change` after each burst of changes, until it
/// returns `false` or the returned watcher is dropped.
pub fn watch_dir(
    dir: &Path,
    name: &str,
    on_change: impl Fn() -> bool + Send + 'static,
) -> Result<notify::RecommendedWatcher, notify::Error> {
    watch(dir, RecursiveMode::Recursive, None, name, on_change)
}

/// Watches one file (its directory, for the write-then-rename that replaces it) and calls
/// `on_change` after each burst of changes to it. Other files in the directory (the audit log
/// beside the key store, say) wake nothing.
pub fn watch_file(
    file: &Path,
    name: &str,
    on_change: impl Fn() -> bool + Send + 'static,
) -> Result<notify::RecommendedWatcher, notify::Error> {
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = file.file_name().map(|n| n.to_os_string());
    watch(dir, RecursiveMode::NonRecursive, file_name, name, on_change)
}

fn watch(
    dir: &Path,
    mode: RecursiveMode,
    only: Option<std::ffi::OsString>,
    name: &str,
    on_change: impl Fn() -> bool + Send + 'static,
) -> Result<notify::RecommendedWatcher, notify::Error> {
    let (tx, rx) = mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(e) = event else { return };
        let wanted = match &only {
            None => true,
            Some(f) => e.paths.iter().any(|p| p.file_name() == Some(f.as_os_str())),
        };
        if wanted && !e.kind.is_access() {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(dir, mode)?;
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            // Ends when the watcher (and with it the sender) is dropped.
            while rx.recv().is_ok() {
                while rx.recv_timeout(SETTLE).is_ok() {}
                if !on_change() {
                    return;
                }
            }
        })
        .map_err(|e| notify::Error::generic(&e.to_string()))?;
    Ok(watcher)
}
