#!/bin/busybox sh
# /init of the busybox initramfs that snapvmm boots (the inner Linux guest).
# Prints "@@GUEST ready uptime=..." once userspace runs, then performs the actions given after
# "--" on the kernel command line, in order (none given: "shell poweroff"):
#   pci        print "@@GUEST pci <slot> <vendor>:<device> class=<class>" for every PCI device
#   shell      interactive shell on the console (returns when it exits)
#   poweroff   poweroff -f          reboot    reboot -f
#   exit=N     write N to the debug-exit port 0xf4 (snapvmm exits with status N)
#   run=PROG   run /usr/bin/PROG (a guest program added to the initramfs), print its status
#   sleep=S    sleep S seconds
# Each action prints "@@GUEST action <name>" before it runs.
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t devtmpfs dev /dev
# The initramfs has no /dev/console node, so the kernel gave us no stdio: take the console now.
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs tmp /tmp
echo "@@GUEST ready uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r)"

[ $# -eq 0 ] && set -- shell poweroff
for action in "$@"; do
  echo "@@GUEST action $action"
  case "$action" in
  pci)
    for dev in /sys/bus/pci/devices/*; do
      [ -e "$dev/vendor" ] || continue
      vendor=$(cat "$dev/vendor"); device=$(cat "$dev/device")
      echo "@@GUEST pci ${dev##*/} ${vendor#0x}:${device#0x} class=$(cat "$dev/class")"
    done
    echo "@@GUEST pci-count $(ls /sys/bus/pci/devices | wc -l)"
    ;;
  shell) setsid cttyhack sh ;;
  poweroff) poweroff -f ;;
  reboot) reboot -f ;;
  exit=*)
    # One byte to port 0xf4 (= offset 244 of /dev/port).
    code=${action#exit=}
    printf "$(printf '\\%03o' "$code")" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
    echo "@@GUEST exit port write returned"
    ;;
  run=*)
    /usr/bin/"${action#run=}"
    echo "@@GUEST status ${action#run=} rc=$?"
    ;;
  sleep=*) sleep "${action#sleep=}" ;;
  *) echo "@@GUEST unknown action $action" ;;
  esac
done
echo "@@GUEST actions done"
# init must not exit (that panics the kernel): wait for whatever happens next.
while true; do sleep 3600; done
