#!/usr/bin/env bash
# The soak (not in CI): one million consecutive restores per restore strategy of a guest that
# dirties random pages (snapshot-stress: random pages, page-table and FPU changes), checks its own
# memory (data, bss, stack, its buffer) after every restore, with the VMM verifying RAM, vCPU and
# device state byte for byte on every 1,000th restore (--verify-every).
#
#   scripts/soak.sh [RESTORES]     # default 1000000
set -euo pipefail
cd "$(dirname "$0")/.."
restores="${1:-1000000}"
cargo build --release --quiet --bin snapvmm
bin=target/release/snapvmm
for strategy in dirty remap; do
  echo "soak: $strategy, $restores restores"
  start=$(date +%s)
  "$bin" run --guest snapshot-stress --mem 64M \
    --cmdline "rounds=$restores pages=16 seed=7 pt=0 fpu=1" \
    --restore "$strategy" --verify-restores --verify-every 1000 2>&1 | tail -n 3
  echo "soak: $strategy took $(( $(date +%s) - start )) s"
done
