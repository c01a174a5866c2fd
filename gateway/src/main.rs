//! The `lattice` command line.
#![allow(clippy::print_stdout)] // the CLI's output is its interface

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use lattice_gateway::identity::keys;
use lattice_gateway::{Config, Server, certs, policy, telemetry};

#[derive(Parser)]
#[command(
    name = "lattice",
    version,
    about = "Lattice: the governance gateway for AI agents"
)]
struct Cli {
    /// The gateway's data directory (API keys, later the audit log). Default: LATTICE_DATA_DIR,
    /// then the config file's `data_dir`, then ./lattice-data.
    #[arg(long, global = true, env = "LATTICE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gateway.
    Serve {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration file and exit (0 when valid).
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Development certificates for TLS and mTLS.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Gateway API keys (stored only as SHA-256 hashes in the data dir).
    Keys {
        /// Take the data dir from this config file (when neither --data-dir nor
        /// LATTICE_DATA_DIR is given), so the keys land where that gateway reads them.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Rego policy bundles: run their tests, evaluate a decision.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Spend from the audit log, by team, user, key or model (what `GET /admin/spend` reports).
    Spend {
        /// Take the data dir from this config file (when neither --data-dir nor
        /// LATTICE_DATA_DIR is given).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// One or two of team, user, key, model, comma-separated.
        #[arg(long, default_value = "team")]
        group_by: String,
        /// An RFC 3339 time, or a duration back from now (`1h`, `7d`); default: everything.
        #[arg(long)]
        since: Option<String>,
        /// As --since; default: now.
        #[arg(long)]
        until: Option<String>,
        /// json or csv.
        #[arg(long, default_value = "json")]
        format: String,
    },
    /// The audit log in the data dir: verify it, read it, export its public key.
    Audit {
        /// Take the data dir from this config file (when neither --data-dir nor
        /// LATTICE_DATA_DIR is given).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check every record and seal; exit 0 with a summary when intact, 1 with the first
    /// damaged record and the kind of damage otherwise.
    Verify {
        /// The seal signer's public key (`ed25519:<hex>`, from `lattice audit pubkey`);
        /// default: the data dir's own `audit/signing.pub`.
        #[arg(long)]
        pubkey: Option<PathBuf>,
        /// A signed head kept outside the data dir (from `lattice audit head` or the witness):
        /// the log must still hold it and extend it, or it was rolled back.
        #[arg(long, value_name = "FILE")]
        since_head: Option<PathBuf>,
    },
    /// Print the log's signed head (its last seal) as one line of JSON, after verifying the log:
    /// keep it outside the data dir, and `verify --since-head` proves the log never went back.
    Head {
        #[arg(long)]
        pubkey: Option<PathBuf>,
    },
    /// Print the last records, one JSON object a line (seals left out: `verify` checks them).
    Tail {
        #[arg(long, short = 'n', default_value_t = 10)]
        lines: usize,
    },
    /// Print the records since a time, one JSON object a line (seals left out).
    Export {
        /// An RFC 3339 time, or a duration back from now (`1h`, `7d`); default: everything.
        #[arg(long)]
        since: Option<String>,
        #[arg(long, default_value = "jsonl")]
        format: ExportFormat,
    },
    /// Print the seal signer's public key, for offline verification.
    Pubkey,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Jsonl,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Issue a key; its secret is printed once, alone on the last line of stdout.
    Create {
        #[arg(long)]
        team: String,
        #[arg(long)]
        user: String,
        /// A role (repeat for more).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// A lifetime (`30d`, `12h`) or an RFC 3339 time (`2027-01-31T00:00:00Z`).
        #[arg(long)]
        expires: Option<String>,
    },
    /// List the keys (never their secrets).
    List,
    /// Revoke a key by id.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Run the bundle's `test_*` rules, like `opa test` (exit 1 when one fails).
    Test {
        /// The bundle directory.
        #[arg(default_value = "policies")]
        dir: PathBuf,
        /// Print every test, not only the failures.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Print the decision (`data.lattice.authz.decision`) for an input document.
    Eval {
        /// The input document (JSON); `-` reads standard input.
        #[arg(long)]
        input: PathBuf,
        #[arg(long, default_value = "policies")]
        bundle: PathBuf,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Write a development CA, a server certificate (localhost, 127.0.0.1, ::1) and a client
    /// certificate named "client".
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Replace an existing CA in DIR.
        #[arg(long)]
        force: bool,
    },
    /// Issue another client certificate from the CA in DIR.
    Client {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let data_dir = cli.data_dir;
    match cli.command {
        Command::Serve { config } => serve(config, data_dir),
        Command::Check { config } => match load_config(&config, data_dir) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        Command::Policy { command } => policy_command(command),
        Command::Keys { config, command } => match resolve_data_dir(data_dir, config) {
            Ok(dir) => keys_command(&dir, command),
            Err(e) => fail(e),
        },
        Command::Spend {
            config,
            group_by,
            since,
            until,
            format,
        } => match resolve_data_dir(data_dir, config) {
            Ok(dir) => {
                let mut pairs = vec![("group_by", group_by.as_str()), ("format", format.as_str())];
                if let Some(s) = &since {
                    pairs.push(("since", s));
                }
                if let Some(u) = &until {
                    pairs.push(("until", u));
                }
                spend_command(&dir, pairs)
            }
            Err(e) => fail(e),
        },
        Command::Audit { config, command } => match resolve_data_dir(data_dir, config) {
            Ok(dir) => audit_command(&dir, command),
            Err(e) => fail(e),
        },
        Command::Certs { command } => {
            let written = match command {
                CertsCommand::Init { dir, force } => certs::init(&dir, force),
                CertsCommand::Client { dir, name } => certs::client(&dir, &name),
            };
            match written {
                Ok(files) => {
                    for f in files {
                        println!("wrote {}", f.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
    }
}

fn keys_command(data_dir: &std::path::Path, command: KeysCommand) -> ExitCode {
    let mut store = match keys::KeyStore::open(data_dir) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    match command {
        KeysCommand::Create {
            team,
            user,
            roles,
            expires,
        } => {
            let expires = match expires.as_deref().map(parse_expiry).transpose() {
                Ok(e) => e,
                Err(e) => return fail(e),
            };
            match store.create(&user, &team, &roles, expires) {
                Ok((rec, key)) => {
                    println!("id: {}", rec.id);
                    println!(
                        "user: {}  team: {}  roles: {}",
                        rec.user,
                        rec.team,
                        rec.roles.join(",")
                    );
                    if let Some(e) = rec.expires {
                        println!("expires: {}", rfc3339(e));
                    }
                    println!("the key is shown once, now; only its SHA-256 is kept:");
                    println!("{key}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        KeysCommand::List => {
            let now = keys::now_secs();
            println!(
                "{:<12}  {:<16}  {:<16}  {:<20}  {:<8}  {:<20}",
                "ID", "USER", "TEAM", "ROLES", "STATUS", "EXPIRES"
            );
            for r in store.records() {
                let status = match (r.revoked, r.expires) {
                    (Some(_), _) => "revoked",
                    (None, Some(e)) if e <= now => "expired",
                    _ => "active",
                };
                let expires = r.expires.map(rfc3339).unwrap_or_else(|| "-".into());
                println!(
                    "{:<12}  {:<16}  {:<16}  {:<20}  {:<8}  {:<20}",
                    r.id,
                    r.user,
                    r.team,
                    r.roles.join(","),
                    status,
                    expires
                );
            }
            ExitCode::SUCCESS
        }
        KeysCommand::Revoke { id } => match store.revoke(&id) {
            Ok(r) => {
                println!("revoked {} (user {}, team {})", r.id, r.user, r.team);
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
    }
}

/// `--data-dir` / LATTICE_DATA_DIR, else the config file's `data_dir`, else ./lattice-data.
fn resolve_data_dir(data_dir: Option<PathBuf>, config: Option<PathBuf>) -> Result<PathBuf, String> {
    match (data_dir, config) {
        (Some(d), _) => Ok(d),
        (None, Some(c)) => Config::load(&c).map(|c| c.data_dir).map_err(|e| e.to_string()),
        (None, None) => Ok(PathBuf::from("./lattice-data")),
    }
}

fn spend_command(data_dir: &std::path::Path, pairs: Vec<(&str, &str)>) -> ExitCode {
    use lattice_gateway::budget::report::{Format, Query};
    let query = match Query::parse(pairs) {
        Ok(q) => q,
        Err(e) => return fail(e),
    };
    let dir = data_dir.join("audit");
    let storage = match dir
        .is_dir()
        .then(|| lattice_audit::DiskStorage::open(&dir))
        .transpose()
    {
        Ok(Some(s)) => s,
        Ok(None) => return fail(format!("{}: no audit log here", dir.display())),
        Err(e) => return fail(format!("{}: {e}", dir.display())),
    };
    match query.run(&storage) {
        Ok(r) => {
            match query.format {
                Format::Csv => print!("{}", r.csv()),
                Format::Json => println!("{}", r.json()),
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("{}: {e}", dir.display())),
    }
}

fn audit_command(data_dir: &std::path::Path, command: AuditCommand) -> ExitCode {
    use lattice_audit::{seal, verify};
    let dir = data_dir.join("audit");
    if !dir.is_dir() {
        return fail(format!("{}: no audit log here", dir.display()));
    }
    let storage = match lattice_audit::DiskStorage::open(&dir) {
        Ok(s) => s,
        Err(e) => return fail(format!("{}: {e}", dir.display())),
    };
    match command {
        AuditCommand::Verify { pubkey, since_head } => {
            let key = match audit_key(&dir, pubkey) {
                Ok(k) => k,
                Err(e) => return fail(e),
            };
            let since = match since_head.as_deref().map(|p| {
                std::fs::read_to_string(p)
                    .map_err(|e| e.to_string())
                    .and_then(|t| seal::Seal::parse_head(&t))
                    .map_err(|e| format!("{}: {e}", p.display()))
            }) {
                Some(Err(e)) => return fail(e),
                Some(Ok(h)) => Some(h),
                None => None,
            };
            let started = std::time::Instant::now();
            let s = match verify::verify_since(&storage, &key, since.as_ref()) {
                Ok(s) => s,
                Err(e) => return fail(format!("{}: {e}", dir.display())),
            };
            let secs = started.elapsed().as_secs_f64();
            match &s.finding {
                None => {
                    println!(
                        "audit log intact: {} records ({} events, {} seals) in {} segments; head {} {} ({:.0} records/s)",
                        s.records,
                        s.records - s.seals,
                        s.seals,
                        s.segments,
                        s.last_seq,
                        lattice_gateway::hex::encode(&s.last_hash),
                        s.records as f64 / secs.max(1e-9)
                    );
                    for e in &s.epochs {
                        println!(
                            "signed: records {}..={} ({} records) by the seal at record {} ({} seals)",
                            e.base,
                            e.last.covers(),
                            e.last.covers() + 1 - e.base,
                            e.last.seq,
                            e.seals,
                        );
                    }
                    if s.seals > 0 {
                        println!(
                            "each seal adds {}..={} records to what is signed (those since the seal before it, and that seal)",
                            s.per_seal.0, s.per_seal.1
                        );
                    }
                    if let Some(h) = since {
                        println!(
                            "extends the kept head: record {} {}",
                            h.covers(),
                            lattice_gateway::hex::encode(&h.head)
                        );
                    }
                    ExitCode::SUCCESS
                }
                Some(f) => {
                    println!(
                        "audit log damaged: {} at record {}: {}",
                        f.damage.as_str(),
                        f.seq,
                        f.detail
                    );
                    ExitCode::from(1)
                }
            }
        }
        AuditCommand::Head { pubkey } => {
            let key = match audit_key(&dir, pubkey) {
                Ok(k) => k,
                Err(e) => return fail(e),
            };
            match verify::verify(&storage, &key) {
                Err(e) => fail(format!("{}: {e}", dir.display())),
                Ok(s) => match (&s.finding, s.head()) {
                    (Some(f), _) => fail(format!(
                        "the audit log is damaged ({} at record {}: {}): it has no head to vouch for",
                        f.damage.as_str(),
                        f.seq,
                        f.detail
                    )),
                    (None, None) => fail("the audit log is empty: no head yet"),
                    (None, Some(h)) => {
                        println!("{}", h.head_json());
                        ExitCode::SUCCESS
                    }
                },
            }
        }
        AuditCommand::Pubkey => match std::fs::read_to_string(dir.join(seal::PUBKEY_FILE)) {
            Ok(k) => {
                print!("{k}");
                ExitCode::SUCCESS
            }
            Err(e) => fail(format!("{}: {e}", dir.join(seal::PUBKEY_FILE).display())),
        },
        AuditCommand::Tail { lines } => {
            let mut last = std::collections::VecDeque::with_capacity(lines);
            let walked = verify::for_each_record(&storage, |r| {
                if r.event.kind == seal::KIND {
                    return;
                }
                if last.len() == lines {
                    last.pop_front();
                }
                if lines > 0 {
                    last.push_back(r);
                }
            });
            if let Err(e) = walked {
                return fail(format!("{}: {e}", dir.display()));
            }
            for r in last {
                println!("{}", lattice_gateway::gates::audit::record_json(&r));
            }
            ExitCode::SUCCESS
        }
        AuditCommand::Export {
            since,
            format: ExportFormat::Jsonl,
        } => {
            let since_ns = match since.as_deref().map(parse_since).transpose() {
                Ok(s) => s.unwrap_or(0),
                Err(e) => return fail(e),
            };
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut write_err = None;
            let walked = verify::for_each_record(&storage, |r| {
                if r.time_ns >= since_ns && write_err.is_none() && r.event.kind != seal::KIND {
                    use std::io::Write;
                    if let Err(e) = writeln!(out, "{}", lattice_gateway::gates::audit::record_json(&r)) {
                        write_err = Some(e);
                    }
                }
            });
            match (walked, write_err) {
                (Err(e), _) | (_, Some(e)) => fail(format!("{}: {e}", dir.display())),
                _ => ExitCode::SUCCESS,
            }
        }
    }
}

/// The seal signer's public key: `pubkey`, or the audit dir's own.
fn audit_key(
    dir: &std::path::Path,
    pubkey: Option<PathBuf>,
) -> Result<lattice_audit::seal::VerifyingKey, String> {
    let path = pubkey.unwrap_or_else(|| dir.join(lattice_audit::seal::PUBKEY_FILE));
    std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|t| lattice_audit::seal::parse_public_key(&t))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// `--since`: an RFC 3339 time or a duration back from now; unix nanoseconds.
fn parse_since(s: &str) -> Result<u64, String> {
    lattice_gateway::budget::report::time_ns(s)
        .ok_or_else(|| format!("--since {s:?}: use an RFC 3339 time or a duration such as 1h"))
}

/// `30d` / `12h` from now, or an RFC 3339 time; unix seconds.
fn parse_expiry(s: &str) -> Result<u64, String> {
    lattice_gateway::budget::report::time_arg(s, true)
        .map(|d| d.as_secs())
        .ok_or_else(|| format!("--expires {s:?}: use a lifetime such as 30d or 12h, or an RFC 3339 time"))
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// How long one policy evaluation may run before it is an error (and so a denial).
const POLICY_EVAL_LIMIT: Duration = Duration::from_millis(100);

fn policy_command(command: PolicyCommand) -> ExitCode {
    match command {
        PolicyCommand::Test { dir, verbose } => {
            let bundle = match policy::Bundle::load(&dir, POLICY_EVAL_LIMIT) {
                Ok(b) => b,
                Err(e) => return fail(e),
            };
            let outcomes = bundle.run_tests();
            let failed = outcomes.iter().filter(|t| !t.passed).count();
            for t in &outcomes {
                match (&t.error, t.passed) {
                    (Some(e), _) => println!("ERROR {}: {e}", t.name),
                    (None, false) => println!("FAIL  {}", t.name),
                    (None, true) if verbose => println!("PASS  {}", t.name),
                    _ => {}
                }
            }
            println!(
                "policy {} (sha256 {}): {} tests",
                dir.display(),
                bundle.sha256(),
                outcomes.len()
            );
            println!("{} passed, {failed} failed", outcomes.len() - failed);
            if outcomes.is_empty() {
                return fail(format!("{}: no test_ rules found", dir.display()));
            }
            if failed > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        PolicyCommand::Eval { input, bundle } => {
            let text = if input.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
            } else {
                std::fs::read_to_string(&input)
            };
            let text = match text {
                Ok(t) => t,
                Err(e) => return fail(format!("{}: {e}", input.display())),
            };
            let value = match regorus::Value::from_json_str(&text) {
                Ok(v) => v,
                Err(e) => return fail(format!("{}: not JSON: {e}", input.display())),
            };
            let b = match policy::Bundle::load(&bundle, POLICY_EVAL_LIMIT) {
                Ok(b) => b,
                Err(e) => return fail(e),
            };
            match b.decide(value) {
                Ok(d) => {
                    let out = serde_json::json!({"decision": d, "bundle_sha256": b.sha256()});
                    println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(e) => fail(format!("{e} (fail closed: this call would be denied)")),
            }
        }
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("lattice: {e}");
    ExitCode::from(2)
}

/// The config file, with `--data-dir` / LATTICE_DATA_DIR in place of its `data_dir`.
fn load_config(
    path: &std::path::Path,
    data_dir: Option<PathBuf>,
) -> Result<Config, lattice_gateway::config::ConfigError> {
    let mut config = Config::load(path)?;
    if let Some(d) = data_dir {
        config.data_dir = d;
    }
    Ok(config)
}

fn serve(path: PathBuf, data_dir: Option<PathBuf>) -> ExitCode {
    let config = match load_config(&path, data_dir) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let _log_guard = telemetry::init(&config.log);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    rt.block_on(async {
        let server = match Server::bind(&config).await {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        let shutdown = shutdown_signal();
        let state = server.state();
        reload_on_hangup(state.clone());
        tracing::info!(
            addr = %server.local_addr(),
            tls = server.scheme() == "https",
            gates = ?server.gate_names(),
            routes = config.routes.len(),
            "lattice listening"
        );
        if let Some(m) = server.metrics_addr() {
            tracing::info!(addr = %m, "metrics listening (GET /metrics, no key)");
        }
        // The one line scripts wait for.
        println!(
            "lattice listening on {}://{}",
            server.scheme(),
            server.local_addr()
        );
        server.run(shutdown, Duration::from_secs(10)).await;
        // Every record handed to the audit writer is written and synced before the process
        // ends (its thread would otherwise die with it, queue and all).
        if let Some(audit) = state.audit() {
            audit.close();
            // The head the close made durable reaches the witness before the process ends.
            if let Some(w) = state.witness() {
                w.deliver_last(audit).await;
            }
        }
        telemetry::flush_access();
        tracing::info!("lattice stopped");
        ExitCode::SUCCESS
    })
}

/// SIGHUP reloads the policy bundle (as a change of its files does), off the request path.
/// Registered before readiness is announced: SIGHUP's default action would end the process.
fn reload_on_hangup(state: std::sync::Arc<lattice_gateway::state::State>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        let state = state.clone();
                        let _ = tokio::task::spawn_blocking(move || state.reload()).await;
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler; policy reloads follow file changes only")
            }
        }
    }
    #[cfg(not(unix))]
    let _ = state;
}

/// Registers SIGTERM and SIGINT handlers now (they must exist before readiness is announced:
/// a signal that arrives first would otherwise take the default action and kill the process)
/// and returns the future that resolves on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
