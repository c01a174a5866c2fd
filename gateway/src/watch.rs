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
    let (tx, rx) = mpsc::channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(dir, RecursiveMode::Recursive)?;
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
