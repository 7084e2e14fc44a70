#!/usr/bin/env bash
# The main job on its built-in default: build snapvmm and boot the built-in `hello` guest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh build
exec cargo run --release --quiet --bin snapvmm -- run "$@"
