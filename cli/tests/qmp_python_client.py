"""QEMU's own QMP client (PyPI qemu.qmp) saves a running snapvmm guest to a stream.

usage: qmp_python_client.py SOCKET STREAM
Prints `status S` before, `migrate S` and `after S`; exits non-zero on any QMP error.
"""
import asyncio
import sys

from qemu.qmp import QMPClient


async def save(socket, stream):
    qmp = QMPClient("snapvmm-test")
    await qmp.connect(socket)
    print("status", (await qmp.execute("query-status"))["status"])
    await qmp.execute("stop")
    await qmp.execute("migrate", {"uri": f"file:{stream}"})
    for _ in range(1500):
        info = await qmp.execute("query-migrate")
        if info.get("status") in ("completed", "failed"):
            break
        await asyncio.sleep(0.02)
    print("migrate", info.get("status"))
    print("after", (await qmp.execute("query-status"))["status"])
    await qmp.disconnect()


asyncio.run(save(sys.argv[1], sys.argv[2]))
