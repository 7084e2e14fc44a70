#!/usr/bin/env bash
# Builds a libFuzzer harness into a static Linux program that runs it under snapvmm's guest agent
# (docs/linux-targets.md):
#
#   bash guest-tools/linux-agent/build-harness.sh -o OUT HARNESS.c [MORE.c ...] [-- CLANG-FLAGS...]
#
# The harness's sources are compiled by clang (14 or later; $CLANG overrides) with
# -fsanitize-coverage=trace-pc-guard,trace-cmp (gcc has no trace-pc-guard); the agent's own
# sources (this directory's *.c) are not instrumented. Everything is linked statically with glibc
# (libc6-dev), so the program runs in a busybox initramfs. Flags after -- go to the harness's
# compilation (e.g. -I DIR, -D NAME). guest-tools/build.rs and guest-tools/linux/build-images.sh
# build harnesses/*.c with this script.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
INCLUDE=$HERE/../include
CLANG=${CLANG:-clang}
# Keep in step with docs/linux-targets.md.
COMMON_FLAGS=(-O2 -g -Wall -Wextra -std=gnu11 -m64 -march=x86-64 -mtune=generic -fno-omit-frame-pointer)
HARNESS_FLAGS=(-fsanitize-coverage=trace-pc-guard,trace-cmp -DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION)
AGENT_SOURCES=(agent.c device.c coverage.c cmplog.c input.c crash.c)

die() { echo "build-harness.sh: $*" >&2; exit 2; }
OUT=
SOURCES=()
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
  -o) [ $# -ge 2 ] || die "-o needs a file"; OUT=$2; shift 2 ;;
  --) shift; EXTRA=("$@"); break ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; exit 0 ;;
  -*) die "unknown option $1 (see --help)" ;;
  *) SOURCES+=("$1"); shift ;;
  esac
done
[ -n "$OUT" ] || die "no -o OUT"
[ ${#SOURCES[@]} -gt 0 ] || die "no harness source"
command -v "$CLANG" >/dev/null || die "clang not found ($CLANG): install clang 14 (scripts/ensure-deps.sh)"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
OBJECTS=()
for source in "${AGENT_SOURCES[@]}"; do
  "$CLANG" "${COMMON_FLAGS[@]}" -Werror -I "$INCLUDE" -c "$HERE/$source" -o "$WORK/agent-${source%.c}.o"
  OBJECTS+=("$WORK/agent-${source%.c}.o")
done
index=0
for source in "${SOURCES[@]}"; do
  index=$((index + 1))
  "$CLANG" "${COMMON_FLAGS[@]}" "${HARNESS_FLAGS[@]}" ${EXTRA[@]+"${EXTRA[@]}"} -c "$source" -o "$WORK/harness-$index.o"
  OBJECTS+=("$WORK/harness-$index.o")
done
"$CLANG" -static -o "$OUT.tmp" "${OBJECTS[@]}"
mv "$OUT.tmp" "$OUT"
