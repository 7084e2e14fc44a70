#!/bin/sh
# Runs the reader fuzz target for SECONDS (default 60) from the committed seeds; exits non-zero on a
# finding (libFuzzer leaves the crashing input in fuzz/artifacts/read_stream/).
set -eu
SECONDS_TO_RUN="${1:-60}"
HERE="$(cd "$(dirname "$0")" && pwd)"
cd "$HERE"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz
CORPUS="${FUZZ_CORPUS:-$(mktemp -d)}"
mkdir -p "$CORPUS"
cp seeds/* "$CORPUS"/
exec cargo +nightly fuzz run read_stream "$CORPUS" -- \
    -max_total_time="$SECONDS_TO_RUN" -max_len=262144 -rss_limit_mb=2048 -timeout=10
