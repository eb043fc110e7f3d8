#!/usr/bin/env bash
# One job of remote.sh's fork mode (see the comment at the top of remote.sh): fork mode runs its
# jobs as the parent's argv[0], which remote.sh sets to this script. It runs the fuzz binary with
# the job's arguments, passes its output on to fork mode unchanged, and keeps the job's
# stat::number_of_executed_units in $FUZZBIN_JOBS_DIR/<pid>.units. Merge steps pass straight through.
set -u
case " $* " in
  *" -merge_control_file="* | *" -merge_inner="* | *" -merge="*) exec "$FUZZBIN_BINARY" "$@" ;;
esac
id=$$
touch "$FUZZBIN_JOBS_DIR/$id.started"
log=$FUZZBIN_JOBS_DIR/$id.log
[ "${FUZZBIN_KEEP_LAST:-0}" = 1 ] && export FUZZ_LAST_INPUT=$FUZZBIN_JOBS_DIR/$id.last
"$FUZZBIN_BINARY" "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
units=$(grep -a '^stat::number_of_executed_units:' "$log" | tail -1 | awk '{print $2}')
[ -n "$units" ] && echo "$id $units" >"$FUZZBIN_JOBS_DIR/$id.units"
if [ "$status" -ne 0 ] && [ -f "$FUZZBIN_JOBS_DIR/$id.last" ]; then
  cp "$FUZZBIN_JOBS_DIR/$id.last" "$FUZZBIN_ARTIFACTS/last-input-of-job-$id"
fi
rm -f "$log" "$FUZZBIN_JOBS_DIR/$id.last"
exit "$status"
