//! Model routing: a model name (or alias) resolves to a [`Route`]: ordered groups of
//! [`Deployment`]s, each an upstream and the model name to send it.
//!
//! Resolution order: exact names and aliases first, then prefix patterns (`gpt-*`), longest
//! prefix first, then the catch-all `*`. The first match wins; there is no regex on this path.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::Config;
use crate::failover::{Admit, Health, Policy, RetryBudget, mix, pick};
pub use crate::pattern::Pattern;
use crate::upstream::Upstream;

/// One place a model can be served: an upstream, and the name the model has there.
#[derive(Debug)]
pub struct Deployment {
    pub upstream: Arc<Upstream>,
    /// The model name to send upstream, when the route renames it.
    pub upstream_model: Option<Box<str>>,
    pub weight: u32,
    /// The time to the response head, when not the upstream's `timeout_ms`.
    pub first_byte_timeout: Option<Duration>,
    /// Its circuit breaker, shared by every route that names the same upstream and model, and
    /// kept across reloads.
    pub health: Arc<Health>,
}

impl Deployment {
    /// `upstream/model` (the model as asked when the route does not rename it).
    pub fn label<'a>(&'a self, asked: &'a str) -> (&'a str, &'a str) {
        (
            &self.upstream.name,
            self.upstream_model.as_deref().unwrap_or(asked),
        )
    }
}

/// Where a model goes: groups of deployments, tried in order.
#[derive(Debug)]
pub struct Route {
    /// Never empty, and no group is empty (at most 64 deployments each).
    groups: Box<[Group]>,
    pub failover: Policy,
    pub retry_budget: RetryBudget,
    /// Counts calls, for weighted choices ([`crate::failover::mix`]).
    calls: AtomicU64,
    /// Whether circuits steer calls: not on a route of one deployment, where ejecting it could
    /// only turn its upstream's own answer (a per-model 429, a passing 503) into an outage of
    /// ours, as LiteLLM and Envoy's panic threshold also hold. Its breaker still records.
    steer: bool,
}

#[derive(Debug)]
struct Group {
    deployments: Box<[Arc<Deployment>]>,
    weights: Box<[u32]>,
}

/// Where one attempt of a call goes, and whether it is its circuit's probe.
#[derive(Debug)]
pub struct Chosen<'r> {
    pub deployment: &'r Arc<Deployment>,
    pub probe: Option<Probe<'r>>,
}

/// A half-open circuit's one probe: if the call never reports an outcome (it was denied, or
/// its client left), dropping it lets the next call probe.
#[derive(Debug)]
pub struct Probe<'r>(&'r Health);

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        self.0.release_probe();
    }
}

/// A call's walk through its route's deployments: each group in order, each deployment of a
/// group at most once, chosen by weight among those whose circuit admits the call.
#[derive(Debug)]
pub struct Candidates {
    group: usize,
    /// Deployments of the current group already chosen or skipped (a bit each).
    tried: u64,
    draw: u64,
    /// The least time any skipped deployment stays ejected (ms), for `Retry-After`.
    pub ejected_ms: Option<u64>,
}

impl Route {
    /// The deployment a call tries first when every circuit is closed.
    pub fn primary(&self) -> &Arc<Deployment> {
        &self.groups[0].deployments[0]
    }

    /// Whether the route has more than one deployment.
    pub fn has_fallbacks(&self) -> bool {
        self.steer
    }

    /// Every deployment, groups in order.
    pub fn deployments(&self) -> impl Iterator<Item = &Arc<Deployment>> {
        self.groups.iter().flat_map(|g| g.deployments.iter())
    }

    /// A new call's walk.
    pub fn candidates(&self) -> Candidates {
        let n = self.calls.fetch_add(1, Ordering::Relaxed);
        Candidates {
            group: 0,
            tried: 0,
            draw: mix(n),
            ejected_ms: None,
        }
    }

    /// The next deployment of the walk, `None` when every one has been chosen or is ejected.
    pub fn next(&self, c: &mut Candidates) -> Option<Chosen<'_>> {
        while let Some(g) = self.groups.get(c.group) {
            // A deployment whose circuit refuses is skipped for this call; the first admitted
            // by weight is chosen.
            let mut refused = 0u64;
            while let Some(i) = pick(&g.weights, c.tried | refused, c.draw) {
                c.draw = mix(c.draw);
                let d = &g.deployments[i];
                let admit = if self.steer { d.health.admit() } else { Admit::Yes };
                match admit {
                    a @ (Admit::Yes | Admit::Probe) => {
                        c.tried |= 1 << i;
                        return Some(Chosen {
                            deployment: d,
                            probe: (a == Admit::Probe).then(|| Probe(&d.health)),
                        });
                    }
                    Admit::No(ms) => {
                        refused |= 1 << i;
                        c.ejected_ms = Some(c.ejected_ms.map_or(ms, |e| e.min(ms)).max(1));
                    }
                }
            }
            c.group += 1;
            c.tried = 0;
        }
        None
    }
}

/// A deployment's breaker is found by its upstream's name and its model there.
type HealthKey = (Box<str>, Option<Box<str>>);

pub struct Router {
    exact: HashMap<Box<str>, Arc<Route>>,
    /// Longest prefix first.
    prefixes: Vec<(Box<str>, Arc<Route>)>,
    /// Concrete names (exact routes and aliases) in config order, for `GET /v1/models`.
    listed: Vec<(Box<str>, Arc<Route>)>,
    /// In config order.
    routes: Vec<Arc<Route>>,
}

impl Router {
    /// `previous`: the router this one replaces, whose deployments' health carries over.
    pub fn new(config: &Config, upstreams: &[Arc<Upstream>], previous: Option<&Router>) -> Router {
        let mut exact = HashMap::new();
        let mut prefixes = Vec::new();
        let mut listed = Vec::new();
        let mut routes = Vec::with_capacity(config.routes.len());
        // One breaker per upstream and model, whichever routes name it.
        let mut health: HashMap<HealthKey, Arc<Health>> = HashMap::new();
        if let Some(p) = previous {
            for r in &p.routes {
                for d in r.deployments() {
                    health
                        .entry((d.upstream.name.as_ref().into(), d.upstream_model.clone()))
                        .or_insert_with(|| d.health.clone());
                }
            }
        }
        for r in &config.routes {
            let groups: Box<[Group]> = r
                .groups
                .iter()
                .map(|g| Group {
                    weights: g.iter().map(|d| d.weight).collect(),
                    deployments: g
                        .iter()
                        .map(|d| {
                            let upstream = upstreams[d.upstream].clone();
                            let model: Option<Box<str>> = d.upstream_model.as_deref().map(Into::into);
                            let health = health
                                .entry((upstream.name.as_ref().into(), model.clone()))
                                .or_default()
                                .clone();
                            Arc::new(Deployment {
                                upstream,
                                upstream_model: model,
                                weight: d.weight,
                                first_byte_timeout: d.first_byte_timeout,
                                health,
                            })
                        })
                        .collect(),
                })
                .collect();
            let steer = groups.len() > 1 || groups.iter().any(|g| g.deployments.len() > 1);
            let target = Arc::new(Route {
                steer,
                groups,
                failover: r.failover,
                retry_budget: RetryBudget::new(config.failover.retry_budget),
                calls: AtomicU64::new(0),
            });
            routes.push(target.clone());
            match Pattern::new(&r.model) {
                Pattern::Exact(name) => {
                    listed.push((name.clone(), target.clone()));
                    exact.insert(name, target.clone());
                }
                Pattern::Prefix(p) => prefixes.push((p, target.clone())),
            }
            for a in &r.aliases {
                listed.push((a.as_str().into(), target.clone()));
                exact.insert(a.as_str().into(), target.clone());
            }
        }
        prefixes.sort_by_key(|p: &(Box<str>, _)| std::cmp::Reverse(p.0.len()));
        Router {
            exact,
            prefixes,
            listed,
            routes,
        }
    }

    pub fn resolve(&self, model: &str) -> Option<&Arc<Route>> {
        self.exact.get(model).or_else(|| {
            self.prefixes
                .iter()
                .find(|(p, _)| model.starts_with(&**p))
                .map(|(_, t)| t)
        })
    }

    /// Every route, in config order.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }

    /// The concrete model names a client can list.
    pub fn listed(&self) -> impl Iterator<Item = (&str, &Route)> {
        self.listed.iter().map(|(n, t)| (&**n, &**t))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn exact_beats_longest_prefix_beats_catch_all() {
        let text = r#"
            [server]
            listen = "127.0.0.1:0"
            [upstreams.a]
            kind = "mock"
            [upstreams.b]
            kind = "mock"
            [upstreams.c]
            kind = "mock"
            [[routes]]
            model = "*"
            upstream = "c"
            [[routes]]
            model = "gpt-*"
            upstream = "a"
            [[routes]]
            model = "gpt-4o-*"
            upstream = "b"
            [[routes]]
            model = "gpt-4o-mini"
            upstream = "c"
            upstream_model = "real-mini"
            aliases = ["mini"]
        "#;
        let cfg = crate::config::Config::from_str_with_env(Path::new("t.toml"), text, &|_| None).unwrap();
        let ups: Vec<_> = cfg
            .upstreams
            .iter()
            .map(|u| Arc::new(Upstream::new(u).unwrap()))
            .collect();
        let r = Router::new(&cfg, &ups, None);
        let name = |m: &str| r.resolve(m).map(|t| t.primary().upstream.name.to_string());
        assert_eq!(name("gpt-4o-mini").as_deref(), Some("c"));
        assert_eq!(name("mini").as_deref(), Some("c"));
        assert_eq!(name("gpt-4o-2024").as_deref(), Some("b"));
        assert_eq!(name("gpt-3.5").as_deref(), Some("a"));
        assert_eq!(name("llama").as_deref(), Some("c"));
        assert_eq!(
            r.resolve("mini").unwrap().primary().upstream_model.as_deref(),
            Some("real-mini")
        );
        let listed: Vec<_> = r.listed().map(|(n, _)| n.to_string()).collect();
        assert_eq!(listed, vec!["gpt-4o-mini", "mini"]);
    }
}
