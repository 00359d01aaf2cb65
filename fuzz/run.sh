#!/usr/bin/env bash
# Run every fuzz target for SECONDS each, one after the other (one job), and print a table row
# per target from libFuzzer's final stats: executions, exec/s, crashes, coverage, corpus size.
#
# Usage: fuzz/run.sh [SECONDS] [TARGET…]     (default 300 s, every target)
#   Needs cargo-fuzz (`cargo install cargo-fuzz`). `transcode` is built apart with -O (see
#   README.md); the rest with cargo-fuzz's defaults (ASan, debug assertions).
set -uo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${1:-300}
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    mapfile -t TARGETS < <(RUSTC_BOOTSTRAP=1 cargo fuzz list)
fi
export RUSTC_BOOTSTRAP=1
# OpenH264's C++ (linked into every target through the library) defines two const tables that
# ASan's start-up check reports as an ODR violation and aborts on before any input is run:
# a false positive for read-only data, so that one check is off.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_odr_violation=0}
printf '| target | time | executions | exec/s | crashes | cov / ft | corpus |\n|---|---|---|---|---|---|---|\n'
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    extra=()
    [ "$t" = transcode ] && extra=(-O --target-dir target-o)
    log=$(mktemp)
    since=$(mktemp) # crashes are the artifacts written after this
    cargo fuzz run "${extra[@]}" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$SECONDS_EACH" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    execs=$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')
    rate=$(grep -m1 'stat::average_exec_per_sec' "$log" | awk '{print $2}')
    cov=$(grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE)' "$log" | tail -1 | sed -E 's/.*cov: ([0-9]+) ft: ([0-9]+).*/\1 \/ \2/')
    crashes=$(find "artifacts/$t" -type f -newer "$since" | wc -l)
    corpus=$(find "corpus/$t" -type f | wc -l)
    printf '| `%s` | %s s | %s | %s | %s%s | %s | %s |\n' "$t" "$SECONDS_EACH" "${execs:-?}" \
        "${rate:-?}" "$crashes" "$([ $rc -ne 0 ] && echo " (exit $rc)")" "${cov:-?}" "$corpus"
    [ $rc -ne 0 ] && tail -30 "$log" >&2
    rm -f "$log" "$since"
done
