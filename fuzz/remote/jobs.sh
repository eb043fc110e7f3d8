#!/usr/bin/env bash
# Fuzzing on a many-core machine without Rust, in independent processes:
#   OUT=folder jobs.sh TARGET SECONDS JOBS
# Beside this script: the (stripped) fuzz binary TARGET, and corpus/TARGET, seeds/TARGET and
# optionally regressions/TARGET (input folders). Each of JOBS processes (-jobs=JOBS -workers=JOBS)
# loads the corpus once and fuzzes for SECONDS; fork mode (remote.sh) restarts its jobs, each
# re-reading the corpus, which cost the tokenizer most of its time. Prints each process's own
# stat::number_of_executed_units and their sum; logs and crash inputs go to $OUT.
set -u
here=$(cd "$(dirname "$0")" && pwd)
target=$1 seconds=$2 jobs=$3
out=${OUT:-/tmp/fuzzout}
work=/tmp/fuzzwork; rm -rf "$work"; mkdir -p "$work/corpus" "$out/artifacts/$target"
cp -r "$here/corpus/$target/." "$work/corpus/" 2>/dev/null
dirs=("$work/corpus" "$here/seeds/$target")
[ -d "$here/regressions/$target" ] && dirs+=("$here/regressions/$target")
cd "$work"
"$here/$target" -jobs="$jobs" -workers="$jobs" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
  -print_final_stats=1 -artifact_prefix="$out/artifacts/$target/" "${dirs[@]}" > "$out/$target-main.log" 2>&1
status=$?
cp fuzz-*.log "$out/" 2>/dev/null
total=0
for f in fuzz-*.log; do
  n=$(grep -a 'stat::number_of_executed_units' "$f" | tail -1 | awk '{print $2}')
  last=$(grep -aE '^#[0-9]+' "$f" | tail -1 | cut -c1-100)
  echo "$f: ${n:-?} executions; $last"
  total=$((total + ${n:-0}))
done
echo "total executions: $total in ${seconds} s x $jobs processes"
grep -alE 'ERROR: libFuzzer|panicked|SUMMARY' fuzz-*.log | head
echo "exit $status; artifacts: $(ls "$out/artifacts/$target" | wc -l)"
exit $status
