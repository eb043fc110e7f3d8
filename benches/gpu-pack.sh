#!/usr/bin/env bash
# Packs the GPU test and bench binaries (conformance, kernels, host, gpu_models) into .gpu/ with
# ../shared/gpu/pack.sh, then drops the CPU-only test binaries and the engine binary so that what
# travels to the GPU machine stays well under its 64 MiB limit.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
bash ../shared/gpu/pack.sh --all-targets "$@" >/dev/null
keep='^(conformance|kernels|host|gpu_models)-'
awk -F'\t' -v keep="$keep" '$2 ~ keep' .gpu/index.tsv >.gpu/index.keep
cut -f2 .gpu/index.tsv | grep -Ev "$keep" | while read -r name; do rm -f ".gpu/bin/$name"; done
mv .gpu/index.keep .gpu/index.tsv
echo "packed $(wc -l <.gpu/index.tsv) binaries into .gpu/ ($(du -sm .gpu | cut -f1) MiB)"
