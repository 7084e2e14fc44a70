#!/usr/bin/env bash
# Runs every cargo-fuzz target of the repository for a bounded time and fails on any finding.
#
#   scripts/fuzz-smoke.sh [SECONDS]      # SECONDS per target, default 60
#
# Targets are found as <crate>/fuzz/fuzz_targets/<target>.rs; each starts from its committed seeds
# (<crate>/fuzz/corpus/<target>/, or <crate>/fuzz/seeds/) copied into a scratch corpus, so the
# committed corpus never changes. A crash, a leak, a timeout (10 s per input) or running out of
# memory (2 GiB) is a finding: its input is kept under $FUZZ_ARTIFACTS (default
# target/fuzz-artifacts/<target>/) and the script exits 1 after running the remaining targets.
# Needs the nightly toolchain; installs cargo-fuzz from crates.io when it is missing.
# FUZZ_TARGET_DIR (default target/fuzz) is where the instrumented builds go; FUZZ_SEED (default 1)
# seeds libFuzzer, so a CI run repeats.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
SECONDS_PER_TARGET="${1:-60}"
case "$SECONDS_PER_TARGET" in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 64 ;;
esac
TARGET_DIR="${FUZZ_TARGET_DIR:-$ROOT/target/fuzz}"
ARTIFACTS="${FUZZ_ARTIFACTS:-$ROOT/target/fuzz-artifacts}"

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz-smoke: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
  exit 64
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz-smoke: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

SCRATCH="$(mktemp -d)"
cleanup() {
  rm -rf "$SCRATCH"
  # The snapshot loader target's per-process scratch directories.
  rm -rf /dev/shm/snapshot-fuzz-* 2>/dev/null || true
}
trap cleanup EXIT

findings=()
ran=0
for fuzz_dir in */fuzz; do
  [ -d "$fuzz_dir/fuzz_targets" ] || continue
  echo "fuzz-smoke: building $fuzz_dir" >&2
  if ! cargo +nightly fuzz build --fuzz-dir "$fuzz_dir" --target-dir "$TARGET_DIR" -O >&2; then
    findings+=("$fuzz_dir: build failed")
    continue
  fi
  for source in "$fuzz_dir"/fuzz_targets/*.rs; do
    target="$(basename "$source" .rs)"
    corpus="$SCRATCH/$target"
    mkdir -p "$corpus" "$ARTIFACTS/$target"
    if [ -d "$fuzz_dir/corpus/$target" ]; then
      cp -r "$fuzz_dir/corpus/$target/." "$corpus/"
    elif [ -d "$fuzz_dir/seeds" ]; then
      cp -r "$fuzz_dir/seeds/." "$corpus/"
    fi
    echo "fuzz-smoke: $fuzz_dir $target for ${SECONDS_PER_TARGET}s" >&2
    log="$SCRATCH/$target.log"
    if cargo +nightly fuzz run --fuzz-dir "$fuzz_dir" --target-dir "$TARGET_DIR" -O "$target" "$corpus" -- \
        -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=2048 -timeout=10 -seed="${FUZZ_SEED:-1}" \
        -artifact_prefix="$ARTIFACTS/$target/" >"$log" 2>&1; then
      summary="$(grep -E '^(#[0-9]+ +DONE|Done [0-9]+ runs)' "$log" | tail -2 | tr '\n' ' ')"
      echo "fuzz-smoke: $target: no finding ($summary)" >&2
    else
      tail -n 40 "$log" >&2
      findings+=("$fuzz_dir $target: see $ARTIFACTS/$target/")
    fi
    ran=$((ran + 1))
  done
done

if [ "${#findings[@]}" -gt 0 ]; then
  printf 'fuzz-smoke: FINDING: %s\n' "${findings[@]}" >&2
  echo "$((ran - ${#findings[@]})) passed, ${#findings[@]} failed"
  exit 1
fi
echo "$ran passed, 0 failed"
