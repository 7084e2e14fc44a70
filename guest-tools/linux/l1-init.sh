#!/bin/busybox sh
# /init of the outer Linux (L1) of the real-KVM lane, booted under QEMU TCG.
# Loads the KVM modules listed in /lane/modules.order, runs every job under /lane/jobs/NNN
# (files: name, budget, run, optionally stdin) with lane-exec, and powers off.
# Everything the host parses is a line starting with "@@LANE" (see docs/real-kvm-lane.md).
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t devtmpfs dev /dev
# The initramfs has no /dev/console node, so the kernel gave us no stdio: take the console now.
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmp /tmp
uptime_s() { cut -d' ' -f1 /proc/uptime; }

echo "@@LANE boot uptime=$(uptime_s) kernel=$(uname -r) cpus=$(grep -c ^processor /proc/cpuinfo)"
svm=$(grep -m1 -o -w svm /proc/cpuinfo)
echo "@@LANE cpu svm=${svm:-none} model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"

insmod_start=$(uptime_s)
for module in $(cat /lane/modules.order); do
  out=$(insmod /lib/modules/"$module".ko 2>&1)
  rc=$?
  [ -n "$out" ] && echo "$out"
  echo "@@LANE insmod $module rc=$rc"
done
echo "@@LANE modules loaded start=$insmod_start end=$(uptime_s)"
if [ -c /dev/kvm ]; then echo "@@LANE kvm dev=yes"; else echo "@@LANE kvm dev=no"; dmesg | tail -20; fi
# From here on only emergencies reach the console, so job output is not interleaved with kernel
# messages; warnings are printed at the end between "kmsg" markers.
dmesg -n 1

# What jobs find: the inner guest's images, and the lane tools on PATH.
export LANE_GUEST_KERNEL=/guest/bzImage LANE_GUEST_VMLINUX=/guest/vmlinux LANE_GUEST_INITRD=/guest/initramfs.cpio
echo "@@LANE ready uptime=$(uptime_s)"
for job in /lane/jobs/*; do
  [ -f "$job/run" ] || continue
  if [ -f "$job/stdin" ]; then
    lane-exec "$(cat "$job/name")" "$(cat "$job/budget")" "$job/run" "$job/stdin"
  else
    lane-exec "$(cat "$job/name")" "$(cat "$job/budget")" "$job/run"
  fi
done
echo "@@LANE kmsg begin"
dmesg -r | grep '^<[0-4]>'
echo "@@LANE kmsg end"
echo "@@LANE done uptime=$(uptime_s)"
poweroff -f
