#!/usr/bin/env bash
# The content gates' added latency over real sockets, on 4 KB and 64 KB prompts:
#
#   wrk (../shared/bench/wrk_chat.lua, c=1) -> lattice (quickstart) -> ../shared/bench/mock_upstream.py
#
# Four targets, interleaved, RUNS times each, p50 of every run, medians printed:
#   mock      the mock upstream alone (the path's floor)
#   none      the quickstart, an admin key: the shipped policy sets no obligation, no content gate runs
#   tools     the quickstart, a `research` key: model lock, tool gate, answers checked for tool calls
#   pii       the quickstart with [pii] request and response rules (redact everything), `research`
#             key: every gate above plus the PII scan of the prompt and of the answer
# The prompts are prose without personal data, so the request passes untouched: the common case.
#
# Usage (from the repository root, after `cargo build --profile dist -p lattice-gateway` and
# `bash ../shared/bench/setup.sh`):  RUNS=3 DURATION=8 [STREAM=1] bash gateway/benches/content_latency.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${LATTICE_BIN:-target/dist/lattice}
BENCH=${SHARED_BENCH:-../shared/bench}
PY=${PY:-/tmp/peers-venv/bin/python}
[ -x "$PY" ] || PY=python3
RUNS=${RUNS:-3}
DURATION=${DURATION:-8}
STREAM=${STREAM:-0}
MOCK_PORT=${MOCK_PORT:-18911}
OUT=$(mktemp -d /tmp/content-latency.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -- -"$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_http() { # url
  for _ in $(seq 100); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "no answer from $1" >&2; exit 1
}

setsid "$PY" "$BENCH/mock_upstream.py" --host 127.0.0.1 --port "$MOCK_PORT" >"$OUT/mock.log" 2>&1 </dev/null &
PIDS+=($!)
wait_http "http://127.0.0.1:$MOCK_PORT/health"

# The quickstart's $100 team budget would run out within a run at c=1: raised.
sed 's/^usd = 100.0/usd = 1000000.0/' deploy/quickstart.toml >"$OUT/none.toml"
grep -q '^usd = 1000000.0' "$OUT/none.toml" || { echo "the quickstart's budget line changed" >&2; exit 1; }
cp "$OUT/none.toml" "$OUT/pii.toml"
printf '\n[pii]\nrequest = { default = "redact" }\nresponse = { default = "redact" }\n' >>"$OUT/pii.toml"

# One gateway per config, each with its own data dir (keys, audit log, budget ledger).
declare -A URL KEY
port=18091
for cfg in none pii; do
  data="$OUT/$cfg-data"
  admin=$(LATTICE_DATA_DIR=$data "$BIN" keys create --team ops --user bench --role admin | tail -n 1)
  research=$(LATTICE_DATA_DIR=$data "$BIN" keys create --team research --user bench | tail -n 1)
  setsid env LATTICE_DATA_DIR="$data" LATTICE_POLICY_DIR="$PWD/policies" LATTICE_AUDIT_SYNC=none \
    LATTICE_LOG_FORMAT=json OPENAI_BASE_URL="http://127.0.0.1:$MOCK_PORT/v1" \
    LATTICE_LISTEN="127.0.0.1:$port" "$BIN" serve --config "$OUT/$cfg.toml" >"$OUT/$cfg.log" 2>&1 </dev/null &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$port/healthz"
  if [ "$cfg" = none ]; then
    URL[none]=http://127.0.0.1:$port KEY[none]=$admin
    URL[tools]=http://127.0.0.1:$port KEY[tools]=$research
  else
    URL[pii]=http://127.0.0.1:$port KEY[pii]=$research
  fi
  port=$((port + 1))
done
URL[mock]=http://127.0.0.1:$MOCK_PORT KEY[mock]=

prompt() { # bytes: prose, no personal data
  local s="The quarterly report covers revenue, churn and the hiring plan for the platform team. Version 2.14.1 shipped on 2026-11-28 at 10:35:00 with build 550e8400-e29b-41d4-a716-446655440000. Latency improved by 12.5% while the error budget held. "
  local out=""
  while [ ${#out} -lt "$1" ]; do out+=$s; done
  printf '%s' "${out:0:$1}"
}
stream=""
[ "$STREAM" = 1 ] && stream=',"stream":true'

echo "target size run p50_us rps" >"$OUT/results.txt"
for size in 4096 65536; do
  BENCH_BODY=$(printf '{"model":"gpt-4o-mini","max_tokens":64%s,"messages":[{"role":"user","content":"%s"}]}' "$stream" "$(prompt "$size")")
  export BENCH_BODY
  for run in $(seq "$RUNS"); do
    for t in mock none tools pii; do
      export BENCH_KEY=${KEY[$t]}
      code=$(curl -s -o "$OUT/verify.txt" -w '%{http_code}' -H 'Content-Type: application/json' \
        ${BENCH_KEY:+-H "Authorization: Bearer $BENCH_KEY"} -d "$BENCH_BODY" "${URL[$t]}/v1/chat/completions")
      [ "$code" = 200 ] || { echo "$t: HTTP $code: $(head -c 300 "$OUT/verify.txt")" >&2; exit 1; }
      wrk -t1 -c1 -d1s -s "$BENCH/wrk_chat.lua" "${URL[$t]}/v1/chat/completions" >/dev/null 2>&1
      line=$(wrk -t1 -c1 -d"${DURATION}s" -s "$BENCH/wrk_chat.lua" "${URL[$t]}/v1/chat/completions" | grep '^RESULT')
      p50=$(sed -E 's/.*p50_us=([0-9]+).*/\1/' <<<"$line")
      rps=$(sed -E 's/.* rps=([0-9.]+).*/\1/' <<<"$line")
      errs=$(sed -E 's/.*err_status=([0-9]+).*/\1/' <<<"$line")
      [ "$errs" = 0 ] || { echo "$t: $errs non-2xx answers" >&2; exit 1; }
      echo "$t $size $run $p50 $rps" | tee -a "$OUT/results.txt"
    done
  done
done

python3 - "$OUT/results.txt" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:]]
med = {}
for t, size, _, p50, rps in rows:
    med.setdefault((t, int(size)), []).append((int(p50), float(rps)))
print(f"\n{'prompt':>8} {'target':>6} {'p50 us':>8} {'added vs mock':>14} {'added vs none':>14} {'req/s':>8}")
for size in sorted({s for _, s in med}):
    base = statistics.median(p for p, _ in med[("mock", size)])
    none = statistics.median(p for p, _ in med[("none", size)])
    for t in ("mock", "none", "tools", "pii"):
        p = statistics.median(p for p, _ in med[(t, size)])
        r = statistics.median(r for _, r in med[(t, size)])
        print(f"{size // 1024:>6}KB {t:>6} {p:>8.0f} {p - base:>+14.0f} {p - none:>+14.0f} {r:>8.0f}")
EOF
echo "raw: $OUT/results.txt"
