#!/usr/bin/env bash
# CPU speed side by side: llama.cpp's CPU `llama-bench` and `engine bench --backend cpu` on the
# same GGUF files, one after the other on this machine with the same threads and tests (pp: a
# prompt of PP tokens in one pass; tg: TG tokens one at a time; REPS timed runs each), and one
# table of both: tok/s, the ratio engine / llama.cpp, and each process's max resident memory
# (GNU time's %M, the whole run: load plus every test).
#
# Usage: benches/cpu-versus-llama-cpp.sh [MODEL.gguf ...]   (default: the engine's default model)
#   THREADS      -t of both (default 2); PP (64), TG (64), REPS (3)
#   ENGINE       the engine binary (default $CARGO_TARGET_DIR/release/engine or target/release/engine)
#   LLAMA_BENCH  a built CPU llama-bench; otherwise llama.cpp is built for the CPU from LLAMA_SRC
#                (default ../shared/reference/llama.cpp-src/llamacpp-src.tar.gz) into LLAMA_BUILD
#                (default /tmp/llama-cpu), about 6 minutes on 2 cores.
# The llama.cpp build names this CPU's instruction sets instead of -march=native, and leaves AMX
# out: on the Xeon this was written on, llama-bench's AMX path (which -march=native turns on)
# segfaults in ggml_backend_amx_mul_mat.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-2} pp=${PP:-64} tg=${TG:-64} reps=${REPS:-3}
engine=${ENGINE:-${CARGO_TARGET_DIR:-target}/release/engine}
[ -x "$engine" ] || { echo "no engine binary at $engine (cargo build --release -p engine)" >&2; exit 1; }
command -v /usr/bin/time >/dev/null || { echo "needs GNU time at /usr/bin/time" >&2; exit 1; }
models=("$@")
if [ ${#models[@]} -eq 0 ]; then
  models=("${ENGINE_CACHE_DIR:-$HOME/.cache/engine/models}/SmolLM2-135M-Instruct.Q4_1.gguf")
fi

llama_bench=${LLAMA_BENCH:-}
if [ -z "$llama_bench" ]; then
  build=${LLAMA_BUILD:-/tmp/llama-cpu}
  src=${LLAMA_SRC:-../shared/reference/llama.cpp-src/llamacpp-src.tar.gz}
  llama_bench=$build/llama.cpp/build/bin/llama-bench
  if [ ! -x "$llama_bench" ]; then
    echo "building llama.cpp's CPU llama-bench in $build ..." >&2
    has() { grep -qw "$1" /proc/cpuinfo && echo ON || echo OFF; }
    mkdir -p "$build" && tar xzf "$src" -C "$build"
    (cd "$build/llama.cpp" &&
      cmake -B build -G Ninja -DGGML_CUDA=OFF -DGGML_NATIVE=OFF -DGGML_AVX="$(has avx)" \
        -DGGML_AVX2="$(has avx2)" -DGGML_FMA="$(has fma)" -DGGML_F16C="$(has f16c)" \
        -DGGML_BMI2="$(has bmi2)" -DGGML_AVX512="$(has avx512f)" -DGGML_AVX512_VBMI="$(has avx512vbmi)" \
        -DGGML_AVX512_VNNI="$(has avx512_vnni)" -DGGML_AVX512_BF16="$(has avx512_bf16)" \
        -DGGML_AVX_VNNI="$(has avx_vnni)" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF \
        -DCMAKE_BUILD_TYPE=Release >/dev/null &&
      cmake --build build -j"$(nproc)" --target llama-bench >/dev/null)
  fi
fi

rss_file=$(mktemp)
trap 'rm -f "$rss_file"' EXIT
# Prints "pp_tps pp_spread tg_tps tg_spread" from llama-bench's JSON.
llama_figures() {
  python3 -c '
import json, sys
runs = json.load(sys.stdin)
def pick(prompt, gen):
    r = next(r for r in runs if r["n_prompt"] == prompt and r["n_gen"] == gen)
    return "%.1f %.1f" % (r["avg_ts"], r["stddev_ts"])
print(pick(int(sys.argv[1]), 0), pick(0, int(sys.argv[2])))' "$pp" "$tg"
}
# The same from engine bench's table rows "| ppN | tok/s | spread | runs |".
engine_figures() {
  awk -F'|' -v pp="pp$pp" -v tg="tg$tg" '
    { gsub(/ /, "", $2) } $2 == pp { p = $3 " " $4 } $2 == tg { t = $3 " " $4 }
    END { gsub(/  +/, " ", p); gsub(/  +/, " ", t); print p, t }'
}

rows=()
for model in "${models[@]}"; do
  [ -f "$model" ] || { echo "no model file $model" >&2; exit 1; }
  name=$(basename "$model")
  echo "llama.cpp: $name" >&2
  read -r l_pp l_pps l_tg l_tgs < <(/usr/bin/time -o "$rss_file" -f %M \
    "$llama_bench" -m "$model" -p "$pp" -n "$tg" -t "$threads" -r "$reps" -o json 2>/dev/null | llama_figures)
  l_rss=$(tail -1 "$rss_file")
  echo "engine: $name" >&2
  read -r e_pp e_pps e_tg e_tgs < <(/usr/bin/time -o "$rss_file" -f %M \
    "$engine" bench --backend cpu -m "$model" -p "$pp" -n "$tg" -t "$threads" -r "$reps" 2>/dev/null |
    engine_figures)
  e_rss=$(tail -1 "$rss_file")
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
  mib() { awk -v k="$1" 'BEGIN { printf "%.0f", k / 1024 }'; }
  rows+=("| $name | pp$pp | $l_pp ± $l_pps | $e_pp ± $e_pps | $(ratio "$e_pp" "$l_pp") |")
  rows+=("| $name | tg$tg | $l_tg ± $l_tgs | $e_tg ± $e_tgs | $(ratio "$e_tg" "$l_tg") |")
  rows+=("| $name | max RSS MiB | $(mib "$l_rss") | $(mib "$e_rss") | $(ratio "$e_rss" "$l_rss") |")
done

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; -t $threads, $reps runs each"
echo "| model | test | llama.cpp tok/s | engine tok/s | engine / llama.cpp |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
