#!/usr/bin/env bash
# All performance figures of docs/PERFORMANCE.md in one run: snapvmm's restore matrix and SAVE
# stall, then QEMU 7.2's loadvm on the same guest and RAM sizes, side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh test
cargo build --release --quiet --bin snapvmm
echo "## snapvmm bench ($(date -u +%FT%TZ), $(nproc) cores, /dev/kvm: $(ls /sys/module | grep -E '^kvm_(pvm|amd|intel)$' | tr '\n' ' '))"
target/release/snapvmm bench "$@"
guest=$(ls -t target/release/build/guest-tools-*/out/snapshot-bench-pvh.elf | head -1)
echo "## QEMU $(qemu-system-x86_64 --version | head -1 | awk '{print $4}') savevm/loadvm, same guest (snapshot-bench, PVH entry)"
for mib in 64 1024; do
  python3 bench/qemu-loadvm.py "$guest" "$mib" 20
done
