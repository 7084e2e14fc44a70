#!/usr/bin/env python3
"""QEMU 7.2's savevm/loadvm on the same guest and RAM size as snapvmm's benchmark, for comparison.

Boots the guest runtime's `hello-pvh.elf` (it prints, then idles) in QEMU with a qcow2 disk to hold
internal snapshots, takes one snapshot with `savevm`, then times `loadvm` over QMP.

usage: bench/qemu-loadvm.py KERNEL MEM_MIB [LOADS] [ACCEL]   (ACCEL: kvm or tcg, default: kvm if it works)
prints: one line `qemu-loadvm mem=<MiB> accel=<a> loads=<n> per_second=<x> ms_per_load=<y> savevm_ms=<z>`
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time


def qmp_session(path):
    sock = socket.socket(socket.AF_UNIX)
    for _ in range(200):
        try:
            sock.connect(path)
            break
        except OSError:
            time.sleep(0.05)
    reader = sock.makefile("r")

    def receive():
        while True:
            message = json.loads(reader.readline())
            if "event" not in message:
                return message

    receive()  # greeting

    def command(name, **arguments):
        sock.sendall(json.dumps({"execute": name, "arguments": arguments}).encode() + b"\n")
        reply = receive()
        if "error" in reply:
            raise RuntimeError(f"{name}: {reply['error']}")
        return reply.get("return")

    command("qmp_capabilities")
    return command


def hmp(command, text):
    out = command("human-monitor-command", **{"command-line": text})
    if out and ("Error" in out or "error" in out):
        raise RuntimeError(f"{text}: {out.strip()}")
    return out


def measure(kernel, mem_mib, loads, accel):
    with tempfile.TemporaryDirectory() as work:
        disk = os.path.join(work, "snapshots.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "64M"], check=True)
        qmp = os.path.join(work, "qmp.sock")
        qemu = subprocess.Popen(
            ["qemu-system-x86_64", "-accel", accel, "-m", str(mem_mib), "-nodefaults",
             "-display", "none", "-serial", "file:" + os.path.join(work, "serial.log"),
             "-kernel", kernel, "-drive", f"if=none,id=snapshots,format=qcow2,file={disk}",
             "-qmp", f"unix:{qmp},server=on,wait=off"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            command = qmp_session(qmp)
            time.sleep(1.0)  # let the guest boot and settle
            start = time.monotonic()
            hmp(command, "savevm bench")
            savevm = time.monotonic() - start
            hmp(command, "loadvm bench")  # warm-up
            start = time.monotonic()
            for _ in range(loads):
                hmp(command, "loadvm bench")
            elapsed = time.monotonic() - start
            command("quit")
        finally:
            qemu.wait(timeout=30) if qemu.poll() is None else None
        return loads / elapsed, elapsed / loads * 1e3, savevm * 1e3


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    kernel, mem_mib = sys.argv[1], int(sys.argv[2])
    loads = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    accels = [sys.argv[4]] if len(sys.argv) > 4 else ["kvm", "tcg"]
    last_error = None
    for accel in accels:
        try:
            per_second, ms, savevm_ms = measure(kernel, mem_mib, loads, accel)
            print(f"qemu-loadvm mem={mem_mib} accel={accel} loads={loads} "
                  f"per_second={per_second:.2f} ms_per_load={ms:.1f} savevm_ms={savevm_ms:.1f}")
            return 0
        except Exception as error:  # try the next accelerator
            last_error = error
    print(f"qemu-loadvm failed: {last_error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
