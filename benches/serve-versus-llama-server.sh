#!/usr/bin/env bash
# Serving benchmark, side by side: `engine serve` and llama.cpp's `llama-server -np N` on the same
# GGUF, one after the other on the same machine, each driven by benches/serve_bench.py with the
# same random prompts (same seed), and a table of both with the ratio engine / llama-server.
#
# Usage: benches/serve-versus-llama-server.sh MODEL.gguf [ENGINE]
#   ENGINE         the engine binary (default: .gpu/bin/engine if present, else target/release/engine)
#   LLAMA_SERVER   a built llama-server; otherwise llama.cpp is built (CUDA, sm_90) from LLAMA_SRC
#                  (default .llama/llamacpp-src.tar.gz, as benches/versus-llama-cpp.sh) into
#                  LLAMA_BUILD (default /tmp/llama-build)
#   CONCURRENCY    clients at once, and llama-server's -np and our --max-seqs (64)
#   PROMPTS        requests (default 4 x CONCURRENCY); INPUT_LEN (256), OUTPUT_LEN (256),
#   RANGE_RATIO    (0.0); CTX: context per sequence (INPUT_LEN + OUTPUT_LEN rounded up, plus 64)
#   BACKEND        our --backend (auto); NGL: llama-server's -ngl (99); LLAMA_ARGS: more flags
#   OUT            where the JSON results and the servers' logs go (default /tmp/serve-bench)
# llama-server gets -np N -c N*CTX (its context is shared out among the slots), flash attention,
# continuous batching (its default); both get ignore_eos so every output has its drawn length.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:?usage: serve-versus-llama-server.sh MODEL.gguf [ENGINE]}
engine=${2:-}
if [ -z "$engine" ]; then
  if [ -x .gpu/bin/engine ]; then engine=.gpu/bin/engine; else engine=target/release/engine; fi
fi
concurrency=${CONCURRENCY:-64}
prompts=${PROMPTS:-$((4 * concurrency))}
input_len=${INPUT_LEN:-256} output_len=${OUTPUT_LEN:-256} range_ratio=${RANGE_RATIO:-0.0}
ctx=${CTX:-$((input_len + output_len + 64))}
out=${OUT:-/tmp/serve-bench}
mkdir -p "$out"

source "$(dirname "$0")/llama-cpp.sh"
LLAMA_SERVER=${LLAMA_SERVER:-$(llama_tool llama-server)}

# Waits until $1/health answers 200 (both servers answer 503 while loading).
wait_healthy() {
  for _ in $(seq 1200); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "$1/health" || true)" = 200 ]; then return 0; fi
    if ! kill -0 "$2" 2>/dev/null; then echo "the server exited; see its log" >&2; return 1; fi
    sleep 0.5
  done
  echo "the server at $1 did not become healthy" >&2
  return 1
}

bench() {  # name url
  python3 benches/serve_bench.py --base-url "$2" --max-concurrency "$concurrency" --num-prompts "$prompts" \
    --input-len "$input_len" --output-len "$output_len" --range-ratio "$range_ratio" --json "$out/$1.json" |
    tee "$out/$1.txt"
}

port=${PORT:-18080}
echo "== engine serve ($engine), --max-seqs $concurrency" >&2
"$engine" serve -m "$model" --port "$port" --backend "${BACKEND:-auto}" --max-seqs "$concurrency" \
  --ctx-size "$ctx" --max-queue "$prompts" >"$out/engine.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
wait_healthy "http://127.0.0.1:$port" "$pid"
bench engine "http://127.0.0.1:$port"
kill -TERM "$pid"; wait "$pid" || true

echo "== llama-server ($LLAMA_SERVER), -np $concurrency" >&2
# shellcheck disable=SC2086
"$LLAMA_SERVER" -m "$model" --port "$port" -np "$concurrency" -c $((concurrency * ctx)) -ngl "${NGL:-99}" \
  -fa on ${LLAMA_ARGS:-} >"$out/llama-server.log" 2>&1 &
pid=$!
wait_healthy "http://127.0.0.1:$port" "$pid"
bench llama-server "http://127.0.0.1:$port"
kill -TERM "$pid"; wait "$pid" || true

python3 - "$out/engine.json" "$out/llama-server.json" <<'PY'
import json, sys
ours, theirs = (json.load(open(p)) for p in sys.argv[1:3])
print(f"\n{ours['num_prompts']} requests, at most {ours['max_concurrency']} at once; "
      f"{ours['total_input_tokens']} prompt and {ours['total_output_tokens']} generated tokens (engine)")
print("| metric | engine serve | llama-server | engine / llama-server |")
print("|---|---|---|---|")
for key, label in [("request_throughput", "requests/s"), ("output_throughput", "output tok/s"),
                   ("total_token_throughput", "total tok/s"),
                   ("median_ttft_ms", "median TTFT ms"), ("p99_ttft_ms", "p99 TTFT ms"),
                   ("median_tpot_ms", "median TPOT ms"), ("p99_tpot_ms", "p99 TPOT ms"),
                   ("median_itl_ms", "median ITL ms"), ("p99_itl_ms", "p99 ITL ms"),
                   ("median_e2el_ms", "median E2EL ms")]:
    a, b = ours[key], theirs[key]
    print(f"| {label} | {a:.2f} | {b:.2f} | {a / b if b else float('nan'):.2f}x |")
for name, s in (("engine", ours), ("llama-server", theirs)):
    if s["failed"]:
        print(f"{name}: {s['failed']} failed: {s['errors']}")
PY
