#!/bin/bash
# `snapvmm fuzz --jobs N`: executions per second of --jobs 1 and --jobs 2 side by side, and the
# memory of each job of a 256 MiB guest with 192 MiB of state (bench/bigmem.c, a libFuzzer
# harness) from /proc/PID/smaps_rollup. Results: docs/PERFORMANCE.md. Run it on a quiet host
# (`uptime` is printed with every figure).
#   scripts/bench-jobs.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
cargo build --release -p snapvmm >&2
snapvmm=${CARGO_TARGET_DIR:-target}/release/snapvmm
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$snapvmm" build-target bench/bigmem.c -o "$work/bigmem.elf" >&2

echo "== throughput ($secs s each, alternating)"
for target in "--guest fuzz-demo" "--kernel $work/bigmem.elf --mem 256M --boot-timeout 60"; do
    for round in 1 2; do
        for jobs in 1 2; do
            rm -rf "$work/out"
            load=$(cut -d' ' -f1 /proc/loadavg)
            # shellcheck disable=SC2086
            line=$("$snapvmm" fuzz $target --out "$work/out" --max-time "$secs" --seed 5 \
                --jobs "$jobs" 2>&1 | grep "fuzzing ended")
            echo "$target | jobs $jobs | load $load | $line"
        done
    done
done

echo "== memory (kB, smaps_rollup 20 s into a 26 s --jobs 2 run)"
rm -rf "$work/out"
"$snapvmm" fuzz --kernel "$work/bigmem.elf" --mem 256M --boot-timeout 60 --out "$work/out" \
    --max-time 26 --jobs 2 >/dev/null 2>&1 &
parent=$!
sleep 20
show() {
    printf '%-7s %-7s ' "$1" "$2"
    awk '/^(Rss|Pss|Shared_Clean|Shared_Dirty|Private_Clean|Private_Dirty):/ {printf "%s %s ", $1, $2}' \
        "/proc/$2/smaps_rollup"
    echo
}
show broker "$parent"
for job in $(cat /proc/"$parent"/task/*/children); do show job "$job"; done
for fd in /proc/"$parent"/fd/*; do
    case "$(readlink "$fd")" in
    *snapvmm-snapshot*) echo "snapshot memfd: $(( $(stat -L -c %b "$fd") / 2 )) kB allocated" ;;
    esac
done
wait "$parent"
uptime
