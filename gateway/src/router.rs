//! Model routing: a model name (or alias) resolves to a [`Route`]: ordered groups of
//! [`Deployment`]s, each an upstream and the model name to send it.
//!
//! Resolution order: exact names and aliases first, then prefix patterns (`gpt-*`), longest
//! prefix first, then the catch-all `*`. The first match wins; there is no regex on this path.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
pub use crate::pattern::Pattern;
use crate::upstream::Upstream;

/// One place a model can be served: an upstream, and the name the model has there.
#[derive(Debug)]
pub struct Deployment {
    pub upstream: Arc<Upstream>,
    /// The model name to send upstream, when the route renames it.
    pub upstream_model: Option<Box<str>>,
}

/// Where a model goes: groups of deployments, tried in order.
#[derive(Debug)]
pub struct Route {
    /// Never empty, and no group is empty.
    groups: Box<[Box<[Arc<Deployment>]>]>,
}

impl Route {
    /// The deployment a call tries first.
    pub fn primary(&self) -> &Arc<Deployment> {
        &self.groups[0][0]
    }
}

pub struct Router {
    exact: HashMap<Box<str>, Arc<Route>>,
    /// Longest prefix first.
    prefixes: Vec<(Box<str>, Arc<Route>)>,
    /// Concrete names (exact routes and aliases) in config order, for `GET /v1/models`.
    listed: Vec<(Box<str>, Arc<Route>)>,
}

impl Router {
    pub fn new(config: &Config, upstreams: &[Arc<Upstream>]) -> Router {
        let mut exact = HashMap::new();
        let mut prefixes = Vec::new();
        let mut listed = Vec::new();
        for r in &config.routes {
            let target = Arc::new(Route {
                groups: Box::new([Box::new([Arc::new(Deployment {
                    upstream: upstreams[r.upstream].clone(),
                    upstream_model: r.upstream_model.as_deref().map(Into::into),
                })])]),
            });
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
        let r = Router::new(&cfg, &ups);
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
