#!/usr/bin/env bash
# Builds the images of the real-KVM lane (docs/real-kvm-lane.md) from Debian packages.
#
#   bash guest-tools/linux/build-images.sh [--out DIR] [--no-install] [--with-snapvmm]
#                                          [--guest-extra DIR]
#
# Fetches (apt-get download, no install) the Debian 6.12 kernel and busybox-static, unpacks them
# with dpkg -x, and writes into DIR (default <workspace>/target/guest-images):
#   l1/vmlinux            outer Linux (L1): the uncompressed ELF from the 6.12 vmlinuz, PVH entry
#   l1/base.cpio          L1 initramfs (raw cpio): busybox, /init, KVM modules, lane tools, and
#                         /guest/{bzImage,vmlinux,initramfs.cpio} for snapvmm inside L1
#   guest/bzImage         inner Linux guest kernel for snapvmm (the stock 6.12 vmlinuz)
#   guest/initramfs.cpio  inner guest initramfs (raw cpio): busybox, /init = guest-init.sh, and the
#                         project's guest programs (guest-tools/linux-programs/*.c, and the
#                         libFuzzer harnesses guest-tools/linux-agent/harnesses/*.c linked with
#                         the guest agent) in /usr/bin
#   bin/                  the static lane tools (lane-exec, lane-chat, lane-qmp, kvm-check)
#   manifest.txt          what was used (packages, kernel release, module load order)
# Downloads are cached in DIR/dl; a second run only rebuilds the archives (a few seconds).
# As root it installs missing host tools (qemu-system-x86 and friends) unless --no-install.
# --with-snapvmm also builds the static snapvmm the lane copies into L1 (same command as the
# lane runs itself, so `cargo test` finds it built). --guest-extra DIR copies DIR's tree into the
# inner guest's initramfs (e.g. DIR/usr/bin/PROG for the guest init's run=PROG action).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORKSPACE=$(cd "$HERE/../.." && pwd)
OUT=$WORKSPACE/target/guest-images
INSTALL=1
WITH_SNAPVMM=0
GUEST_EXTRA=
# The modules L1 needs; their dependencies are found from the modules' own depends= fields.
WANTED_MODULES=(kvm_amd)

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
  --out) OUT=$2; shift 2 ;;
  --no-install) INSTALL=0; shift ;;
  --with-snapvmm) WITH_SNAPVMM=1; shift ;;
  --guest-extra) GUEST_EXTRA=$(cd "$2" && pwd); shift 2 ;;
  -h | --help) usage; exit 0 ;;
  *) echo "build-images.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

START=$SECONDS
log() { echo "[build-images +$((SECONDS - START))s] $*"; }
die() { echo "build-images.sh: error: $*" >&2; exit 1; }
is_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

apt_install() {
  [ "$INSTALL" = 1 ] || die "missing host packages: $* (run as root without --no-install, or apt-get install them)"
  [ "$(id -u)" = 0 ] || die "missing host packages: $* (need root to install them)"
  log "installing $*"
  apt-get install -y --no-install-recommends --allow-downgrades "$@" >"$OUT/apt-install.log" 2>&1 ||
    { tail -20 "$OUT/apt-install.log" >&2; die "apt-get install $* failed (log: $OUT/apt-install.log)"; }
}

ensure_apt_lists() {
  if ! apt-cache show busybox-static >/dev/null 2>&1; then
    log "package lists missing: apt-get update"
    apt-get update >"$OUT/apt-update.log" 2>&1 || { tail -20 "$OUT/apt-update.log" >&2; die "apt-get update failed"; }
  fi
}

ensure_host_tools() {
  local missing=() tool package
  for tool in cpio:cpio xz:xz-utils zstd:zstd gcc:gcc readelf:binutils; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
  done
  [ -e /usr/include/linux/kvm.h ] || missing+=(linux-libc-dev)
  [ -e /usr/lib/x86_64-linux-gnu/libc.a ] || missing+=(libc6-dev)
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
  if ! command -v qemu-system-x86_64 >/dev/null; then
    # Debian's QEMU needs its helper packages at its own version: a newer qemu-utils from
    # backports (as on fresh machines) conflicts, so align those that are installed.
    local version
    version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
    [ -n "$version" ] && [ "$version" != "(none)" ] || die "no qemu-system-x86 package in the apt lists"
    local packages=("qemu-system-x86=$version")
    for package in qemu-utils qemu-block-extra qemu-system-common qemu-system-data; do
      is_installed "$package" && packages+=("$package=$version")
    done
    apt_install "${packages[@]}"
  fi
  log "host tools: $(qemu-system-x86_64 --version | head -1)"
}

# Prints the versioned kernel package for L1: the first of these meta packages whose kernel is
# 6.12 or newer (6.1's userfaultfd lacks WP_ASYNC). LANE_KERNEL_PACKAGE overrides the choice.
pick_kernel_package() {
  if [ -n "${LANE_KERNEL_PACKAGE:-}" ]; then echo "$LANE_KERNEL_PACKAGE"; return; fi
  local meta dep version
  for meta in linux-image-6.12-amd64 linux-image-amd64; do
    dep=$(apt-cache depends "$meta" 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ {print $2; exit}')
    [ -n "$dep" ] || continue
    version=$(echo "${dep#linux-image-}" | sed 's/[-+].*//')
    if dpkg --compare-versions "$version" ge 6.12; then echo "$dep"; return; fi
  done
  die "no Debian kernel >= 6.12 found (tried linux-image-6.12-amd64, linux-image-amd64; set LANE_KERNEL_PACKAGE)"
}

# apt-get download PACKAGE into the cache unless a .deb of it is there; prints the .deb's path.
fetch_deb() {
  local package=$1 deb
  deb=$(ls "$DL/${package}"_*.deb 2>/dev/null | head -1 || true)
  if [ -z "$deb" ]; then
    (cd "$DL" && apt-get download "$package") >"$DL/apt-download.log" 2>&1 ||
      { cat "$DL/apt-download.log" >&2; die "apt-get download $package failed"; }
    deb=$(ls "$DL/${package}"_*.deb 2>/dev/null | head -1 || true)
    [ -n "$deb" ] || die "apt-get download $package left no .deb in $DL"
  fi
  echo "$deb"
}

# dpkg -x DEB into DIR once (a stamp remembers which .deb DIR holds).
unpack_deb() {
  local deb=$1 dir=$2
  if [ "$(cat "$dir/.unpacked-from" 2>/dev/null || true)" != "$(basename "$deb")" ]; then
    rm -rf "$dir"
    mkdir -p "$dir"
    dpkg -x "$deb" "$dir"
    basename "$deb" >"$dir/.unpacked-from"
  fi
}

le32() { od -An -t u4 -j "$2" -N 4 "$1" | tr -d ' '; }
u8() { od -An -t u1 -j "$2" -N 1 "$1" | tr -d ' '; }

# Writes the uncompressed ELF kernel inside bzImage $1 to $2, using the boot protocol's
# payload_offset/payload_length fields (no guessing by magic numbers).
extract_vmlinux() {
  local bzimage=$1 out=$2 setup_sects payload_offset payload_length start magic
  [ "$(od -An -c -j 514 -N 4 "$bzimage" | tr -d ' ')" = HdrS ] || die "$bzimage is not a bzImage"
  setup_sects=$(u8 "$bzimage" $((0x1f1)))
  [ "$setup_sects" = 0 ] && setup_sects=4
  payload_offset=$(le32 "$bzimage" $((0x248)))
  payload_length=$(le32 "$bzimage" $((0x24c)))
  start=$(((setup_sects + 1) * 512 + payload_offset))
  magic=$(od -An -t x1 -j "$start" -N 4 "$bzimage" | tr -d ' ')
  # xz and zstd payloads carry the uncompressed size in 4 trailing bytes that are not part of
  # the compressed stream; gzip's trailer is its own.
  payload() { dd if="$bzimage" bs=1M iflag=skip_bytes,count_bytes skip="$start" count="$1" status=none; }
  case "$magic" in
  fd377a58) payload $((payload_length - 4)) | xz -dc >"$out" ;;
  28b52ffd) payload $((payload_length - 4)) | zstd -qdc >"$out" ;;
  1f8b*) payload "$payload_length" | gzip -dc >"$out" ;;
  *) die "$bzimage: unsupported payload compression (magic $magic)" ;;
  esac
  [ "$(od -An -c -N 4 "$out" | tr -d ' ')" = '177ELF' ] || die "$out is not an ELF file"
  # XEN_ELFNOTE_PHYS32_ENTRY (18): QEMU boots such an ELF directly, the PVH way.
  readelf -n "$out" | grep -q -E 'Xen[[:space:]]+0x[0-9a-f]+[[:space:]]+(Unknown note type: \(0x00000012\)|NT_XEN_.*PHYS32|XEN_ELFNOTE_PHYS32_ENTRY)' ||
    die "$out has no PVH entry note"
}

# Copies module $1 (.ko, .ko.xz or .ko.zst) to $2 uncompressed.
copy_module() {
  case "$1" in
  *.ko.xz) xz -dc "$1" >"$2" ;;
  *.ko.zst) zstd -qdc "$1" >"$2" ;;
  *.ko.gz) gzip -dc "$1" >"$2" ;;
  *) cp "$1" "$2" ;;
  esac
}

# Writes the raw newc cpio of directory $1 to $2 (owner root, sorted, reproducible).
pack_cpio() {
  (cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) >"$2.tmp"
  mv "$2.tmp" "$2"
}

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
DL=$OUT/dl
BUILD=$OUT/build
mkdir -p "$DL" "$BUILD" "$OUT/l1" "$OUT/guest" "$OUT/bin"

ensure_host_tools
ensure_apt_lists

KERNEL_PACKAGE=$(pick_kernel_package)
log "kernel package: $KERNEL_PACKAGE"
KERNEL_DEB=$(fetch_deb "$KERNEL_PACKAGE")
BUSYBOX_DEB=$(fetch_deb busybox-static)
log "downloads: $(du -ch "$KERNEL_DEB" "$BUSYBOX_DEB" | tail -1 | cut -f1) in $DL"
KERNEL_ROOT=$BUILD/x/kernel
BUSYBOX_ROOT=$BUILD/x/busybox
unpack_deb "$KERNEL_DEB" "$KERNEL_ROOT"
unpack_deb "$BUSYBOX_DEB" "$BUSYBOX_ROOT"
KERNEL_RELEASE=$(ls "$KERNEL_ROOT/lib/modules" | head -1)
[ -n "$KERNEL_RELEASE" ] || die "no lib/modules/<release> in $KERNEL_DEB"
BZIMAGE=$KERNEL_ROOT/boot/vmlinuz-$KERNEL_RELEASE
[ -f "$BZIMAGE" ] || die "no $BZIMAGE in $KERNEL_DEB"
BUSYBOX=$BUSYBOX_ROOT/bin/busybox
[ -x "$BUSYBOX" ] || die "no bin/busybox in $BUSYBOX_DEB"
log "unpacked kernel $KERNEL_RELEASE and busybox"

if [ "$(cat "$OUT/l1/vmlinux.from" 2>/dev/null || true)" != "$(basename "$KERNEL_DEB")" ]; then
  extract_vmlinux "$BZIMAGE" "$OUT/l1/vmlinux.tmp"
  mv "$OUT/l1/vmlinux.tmp" "$OUT/l1/vmlinux"
  basename "$KERNEL_DEB" >"$OUT/l1/vmlinux.from"
  log "extracted l1/vmlinux ($(du -h "$OUT/l1/vmlinux" | cut -f1))"
fi
cp "$BZIMAGE" "$OUT/guest/bzImage"

for tool in lane-exec lane-chat lane-qmp kvm-check; do
  gcc -O2 -static -Wall -Wextra -Werror -o "$OUT/bin/$tool" "$HERE/$tool.c"
done
log "built static tools: lane-exec lane-chat lane-qmp kvm-check"

# The inner guest's initramfs.
GUEST_ROOT=$BUILD/guest-root
rm -rf "$GUEST_ROOT"
mkdir -p "$GUEST_ROOT"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,etc}
cp "$BUSYBOX" "$GUEST_ROOT/bin/busybox"
install -m 755 "$HERE/guest-init.sh" "$GUEST_ROOT/init"
# The project's static Linux programs (guest-tools/linux-programs/*.c) as /usr/bin/NAME; the guest
# init runs one with the action run=NAME. Same flags as LINUX_PROGRAM_CFLAGS in guest-tools/build.rs.
GUEST_PROGRAMS=()
for source in "$WORKSPACE"/guest-tools/linux-programs/*.c; do
  [ -f "$source" ] || continue
  program=$(basename "$source" .c)
  gcc -static -O2 -g -Wall -Wextra -std=gnu11 -I "$WORKSPACE/guest-tools/include" \
    -o "$GUEST_ROOT/usr/bin/$program" "$source"
  GUEST_PROGRAMS+=("$program")
done
# The libFuzzer harnesses for Linux (guest-tools/linux-agent/harnesses/*.c), each statically linked
# with the guest agent by clang (the same script as guest-tools/build.rs), as /usr/bin/NAME.
if [ -d "$WORKSPACE/guest-tools/linux-agent/harnesses" ]; then
  command -v "${CLANG:-clang}" >/dev/null || apt_install clang
  for source in "$WORKSPACE"/guest-tools/linux-agent/harnesses/*.c; do
    [ -f "$source" ] || continue
    program=$(basename "$source" .c)
    bash "$WORKSPACE/guest-tools/linux-agent/build-harness.sh" -o "$GUEST_ROOT/usr/bin/$program" "$source"
    GUEST_PROGRAMS+=("$program")
  done
fi
[ -n "$GUEST_EXTRA" ] && cp -a "$GUEST_EXTRA/." "$GUEST_ROOT/"
pack_cpio "$GUEST_ROOT" "$OUT/guest/initramfs.cpio"
log "guest programs: ${GUEST_PROGRAMS[*]:-none}"

# The modules L1 loads, dependencies first.
declare -A MODULE_FILE=() MODULE_DONE=()
while IFS=' ' read -r name file; do
  name=${name%%.ko*}
  MODULE_FILE[${name//-/_}]=$file
done < <(find "$KERNEL_ROOT/lib/modules/$KERNEL_RELEASE/kernel" -name '*.ko*' -printf '%f %p\n')
L1_ROOT=$BUILD/l1-root
rm -rf "$L1_ROOT"
mkdir -p "$L1_ROOT"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,etc,lib/modules,lane/jobs,guest}
MODULE_ORDER=()
add_module() {
  local name=${1//-/_} dep
  [ -n "${MODULE_DONE[$name]:-}" ] && return
  MODULE_DONE[$name]=1
  [ -n "${MODULE_FILE[$name]:-}" ] || die "module $name not found in $KERNEL_DEB"
  copy_module "${MODULE_FILE[$name]}" "$L1_ROOT/lib/modules/$name.ko"
  for dep in $(tr '\0' '\n' <"$L1_ROOT/lib/modules/$name.ko" | sed -n 's/^depends=//p' | tr ',' ' '); do
    add_module "$dep"
  done
  MODULE_ORDER+=("$name")
}
for module in "${WANTED_MODULES[@]}"; do add_module "$module"; done
printf '%s\n' "${MODULE_ORDER[@]}" >"$L1_ROOT/lane/modules.order"
log "L1 modules (load order): ${MODULE_ORDER[*]}"

cp "$BUSYBOX" "$L1_ROOT/bin/busybox"
install -m 755 "$HERE/l1-init.sh" "$L1_ROOT/init"
for tool in lane-exec lane-chat lane-qmp kvm-check; do cp "$OUT/bin/$tool" "$L1_ROOT/bin/$tool"; done
cp "$OUT/guest/bzImage" "$OUT/guest/initramfs.cpio" "$L1_ROOT/guest/"
# The same kernel as an ELF with a PVH note, for snapvmm's PVH boot path (no decompression).
cp "$OUT/l1/vmlinux" "$L1_ROOT/guest/vmlinux"
pack_cpio "$L1_ROOT" "$OUT/l1/base.cpio"

cat >"$OUT/manifest.txt" <<EOF
kernel_package=$KERNEL_PACKAGE
kernel_deb=$(basename "$KERNEL_DEB")
kernel_release=$KERNEL_RELEASE
busybox_deb=$(basename "$BUSYBOX_DEB")
l1_modules=${MODULE_ORDER[*]}
l1_vmlinux_bytes=$(stat -c %s "$OUT/l1/vmlinux")
l1_base_cpio_bytes=$(stat -c %s "$OUT/l1/base.cpio")
guest_bzimage_bytes=$(stat -c %s "$OUT/guest/bzImage")
guest_initramfs_bytes=$(stat -c %s "$OUT/guest/initramfs.cpio")
guest_programs=${GUEST_PROGRAMS[*]:-}
built=$(date -u +%FT%TZ)
EOF
log "wrote $OUT/l1/base.cpio ($(du -h "$OUT/l1/base.cpio" | cut -f1)), guest/initramfs.cpio ($(du -h "$OUT/guest/initramfs.cpio" | cut -f1))"

if [ "$WITH_SNAPVMM" = 1 ]; then
  # Keep in sync with tests/src/lane.rs (static_snapvmm): same flags, same target dir.
  log "building the static snapvmm (target/lane)"
  (cd "$WORKSPACE" && RUSTFLAGS='-C target-feature=+crt-static' cargo build --release \
    --target x86_64-unknown-linux-gnu --bin snapvmm --target-dir "$WORKSPACE/target/lane")
fi
log "done"
