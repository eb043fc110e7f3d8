#!/usr/bin/env bash
# Runs one fuzz target for a while and prints libFuzzer's last statistics line.
#
#   fuzz/run.sh TARGET SECONDS [FORK]
#
# The binary is the one `cargo +nightly-2026-05-20 fuzz build -s none` wrote. New inputs go to
# fuzz/corpus/TARGET (not committed), read together with the committed seeds and regression
# inputs; findings go to fuzz/artifacts/TARGET/, the log to fuzz/logs/TARGET.log. With FORK, libFuzzer's fork mode runs
# that many processes and, as fork mode does, goes on past timeouts and out-of-memory (they are
# counted in the log and their inputs kept); a crash stops it, unless FUZZ_IGNORE_CRASHES=1.
# The exit status is libFuzzer's: non-zero on a finding.
set -euo pipefail
cd "$(dirname "$0")"
target=$1 seconds=$2 fork=${3:-}
binary=target/x86_64-unknown-linux-gnu/release/$target
mkdir -p "corpus/$target" "artifacts/$target" logs
dirs=("corpus/$target" "seeds/$target")
[ -d "../engine/tests/data/fuzz/$target" ] && dirs+=("../engine/tests/data/fuzz/$target")
args=(-max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
  -artifact_prefix="artifacts/$target/")
[ -n "$fork" ] && args+=(-fork="$fork")
[ "${FUZZ_IGNORE_CRASHES:-0}" = 1 ] && args+=(-ignore_crashes=1)
status=0
"$binary" "${args[@]}" "${dirs[@]}" >"logs/$target.log" 2>&1 || status=$?
grep -aE '^#[0-9]+' "logs/$target.log" | tail -1 || true
grep -aE '^stat::(number_of_executed_units|average_exec_per_sec)|^INFO: exiting|SUMMARY|panicked at' "logs/$target.log" | tail -4 || true
exit $status
