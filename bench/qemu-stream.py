#!/usr/bin/env python3
"""QEMU migration streams: snapvmm's export/import against QEMU 7.2's own migrate/-incoming, one
run, same guest and sizes, streams through `exec:cat` into and out of files in one directory;
every live step repeated (QEMU_STREAM_REPEATS, 5) and reported as its median and its runs.

usage: bench/qemu-stream.py SNAPVMM GUEST_ELF WORKDIR
  GUEST_ELF: guest-tools' counter-tss.elf (fill=M fills M MiB of RAM with a non-zero pattern)
prints a Markdown table.

Per case (1 GiB guest with 512 MiB non-zero RAM; 64 MiB guest, sparse):
- snapvmm: the guest runs to its SAVE (`save=2`) and the snapshot is written; then
  `snapshot export DIR F` (offline), QMP `migrate "exec:cat > F"` on the guest resumed from DIR,
  `snapshot import F DIR2`, and `run --incoming "exec:cat F" --paused --qmp ...` until its QMP
  socket answers (it opens once the stream is loaded and the VM built; process start included);
- QEMU: the same guest on `-M microvm`, `stop`, `migrate-set-parameters max-bandwidth` raised,
  `migrate "exec:cat > F"` (query-migrate's total-time and the wall clock), then a new QEMU with
  `-incoming "exec:cat F"` until `query-status` leaves `inmigrate` (QEMU start-up included).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time


class Qmp:
    def __init__(self, path, timeout=60):
        self.sock = socket.socket(socket.AF_UNIX)
        deadline = time.time() + timeout
        while True:
            try:
                self.sock.connect(path)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.01)
        self.reader = self.sock.makefile("r")
        self.receive()
        self.command("qmp_capabilities")

    def receive(self):
        while True:
            message = json.loads(self.reader.readline())
            if "event" not in message:
                return message

    def command(self, name, **arguments):
        self.sock.sendall(json.dumps({"execute": name, "arguments": arguments}).encode() + b"\n")
        reply = self.receive()
        if "error" in reply:
            raise RuntimeError(f"{name}: {reply['error']}")
        return reply["return"]

    def status(self):
        return self.command("query-status")["status"]

    def migrate(self, uri):
        """Migrates to `uri`; returns (wall seconds, query-migrate total-time ms)."""
        start = time.time()
        self.command("migrate", uri=uri)
        while True:
            info = self.command("query-migrate")
            if info.get("status") == "completed":
                return time.time() - start, info.get("total-time")
            if info.get("status") == "failed":
                raise RuntimeError(f"migration failed: {info}")
            time.sleep(0.005)

    def quit(self):
        try:
            self.sock.sendall(b'{"execute": "quit"}\n')
            self.reader.read()
        except OSError:
            pass


def wait_for(path, text, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path) and text in open(path, errors="replace").read():
            return
        time.sleep(0.05)
    raise RuntimeError(f"{text!r} never appeared in {path}")


# Each live step runs this many times (its stream file removed before each); the table gives the
# median and the spread. Single runs move 2x on a shared host (page allocation in tmpfs).
REPEATS = int(os.environ.get("QEMU_STREAM_REPEATS", "5"))


def repeated(step):
    """Runs `step()` (returns seconds) REPEATS times; returns the list."""
    return [step() for _ in range(REPEATS)]


def removed(path):
    if os.path.exists(path):
        os.remove(path)


def timed(args):
    start = time.time()
    result = subprocess.run(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.time() - start
    return elapsed, result


def snapvmm_case(snapvmm, guest, work, mem_mib, fill_mib):
    snap = os.path.join(work, f"snap-{mem_mib}")
    stream = os.path.join(work, f"snapvmm-{mem_mib}.bin")
    imported = os.path.join(work, f"imported-{mem_mib}")
    for path in (snap, imported):
        shutil.rmtree(path, ignore_errors=True)
    cmdline = f"save=2 delay=1000000 fill={fill_mib}" if fill_mib else "save=2 delay=1000000"
    serial = os.path.join(work, f"boot-{mem_mib}.serial")
    if os.path.exists(serial):
        os.remove(serial)
    run = subprocess.Popen([snapvmm, "run", "--kernel", guest, "--mem", f"{mem_mib}M",
                            "--cmdline", cmdline, "--save-snapshot", snap,
                            "--serial", f"file:{serial}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(serial, "count 3")
    run.terminate()
    run.wait()
    figures = {}
    figures["export (offline: snapshot dir -> file)"], result = timed(
        [snapvmm, "snapshot", "export", snap, stream])
    assert result.returncode == 0, result.stderr
    size = os.path.getsize(stream)
    os.remove(stream)
    # Live: the guest resumed from the snapshot, QMP migrate to exec:cat.
    socket_path = os.path.join(work, "snapvmm.sock")
    vm = subprocess.Popen([snapvmm, "run", "--from-snapshot", snap, "--serial", "file:/dev/null",
                           "--qmp", f"unix:{socket_path},server=on,wait=off"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    qmp = Qmp(socket_path)
    # Touch every page of the resumed guest first (its RAM is mapped lazily from the snapshot),
    # as a long-running guest's would be: one export warms it.
    qmp.command("stop")
    qmp.migrate(f"exec:cat > /dev/null")

    def migrate(uri):
        removed(stream)
        return qmp.migrate(uri)[0]

    figures['QMP migrate "exec:cat > F" (stopped guest)'] = repeated(
        lambda: migrate(f"exec:cat > {stream}"))
    figures['QMP migrate "file:F" (stopped guest)'] = repeated(lambda: migrate(f"file:{stream}"))
    qmp.quit()
    vm.wait()
    figures["import (offline: file -> snapshot dir)"], result = timed(
        [snapvmm, "snapshot", "import", stream, imported])
    assert result.returncode == 0, result.stderr
    # Loaded: snapvmm opens its QMP socket once the stream is loaded (--paused: nothing runs).
    def incoming(uri):
        start = time.time()
        vm = subprocess.Popen([snapvmm, "run", "--incoming", uri, "--paused",
                               "--serial", "file:/dev/null",
                               "--qmp", f"unix:{socket_path},server=on,wait=off"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        qmp = Qmp(socket_path)
        assert qmp.status() == "paused"
        elapsed = time.time() - start
        qmp.quit()
        vm.wait()
        return elapsed

    figures['run --incoming "exec:cat F" (to the guest loaded)'] = repeated(
        lambda: incoming(f"exec:cat {stream}"))
    figures['run --incoming "file:F" (to the guest loaded)'] = repeated(
        lambda: incoming(f"file:{stream}"))
    os.remove(stream)
    shutil.rmtree(imported, ignore_errors=True)
    shutil.rmtree(snap, ignore_errors=True)
    return figures, size


def qemu_case(guest, work, mem_mib, fill_mib):
    stream = os.path.join(work, f"qemu-{mem_mib}.bin")
    serial = os.path.join(work, "qemu.serial")
    if os.path.exists(serial):
        os.remove(serial)
    socket_path = os.path.join(work, "qemu.sock")
    common = ["qemu-system-x86_64", "-M", "microvm,rtc=on", "-accel", "kvm", "-m", str(mem_mib),
              "-nodefaults", "-display", "none", "-qmp", f"unix:{socket_path},server=on,wait=off"]
    append = f"delay=1000000 fill={fill_mib}" if fill_mib else "delay=1000000"
    source = subprocess.Popen(common + ["-serial", f"file:{serial}", "-kernel", guest,
                                        "-append", append],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    qmp = Qmp(socket_path)
    wait_for(serial, "count 3")
    qmp.command("stop")
    qmp.command("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
    figures = {}

    def migrate():
        removed(stream)
        if qmp.status() == "postmigrate":
            # QEMU refuses a second migrate until the guest has run again (not timed).
            qmp.command("cont")
            qmp.command("stop")
        return qmp.migrate(f"exec:cat > {stream}")[0]

    figures['QMP migrate "exec:cat > F" (stopped guest)'] = repeated(migrate)
    size = os.path.getsize(stream)
    qmp.quit()
    source.wait()

    def incoming():
        start = time.time()
        destination = subprocess.Popen(common + ["-serial", "file:/dev/null",
                                                 "-incoming", f"exec:cat {stream}"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        qmp = Qmp(socket_path)
        while qmp.status() == "inmigrate":
            time.sleep(0.002)
        elapsed = time.time() - start
        qmp.quit()
        destination.wait()
        return elapsed

    figures['-incoming "exec:cat F" (to the guest loaded)'] = repeated(incoming)
    os.remove(stream)
    return figures, size


def main():
    snapvmm, guest, work = sys.argv[1:4]
    os.makedirs(work, exist_ok=True)
    print(f"| guest | VMM | step | seconds (median of {REPEATS} for live steps) | runs | stream bytes |")
    print("|---|---|---|---|---|---|")
    for mem_mib, fill_mib, label in ((1024, 512, "1 GiB, 512 MiB non-zero"),
                                     (64, 0, "64 MiB, sparse")):
        for vmm, (figures, size) in (("snapvmm", snapvmm_case(snapvmm, guest, work, mem_mib,
                                                              fill_mib)),
                                     ("QEMU 7.2", qemu_case(guest, work, mem_mib, fill_mib))):
            for step, seconds in figures.items():
                runs = seconds if isinstance(seconds, list) else [seconds]
                median = sorted(runs)[len(runs) // 2]
                spread = " ".join(f"{run:.3f}" for run in runs)
                print(f"| {label} | {vmm} | {step} | {median:.3f} | {spread} | {size:,} |",
                      flush=True)


if __name__ == "__main__":
    main()
