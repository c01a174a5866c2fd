#!/usr/bin/env bash
# Install what the official-SDK compatibility suites need. Idempotent and
# non-interactive: safe to run repeatedly (work already done is skipped).
#   - tests/.venv            python3 venv with tests/sdk/python/requirements.txt, and OPA's Go
#                            engine (tests/policy/requirements-opa.txt) for the policy tests
#   - tests/sdk/node/node_modules   `npm ci` from the committed package-lock.json
# Only the package registries (PyPI, npm) are used.
set -euo pipefail

SDK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TESTS_DIR="$(cd "$SDK_DIR/.." && pwd)"
VENV="$TESTS_DIR/.venv"
REQ="$SDK_DIR/python/requirements.txt"
OPA_REQ="$TESTS_DIR/policy/requirements-opa.txt"
NODE_DIR="$SDK_DIR/node"

hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# ---- Python -----------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  python3 -m venv "$VENV"
fi
py_stamp="$VENV/.lattice-sdk-requirements.sha256"
py_want="$(hash_of "$REQ")"
if [ "$(cat "$py_stamp" 2>/dev/null || true)" != "$py_want" ]; then
  echo "setup: installing python requirements"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-input -r "$REQ"
  echo "$py_want" > "$py_stamp"
else
  echo "setup: python requirements up to date"
fi

# OPA's Go engine (opa-golib-python-bindings), pinned by version and sha256 in $OPA_REQ. Its
# metadata says Requires-Python >= 3.14 but the wheel is py3-none and works on older Pythons:
# installed on its own with --ignore-requires-python (not expressible in a requirements file)
# and --no-deps (it has none), under its own stamp.
opa_stamp="$VENV/.lattice-opa-requirements.sha256"
opa_want="$(hash_of "$OPA_REQ")"
if [ "$(cat "$opa_stamp" 2>/dev/null || true)" != "$opa_want" ]; then
  echo "setup: installing OPA python bindings"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-input \
    --no-deps --ignore-requires-python -r "$OPA_REQ"
  echo "$opa_want" > "$opa_stamp"
else
  echo "setup: OPA python bindings up to date"
fi

# ---- Node -------------------------------------------------------------------
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "setup: node and npm are required (Node >= 20)" >&2
  exit 1
fi
node_stamp="$NODE_DIR/node_modules/.lattice-sdk-lock.sha256"
node_want="$(hash_of "$NODE_DIR/package.json" "$NODE_DIR/package-lock.json")"
if [ "$(cat "$node_stamp" 2>/dev/null || true)" != "$node_want" ]; then
  echo "setup: npm ci in $NODE_DIR"
  (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$node_want" > "$node_stamp"
else
  echo "setup: node modules up to date"
fi

"$VENV/bin/python" -c 'import openai, anthropic, pytest; print("setup: python openai", openai.__version__, "anthropic", anthropic.__version__, "pytest", pytest.__version__)'
"$VENV/bin/python" -c 'import importlib.metadata as m, opa_bindings; print("setup: python opa-golib-python-bindings", m.version("opa-golib-python-bindings"))'
(cd "$NODE_DIR" && node -e 'const r=(p)=>JSON.parse(require("fs").readFileSync(p,"utf8")).version; console.log("setup: node openai", r("node_modules/openai/package.json"), "@anthropic-ai/sdk", r("node_modules/@anthropic-ai/sdk/package.json"))')
