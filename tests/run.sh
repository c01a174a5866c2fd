#!/usr/bin/env bash
# Every test of the project, from a clean checkout: the README's test command, and what CI runs.
#   1. format and lint checks   2. Rust unit + whole-gateway integration tests (nextest)
#   2b. the Rego unit tests of the default policy bundle (lattice policy test policies)
#   2c. the bundle's decisions in regorus (lattice policy eval) against OPA's Go engine, on a few
#       hundred generated inputs (tests/policy, pytest in tests/.venv)
#   2d. the audit log's keyless edits, judged by an independent verifier written from
#       audit/FORMAT.md alone and by `lattice audit verify` (tests/audit)
#   3. official-SDK compatibility tests (Python openai/anthropic, Node openai/@anthropic-ai/sdk),
#      installed by tests/sdk/setup.sh from PyPI and npm into tests/.venv and node_modules.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

step "Rego policy tests (lattice policy test policies)"
cargo build --locked -p lattice-gateway --bin lattice
target/debug/lattice policy test policies

step "Rego policy differential test (regorus vs OPA)"
bash tests/sdk/setup.sh
LATTICE_BIN="$PWD/target/debug/lattice" tests/.venv/bin/python -m pytest -q -p no:cacheprovider -rxX tests/policy

step "Audit log against a verifier written from audit/FORMAT.md alone (tests/audit)"
LATTICE_BIN="$PWD/target/debug/lattice" tests/.venv/bin/python -m pytest -q -p no:cacheprovider -rxX tests/audit

if [ -f tests/sdk/run.sh ]; then
  step "official SDK tests"
  LATTICE_BIN="$PWD/target/debug/lattice" bash tests/sdk/run.sh
fi
