#!/usr/bin/env bash
# Installs what building and testing snapvmm needs on a Debian 12 machine, skipping what is there.
# Usage: scripts/ensure-deps.sh [build|test]   (build: compile prerequisites only; test: everything)
set -euo pipefail
what=${1:-test}
export DEBIAN_FRONTEND=noninteractive

missing=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }
# clang: guest-tools' build.rs compiles the fuzz targets with it (-fsanitize-coverage=trace-pc-guard).
for pkg in libclang-dev gcc binutils clang; do have_pkg "$pkg" || missing+=("$pkg"); done
if [ "$what" = test ]; then
  # afl++: the native baseline the fuzzing benchmark compares snapvmm with.
  # python3-venv: a venv for QEMU's own QMP client (PyPI qemu.qmp), which the QMP tests drive.
  for pkg in cpio xz-utils zstd file busybox-static afl++ python3-venv; do have_pkg "$pkg" || missing+=("$pkg"); done
fi

apt_updated=0
apt_update() { if [ $apt_updated = 0 ]; then apt-get update -q >/dev/null; apt_updated=1; fi; }
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo

if [ ${#missing[@]} -gt 0 ]; then
  echo "ensure-deps: installing ${missing[*]}"
  $SUDO true; apt_update
  $SUDO apt-get install -y -q "${missing[@]}" >/dev/null
fi

# QEMU 7.2 (Debian 12) is the stream-compatibility peer and runs the real-KVM lane. The machine image
# may carry a newer qemu-utils that conflicts with it; pin the helpers to qemu-system-x86's version.
if [ "$what" = test ] && ! command -v qemu-system-x86_64 >/dev/null; then
  apt_update
  version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  echo "ensure-deps: installing qemu-system-x86 $version"
  $SUDO apt-get install -y -q --allow-downgrades "qemu-system-x86=$version" "qemu-utils=$version" \
    "qemu-block-extra=$version" >/dev/null \
    || $SUDO apt-get install -y -q qemu-system-x86 >/dev/null
fi

# QEMU's own Python QMP client and qmp-shell (PyPI qemu.qmp), for cli/tests/qemu_interchange.rs.
if [ "$what" = test ]; then
  venv=${SNAPVMM_QMP_VENV:-$HOME/.cache/snapvmm/qmp-venv}
  if ! "$venv/bin/python" -c "import qemu.qmp" 2>/dev/null; then
    echo "ensure-deps: installing qemu.qmp into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "qemu.qmp==0.0.6"
  fi
fi
