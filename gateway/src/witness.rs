//! The audit witness: copies each new signed head of the audit log outside the data directory,
//! so a rollback (records and seals cut back together to an older head, which the log alone
//! cannot show) is caught by `lattice audit verify --since-head` against the copy.
//!
//! A head extends every head before it, so the witness only ever needs the latest: it follows
//! the log's head, delivers at most once per `interval`, and a slow or failing receiver never
//! holds up a call (a failure is logged and retried with the next head, or after `interval`).
//! Owns `[audit] witness`; must not touch the log itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use lattice_audit::seal::Seal;

#[derive(Debug, Clone)]
pub enum Target {
    /// Replaced atomically (written beside it, synced, renamed) with each head.
    File(PathBuf),
    /// POSTed each head as `application/json`; any 2xx is a delivery.
    Url(http::Uri),
}

#[derive(Debug, Clone)]
pub struct Witness {
    pub target: Target,
    pub interval: Duration,
}

impl Witness {
    /// `[audit] witness`: an http(s) URL, or a file path (relative to the config's folder) that
    /// is not inside the data dir, where an editor of the data dir would reach it.
    pub fn parse(
        text: &str,
        base_dir: &Path,
        data_dir: &Path,
        interval: Duration,
    ) -> Result<Witness, String> {
        let target = if text.starts_with("http://") || text.starts_with("https://") {
            Target::Url(text.parse().map_err(|e| format!("\"{text}\": {e}"))?)
        } else {
            let p = Path::new(text);
            let p = if p.is_absolute() {
                p.to_path_buf()
            } else {
                base_dir.join(p)
            };
            let within = |a: &Path, b: &Path| absolute(a).starts_with(absolute(b));
            if within(&p, data_dir) {
                return Err(format!(
                    "\"{text}\" is inside the data dir {}: a witness must be out of reach of whoever can edit the log",
                    data_dir.display()
                ));
            }
            if p.file_name().is_none() {
                return Err(format!("\"{text}\" is not a file path"));
            }
            Target::File(p)
        };
        Ok(Witness { target, interval })
    }

    /// Follows `log`'s head in the background until the log is gone.
    pub fn spawn(&self, log: &lattice_audit::AuditLog) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            tracing::error!("audit witness: no runtime to run on; heads are not copied");
            return;
        };
        let mut heads = log.heads();
        let target = self.target.clone();
        let interval = self.interval;
        let client = match &target {
            Target::Url(_) => match crate::client::build_client(Duration::from_secs(5)) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!(error = %e, "audit witness: no HTTP client; heads are not copied");
                    return;
                }
            },
            Target::File(_) => None,
        };
        rt.spawn(async move {
            let mut delivered: Option<u64> = None;
            loop {
                let head = *heads.borrow_and_update();
                if let Some(h) = head
                    && delivered != Some(h.seq)
                {
                    match deliver(&target, client.as_ref(), &h).await {
                        Ok(()) => delivered = Some(h.seq),
                        Err(e) => tracing::warn!(error = %e, seq = h.covers(), "audit witness: the head was not delivered"),
                    }
                }
                tokio::time::sleep(interval).await;
                // A failed delivery is retried after the interval even when no new head came.
                if delivered == head.map(|h| h.seq) && heads.changed().await.is_err() {
                    return;
                }
            }
        });
    }
}

impl Witness {
    /// The head a file witness holds (`None` for a URL, or before its first head): the log must
    /// extend it on start. A file that is there but unreadable is an error, not a fresh start.
    pub fn kept(&self) -> Result<Option<Seal>, String> {
        let Target::File(path) = &self.target else {
            return Ok(None);
        };
        match std::fs::read_to_string(path) {
            Ok(text) => Seal::parse_head(&text)
                .map(Some)
                .map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Delivers `log`'s current head now (bounded by a few seconds): at shutdown, after the
    /// log's close made its last writes durable.
    pub async fn deliver_last(&self, log: &lattice_audit::AuditLog) {
        let Some(head) = log.head() else { return };
        let client = match &self.target {
            Target::Url(_) => crate::client::build_client(Duration::from_secs(2)).ok(),
            Target::File(_) => None,
        };
        let delivered = tokio::time::timeout(
            Duration::from_secs(5),
            deliver(&self.target, client.as_ref(), &head),
        )
        .await;
        match delivered {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, seq = head.covers(), "audit witness: the last head was not delivered")
            }
            Err(_) => tracing::warn!(seq = head.covers(), "audit witness: the last head timed out"),
        }
    }
}

fn absolute(p: &Path) -> PathBuf {
    // The data dir may not exist yet: resolve what exists of each path's ancestors.
    let p = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut existing = p.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return p,
        }
    }
    let mut out = existing.canonicalize().unwrap_or_else(|_| existing.to_path_buf());
    out.extend(rest.iter().rev());
    out
}

async fn deliver(
    target: &Target,
    client: Option<&crate::client::HttpClient>,
    head: &Seal,
) -> Result<(), String> {
    let mut json = head.head_json();
    json.push('\n');
    match target {
        Target::File(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || write_atomically(&path, json.as_bytes()))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        }
        Target::Url(url) => {
            let client = client.ok_or("no HTTP client")?;
            let mut req = http::Request::new(Full::new(Bytes::from(json)));
            *req.method_mut() = http::Method::POST;
            *req.uri_mut() = url.clone();
            req.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
                Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
                Ok(Ok(resp)) => Err(format!("the witness answered {}", resp.status())),
                Ok(Err(e)) => Err(format!("unreachable: {e}")),
                Err(_) => Err("timed out".into()),
            }
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}
