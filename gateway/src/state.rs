//! Everything the request path reads, built once from the config: the router, the gate
//! pipeline and the long-lived stores (policy, signing keys, audit log, budgets).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use crate::config::Config;
use crate::gates::Pipeline;
use crate::models::model_lists;
use crate::policy::store::PolicyStore;
use crate::router::Router;
use crate::upstream::{Upstream, UpstreamSetupError};

/// Everything the request path reads; built once from the config.
pub struct State {
    pub(crate) router: Arc<Router>,
    /// The PII engine (response rules run it too).
    pub(crate) pii: Option<Arc<crate::content::Pii>>,
    /// `[pii] response`: the configured actions on answers.
    pub(crate) pii_response: Arc<crate::content::Actions>,
    pub(crate) tools: crate::content::tools::ToolsConfig,
    pub(crate) pipeline: Pipeline,
    pub(crate) policy: Option<Arc<PolicyStore>>,
    pub(crate) jwks: Option<Arc<crate::identity::jwt::Jwks>>,
    pub(crate) audit: Option<Arc<lattice_audit::AuditLog>>,
    /// Where signed heads are copied (`[audit] witness`).
    pub(crate) witness: Option<crate::witness::Witness>,
    /// Where the audit log lives, for the spend reports.
    pub(crate) audit_storage: Option<Arc<dyn lattice_audit::Storage>>,
    pub(crate) budgets: Option<Arc<crate::budget::Budgets>>,
    pub(crate) max_body: u64,
    pub(crate) body_timeout: std::time::Duration,
    pub(crate) models_openai: Bytes,
    pub(crate) models_anthropic: Bytes,
    /// `[translation]`: what translated calls do with fields their target cannot carry.
    pub(crate) translation: lattice_providers::translate::Rules,
    /// `[failover] breaker`: when a deployment's circuit opens.
    pub(crate) breaker: crate::failover::BreakerParams,
}

impl State {
    /// `audit_storage`: where the audit log lives; `None`: `<data_dir>/audit` on disk.
    pub fn new(
        config: &Config,
        audit_storage: Option<Arc<dyn lattice_audit::Storage>>,
    ) -> Result<State, String> {
        let upstreams = config
            .upstreams
            .iter()
            .map(|u| Upstream::new(u).map(Arc::new))
            .collect::<Result<Vec<_>, UpstreamSetupError>>()
            .map_err(|e| e.to_string())?;
        let router = Arc::new(Router::new(config, &upstreams, None));
        let (models_openai, models_anthropic) = model_lists(&router);
        let policy = match &config.authorization {
            None => None,
            Some(a) => {
                let store = PolicyStore::open(&a.policy_dir, a.eval_timeout).map_err(|e| e.to_string())?;
                store
                    .watch()
                    .map_err(|e| format!("cannot watch {}: {e}", a.policy_dir.display()))?;
                Some(store)
            }
        };
        // Must run inside the runtime: a JWKS URL is fetched by a task.
        let jwks = config
            .identity
            .jwt
            .as_ref()
            .map(crate::identity::jwt::Jwks::start)
            .transpose()?;
        let mut kept_storage = None;
        let audit = match &config.audit {
            None => None,
            Some(a) => {
                let dir = config.data_dir.join("audit");
                let storage: Arc<dyn lattice_audit::Storage> = match audit_storage {
                    Some(s) => s,
                    None => Arc::new(
                        lattice_audit::DiskStorage::open(&dir)
                            .map_err(|e| format!("audit log {}: {e}", dir.display()))?,
                    ),
                };
                kept_storage = Some(storage.clone());
                // The log must extend the head its witness last kept (a rollback, or a replaced
                // key, of the data dir refuses to start instead of being witnessed anew).
                let mut options = a.options.clone();
                options.extends = a
                    .witness
                    .as_ref()
                    .map(|w| w.kept())
                    .transpose()
                    .map_err(|e| format!("audit witness: {e}"))?
                    .flatten();
                let log = lattice_audit::AuditLog::open(storage, options)
                    .map_err(|e| format!("audit log {}: {e}", dir.display()))?;
                let r = log.recovery();
                tracing::info!(dir = %dir.display(), records = r.records, segments = r.segments,
                    torn_tail_bytes = r.torn_tail.as_ref().map_or(0, |t| t.0), unsealed_records = r.unsealed_records,
                    skipped = r.skipped.len(), seals_vouch_from = r.base, "audit log opened");
                if let Some(w) = &a.witness {
                    w.spawn(&log);
                }
                Some(Arc::new(log))
            }
        };
        let budgets = crate::budget::Budgets::new(
            config.budgets.clone(),
            Arc::new(crate::budget::ledger::Embedded::new()),
        )?;
        // On with `[pii]` actions, and with a policy (whose `pii` obligation may ask for them).
        let pii = if config.pii.enabled() || config.authorization.is_some() {
            Some(Arc::new(crate::content::Pii::new(config.pii.clone())?))
        } else {
            None
        };
        // The ledger is a fold over the log: rebuild the current windows' spend.
        if let (Some(b), Some(storage)) = (&budgets, &kept_storage) {
            let t = Instant::now();
            let s = b
                .restore(&**storage)
                .map_err(|e| format!("rebuilding budgets from the audit log: {e}"))?;
            tracing::info!(calls = s.calls, unsettled = s.unsettled,
                restored_usd = %crate::budget::usd(s.restored_nano_usd),
                ms = t.elapsed().as_millis() as u64, "budgets rebuilt from the audit log");
        }
        Ok(State {
            pipeline: Pipeline::from_config(
                config,
                policy.clone(),
                jwks.clone(),
                budgets.clone(),
                pii.clone(),
                router.clone(),
                audit.clone(),
            )?,
            router,
            pii,
            pii_response: Arc::new(config.pii.response.clone()),
            tools: config.tools,
            policy,
            jwks,
            audit,
            witness: config.audit.as_ref().and_then(|a| a.witness.clone()),
            audit_storage: kept_storage,
            budgets,
            max_body: config.server.max_body_bytes,
            body_timeout: config.server.body_read_timeout,
            models_openai,
            models_anthropic,
            translation: config.translation.clone(),
            breaker: config.failover.breaker,
        })
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Reloads the policy bundle now, as a change of its files would (SIGHUP). Blocking: it
    /// compiles the bundle and runs its tests, so call it off the runtime's worker threads.
    pub fn reload(&self) {
        tracing::info!("reload requested (SIGHUP)");
        match &self.policy {
            // The store logs the outcome: the new bundle's hash, or the error and the bundle kept.
            Some(p) => drop(p.reload()),
            None => tracing::info!("no policy bundle is configured; nothing to reload"),
        }
    }

    /// The audit log, unless `[audit] enabled = false`.
    pub fn audit(&self) -> Option<&Arc<lattice_audit::AuditLog>> {
        self.audit.as_ref()
    }

    /// The Prometheus text of `GET /metrics`.
    pub fn metrics_text(&self) -> String {
        self.budgets.as_ref().map(|b| b.metrics()).unwrap_or_default()
    }

    /// The audit witness, when `[audit] witness` is set.
    pub fn witness(&self) -> Option<&crate::witness::Witness> {
        self.witness.as_ref()
    }

    /// The JWT signing keys, when `[identity.jwt]` is configured.
    pub fn jwks(&self) -> Option<&Arc<crate::identity::jwt::Jwks>> {
        self.jwks.as_ref()
    }
}
