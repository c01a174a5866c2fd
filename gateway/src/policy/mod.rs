//! The policy engine: a bundle of Rego modules and JSON data files, compiled once by `regorus`,
//! evaluated per call into a [`Decision`], and the `test_*` rule runner behind
//! `lattice policy test` (regorus has no `opa test`).
//!
//! A bundle is every `*.rego` and `*.json` file under one directory, read in sorted order. As in
//! OPA, a data file's directory is its mount point: `lattice/data.json` becomes `data.lattice`.
//! The bundle's SHA-256 covers every file's relative path and bytes, so a decision can name the
//! exact policy that made it.
//!
//! Fail closed: a decision that is undefined, not an object, has a non-boolean `allow` or
//! non-string reasons, or that errors or runs past its time limit is an error, and the caller
//! denies. Must not touch: sockets, the request path's dialects (the authorization gate maps
//! errors and denials to responses).

pub mod store;

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::{Program, RegoVM};
use regorus::unstable::{Rule, RuleHead};
use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// The rule every bundle must define.
pub const DECISION_RULE: &str = "data.lattice.authz.decision";

/// The version of the input document (see `policies/README.md`).
pub const INPUT_VERSION: u32 = 1;

/// What the policy decided about one call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub allow: bool,
    /// Why the call is denied (empty when allowed), sorted.
    pub reasons: Vec<String>,
    /// Orders for later gates: `model`, `allowed_tools`, `pii`, `budget`, ...
    pub obligations: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{file}: {message}")]
    Load { file: PathBuf, message: String },
    #[error("policy bundle {dir}: {message}")]
    Bundle { dir: PathBuf, message: String },
    #[error("policy evaluation failed: {0}")]
    Eval(String),
    #[error("{DECISION_RULE} is undefined for this input")]
    Undefined,
    #[error("{DECISION_RULE} is malformed: {0}")]
    Malformed(String),
}

/// One `test_*` rule's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOutcome {
    pub name: String,
    pub passed: bool,
    /// Why it failed, when it errored rather than evaluated to something other than `true`.
    pub error: Option<String>,
}

/// A compiled bundle. Decisions run on the RVM when the bundle compiles for it: the decision rule
/// becomes a program once, and each decision gets a fresh VM (several times faster than the
/// interpreter; benches/policy.rs). regorus 0.14's VM compiler does not take every construct
/// (partial object rules with constant keys, for one), and valid Rego must never be refused,
/// so such a bundle is evaluated by the interpreter instead ([`Bundle::engine_name`] says which).
/// The interpreter engine also runs the `test_*` rules, which need `with`.
#[derive(Clone)]
pub struct Bundle {
    engine: Engine,
    program: Option<Arc<Program>>,
    data: Value,
    timer: ExecutionTimerConfig,
    dir: PathBuf,
    sha256: Arc<str>,
    files: usize,
    tests: Vec<String>,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("dir", &self.dir)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl Bundle {
    /// Loads and compiles every `.rego` and `.json` file under `dir`; evaluations may run for
    /// at most `limit`.
    pub fn load(dir: &Path, limit: Duration) -> Result<Bundle, PolicyError> {
        let bundle_err = |message: String| PolicyError::Bundle {
            dir: dir.to_path_buf(),
            message,
        };
        let mut files = Vec::new();
        collect(dir, &mut files).map_err(|e| bundle_err(format!("cannot read: {e}")))?;
        files.sort();
        let mut engine = Engine::new();
        engine.set_strict_builtin_errors(true);
        let interval = NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN);
        let timer = ExecutionTimerConfig {
            limit,
            check_interval: interval,
        };
        engine.set_execution_timer_config(timer);
        let mut hash = Sha256::new();
        let mut rego_files = 0;
        for path in &files {
            let rel = path.strip_prefix(dir).unwrap_or(path);
            let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Load {
                file: path.clone(),
                message: e.to_string(),
            })?;
            hash.update(rel.to_string_lossy().as_bytes());
            hash.update([0]);
            hash.update(text.as_bytes());
            hash.update([0]);
            let load = |message: String| PolicyError::Load {
                file: path.clone(),
                message,
            };
            if path.extension().is_some_and(|e| e == "rego") {
                engine
                    .add_policy(rel.display().to_string(), text)
                    .map_err(|e| load(e.to_string()))?;
                rego_files += 1;
            } else {
                let value = Value::from_json_str(&text).map_err(|e| load(format!("not JSON: {e}")))?;
                engine
                    .add_data(mount(rel, value))
                    .map_err(|e| load(e.to_string()))?;
            }
        }
        if rego_files == 0 {
            return Err(bundle_err("contains no .rego file".into()));
        }
        let tests = test_rules(&mut engine).map_err(bundle_err)?;
        // Compile-time errors (unknown builtins, recursion, conflicting rules) surface on the
        // first evaluation: do one now, on an empty input, so a broken bundle never loads. It
        // also prepares the engine (rule scheduling) once, so the clones made per decision do
        // not repeat that work (423 us -> see benches/policy.rs).
        engine.set_input(Value::new_object());
        if let Err(e) = engine.eval_rule(DECISION_RULE.to_string()) {
            return Err(bundle_err(format!("{DECISION_RULE} does not evaluate: {e}")));
        }
        let program = engine
            .compile_with_entrypoint(&DECISION_RULE.into())
            .map_err(|e| e.to_string())
            .and_then(|c| Compiler::compile_from_policy(&c, &[DECISION_RULE]).map_err(|e| e.to_string()));
        let program = match program {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::info!(dir = %dir.display(), reason = %e.lines().last().unwrap_or(""), "policy bundle runs on the regorus interpreter, not the VM");
                None
            }
        };
        let data = engine.get_data();
        Ok(Bundle {
            engine,
            program,
            data,
            timer,
            dir: dir.to_path_buf(),
            sha256: crate::hex::encode(&hash.finalize()).into(),
            files: files.len(),
            tests,
        })
    }

    /// The bundle's SHA-256 (lower-case hex).
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The SHA-256, shared: what a call records as the bundle that decided it.
    pub fn sha256_shared(&self) -> Arc<str> {
        self.sha256.clone()
    }

    /// `"rvm"` or `"interpreter"`: which regorus engine makes this bundle's decisions.
    pub fn engine_name(&self) -> &'static str {
        if self.program.is_some() {
            "rvm"
        } else {
            "interpreter"
        }
    }

    pub fn file_count(&self) -> usize {
        self.files
    }

    /// Evaluates the decision for `input`.
    pub fn decide(&self, input: Value) -> Result<Decision, PolicyError> {
        let Some(program) = &self.program else {
            return self.decide_interpreted(input);
        };
        let mut vm = RegoVM::new();
        vm.set_execution_timer_config(Some(self.timer));
        vm.load_program(program.clone());
        vm.set_data(self.data.clone())
            .map_err(|e| PolicyError::Eval(e.to_string()))?;
        vm.set_input(input);
        let value = vm.execute().map_err(|e| PolicyError::Eval(e.to_string()))?;
        decision_from(&value)
    }

    fn decide_interpreted(&self, input: Value) -> Result<Decision, PolicyError> {
        let mut engine = self.engine.clone();
        engine.set_input(input);
        let value = engine
            .eval_rule(DECISION_RULE.to_string())
            .map_err(|e| PolicyError::Eval(e.to_string()))?;
        decision_from(&value)
    }

    /// Runs every `test_*` rule; a test passes when it evaluates to `true`.
    pub fn run_tests(&self) -> Vec<TestOutcome> {
        self.tests
            .iter()
            .map(|name| {
                let mut engine = self.engine.clone();
                match engine.eval_rule(name.clone()) {
                    Ok(v) => TestOutcome {
                        name: name.clone(),
                        passed: v == Value::from(true),
                        error: None,
                    },
                    Err(e) => TestOutcome {
                        name: name.clone(),
                        passed: false,
                        error: Some(e.to_string()),
                    },
                }
            })
            .collect()
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rego" || e == "json") {
            out.push(path);
        }
    }
    Ok(())
}

/// Wraps `value` under the data file's directory components (`a/b/data.json` -> `{a:{b:...}}`).
fn mount(rel: &Path, value: Value) -> Value {
    let dirs: Vec<String> = rel
        .parent()
        .map(|p| {
            p.components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    dirs.into_iter().rev().fold(value, |inner, key| {
        let mut obj = Value::new_object();
        if let Ok(map) = obj.as_object_mut() {
            map.insert(Value::from(key), inner);
        }
        obj
    })
}

/// The full paths of the rules whose names start with `test_`, like `opa test`.
fn test_rules(engine: &mut Engine) -> Result<Vec<String>, String> {
    let mut names = Vec::new();
    for module in engine.get_modules().iter() {
        let package =
            regorus::utils::get_path_string(&module.package.refr, Some("data")).map_err(|e| e.to_string())?;
        for rule in &module.policy {
            let refr = match rule.as_ref() {
                Rule::Spec {
                    head: RuleHead::Compr { refr, .. } | RuleHead::Set { refr, .. },
                    ..
                } => refr,
                _ => continue,
            };
            let name = regorus::utils::get_path_string(refr, None).map_err(|e| e.to_string())?;
            if name.starts_with("test_") {
                let full = format!("{package}.{name}");
                if !names.contains(&full) {
                    names.push(full);
                }
            }
        }
    }
    Ok(names)
}

fn decision_from(v: &Value) -> Result<Decision, PolicyError> {
    if *v == Value::Undefined {
        return Err(PolicyError::Undefined);
    }
    let json = v
        .to_json_str()
        .map_err(|e| PolicyError::Malformed(e.to_string()))?;
    let json: serde_json::Value =
        serde_json::from_str(&json).map_err(|e| PolicyError::Malformed(e.to_string()))?;
    let Some(obj) = json.as_object() else {
        return Err(PolicyError::Malformed("not an object".into()));
    };
    let Some(allow) = obj.get("allow").and_then(|a| a.as_bool()) else {
        return Err(PolicyError::Malformed("`allow` must be a boolean".into()));
    };
    let mut reasons = match obj.get("reasons") {
        None => Vec::new(),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|r| r.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| PolicyError::Malformed("`reasons` must be strings".into()))?,
        Some(_) => {
            return Err(PolicyError::Malformed(
                "`reasons` must be a set of strings".into(),
            ));
        }
    };
    reasons.sort();
    let obligations = match obj.get("obligations") {
        None => serde_json::Map::new(),
        Some(serde_json::Value::Object(o)) => o.clone(),
        Some(_) => return Err(PolicyError::Malformed("`obligations` must be an object".into())),
    };
    Ok(Decision {
        allow,
        reasons,
        obligations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(files: &[(&str, &str)]) -> Result<Bundle, PolicyError> {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        Bundle::load(dir.path(), Duration::from_millis(200))
    }

    const POLICY: &str = r#"
package lattice.authz
import rego.v1

default allow := false
allow if input.user == data.lattice.admin
reasons contains "not the admin" if not allow
obligations["model"] := "small" if not allow
decision := {"allow": allow, "reasons": reasons, "obligations": obligations}

test_admin_allowed if decision.allow with input as {"user": "ana"}
test_other_denied if not decision.allow with input as {"user": "bob"}
test_meant_to_fail if decision.allow with input as {"user": "bob"}
"#;

    #[test]
    fn decides_with_mounted_data() {
        let b = bundle(&[
            ("lattice/authz.rego", POLICY),
            ("lattice/data.json", r#"{"admin":"ana"}"#),
        ])
        .unwrap();
        assert_eq!(b.sha256().len(), 64);
        let d = b
            .decide(Value::from_json_str(r#"{"user":"ana"}"#).unwrap())
            .unwrap();
        assert_eq!(
            b.engine_name(),
            "interpreter",
            "partial object rules are not VM-compiled yet"
        );
        assert!(d.allow && d.reasons.is_empty() && d.obligations.is_empty());
        let d = b
            .decide(Value::from_json_str(r#"{"user":"bob"}"#).unwrap())
            .unwrap();
        assert!(!d.allow);
        assert_eq!(d.reasons, vec!["not the admin"]);
        assert_eq!(d.obligations["model"], "small");
    }

    #[test]
    fn runs_test_rules() {
        let b = bundle(&[
            ("lattice/authz.rego", POLICY),
            ("lattice/data.json", r#"{"admin":"ana"}"#),
        ])
        .unwrap();
        let mut out = b.run_tests();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        let summary: Vec<_> = out.iter().map(|t| (t.name.as_str(), t.passed)).collect();
        assert_eq!(
            summary,
            vec![
                ("data.lattice.authz.test_admin_allowed", true),
                ("data.lattice.authz.test_meant_to_fail", false),
                ("data.lattice.authz.test_other_denied", true),
            ]
        );
    }

    #[test]
    fn broken_or_malformed_bundles_fail_closed() {
        let e = bundle(&[("a.rego", "package lattice.authz\nthis is not rego")]).unwrap_err();
        assert!(matches!(e, PolicyError::Load { .. }), "{e}");
        let e = bundle(&[("d.json", "{")]).unwrap_err();
        assert!(matches!(e, PolicyError::Load { .. }), "{e}");
        assert!(matches!(bundle(&[]).unwrap_err(), PolicyError::Bundle { .. }));

        let undefined = bundle(&[(
            "p.rego",
            "package lattice.authz\nimport rego.v1\ndecision := 1 if false",
        )])
        .unwrap();
        assert!(matches!(
            undefined.decide(Value::new_object()),
            Err(PolicyError::Undefined)
        ));
        let wrong = bundle(&[(
            "p.rego",
            "package lattice.authz\ndecision := {\"allow\": \"yes\"}",
        )])
        .unwrap();
        assert!(matches!(
            wrong.decide(Value::new_object()),
            Err(PolicyError::Malformed(_))
        ));
        let not_obj = bundle(&[("p.rego", "package lattice.authz\ndecision := true")]).unwrap();
        assert!(matches!(
            not_obj.decide(Value::new_object()),
            Err(PolicyError::Malformed(_))
        ));
    }

    #[test]
    fn an_evaluation_error_is_an_error_not_an_allow() {
        // Division by zero under strict builtin errors.
        let b = bundle(&[(
            "p.rego",
            "package lattice.authz\nimport rego.v1\ndecision := {\"allow\": x > 0} if { x := 1 / input.n }",
        )])
        .unwrap();
        assert!(
            b.decide(Value::from_json_str(r#"{"n":1}"#).unwrap())
                .unwrap()
                .allow
        );
        let r = b.decide(Value::from_json_str(r#"{"n":0}"#).unwrap());
        assert!(r.is_err(), "{r:?}");
    }

    #[test]
    fn the_shipped_bundle_runs_on_the_vm_and_agrees_with_the_interpreter() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let b = Bundle::load(&dir, Duration::from_millis(200)).unwrap();
        assert_eq!(b.engine_name(), "rvm");
        let mut seen_allow = 0;
        for team in ["research", "support", "finance", "nobody"] {
            for roles in [vec![], vec!["admin"]] {
                for model in ["gpt-4o", "gpt-4o-mini", "claude-3-5-haiku", "o3", "demo", "llama"] {
                    for tools in [vec![], vec!["calculator"], vec!["web_search", "shell"]] {
                        for (weekday, hour) in [("Tuesday", 10), ("Sunday", 10), ("Monday", 19)] {
                            let input = serde_json::json!({
                                "version": 1,
                                "principal": {"id": "p", "kind": "api_key", "user": "u", "team": team, "roles": roles, "attributes": {}},
                                "request": {"surface": "chat.completions", "model": model, "provider": "openai", "tools": tools},
                                "time": {"weekday": weekday, "hour": hour},
                            });
                            let v = Value::from_json_str(&input.to_string()).unwrap();
                            let vm = b.decide(v.clone()).unwrap();
                            let interp = b.decide_interpreted(v).unwrap();
                            assert_eq!(vm, interp, "input {input}");
                            seen_allow += usize::from(vm.allow);
                        }
                    }
                }
            }
        }
        assert!(
            seen_allow > 50 && seen_allow < 432,
            "the grid must exercise both outcomes: {seen_allow}"
        );
    }
}
