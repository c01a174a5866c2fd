//! The tool gate's rules: which tools a principal may offer to a model (the policy's
//! `allowed_tools` obligation) and what happens to the rest, on the way in (the request's tool
//! list is refused or filtered) and on the way out (a model's call of a tool it may not use is
//! blocked or removed; see [`super::filter`]).

use serde::Deserialize;
use serde_json::Value;

/// `[tools]`
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ToolsConfig {
    /// A request that offers a tool outside the allowed set.
    #[serde(default)]
    pub offered: Offered,
    /// A model's call of a tool outside the allowed set.
    #[serde(default)]
    pub calls: Calls,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Offered {
    /// Refuse the call (403 `tool_not_allowed`, naming the tool).
    #[default]
    Refuse,
    /// Take the tool out of the request and send the rest.
    Filter,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Calls {
    /// End the answer with an error (JSON: 403 `tool_call_blocked`; stream: an error event).
    #[default]
    Block,
    /// Take the call out of the answer; the client sees the rest.
    Remove,
}

/// The tools a principal may use: exact names and prefixes (`mcp__github__*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedTools {
    exact: Vec<Box<str>>,
    prefixes: Vec<Box<str>>,
}

impl AllowedTools {
    /// From the obligation's value: an array of strings. `None` when it is not one.
    pub fn from_obligation(v: &serde_json::Value) -> Option<AllowedTools> {
        let mut exact = Vec::new();
        let mut prefixes = Vec::new();
        for t in v.as_array()? {
            let t = t.as_str()?;
            match t.strip_suffix('*') {
                Some(p) => prefixes.push(p.into()),
                None => exact.push(t.into()),
            }
        }
        Some(AllowedTools { exact, prefixes })
    }

    pub fn allows(&self, name: &str) -> bool {
        self.exact.iter().any(|e| **e == *name) || self.prefixes.iter().any(|p| name.starts_with(&**p))
    }
}

/// A tool definition's name in either dialect: OpenAI `{"type":"function","function":{"name"}}`
/// (and the legacy `functions` list's `{"name"}`), Anthropic `{"name", ...}`.
fn tool_name(t: &Value) -> Option<&str> {
    t.get("function")
        .and_then(|f| f.get("name"))
        .or_else(|| t.get("name"))
        .and_then(Value::as_str)
}

/// Takes the tools `allowed` does not allow out of a request body: from `tools` (and the legacy
/// `functions`), and a `tool_choice` / `function_call` that names one of them. With no tool
/// left, `tool_choice` and `parallel_tool_calls` go too (OpenAI refuses them without tools).
/// Returns the new body, or `None` when nothing had to change or the body is not an object.
/// A Gemini `tools[]` entry: no `name`, `type` or `function` of the other dialects.
fn is_gemini_entry(entry: &serde_json::Map<String, Value>) -> bool {
    !entry.contains_key("name") && !entry.contains_key("type") && !entry.contains_key("function")
}

pub fn filter_request(body: &[u8], allowed: &AllowedTools) -> Option<Vec<u8>> {
    let Ok(Value::Object(mut m)) = serde_json::from_slice::<Value>(body) else {
        return None;
    };
    let mut changed = false;
    for key in ["tools", "functions"] {
        if let Some(Value::Array(list)) = m.get_mut(key) {
            // Gemini: one entry declares many functions, and names built-in tools by their
            // key (`googleSearch`, `codeExecution`, ...); each is kept or taken out.
            for t in list.iter_mut() {
                let Some(entry) = t.as_object_mut() else {
                    continue;
                };
                if !is_gemini_entry(entry) {
                    continue;
                }
                let before = entry.len();
                entry.retain(|k, _| {
                    matches!(k.as_str(), "functionDeclarations" | "function_declarations")
                        || allowed.allows(k)
                });
                changed |= entry.len() != before;
                for key in ["functionDeclarations", "function_declarations"] {
                    if let Some(Value::Array(decls)) = entry.get_mut(key) {
                        let before = decls.len();
                        decls.retain(|d| {
                            d.get("name")
                                .and_then(Value::as_str)
                                .is_some_and(|n| allowed.allows(n))
                        });
                        changed |= decls.len() != before;
                        if decls.is_empty() {
                            entry.remove(key);
                        }
                    }
                }
            }
            let before = list.len();
            list.retain(|t| match t.as_object() {
                Some(entry) if is_gemini_entry(entry) => !entry.is_empty(),
                _ => tool_name(t).is_some_and(|n| allowed.allows(n)),
            });
            changed |= list.len() != before;
            if list.is_empty() {
                m.remove(key);
            }
        }
    }
    if !changed {
        return None;
    }
    let no_tools = !m.contains_key("tools") && !m.contains_key("functions");
    for key in ["tool_choice", "function_call"] {
        let drop = match m.get(key) {
            None => false,
            Some(c) => {
                no_tools
                    || c.get("function")
                        .and_then(|f| f.get("name"))
                        .or_else(|| c.get("name"))
                        .and_then(Value::as_str)
                        .is_some_and(|n| !allowed.allows(n))
            }
        };
        if drop {
            m.remove(key);
        }
    }
    if no_tools {
        m.remove("parallel_tool_calls");
    }
    serde_json::to_vec(&m).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn allowed(names: &[&str]) -> AllowedTools {
        AllowedTools::from_obligation(&json!(names)).unwrap()
    }

    #[test]
    fn exact_names_and_prefixes() {
        let a = allowed(&["web_search", "mcp__github__*"]);
        assert!(a.allows("web_search") && a.allows("mcp__github__create_issue"));
        assert!(!a.allows("web_search2") && !a.allows("shell") && !a.allows("mcp__gitlab__x"));
        assert!(AllowedTools::from_obligation(&json!("web_search")).is_none());
        assert!(AllowedTools::from_obligation(&json!([1])).is_none());
    }

    #[test]
    fn filters_both_dialects_and_the_choice() {
        let a = allowed(&["web_search"]);
        let openai = json!({"model": "m", "messages": [],
            "tools": [{"type": "function", "function": {"name": "web_search"}},
                      {"type": "function", "function": {"name": "shell"}}],
            "tool_choice": {"type": "function", "function": {"name": "shell"}}});
        let out: Value =
            serde_json::from_slice(&filter_request(&serde_json::to_vec(&openai).unwrap(), &a).unwrap())
                .unwrap();
        assert_eq!(
            out["tools"],
            json!([{"type": "function", "function": {"name": "web_search"}}])
        );
        assert!(out.get("tool_choice").is_none());

        let anthropic = json!({"model": "m", "messages": [], "tools": [{"name": "shell", "input_schema": {}}],
                               "tool_choice": {"type": "auto"}});
        let out: Value =
            serde_json::from_slice(&filter_request(&serde_json::to_vec(&anthropic).unwrap(), &a).unwrap())
                .unwrap();
        assert!(
            out.get("tools").is_none() && out.get("tool_choice").is_none(),
            "{out}"
        );

        let fine = json!({"model": "m", "tools": [{"type": "function", "function": {"name": "web_search"}}]});
        assert!(filter_request(&serde_json::to_vec(&fine).unwrap(), &a).is_none());
    }
}
