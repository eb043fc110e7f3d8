#!/usr/bin/env bash
# Runs one fuzz target in libFuzzer's fork mode on a machine without Rust, from the package that
# fuzz/remote/pack.sh makes (.fuzzbin/ at the repository root, not committed; fuzz/README.md).
#
#   OUT=/some/folder .fuzzbin/remote.sh TARGET SECONDS JOBS
#
# TARGET: gguf_reader, tokenizer, chat_template or sampler. SECONDS: libFuzzer's -max_total_time
# (fork mode then waits for its jobs to stop: leave a minute). JOBS: -fork=JOBS, one per core.
# Limits per input as in fuzz/run.sh: -rss_limit_mb=2048 -timeout=10. Fork mode goes on past
# timeouts and out-of-memory (counted, inputs kept) and stops at the first crash.
#
# Into $OUT, four files at most: TARGET.log (the fork-mode parent's log), TARGET-summary.txt
# (also printed at the end), TARGET-corpus.tar.gz (the whole corpus after the run: unpack it into
# fuzz/corpus/, or put it in .fuzzbin/corpus/ for the next run) and TARGET-artifacts.tar.gz (the
# inputs of any crash, timeout or out-of-memory; only when there are some).
#
# Executions: fork mode's "#N" lines count the jobs it has merged, and it stops without merging
# the jobs that are running when time is up, so its last "#N" undercounts. Every job prints its
# own stat::number_of_executed_units when it stops (fork mode adds -print_final_stats=1); this
# script starts the fork-mode parent under the name of job.sh (bash's exec -a), so fork mode runs
# each job through job.sh, which keeps that line. The summary gives the sum over all jobs, and
# fork mode's own figure beside it. Jobs that die on a finding print no count (both miss them).
#
# FUZZ_KEEP_LAST=1 (chat_template only): each job writes its current input to a file of its own,
# kept in the artifacts when the job dies (a stack overflow can kill a job before libFuzzer saves
# the input).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
usage() { echo "usage: OUT=folder $0 gguf_reader|tokenizer|chat_template|sampler SECONDS JOBS" >&2; exit 2; }
[ $# -eq 3 ] || usage
target=$1 seconds=$2 jobs=$3
case $target in gguf_reader|tokenizer|chat_template|sampler) ;; *) usage ;; esac
[[ $seconds =~ ^[0-9]+$ && $jobs =~ ^[0-9]+$ && $jobs -ge 1 ]] || usage
out=${OUT:?OUT must name the folder for the results}
mkdir -p "$out"

binary=$here/bin/$target
# The binaries need libstdc++ (libFuzzer is C++); the package carries the build machine's copy for
# a machine whose own is missing or too old.
if ! "$binary" -help=1 >/dev/null 2>&1; then
  export LD_LIBRARY_PATH=$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  "$binary" -help=1 >/dev/null 2>&1 || { echo "$binary does not start here:" >&2; "$binary" -help=1 >&2; exit 1; }
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/fuzzbin-$target.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/corpus" "$work/artifacts" "$work/jobs"
tar -xzf "$here/corpus/$target.tar.gz" -C "$work/corpus"
corpus=$work/corpus/$target
mkdir -p "$corpus"
start_units=$(find "$corpus" -type f | wc -l)
dirs=("$corpus" "$here/seeds/$target")
[ -d "$here/regressions/$target" ] && dirs+=("$here/regressions/$target")

export FUZZBIN_BINARY=$binary FUZZBIN_JOBS_DIR=$work/jobs FUZZBIN_ARTIFACTS=$work/artifacts
export FUZZBIN_KEEP_LAST=${FUZZ_KEEP_LAST:-0}
args=(-fork="$jobs" -rss_limit_mb=2048 -timeout=10 -max_total_time="$seconds" -print_final_stats=1
  -artifact_prefix="$work/artifacts/")
echo "fuzzing $target for $seconds s with $jobs jobs, from $start_units corpus inputs ($(nproc) cores here)"
status=0
(exec -a "$here/job.sh" "$binary" "${args[@]}" "${dirs[@]}") >"$out/$target.log" 2>&1 || status=$?

end_units=$(find "$corpus" -type f | wc -l)
tar -czf "$out/$target-corpus.tar.gz" -C "$work/corpus" "$target"
artifacts=$(find "$work/artifacts" -type f | wc -l)
[ "$artifacts" -gt 0 ] && tar -czf "$out/$target-artifacts.tar.gz" -C "$work" artifacts

# Sum of every job's own count, and how many jobs reported one.
read -r job_units jobs_counted < <(cat "$work"/jobs/*.units 2>/dev/null |
  awk '{s += $2; n++} END {printf "%d %d\n", s, n}')
jobs_started=$(find "$work/jobs" -name '*.started' | wc -l)
last=$(grep -aE '^#[0-9]+: cov:' "$out/$target.log" | tail -1 || true)
{
  echo "target:               $target"
  echo "binary sha256:        $(sha256sum "$binary" | cut -d' ' -f1)"
  echo "time limit, jobs:     $seconds s, $jobs jobs, $(nproc) cores"
  echo "wall time:            $(grep -aoE 'INFO: exiting: [0-9-]+ time: [0-9]+s' "$out/$target.log" | tail -1 | sed 's/.*time: //')"
  echo "executions (all jobs): $job_units, from $jobs_counted of $jobs_started jobs$( [ "$jobs_counted" -lt "$jobs_started" ] && echo " (the others died on a finding and printed no count)")"
  echo "executions (fork mode's last #N, merged jobs only): $(sed -nE 's/^#([0-9]+):.*/\1/p' <<<"$last")"
  echo "final line:           $last"
  echo "coverage:             $(grep -oE 'cov: [0-9]+ ft: [0-9]+' <<<"$last")"
  echo "oom/timeout/crash:    $(grep -oE 'oom/timeout/crash: [0-9/]+' <<<"$last" | cut -d' ' -f2)"
  echo "corpus inputs:        $start_units at the start, $end_units at the end"
  echo "artifacts:            $artifacts$( [ "$artifacts" -gt 0 ] && echo " (in $target-artifacts.tar.gz)")"
  echo "libFuzzer exit status: $status"
} | tee "$out/$target-summary.txt"
exit "$status"
