#!/usr/bin/env bash
# The main job: build snapvmm, fuzz its built-in demo target (an image parser with a planted bug)
# until the first crash, then replay that crash with the `snapvmm repro` command the fuzzer printed.
#
#   scripts/demo.sh                      # fuzz fuzz-demo into target/demo-out (fresh each time)
#   scripts/demo.sh --max-time 60 ...    # extra arguments go to `snapvmm fuzz`
#   scripts/demo.sh run [ARGS]           # the former demo: `snapvmm run` (boots `hello`)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-deps.sh build
cargo build --release --quiet --bin snapvmm
snapvmm=${CARGO_TARGET_DIR:-target}/release/snapvmm
if [ "${1:-}" = run ]; then
  shift
  exec "$snapvmm" run "$@"
fi
out=${SNAPVMM_DEMO_OUT:-target/demo-out}
rm -rf "$out"
echo "== snapvmm fuzz --guest fuzz-demo --out $out --stop-on-crash --max-time 300 $*" >&2
findings=$("$snapvmm" fuzz --guest fuzz-demo --out "$out" --stop-on-crash --max-time 300 "$@")
printf '%s\n' "$findings"
repro=$(printf '%s\n' "$findings" | sed -n 's/^repro: //p' | head -1)
if [ -z "$repro" ]; then
  echo "demo: no crash found within the time limit" >&2
  exit 1
fi
echo "== $repro" >&2
status=0
eval "$repro" || status=$?
echo "== snapvmm repro exit status $status (71 = crash confirmed)" >&2
[ "$status" -eq 71 ]
