#!/usr/bin/env bash
# Throughput of many sequences at once: `engine bench --concurrency` beside llama.cpp's
# llama-batched-bench, on the same GGUF and GPU, one after the other, and one table of both.
#
# Usage: benches/batching-versus-llama-cpp.sh MODEL.gguf [ENGINE]
#   ENGINE         the engine binary (default: .gpu/bin/engine if present, else target/release/engine)
#   CONCURRENCY    comma-separated sequence counts (default 1,8,32,64)
#   INPUT_LEN, OUTPUT_LEN  prompt and generated tokens per sequence (default 1000 and 256)
#   LLAMA_BATCHED  a built llama-batched-bench; otherwise it is built (benches/llama-cpp.sh)
#
# Definitions. llama-batched-bench runs one wave of B sequences: all prompts (not shared), then
# OUT decode steps of B tokens; S_TG = B*OUT / decode time, and B*OUT / total time is its output
# rate. The engine runs B requests (--num-requests B) with at most B in flight, all queued at once,
# random prompt tokens and EOS ignored; its decode-step rate (tokens of decode-only steps over
# their time) is the peer of S_TG and its output tok/s (all generated tokens over the whole run,
# prompts included) the peer of B*OUT / total. Both use flash attention and all layers on the GPU.
set -euo pipefail
model=${1:?usage: batching-versus-llama-cpp.sh MODEL.gguf [ENGINE]}
engine=${2:-}
if [ -z "$engine" ]; then
  if [ -x .gpu/bin/engine ]; then engine=.gpu/bin/engine; else engine=target/release/engine; fi
fi
levels=${CONCURRENCY:-1,8,32,64} in=${INPUT_LEN:-1000} out=${OUTPUT_LEN:-256}
source "$(dirname "$0")/llama-cpp.sh"
LLAMA_BATCHED=${LLAMA_BATCHED:-$(llama_tool llama-batched-bench)}
largest=$(tr ',' '\n' <<<"$levels" | sort -n | tail -1)
context=$((largest * (in + out) + 256))
llama_jsonl=$(mktemp) llama_log=$(mktemp)
if ! "$LLAMA_BATCHED" -m "$model" -c "$context" -b 2048 -ub 512 -npp "$in" -ntg "$out" -npl "$levels" \
  -fa on -ngl 99 --output-format jsonl >"$llama_jsonl" 2>"$llama_log"; then
  tail -20 "$llama_log" >&2
  exit 1
fi
grep '^{' "$llama_jsonl" >"$llama_jsonl.rows" && mv "$llama_jsonl.rows" "$llama_jsonl"
engine_json=$(mktemp)
"$engine" bench -m "$model" --concurrency "$levels" --num-requests 1x --input-len "$in" \
  --output-len "$out" -o json >"$engine_json"
PYTHONPATH="$(dirname "$0")" python3 - "$llama_jsonl" "$engine_json" "$model" "$in" "$out" <<'PY'
import json, os, sys
from bench_rows import engine_rows
llama = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    llama[r["pl"]] = r
engine = engine_rows(sys.argv[2])
print(f"\n{os.path.basename(sys.argv[3])}, {sys.argv[4]} prompt + {sys.argv[5]} generated tokens per sequence")
print("| sequences | llama.cpp S_TG | engine decode-step | ratio | llama.cpp out/total time | engine output tok/s | ratio | engine TPOT ms | engine TTFT p50 ms | preemptions |")
print("|---|---|---|---|---|---|---|---|---|---|")
for b in sorted(set(llama) | set(engine)):
    l, e = llama.get(b), engine.get(b)
    l_tg = l["speed_tg"] if l else float("nan")
    l_out = b * l["tg"] / l["t"] if l else float("nan")
    e_step = e["decode_step_tok_per_s"] if e else float("nan")
    e_out = e["output_tok_per_s"] if e else float("nan")
    print(f"| {b} | {l_tg:,.0f} | {e_step:,.0f} | {e_step / l_tg:.2f}x | {l_out:,.0f} | {e_out:,.0f} | {e_out / l_out:.2f}x"
          f" | {e['mean_tpot_ms'] if e else float('nan'):.2f} | {e['ttft_p50_ms'] if e else float('nan'):,.0f} | {e['preemptions'] if e else '-'} |")
PY
rm -f "$llama_jsonl" "$llama_log" "$engine_json"
