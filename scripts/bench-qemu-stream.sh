#!/usr/bin/env bash
# QEMU migration streams, one run: snapvmm's export and import against QEMU 7.2's own
# migrate "exec:cat > F" / -incoming "exec:cat F" (max-bandwidth raised), for a 1 GiB guest with
# 512 MiB of non-zero RAM and a sparse 64 MiB one (bench/qemu-stream.py). Figures go into
# docs/PERFORMANCE.md ("QEMU migration streams").
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh test
cargo build --release --quiet --bin snapvmm
target=${CARGO_TARGET_DIR:-target}
guest=$(ls -t "$target"/release/build/guest-tools-*/out/counter-tss.elf | head -1)
# Streams live in tmpfs: on disk, writeback of one 540 MB stream throttles the writes of the
# next (balance_dirty_pages) and the figures measure the disk, not the VMMs.
work=${QEMU_STREAM_BENCH_DIR:-/dev/shm/snapvmm-qemu-stream-bench}
echo "## QEMU streams ($(date -u +%FT%TZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'))"
python3 bench/qemu-stream.py "$target/release/snapvmm" "$guest" "$work"
rm -rf "$work"
