#!/usr/bin/env bash
# Runs every test: unit tests, bare-metal guests on this machine's /dev/kvm, and the real-KVM lane
# (Linux guests under kvm_amd inside QEMU TCG). Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh test
if [ -x guest-tools/linux/build-images.sh ] || [ -f guest-tools/linux/build-images.sh ]; then
  bash guest-tools/linux/build-images.sh
fi
exec cargo test --release --workspace "$@"
