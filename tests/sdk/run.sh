#!/usr/bin/env bash
# Run the official-SDK compatibility suites (Python, then Node) against a
# built lattice binary: $LATTICE_BIN, or <repo>/target/debug/lattice.
# Exits non-zero if either suite fails; both always run.
set -uo pipefail

SDK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SDK_DIR/../.." && pwd)"
export LATTICE_BIN="${LATTICE_BIN:-$REPO_ROOT/target/debug/lattice}"

if [ ! -x "$LATTICE_BIN" ]; then
  echo "run.sh: lattice binary not found or not executable: $LATTICE_BIN" >&2
  echo "run.sh: build it first (cargo build) or set LATTICE_BIN" >&2
  exit 2
fi

bash "$SDK_DIR/setup.sh" || { echo "run.sh: setup failed" >&2; exit 2; }

cd "$REPO_ROOT"
echo "== python SDK suite =="
"$REPO_ROOT/tests/.venv/bin/python" -m pytest -q -p no:cacheprovider "$SDK_DIR/python"
py_rc=$?

echo "== node SDK suite =="
(cd "$SDK_DIR/node" && node --test)
node_rc=$?

echo "run.sh: python rc=$py_rc node rc=$node_rc"
[ "$py_rc" -eq 0 ] && [ "$node_rc" -eq 0 ]
