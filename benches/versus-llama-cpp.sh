#!/usr/bin/env bash
# Runs llama.cpp's llama-bench and `engine bench` on the same GGUF, one after the other on the same
# GPU, and prints both figures and their ratio (engine / llama.cpp) for prefill (pp) and decode (tg).
#
# Usage: benches/versus-llama-cpp.sh MODEL.gguf [ENGINE]
#   ENGINE        the engine binary (default: target/release/engine, or .gpu/bin/engine if present)
#   LLAMA_BENCH   a built llama-bench; otherwise llama.cpp is built (CUDA, sm_90, about 5 minutes on
#                 16 cores) from LLAMA_SRC (default .llama/llamacpp-src.tar.gz: the reference
#                 source of ../shared/reference/llama.cpp-src, copied there because the GPU machine
#                 sees only the checkout) into LLAMA_BUILD (default /tmp/llama-build).
#   PP, TG, REPS  prompt tokens (512), generated tokens (128), repeats (5).
# Both run with the same settings: flash attention on for llama.cpp, all layers on the GPU.
set -euo pipefail
model=${1:?usage: versus-llama-cpp.sh MODEL.gguf [ENGINE]}
engine=${2:-}
if [ -z "$engine" ]; then
  if [ -x .gpu/bin/engine ]; then engine=.gpu/bin/engine; else engine=target/release/engine; fi
fi
pp=${PP:-512} tg=${TG:-128} reps=${REPS:-5}
source "$(dirname "$0")/llama-cpp.sh"
LLAMA_BENCH=${LLAMA_BENCH:-$(llama_tool llama-bench)}
llama_json=$(mktemp)
"$LLAMA_BENCH" -m "$model" -p "$pp" -n "$tg" -r "$reps" -fa 1 -ngl 99 -o json >"$llama_json"
engine_out=$("$engine" bench -m "$model" -p "$pp" -n "$tg" -r "$reps")
echo "$engine_out"
ENGINE_OUT="$engine_out" python3 - "$llama_json" "$pp" "$tg" <<'PY'
import json, os, re, sys
runs = json.load(open(sys.argv[1]))
pp, tg = int(sys.argv[2]), int(sys.argv[3])
llama = {}
for r in runs:
    key = f"pp{r['n_prompt']}" if r["n_gen"] == 0 else f"tg{r['n_gen']}"
    llama[key] = (r["avg_ts"], r["stddev_ts"])
ours = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\| (pp\d+|tg\d+) \| ([\d.]+) ", os.environ["ENGINE_OUT"], re.M)}
print(f"\n{runs[0]['model_type']}, {runs[0]['model_size'] / 1e9:.2f} GB, llama.cpp {runs[0]['build_commit']} on {runs[0]['gpu_info']}")
print("| test | llama.cpp tok/s | engine tok/s | engine / llama.cpp |")
print("|---|---|---|---|")
for key in (f"pp{pp}", f"tg{tg}"):
    if key in llama and key in ours:
        (l, sd), e = llama[key], ours[key]
        print(f"| {key} | {l:.1f} ± {sd:.1f} | {e:.1f} | {e / l:.2f}x |")
PY
rm -f "$llama_json"
