//! Model-name patterns, as routes, deny rules, model locks and budgets write them.

/// An exact model name, a prefix pattern (`gpt-*`), or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Exact(Box<str>),
    Prefix(Box<str>),
}

impl Pattern {
    pub fn new(p: &str) -> Pattern {
        match p.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.into()),
            None => Pattern::Exact(p.into()),
        }
    }

    pub fn matches(&self, model: &str) -> bool {
        match self {
            Pattern::Exact(e) => **e == *model,
            Pattern::Prefix(p) => model.starts_with(&**p),
        }
    }
}
