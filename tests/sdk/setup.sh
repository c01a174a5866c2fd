#!/usr/bin/env bash
# Install what the official-SDK compatibility suites need. Idempotent and
# non-interactive: safe to run repeatedly (work already done is skipped).
#   - tests/.venv            python3 venv with tests/sdk/python/requirements.txt
#   - tests/sdk/node/node_modules   `npm ci` from the committed package-lock.json
# Only the package registries (PyPI, npm) are used.
set -euo pipefail

SDK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TESTS_DIR="$(cd "$SDK_DIR/.." && pwd)"
VENV="$TESTS_DIR/.venv"
REQ="$SDK_DIR/python/requirements.txt"
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
(cd "$NODE_DIR" && node -e 'const r=(p)=>JSON.parse(require("fs").readFileSync(p,"utf8")).version; console.log("setup: node openai", r("node_modules/openai/package.json"), "@anthropic-ai/sdk", r("node_modules/@anthropic-ai/sdk/package.json"))')
