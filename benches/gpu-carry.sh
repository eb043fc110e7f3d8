#!/usr/bin/env bash
# Makes what a GPU run needs small enough to travel: the packed test binaries of .gpu/ (made by
# benches/gpu-pack.sh, ~64 MiB alone, which with the checkout is over the device's 64 MiB) and
# the release engine binary, xz-compressed into .gpu-carry/ (~10 MiB), with an unpack script, and
# llama.cpp's source for the side-by-side scripts into .llama/.
#
# Here:   bash benches/gpu-pack.sh && bash benches/gpu-carry.sh
#         then run with carry [".gpu-carry", ".llama"] a command such as
#         `source .gpu-carry/unpack.sh && bash .gpu/run.sh conformance && $ENGINE bench ...`
# There:  unpack.sh restores .gpu/ and puts the engine at /tmp/engine ($ENGINE) and .gpu/bin/engine.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
[ -f .gpu/index.tsv ] || { echo "no .gpu/: run benches/gpu-pack.sh first" >&2; exit 1; }
engine=${CARGO_TARGET_DIR:-target}/release/engine
[ -x "$engine" ] || { echo "no $engine: cargo build --release first" >&2; exit 1; }
if [ "$engine" -ot .gpu/index.tsv ] && [ -n "$(find . -path ./target -prune -o -name '*.rs' -newer "$engine" -print -quit)" ]; then
  echo "warning: sources are newer than $engine" >&2
fi
mkdir -p .gpu-carry .llama
tar cf - .gpu | xz -T0 -6 >.gpu-carry/gpu.tar.xz
xz -T0 -6 -c "$engine" >.gpu-carry/engine.xz
cat >.gpu-carry/unpack.sh <<'UNPACK'
# Sourced on the GPU machine from the checkout's root: restores .gpu/ and the engine binary.
[ -d .gpu ] || tar xJf .gpu-carry/gpu.tar.xz
export ENGINE=/tmp/engine
[ -x "$ENGINE" ] || { xz -dc .gpu-carry/engine.xz >"$ENGINE" && chmod +x "$ENGINE"; }
cp -f "$ENGINE" .gpu/bin/engine
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
UNPACK
source=../shared/reference/llama.cpp-src/llamacpp-src.tar.gz
[ -f .llama/llamacpp-src.tar.gz ] || { [ -f "$source" ] && cp "$source" .llama/; } || true
echo "carry: .gpu-carry ($(du -sm .gpu-carry | cut -f1) MiB) .llama ($(du -sm .llama | cut -f1) MiB);" \
  "tracked files $(( $(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1) / 1048576 )) MiB; limit 64 MiB"
