#!/usr/bin/env bash
# Passthrough against translation, same gateway, same run, interleaved: an OpenAI-dialect client
# calls `gpt-4o-mini` (an OpenAI upstream: bytes pass through) and `claude-via-openai` (an
# Anthropic upstream: request, answer and stream translated). The upstream is the peer
# benchmark's mock (it speaks both). Prints one line per measurement and a median table.
#
#   cargo build --release && BENCH=../shared/bench gateway/benches/translation.sh
#   knobs: STREAM=1 RUNS=3 DURATION=10 CONC_HIGH=64 MOCK_PORT=28900 PORT=28080
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BENCH=${BENCH:-$ROOT/../shared/bench}
BIN=${LATTICE_BIN:-$ROOT/target/release/lattice}
DURATION=${DURATION:-10} RUNS=${RUNS:-3} STREAM=${STREAM:-0} CONC_HIGH=${CONC_HIGH:-64}
MOCK_PORT=${MOCK_PORT:-28900} PORT=${PORT:-28080}
OUT=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$OUT"' EXIT

python3 "$BENCH/mock_upstream.py" --port "$MOCK_PORT" >"$OUT/mock.log" 2>&1 &
pids+=($!)
OPENAI_BASE_URL=http://127.0.0.1:$MOCK_PORT/v1 ANTHROPIC_BASE_URL=http://127.0.0.1:$MOCK_PORT \
  LATTICE_LISTEN=127.0.0.1:$PORT "$BIN" serve --config "$ROOT/gateway/benches/translation.toml" >"$OUT/lattice.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
  curl -fs -o /dev/null "http://127.0.0.1:$PORT/healthz" && curl -fs -o /dev/null "http://127.0.0.1:$MOCK_PORT/health" && break
  sleep 0.2
done

body() {
  local s=""
  [ "$STREAM" = 1 ] && s=',"stream":true'
  printf '{"model":"%s","messages":[{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":64%s}' "$1" "$s"
}
for m in gpt-4o-mini claude-via-openai; do
  code=$(curl -s -o "$OUT/verify" -w '%{http_code}' -H 'content-type: application/json' -d "$(body "$m")" \
    "http://127.0.0.1:$PORT/v1/chat/completions")
  [ "$code" = 200 ] && grep -q 'chat.completion' "$OUT/verify" || { echo "verify $m failed: $code $(head -c 300 "$OUT/verify")" >&2; exit 1; }
done

: >"$OUT/results"
for run in $(seq "$RUNS"); do
  for m in gpt-4o-mini claude-via-openai; do
    for c in 1 "$CONC_HIGH"; do
      BENCH_BODY=$(body "$m") wrk -t1 -c"$c" -d"${DURATION}s" --timeout 10s -s "$BENCH/wrk_chat.lua" \
        "http://127.0.0.1:$PORT/v1/chat/completions" >"$OUT/wrk" 2>&1
      line=$(grep '^RESULT' "$OUT/wrk")
      echo "run=$run model=$m c=$c $line" | tee -a "$OUT/results"
    done
  done
done

python3 - "$OUT/results" <<'PY'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    kv = dict(re.findall(r"(\w+)=([\w.\-]+)", line))
    rows.setdefault((kv["model"], kv["c"]), []).append(kv)
print("| route | c | req/s (median) | p50 ms (median) |")
print("| --- | --- | --- | --- |")
for (m, c), rs in sorted(rows.items(), key=lambda x: (x[0][0], int(x[0][1]))):
    rps = statistics.median(float(r["rps"]) for r in rs)
    p50 = statistics.median(int(r["p50_us"]) for r in rs) / 1000
    print(f"| {m} | {c} | {rps:.0f} | {p50:.3f} |")
PY
