#!/usr/bin/env bash
# Fuzzing throughput on the demo target, one run, for docs/PERFORMANCE.md:
#  1. `snapvmm fuzz --guest fuzz-demo` for SECS seconds: execs/s and pages restored per run;
#  2. `snapvmm bench` restores/s for the same number of dirtied pages (64M guest);
#  3. AFL++ (Debian's afl++, afl-cc) on the same parser natively, fork-server and persistent mode.
# Usage: scripts/bench-fuzz.sh [SECS]   (default 60 per fuzzer)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
scripts/ensure-deps.sh test
command -v afl-fuzz >/dev/null || { echo "bench-fuzz: needs afl++ (apt-get install afl++)" >&2; exit 1; }
cargo build --release --quiet --bin snapvmm
snapvmm=${CARGO_TARGET_DIR:-target}/release/snapvmm
work=$(mktemp -d /tmp/bench-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT

stat() { sed -n "s/^$2 *: *//p" "$1/fuzzer_stats" | head -1; }

echo "## Fuzzing throughput ($(date -u +%FT%TZ), $(nproc) cores, /dev/kvm: $(ls /sys/module | grep -E '^kvm_(pvm|amd|intel)$' | tr '\n' ' '), ${secs} s each)"
echo
# A seed that parses (magic, a header chunk) so the parser runs its common path from the start.
mkdir -p "$work/seeds"
printf 'SI\x01\x08\x04\x00\x04\x00\x01\x00\x00\x00' > "$work/seeds/header"

# 1. snapvmm fuzz. Its own summary line gives pages restored per run.
"$snapvmm" fuzz --guest fuzz-demo --out "$work/snapvmm" --corpus "$work/seeds" \
  --max-time "$secs" --seed 1 2> "$work/snapvmm.log" > /dev/null
inst="$work/snapvmm/default"
execs=$(stat "$inst" execs_done)
rate=$(awk -v e="$execs" -v s="$secs" 'BEGIN { printf "%.0f", e / s }')
summary=$(grep 'snapshots:' "$work/snapvmm.log" | tail -1)
restores=$(printf '%s' "$summary" | sed -n 's/.* \([0-9]*\) restore(s).*/\1/p')
pages=$(printf '%s' "$summary" | sed -n 's/.* \([0-9]*\) pages restored.*/\1/p')
vmm_us=$(printf '%s' "$summary" | sed -n 's/.* \([0-9.]*\) us per restore in the VMM.*/\1/p')
per_run=$(awk -v p="$pages" -v r="$restores" 'BEGIN { printf "%.0f", (r > 0 ? p / r : 0) }')
[ "$per_run" -ge 1 ] || per_run=1
echo "snapvmm fuzz: $execs execs in ${secs} s = **$rate execs/s**; $restores restores, $pages pages restored ($per_run per run), $vmm_us us per restore in the VMM"
echo "corpus $(stat "$inst" corpus_count), edges $(stat "$inst" edges_found 2>/dev/null || true), crashes $(stat "$inst" saved_crashes)"
echo

# 2. snapvmm bench for the same dirtied pages.
echo "snapvmm bench, 64M, $per_run page(s) dirtied per round:"
"$snapvmm" bench --sizes 64M --pages "$per_run"
echo

# 3. AFL++ on the same parser, natively.
src=guest-tools/fuzz-targets
mkdir -p "$work/afl/native" "$work/afl/simg"
cp "$src"/simg/* "$work/afl/simg/"
cp "$src/native/simg-stdin.c" "$work/afl/native/persistent.c"
# Fork-server mode: the same file without its persistent-mode branch.
sed 's/^#ifdef __AFL_FUZZ_TESTCASE_LEN/#if 0/' "$src/native/simg-stdin.c" > "$work/afl/native/fork.c"
for mode in fork persistent; do
  AFL_QUIET=1 afl-cc -O2 -o "$work/afl/simg-$mode" "$work/afl/native/$mode.c" 2> "$work/afl/cc-$mode.log"
  AFL_SKIP_CPUFREQ=1 AFL_NO_UI=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_AFFINITY=1 \
    timeout $((secs + 30)) afl-fuzz -V "$secs" -i "$work/seeds" -o "$work/afl/out-$mode" -- "$work/afl/simg-$mode" \
    > "$work/afl/fuzz-$mode.log" 2>&1 || true
  dir="$work/afl/out-$mode/default"
  aexecs=$(stat "$dir" execs_done)
  arate=$(awk -v e="$aexecs" -v s="$secs" 'BEGIN { printf "%.0f", e / s }')
  echo "AFL++ $(afl-fuzz -h 2>&1 | sed -n 's/.*afl-fuzz++\([0-9a-z.]*\).*/\1/p' | head -1) $mode mode: $aexecs execs in ${secs} s = **$arate execs/s**; corpus $(stat "$dir" corpus_count), crashes $(stat "$dir" saved_crashes)"
done
