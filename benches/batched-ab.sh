#!/usr/bin/env bash
# A/B of the batched step's switches on one GPU, in one run: `engine bench --concurrency` with
# each setting in turn on the same file, and one table of decode-step and output tok/s.
#
# Usage: benches/batched-ab.sh MODEL.gguf [ENGINE]
#   ENGINE       the engine binary (default: .gpu/bin/engine if present, else target/release/engine)
#   CONCURRENCY  comma-separated sequence counts (default 8,32,64)
#   INPUT_LEN, OUTPUT_LEN  prompt and generated tokens per sequence (default 1000 and 64)
#   SETTINGS     space-separated settings, each NAME=VALUE[,NAME=VALUE...] or "default" (default:
#                "default ENGINE_GEMM_ROWS64=1 ENGINE_DECODE_SPLITS=batch
#                 ENGINE_GEMM_ROWS64=1,ENGINE_DECODE_SPLITS=batch")
#   ROUNDS       how many times the settings are alternated (default 2)
# The first setting is the baseline of the ratio column; alternating rounds show the run's noise.
set -euo pipefail
model=${1:?usage: batched-ab.sh MODEL.gguf [ENGINE]}
engine=${2:-}
if [ -z "$engine" ]; then
  if [ -x .gpu/bin/engine ]; then engine=.gpu/bin/engine; else engine=target/release/engine; fi
fi
levels=${CONCURRENCY:-8,32,64} in=${INPUT_LEN:-1000} out=${OUTPUT_LEN:-64} rounds=${ROUNDS:-2}
settings=${SETTINGS:-default ENGINE_GEMM_ROWS64=1 ENGINE_DECODE_SPLITS=batch ENGINE_GEMM_ROWS64=1,ENGINE_DECODE_SPLITS=batch}
results=$(mktemp -d)
for round in $(seq "$rounds"); do
  for setting in $settings; do
    env_args=()
    [ "$setting" = default ] || IFS=, read -ra env_args <<<"$setting"
    echo "round $round: $setting" >&2
    env "${env_args[@]}" "$engine" bench -m "$model" --concurrency "$levels" --num-requests 1x \
      --input-len "$in" --output-len "$out" -o json >"$results/$round-$setting.json"
  done
done
PYTHONPATH="$(dirname "$0")" python3 - "$results" "$model" "$in" "$out" $settings <<'PY'
import os, sys
from bench_rows import engine_rows as rows
results, model, n_in, n_out, settings = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
runs = {}
for name in sorted(os.listdir(results)):
    round_, setting = name[:-5].split("-", 1)
    runs.setdefault(setting, []).append(rows(os.path.join(results, name)))
print(f"\n{os.path.basename(model)}, {n_in} prompt + {n_out} generated tokens per sequence; decode-step tok/s per round (output tok/s of the last)")
print("| sequences | setting | decode-step tok/s | vs " + settings[0] + " | output tok/s |")
print("|---|---|---|---|---|")
levels = sorted({c for rs in runs.values() for r in rs for c in r})
for c in levels:
    base = [r[c]["decode_step_tok_per_s"] for r in runs[settings[0]] if c in r]
    for s in settings:
        got = [r[c] for r in runs[s] if c in r]
        steps = [g["decode_step_tok_per_s"] for g in got]
        ratio = f"{(sum(steps) / len(steps)) / (sum(base) / len(base)):.2f}x" if base and steps else "-"
        print(f"| {c} | {s} | {' / '.join(f'{v:,.0f}' for v in steps)} | {ratio} | {got[-1]['output_tok_per_s']:,.0f} |")
PY
