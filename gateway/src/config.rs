//! Configuration: TOML with `${VAR}` / `${VAR:-default}` interpolation, parsed strictly, then
//! validated into typed values before anything listens.
//!
//! Two layers (TensorZero's habit): `Raw*` mirrors the file with `deny_unknown_fields`; the
//! validated [`Config`] holds parsed addresses, URIs, durations, loaded certificates and
//! secrets. Every error names the file, the key path and what is wrong.
//!
//! Interpolation runs on string values only, after TOML parsing, so a variable's value can never
//! change the document's structure. `${VAR}` fails when VAR is unset; `${VAR:-default}` uses the
//! default when VAR is unset or empty (shell semantics); `$$` is a literal `$`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Uri;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

pub use crate::identity::jwt::{JwksSource, JwtAlgorithm, JwtConfig};

/// A configuration error: which file, which key, what is wrong.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// A secret string: never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    data_dir: Option<PathBuf>,
    server: RawServer,
    #[serde(default)]
    identity: RawIdentity,
    #[serde(default)]
    authorization: Option<RawAuthorization>,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    deny: Vec<RawDeny>,
    #[serde(default)]
    budgets: Option<crate::budget::RawBudgets>,
    #[serde(default)]
    prices: BTreeMap<String, crate::budget::prices::RawPrice>,
    #[serde(default)]
    rate_limits: Vec<crate::budget::RawRateLimit>,
    #[serde(default)]
    pii: Option<crate::content::RawPii>,
    #[serde(default)]
    tools: crate::content::tools::ToolsConfig,
    #[serde(default)]
    translation: crate::translation::RawTranslation,
    #[serde(default)]
    failover: crate::failover::RawFailover,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuthorization {
    policy_dir: PathBuf,
    #[serde(default = "default_eval_timeout")]
    eval_timeout_ms: u64,
}

fn default_eval_timeout() -> u64 {
    100
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    sync: lattice_audit::SyncMode,
    #[serde(default = "default_sync_interval")]
    sync_interval_ms: u64,
    #[serde(default = "default_segment_bytes")]
    segment_bytes: u64,
    #[serde(default)]
    allow_corruption: bool,
    /// Where each new signed head is copied: a file path (outside the data dir) or an
    /// http(s) URL that is POSTed the head's JSON.
    #[serde(default)]
    witness: Option<String>,
    #[serde(default = "default_witness_interval")]
    witness_interval_ms: u64,
}

fn default_witness_interval() -> u64 {
    1000
}

impl Default for RawAudit {
    fn default() -> RawAudit {
        RawAudit {
            enabled: true,
            sync: lattice_audit::SyncMode::Always,
            sync_interval_ms: default_sync_interval(),
            segment_bytes: default_segment_bytes(),
            allow_corruption: false,
            witness: None,
            witness_interval_ms: default_witness_interval(),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_sync_interval() -> u64 {
    100
}

fn default_segment_bytes() -> u64 {
    64 << 20
}

/// The audit log's settings; the log lives in `<data_dir>/audit`.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub options: lattice_audit::Options,
    pub witness: Option<crate::witness::Witness>,
}

/// The authorization gate's settings.
#[derive(Debug)]
pub struct AuthorizationConfig {
    pub policy_dir: PathBuf,
    pub eval_timeout: Duration,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    #[serde(default)]
    methods: Vec<IdentityMethod>,
    #[serde(default)]
    mtls: RawMtls,
    #[serde(default)]
    jwt: Option<RawJwt>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMtls {
    #[serde(default)]
    team_from: TeamFrom,
    #[serde(default)]
    roles_from: Vec<CertField>,
}

/// Which certificate field names the principal's team.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TeamFrom {
    /// The subject's organization (O).
    #[default]
    O,
    /// The subject's organizational unit (OU).
    Ou,
    /// The first path segment of the SPIFFE id (`spiffe://domain/TEAM/...`).
    SpiffePath,
}

/// A certificate field whose values become roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CertField {
    /// Every organization (O) of the subject.
    O,
    /// Every organizational unit (OU) of the subject.
    Ou,
    /// Every path segment of the SPIFFE id after the first (`spiffe://domain/team/ROLE/...`).
    SpiffePath,
}

/// How the principal is read off a verified client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MtlsMapping {
    pub team_from: TeamFrom,
    pub roles_from: Vec<CertField>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    issuer: String,
    audiences: Vec<String>,
    #[serde(default = "default_jwt_algorithms")]
    algorithms: Vec<JwtAlgorithm>,
    #[serde(default)]
    jwks_file: Option<PathBuf>,
    #[serde(default)]
    jwks_url: Option<String>,
    #[serde(default = "default_jwks_refresh")]
    jwks_refresh_secs: u64,
    #[serde(default = "default_leeway")]
    leeway_secs: u64,
    #[serde(default)]
    claims: RawClaims,
}

fn default_jwt_algorithms() -> Vec<JwtAlgorithm> {
    vec![JwtAlgorithm::RS256, JwtAlgorithm::ES256]
}

fn default_jwks_refresh() -> u64 {
    300
}

fn default_leeway() -> u64 {
    30
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClaims {
    #[serde(default = "default_user_claim")]
    user: String,
    #[serde(default = "default_team_claim")]
    team: String,
    #[serde(default = "default_roles_claim")]
    roles: String,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
}

impl Default for RawClaims {
    fn default() -> RawClaims {
        RawClaims {
            user: default_user_claim(),
            team: default_team_claim(),
            roles: default_roles_claim(),
            attributes: BTreeMap::new(),
        }
    }
}

fn default_user_claim() -> String {
    "sub".into()
}

fn default_team_claim() -> String {
    "team".into()
}

fn default_roles_claim() -> String {
    "roles".into()
}

/// The identity gate's settings.
#[derive(Debug, Clone, Default)]
pub struct IdentityConfig {
    /// Methods in the order they are tried; empty: calls are anonymous (no identity gate).
    pub methods: Vec<IdentityMethod>,
    pub mtls: MtlsMapping,
    pub jwt: Option<JwtConfig>,
}

/// A way to identify callers, tried in the configured order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityMethod {
    /// Gateway API keys (`lattice keys create`), as `Authorization: Bearer` or `x-api-key`.
    ApiKey,
    /// The verified TLS client certificate (needs `[server.tls] client_auth`).
    Mtls,
    /// A JWT as `Authorization: Bearer` (needs `[identity.jwt]`).
    Jwt,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    #[serde(default = "default_max_body")]
    max_body_bytes: u64,
    #[serde(default = "default_header_timeout")]
    header_read_timeout_ms: u64,
    #[serde(default = "default_body_timeout")]
    body_read_timeout_ms: u64,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    /// A second, plain listener serving `GET /metrics` only, without a key (for scrapers).
    #[serde(default)]
    metrics_listen: Option<String>,
    #[serde(default = "default_h2_ping_interval")]
    http2_keep_alive_interval_ms: u64,
    #[serde(default = "default_h2_ping_timeout")]
    http2_keep_alive_timeout_ms: u64,
    #[serde(default = "default_h2_idle")]
    http2_idle_timeout_ms: u64,
    #[serde(default)]
    tls: Option<RawTls>,
}

fn default_max_connections() -> usize {
    4096
}

fn default_h2_ping_interval() -> u64 {
    20_000
}

fn default_h2_ping_timeout() -> u64 {
    10_000
}

fn default_h2_idle() -> u64 {
    60_000
}

fn default_max_body() -> u64 {
    16 * 1024 * 1024
}

fn default_header_timeout() -> u64 {
    10_000
}

fn default_body_timeout() -> u64 {
    30_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    client_ca: Option<PathBuf>,
    #[serde(default)]
    client_auth: ClientAuth,
}

/// Whether a TLS listener asks for client certificates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    Off,
    Optional,
    Required,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    #[serde(default)]
    format: LogFormat,
    #[serde(default)]
    level: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The provider kind of an upstream: which dialect it speaks and how it authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any OpenAI-compatible server (OpenAI, vLLM, Ollama's `/v1`): `Authorization: Bearer`.
    Openai,
    /// Anthropic's Messages API: `x-api-key`.
    Anthropic,
    /// Google's Gemini API (`generateContent`; base `https://generativelanguage.googleapis.com`):
    /// `x-goog-api-key`.
    Gemini,
    /// Ollama's native `/api/chat` (base `http://localhost:11434`): `Authorization: Bearer` when
    /// a key is set (Ollama's cloud), none otherwise.
    Ollama,
    /// The built-in deterministic provider; no network.
    Mock,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Ollama => "ollama",
            ProviderKind::Mock => "mock",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    kind: ProviderKind,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    api_key: Option<String>,
    #[serde(default)]
    api_key_file: Option<PathBuf>,
    #[serde(default = "default_connect_timeout")]
    connect_timeout_ms: u64,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    #[serde(default)]
    chunk_delay_ms: u64,
}

fn default_connect_timeout() -> u64 {
    5_000
}

fn default_timeout() -> u64 {
    600_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    model: String,
    /// The one deployment of the first group (with `upstream_model`), or `groups`.
    #[serde(default)]
    upstream: Option<String>,
    #[serde(default)]
    upstream_model: Option<String>,
    #[serde(default)]
    groups: Vec<RawGroup>,
    /// Groups of one deployment each, after the others.
    #[serde(default)]
    fallbacks: Vec<RawDeployment>,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    failover: Option<crate::failover::RawPolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    deployments: Vec<RawDeployment>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeployment {
    upstream: String,
    /// The model name there; the name asked for when absent.
    #[serde(default)]
    model: Option<String>,
    #[serde(default = "default_weight")]
    weight: u32,
    /// Overrides the upstream's `timeout_ms` for the response head.
    #[serde(default)]
    first_byte_timeout_ms: Option<u64>,
    /// The price of this deployment: the same as `[prices."UPSTREAM/MODEL"]`.
    #[serde(default)]
    price: Option<crate::budget::prices::RawPrice>,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeny {
    model: String,
    #[serde(default = "default_deny_status")]
    status: u16,
    #[serde(default)]
    message: Option<String>,
}

fn default_deny_status() -> u16 {
    403
}

// ---------------------------------------------------------------------------------------------
// The validated configuration.

#[derive(Debug)]
pub struct Config {
    pub source: PathBuf,
    /// Where keys (and later the audit log) live.
    pub data_dir: PathBuf,
    pub identity: IdentityConfig,
    /// The Rego authorization gate, when configured.
    pub authorization: Option<AuthorizationConfig>,
    /// The audit log; `None` only when `[audit] enabled = false`.
    pub audit: Option<AuditConfig>,
    pub server: ServerConfig,
    pub log: LogConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub deny: Vec<DenyConfig>,
    /// `[budgets]`, `[prices]` and `[[rate_limits]]`.
    pub budgets: crate::budget::BudgetConfig,
    /// `[pii]`
    pub pii: crate::content::PiiConfig,
    /// `[tools]`: what the tool gate does with tools outside the policy's allowed set.
    pub tools: crate::content::tools::ToolsConfig,
    /// `[translation]`: what a translated call does with fields its target cannot carry.
    pub translation: lattice_providers::translate::Rules,
    /// `[failover]`: the routes' default failover rules, the retry budget and the breaker.
    pub failover: crate::failover::FailoverConfig,
}

#[derive(Debug)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_body_bytes: u64,
    pub header_read_timeout: Duration,
    /// Deadline for the whole request body once the headers are in.
    pub body_read_timeout: Duration,
    /// Open client connections at most; past it, new ones wait in the listen queue.
    pub max_connections: usize,
    /// Where Prometheus scrapes `GET /metrics` without a key (a listener of its own).
    pub metrics_listen: Option<SocketAddr>,
    /// HTTP/2: a ping this often, and the connection closed when one is not answered in time.
    pub http2_keep_alive_interval: Duration,
    pub http2_keep_alive_timeout: Duration,
    /// HTTP/2: a connection with no request in flight for this long is closed.
    pub http2_idle_timeout: Duration,
    pub tls: Option<TlsConfig>,
}

/// TLS material, loaded and checked at config time.
#[derive(Debug)]
pub struct TlsConfig {
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub client_ca: Vec<CertificateDer<'static>>,
    pub client_auth: ClientAuth,
}

#[derive(Debug)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug)]
pub struct UpstreamConfig {
    pub name: String,
    pub kind: ProviderKind,
    /// `None` only for `mock`.
    pub base_url: Option<Uri>,
    pub api_key: Option<Secret>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub chunk_delay: Option<Duration>,
}

#[derive(Debug)]
pub struct RouteConfig {
    /// An exact name, a prefix pattern ending in `*`, or `*`.
    pub model: String,
    /// Tried in order; never empty, nor is any group.
    pub groups: Vec<Vec<DeploymentConfig>>,
    pub aliases: Vec<String>,
    pub failover: crate::failover::Policy,
}

#[derive(Debug)]
pub struct DeploymentConfig {
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    pub upstream_model: Option<String>,
    /// Its share of its group's calls (at least 1).
    pub weight: u32,
    pub first_byte_timeout: Option<Duration>,
}

#[derive(Debug)]
pub struct DenyConfig {
    pub model: String,
    pub status: http::StatusCode,
    pub message: String,
}

impl Config {
    /// Reads, interpolates from the process environment, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            key: String::new(),
            message: format!("cannot read the config file: {e}"),
        })?;
        Config::from_str_with_env(path, &text, &|k| std::env::var(k).ok())
    }

    /// Parses `text` (as if read from `path`, which also anchors relative file paths), taking
    /// variables from `env`.
    pub fn from_str_with_env(
        path: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let err = |key: &str, message: String| ConfigError {
            file: path.to_path_buf(),
            key: key.to_string(),
            message,
        };
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| err("", format!("not valid TOML: {}", e.to_string().trim_end())))?;
        let mut value = toml::Value::Table(table);
        interpolate_value(&mut value, &mut String::new(), env).map_err(|(k, m)| err(&k, m))?;
        let raw: RawConfig = serde_path_to_error::deserialize(value).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            err(&key, e.into_inner().to_string())
        })?;
        let base_dir = path.parent().unwrap_or_else(|| Path::new("."));
        validate(raw, path, base_dir).map_err(|(k, m)| err(&k, m))
    }
}

type Invalid = (String, String);

fn validate(raw: RawConfig, source: &Path, base_dir: &Path) -> Result<Config, Invalid> {
    let bad = |k: &str, m: String| (k.to_string(), m);

    let listen: SocketAddr = raw.server.listen.parse().map_err(|_| {
        bad(
            "server.listen",
            format!(
                "\"{}\" is not an IP:PORT socket address (e.g. 127.0.0.1:8080)",
                raw.server.listen
            ),
        )
    })?;
    if raw.server.max_body_bytes == 0 {
        return Err(bad("server.max_body_bytes", "must be greater than 0".into()));
    }
    let metrics_listen = raw
        .server
        .metrics_listen
        .as_deref()
        .map(|a| {
            a.parse::<SocketAddr>()
                .map_err(|e| bad("server.metrics_listen", format!("\"{a}\" is not IP:PORT: {e}")))
        })
        .transpose()?;
    if raw.server.max_connections == 0 {
        return Err(bad("server.max_connections", "must be greater than 0".into()));
    }
    if raw.server.http2_keep_alive_interval_ms == 0 || raw.server.http2_keep_alive_timeout_ms == 0 {
        return Err(bad(
            "server.http2_keep_alive_interval_ms",
            "the HTTP/2 keep-alive interval and timeout must be greater than 0".into(),
        ));
    }
    if raw.server.header_read_timeout_ms == 0 {
        return Err(bad(
            "server.header_read_timeout_ms",
            "must be greater than 0".into(),
        ));
    }
    if raw.server.body_read_timeout_ms == 0 {
        return Err(bad(
            "server.body_read_timeout_ms",
            "must be greater than 0".into(),
        ));
    }
    let tls = raw.server.tls.map(|t| load_tls(t, base_dir)).transpose()?;

    let level = raw.log.level.unwrap_or_else(|| "info".to_string());
    if tracing_subscriber::EnvFilter::builder().parse(&level).is_err() {
        return Err(bad(
            "log.level",
            format!("\"{level}\" is not a valid level or filter directive"),
        ));
    }

    let mut upstreams = Vec::with_capacity(raw.upstreams.len());
    for (name, u) in raw.upstreams {
        let key = format!("upstreams.{name}");
        let base_url = match (u.kind, u.base_url) {
            (ProviderKind::Mock, None) => None,
            (ProviderKind::Mock, Some(_)) => {
                return Err(bad(
                    &format!("{key}.base_url"),
                    "a mock upstream has no base_url".into(),
                ));
            }
            (_, None) => {
                return Err(bad(
                    &format!("{key}.base_url"),
                    "missing (required for this kind)".into(),
                ));
            }
            (_, Some(s)) => Some(parse_base_url(&s).map_err(|m| bad(&format!("{key}.base_url"), m))?),
        };
        let api_key = match (u.api_key, u.api_key_file) {
            (Some(_), Some(_)) => {
                return Err(bad(&key, "set api_key or api_key_file, not both".into()));
            }
            (Some(k), None) => Some(k),
            (None, Some(f)) => {
                let p = resolve(base_dir, &f);
                let k = std::fs::read_to_string(&p).map_err(|e| {
                    bad(
                        &format!("{key}.api_key_file"),
                        format!("cannot read {}: {e}", p.display()),
                    )
                })?;
                Some(k.trim().to_string())
            }
            (None, None) => None,
        };
        // An empty key (e.g. `${OPENAI_API_KEY:-}` with the variable unset) sends no credential.
        let api_key = api_key.filter(|k| !k.is_empty()).map(Secret);
        if let Some(k) = &api_key
            && http::HeaderValue::from_str(k.expose()).is_err()
        {
            return Err(bad(
                &format!("{key}.api_key"),
                "contains characters not allowed in a header".into(),
            ));
        }
        if u.kind == ProviderKind::Mock && api_key.is_some() {
            return Err(bad(
                &format!("{key}.api_key"),
                "a mock upstream takes no credential".into(),
            ));
        }
        if u.kind != ProviderKind::Mock && u.chunk_delay_ms != 0 {
            return Err(bad(
                &format!("{key}.chunk_delay_ms"),
                "only a mock upstream has chunk_delay_ms".into(),
            ));
        }
        if u.connect_timeout_ms == 0 || u.timeout_ms == 0 {
            return Err(bad(&key, "timeouts must be greater than 0".into()));
        }
        upstreams.push(UpstreamConfig {
            name,
            kind: u.kind,
            base_url,
            api_key,
            connect_timeout: Duration::from_millis(u.connect_timeout_ms),
            timeout: Duration::from_millis(u.timeout_ms),
            chunk_delay: (u.chunk_delay_ms > 0).then(|| Duration::from_millis(u.chunk_delay_ms)),
        });
    }

    let failover = crate::failover::FailoverConfig::validate(raw.failover)?;
    let mut prices = raw.prices;
    let mut routes = Vec::with_capacity(raw.routes.len());
    let mut seen = std::collections::HashSet::new();
    for (i, r) in raw.routes.into_iter().enumerate() {
        let key = format!("routes[{i}]");
        check_pattern(&r.model).map_err(|m| bad(&format!("{key}.model"), m))?;
        for a in &r.aliases {
            if a.is_empty() || a.contains('*') {
                return Err(bad(
                    &format!("{key}.aliases"),
                    format!("\"{a}\" must be an exact, non-empty model name"),
                ));
            }
        }
        for name in std::iter::once(&r.model).chain(&r.aliases) {
            if !seen.insert(name.clone()) {
                return Err(bad(&key, format!("model name \"{name}\" is routed twice")));
            }
        }
        let mut raw_groups: Vec<(String, Vec<RawDeployment>)> = Vec::new();
        match (r.upstream, r.groups.is_empty()) {
            (Some(upstream), true) => raw_groups.push((
                key.clone(),
                vec![RawDeployment {
                    upstream,
                    model: r.upstream_model,
                    weight: 1,
                    first_byte_timeout_ms: None,
                    price: None,
                }],
            )),
            (None, false) if r.upstream_model.is_none() => {
                for (g, group) in r.groups.into_iter().enumerate() {
                    raw_groups.push((format!("{key}.groups[{g}].deployments"), group.deployments));
                }
            }
            (None, false) => {
                return Err(bad(
                    &format!("{key}.upstream_model"),
                    "goes with `upstream`; a deployment in `groups` names its own `model`".into(),
                ));
            }
            (Some(_), false) => {
                return Err(bad(&key, "give either `upstream` or `groups`, not both".into()));
            }
            (None, true) => {
                return Err(bad(
                    &format!("{key}.upstream"),
                    "a route needs `upstream` or `groups`".into(),
                ));
            }
        }
        for (f, d) in r.fallbacks.into_iter().enumerate() {
            raw_groups.push((format!("{key}.fallbacks[{f}]"), vec![d]));
        }
        let mut groups = Vec::with_capacity(raw_groups.len());
        for (gkey, group) in raw_groups {
            if group.is_empty() {
                return Err(bad(&gkey, "a group needs at least one deployment".into()));
            }
            if group.len() > 64 {
                return Err(bad(&gkey, "a group has at most 64 deployments".into()));
            }
            let single = !gkey.contains(".groups[");
            let mut deployments = Vec::with_capacity(group.len());
            for (j, d) in group.into_iter().enumerate() {
                let dkey = if single {
                    gkey.clone()
                } else {
                    format!("{gkey}[{j}]")
                };
                let upstream = upstreams
                    .iter()
                    .position(|u| u.name == d.upstream)
                    .ok_or_else(|| {
                        bad(
                            &format!("{dkey}.upstream"),
                            format!("no upstream named \"{}\" in [upstreams]", d.upstream),
                        )
                    })?;
                if d.model.as_deref() == Some("") {
                    let field = if dkey == key { "upstream_model" } else { "model" };
                    return Err(bad(&format!("{dkey}.{field}"), "must not be empty".into()));
                }
                if d.weight == 0 || d.weight > 1_000_000 {
                    return Err(bad(&format!("{dkey}.weight"), "must be 1 to 1000000".into()));
                }
                if d.first_byte_timeout_ms == Some(0) {
                    return Err(bad(
                        &format!("{dkey}.first_byte_timeout_ms"),
                        "must be greater than 0".into(),
                    ));
                }
                if let Some(price) = d.price {
                    let Some(model) = d.model.as_deref() else {
                        return Err(bad(
                            &format!("{dkey}.price"),
                            "a deployment's price needs its `model`".into(),
                        ));
                    };
                    let name = format!("{}/{model}", d.upstream);
                    if prices.insert(name.clone(), price).is_some() {
                        return Err(bad(
                            &format!("{dkey}.price"),
                            format!("the price of `{name}` is given twice"),
                        ));
                    }
                }
                deployments.push(DeploymentConfig {
                    upstream,
                    upstream_model: d.model,
                    weight: d.weight,
                    first_byte_timeout: d.first_byte_timeout_ms.map(Duration::from_millis),
                });
            }
            groups.push(deployments);
        }
        let policy = match &r.failover {
            None => failover.defaults,
            Some(raw) => failover
                .defaults
                .over(raw)
                .map_err(|(k, m)| bad(&format!("{key}.failover.{k}"), m))?,
        };
        routes.push(RouteConfig {
            model: r.model,
            groups,
            aliases: r.aliases,
            failover: policy,
        });
    }

    let mut deny = Vec::with_capacity(raw.deny.len());
    for (i, d) in raw.deny.into_iter().enumerate() {
        let key = format!("deny[{i}]");
        check_pattern(&d.model).map_err(|m| bad(&format!("{key}.model"), m))?;
        let status = match d.status {
            401 | 403 | 429 => http::StatusCode::from_u16(d.status).map_err(|e| bad(&key, e.to_string()))?,
            s => {
                return Err(bad(
                    &format!("{key}.status"),
                    format!("{s} is not one of 401, 403, 429"),
                ));
            }
        };
        let message = d
            .message
            .unwrap_or_else(|| format!("model \"{}\" is denied by the gateway", d.model));
        deny.push(DenyConfig {
            model: d.model,
            status,
            message,
        });
    }

    let data_dir = resolve(
        base_dir,
        &raw.data_dir.unwrap_or_else(|| PathBuf::from("lattice-data")),
    );
    let identity = validate_identity(raw.identity, tls.as_ref(), base_dir)?;
    let authorization = match raw.authorization {
        None => None,
        Some(a) if a.eval_timeout_ms == 0 => {
            return Err(bad(
                "authorization.eval_timeout_ms",
                "must be greater than 0".into(),
            ));
        }
        Some(a) => Some(AuthorizationConfig {
            policy_dir: resolve(base_dir, &a.policy_dir),
            eval_timeout: Duration::from_millis(a.eval_timeout_ms),
        }),
    };
    let budgets = crate::budget::validate(raw.budgets, prices, raw.rate_limits)?;
    let translation = crate::translation::validate(raw.translation)?;
    let pii = crate::content::validate(raw.pii)?;
    let a = raw.audit;
    if a.sync_interval_ms == 0 {
        return Err(bad("audit.sync_interval_ms", "must be greater than 0".into()));
    }
    if a.segment_bytes < 4096 {
        return Err(bad("audit.segment_bytes", "must be at least 4096".into()));
    }
    let witness = a
        .witness
        .as_deref()
        .map(|w| {
            crate::witness::Witness::parse(
                w,
                base_dir,
                &data_dir,
                Duration::from_millis(a.witness_interval_ms),
            )
        })
        .transpose()
        .map_err(|e| bad("audit.witness", e))?;
    let audit = a.enabled.then(|| AuditConfig {
        options: lattice_audit::Options {
            sync: a.sync,
            sync_interval: Duration::from_millis(a.sync_interval_ms),
            segment_bytes: a.segment_bytes,
            allow_corruption: a.allow_corruption,
            extends: None,
        },
        witness,
    });
    Ok(Config {
        source: source.to_path_buf(),
        data_dir,
        audit,
        identity,
        authorization,
        server: ServerConfig {
            listen,
            max_body_bytes: raw.server.max_body_bytes,
            header_read_timeout: Duration::from_millis(raw.server.header_read_timeout_ms),
            body_read_timeout: Duration::from_millis(raw.server.body_read_timeout_ms),
            max_connections: raw.server.max_connections,
            metrics_listen,
            http2_keep_alive_interval: Duration::from_millis(raw.server.http2_keep_alive_interval_ms),
            http2_keep_alive_timeout: Duration::from_millis(raw.server.http2_keep_alive_timeout_ms),
            http2_idle_timeout: Duration::from_millis(raw.server.http2_idle_timeout_ms.max(1)),
            tls,
        },
        log: LogConfig {
            format: raw.log.format,
            level,
        },
        upstreams,
        routes,
        deny,
        budgets,
        pii,
        tools: raw.tools,
        translation,
        failover,
    })
}

fn validate_identity(
    raw: RawIdentity,
    tls: Option<&TlsConfig>,
    base_dir: &Path,
) -> Result<IdentityConfig, Invalid> {
    let bad = |k: &str, m: String| (k.to_string(), m);
    let mut methods = Vec::new();
    for m in raw.methods {
        if methods.contains(&m) {
            return Err(bad("identity.methods", format!("{m:?} is listed twice")));
        }
        methods.push(m);
    }
    let client_certs = tls.is_some_and(|t| t.client_auth != ClientAuth::Off);
    if methods.contains(&IdentityMethod::Mtls) && !client_certs {
        return Err(bad(
            "identity.methods",
            "\"mtls\" needs [server.tls] with client_auth = \"optional\" or \"required\"".into(),
        ));
    }
    let jwt = match (raw.jwt, methods.contains(&IdentityMethod::Jwt)) {
        (None, false) => None,
        (None, true) => {
            return Err(bad(
                "identity.methods",
                "\"jwt\" needs an [identity.jwt] section (issuer, audiences, jwks_file or jwks_url)".into(),
            ));
        }
        (Some(_), false) => {
            return Err(bad(
                "identity.jwt",
                "configured but not used: add \"jwt\" to identity.methods".into(),
            ));
        }
        (Some(j), true) => Some(validate_jwt(j, base_dir)?),
    };
    Ok(IdentityConfig {
        methods,
        mtls: MtlsMapping {
            team_from: raw.mtls.team_from,
            roles_from: raw.mtls.roles_from,
        },
        jwt,
    })
}

fn validate_jwt(j: RawJwt, base_dir: &Path) -> Result<JwtConfig, Invalid> {
    let bad = |k: &str, m: &str| {
        let key = if k.is_empty() {
            "identity.jwt".to_string()
        } else {
            format!("identity.jwt.{k}")
        };
        (key, m.to_string())
    };
    if j.issuer.is_empty() {
        return Err(bad("issuer", "must not be empty"));
    }
    if j.audiences.is_empty() || j.audiences.iter().any(String::is_empty) {
        return Err(bad("audiences", "list at least one audience; none may be empty"));
    }
    if j.algorithms.is_empty() {
        return Err(bad(
            "algorithms",
            "list at least one of \"RS256\", \"ES256\", \"HS256\"",
        ));
    }
    let jwks = match (j.jwks_file, j.jwks_url) {
        (Some(f), None) => JwksSource::File(resolve(base_dir, &f)),
        (None, Some(u)) => {
            JwksSource::Url(parse_base_url(&u).map_err(|m| (String::from("identity.jwt.jwks_url"), m))?)
        }
        _ => return Err(bad("", "set exactly one of jwks_file and jwks_url")),
    };
    if j.jwks_refresh_secs == 0 {
        return Err(bad("jwks_refresh_secs", "must be greater than 0"));
    }
    if j.leeway_secs > 300 {
        return Err(bad("leeway_secs", "at most 300 (clock skew, not a grace period)"));
    }
    let claims = j.claims;
    let named = [
        ("user", &claims.user),
        ("team", &claims.team),
        ("roles", &claims.roles),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v));
    let attributes = claims
        .attributes
        .iter()
        .map(|(k, v)| (format!("attributes.{k}"), v));
    for (k, v) in named.chain(attributes) {
        if v.is_empty() || v.split('.').any(str::is_empty) {
            return Err((
                format!("identity.jwt.claims.{k}"),
                format!("\"{v}\" is not a claim path (names joined by dots)"),
            ));
        }
    }
    Ok(JwtConfig {
        issuer: j.issuer,
        audiences: j.audiences,
        algorithms: j.algorithms,
        jwks,
        refresh: Duration::from_secs(j.jwks_refresh_secs),
        leeway_secs: j.leeway_secs,
        user_claim: claims.user,
        team_claim: claims.team,
        roles_claim: claims.roles,
        attribute_claims: claims.attributes,
    })
}

fn check_pattern(p: &str) -> Result<(), String> {
    match p.find('*') {
        _ if p.is_empty() => Err("must not be empty".into()),
        Some(i) if i + 1 != p.len() => Err(format!(
            "\"{p}\": `*` is only allowed at the end (a prefix pattern)"
        )),
        _ => Ok(()),
    }
}

fn parse_base_url(s: &str) -> Result<Uri, String> {
    let uri: Uri = s.parse().map_err(|e| format!("\"{s}\" is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("\"{s}\" must start with http:// or https://")),
    }
    if uri.authority().is_none() {
        return Err(format!("\"{s}\" has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("\"{s}\" must not have a query string"));
    }
    Ok(uri)
}

fn resolve(base_dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}

fn load_tls(t: RawTls, base_dir: &Path) -> Result<TlsConfig, Invalid> {
    let read = |key: &str, p: &Path| -> Result<Vec<u8>, Invalid> {
        let p = resolve(base_dir, p);
        std::fs::read(&p).map_err(|e| (key.to_string(), format!("cannot read {}: {e}", p.display())))
    };
    let certs = |key: &str, p: &Path| -> Result<Vec<CertificateDer<'static>>, Invalid> {
        let pem = read(key, p)?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                (
                    key.to_string(),
                    format!("{}: not a PEM certificate file: {e}", p.display()),
                )
            })?;
        if certs.is_empty() {
            return Err((
                key.to_string(),
                format!("{}: contains no certificate", p.display()),
            ));
        }
        Ok(certs)
    };
    let cert_chain = certs("server.tls.cert", &t.cert)?;
    let key_pem = read("server.tls.key", &t.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        (
            "server.tls.key".to_string(),
            format!("{}: no usable private key: {e}", t.key.display()),
        )
    })?;
    let client_ca = match (&t.client_ca, t.client_auth) {
        (Some(p), _) => certs("server.tls.client_ca", p)?,
        (None, ClientAuth::Off) => Vec::new(),
        (None, _) => {
            return Err((
                "server.tls.client_ca".to_string(),
                "required when client_auth is \"optional\" or \"required\"".to_string(),
            ));
        }
    };
    Ok(TlsConfig {
        cert_chain,
        key,
        client_ca,
        client_auth: t.client_auth,
    })
}

// ---------------------------------------------------------------------------------------------
// Interpolation.

fn interpolate_value(
    v: &mut toml::Value,
    path: &mut String,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(), Invalid> {
    match v {
        toml::Value::String(s) if s.contains('$') => {
            *s = interpolate(s, env).map_err(|m| (path.clone(), m))?;
        }
        toml::Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                interpolate_value(item, path, env)?;
                path.truncate(len);
            }
        }
        toml::Value::Table(t) => {
            for (k, item) in t.iter_mut() {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                interpolate_value(item, path, env)?;
                path.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Expands `${VAR}`, `${VAR:-default}` and `$$` in `s`.
pub fn interpolate(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or_else(|| format!("unclosed \"${{\" in \"{s}\""))?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("\"${{{expr}}}\" is not a valid variable reference"));
            }
            match (env(name), default) {
                (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (use ${{{name}:-default}} for an optional one)"
                    ));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "HOST" => Some("127.0.0.1".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_str_with_env(Path::new("test.toml"), text, &env)
    }

    #[test]
    fn interpolation_rules() {
        assert_eq!(interpolate("${HOST}:80", &env).unwrap(), "127.0.0.1:80");
        assert_eq!(interpolate("${NOPE:-x}", &env).unwrap(), "x");
        assert_eq!(interpolate("${EMPTY:-d}", &env).unwrap(), "d");
        assert_eq!(interpolate("${EMPTY}", &env).unwrap(), "");
        assert_eq!(interpolate("a$$b $x", &env).unwrap(), "a$b $x");
        assert!(
            interpolate("${NOPE}", &env)
                .unwrap_err()
                .contains("NOPE is not set")
        );
        assert!(interpolate("${HOST", &env).is_err());
        assert!(interpolate("${A-B}", &env).is_err());
    }

    const GOOD: &str = r#"
        [server]
        listen = "${HOST}:0"
        [upstreams.oa]
        kind = "openai"
        base_url = "http://127.0.0.1:9/v1"
        api_key = "${NOPE:-}"
        [upstreams.m]
        kind = "mock"
        [[routes]]
        model = "gpt-*"
        upstream = "oa"
        [[routes]]
        model = "demo"
        upstream = "m"
        aliases = ["d2"]
    "#;

    #[test]
    fn good_config_validates() {
        let c = load(GOOD).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:0");
        assert_eq!(c.server.max_body_bytes, 16 * 1024 * 1024);
        assert_eq!(c.upstreams.len(), 2);
        let oa = c.upstreams.iter().find(|u| u.name == "oa").unwrap();
        assert!(oa.api_key.is_none(), "an empty key means no credential");
        assert_eq!(c.routes[1].aliases, vec!["d2".to_string()]);
    }

    #[test]
    fn routes_take_groups_and_fallbacks_and_refuse_what_cannot_be_meant() {
        let route = |body: &str| {
            GOOD.replace(
                "model = \"demo\"\n        upstream = \"m\"",
                &format!("model = \"demo\"\n{body}"),
            )
        };
        let c = load(&route(
            r#"groups = [{ deployments = [{ upstream = "m", weight = 3 }, { upstream = "oa", model = "x", first_byte_timeout_ms = 50, price = { input = 1.0, output = 2.0 } }] }]
               fallbacks = [{ upstream = "oa", model = "y" }]
               failover = { on = ["503"], retries = 1 }"#,
        ))
        .unwrap();
        let r = &c.routes[1];
        assert_eq!(r.groups.len(), 2);
        assert_eq!(r.groups[0][0].weight, 3);
        assert_eq!(r.groups[0][1].first_byte_timeout, Some(Duration::from_millis(50)));
        assert_eq!(r.groups[1][0].upstream_model.as_deref(), Some("y"));
        assert_eq!(r.failover.retries, 1);
        assert!(!r.failover.on.contains(crate::failover::Trigger::TooManyRequests));
        assert!(
            c.budgets.prices.iter().any(|(m, _)| m == "oa/x"),
            "a deployment's price is oa/x's"
        );

        for (body, key, says) in [
            (
                "upstream = \"m\"\ngroups = [{ deployments = [{ upstream = \"m\" }] }]",
                "routes[1]",
                "not both",
            ),
            ("", "routes[1].upstream", "needs `upstream` or `groups`"),
            (
                "groups = [{ deployments = [] }]",
                "routes[1].groups[0].deployments",
                "at least one",
            ),
            (
                "upstream = \"m\"\nfallbacks = [{ upstream = \"zz\" }]",
                "routes[1].fallbacks[0].upstream",
                "zz",
            ),
            (
                "upstream = \"m\"\nfallbacks = [{ upstream = \"oa\", weight = 0 }]",
                "routes[1].fallbacks[0].weight",
                "1 to",
            ),
            (
                "upstream = \"m\"\nfailover = { on = [\"404\"] }",
                "routes[1].failover.on",
                "not a failover trigger",
            ),
            (
                "upstream = \"m\"\nfailover = { max_attempts = 0 }",
                "routes[1].failover.max_attempts",
                "at least 1",
            ),
            (
                "upstream = \"m\"\nfallbacks = [{ upstream = \"oa\", price = { input = 1.0, output = 1.0 } }]",
                "routes[1].fallbacks[0].price",
                "needs its `model`",
            ),
        ] {
            let e = load(&route(body)).unwrap_err();
            assert_eq!(e.key, key, "{body}: {e}");
            assert!(e.message.contains(says), "{body}: {e}");
        }
        let e = load(&format!("{GOOD}\n[failover]\nbreaker = {{ window = 65 }}\n")).unwrap_err();
        assert_eq!(e.key, "failover.breaker.window");
    }

    #[test]
    fn errors_name_file_key_and_problem() {
        let e = load(&GOOD.replace("listen =", "lisen = \"x\"\nlisten ="))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("test.toml: server.lisen: unknown field `lisen`"),
            "{e}"
        );

        let e = load(&GOOD.replace("kind = \"openai\"", "kind = \"opnai\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("upstreams.oa.kind") && e.contains("unknown variant"),
            "{e}"
        );

        let e = load(&GOOD.replace("[server]", "[server]\nmax_body_bytes = \"big\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("server.max_body_bytes") && e.contains("invalid type"),
            "{e}"
        );

        let e = load(&GOOD.replace("${NOPE:-}", "${NOPE}"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("upstreams.oa.api_key") && e.contains("NOPE is not set"),
            "{e}"
        );

        let e = load(&GOOD.replace("upstream = \"m\"", "upstream = \"zz\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("routes[1].upstream") && e.contains("zz"), "{e}");

        let e = load(&GOOD.replace("[[routes]]\nmodel = \"demo\"", "x")).err();
        assert!(e.is_none() || !e.unwrap().to_string().is_empty());

        let e = load(&format!(
            "{GOOD}\n[server.tls]\ncert = \"/nonexistent/c.pem\"\nkey = \"k.pem\"\n"
        ));
        // `[server.tls]` after other tables is still the server table's tls key.
        let e = e.unwrap_err().to_string();
        assert!(
            e.contains("server.tls.cert") && e.contains("/nonexistent/c.pem"),
            "{e}"
        );

        let e = load("not toml [").unwrap_err().to_string();
        assert!(e.starts_with("test.toml: not valid TOML"), "{e}");
    }

    #[test]
    fn patterns_and_duplicates() {
        let e = load(&GOOD.replace("gpt-*", "g*pt")).unwrap_err().to_string();
        assert!(e.contains("routes[0].model"), "{e}");
        let e = load(&GOOD.replace("[\"d2\"]", "[\"demo\"]"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("routed twice"), "{e}");
    }

    #[test]
    fn mtls_identity_needs_client_certificates() {
        let text = format!("[identity]\nmethods = [\"mtls\"]\n{GOOD}");
        let e = load(&text).unwrap_err().to_string();
        assert!(e.contains("identity.methods") && e.contains("client_auth"), "{e}");
        let text = format!("[identity]\nmethods = [\"api_key\", \"api_key\"]\n{GOOD}");
        assert!(load(&text).unwrap_err().to_string().contains("listed twice"));
        let text = format!("[identity]\nmethods = [\"api_key\"]\nmtls = {{ team_from = \"ou\" }}\n{GOOD}");
        assert_eq!(load(&text).unwrap().identity.mtls.team_from, TeamFrom::Ou);
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret("sk-very-secret".into());
        assert_eq!(format!("{s:?}"), "Secret(***)");
    }

    proptest::proptest! {
        #[test]
        fn interpolation_never_panics_and_plain_text_is_kept(s in "\\PC{0,64}") {
            let out = interpolate(&s, &env);
            if !s.contains('$') {
                proptest::prop_assert_eq!(out.unwrap(), s);
            }
        }
    }
}
