"""`cellfab run` speaks systemd's notify protocol on a real socket: READY, WATCHDOG, STOPPING.

systemd itself is not needed: it is a datagram socket named by NOTIFY_SOCKET, and
WATCHDOG_USEC says how often to feed it, exactly as systemd sets them for Type=notify.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path

import pytest

from controller.configload import load_site
from simulators.runner import serve_devices
from tests.servers import free_port

pytestmark = pytest.mark.integration

SITE = """
[site]
id = "notify"
[state]
dir = "{state}"
[[devices]]
id = "inc-1"
device_class = "co2_incubator"
area = "suite-1"
driver = "modbus_tcp"
host = "127.0.0.1"
port = {port}
profile = "co2-incubator"
poll_period_s = 0.2
[devices.simulator]
probe_warmup_s = 0.0
"""


async def test_ready_then_watchdog_then_stopping(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text(SITE.format(port=free_port(), state=tmp_path / "state"))
    sock_path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(sock_path))
    server.setblocking(False)
    loop = asyncio.get_running_loop()
    env = {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000", "PATH": "/usr/bin:/bin"}
    async with serve_devices(load_site(path).devices):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "controller.cli", "run", "-c", str(path), env=env,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        messages: list[str] = []
        try:
            async with asyncio.timeout(30):
                while messages.count("WATCHDOG=1") < 3:
                    messages.append((await loop.sock_recv(server, 4096)).decode())
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                while "STOPPING=1" not in messages:
                    messages.append((await loop.sock_recv(server, 4096)).decode())
            assert await asyncio.wait_for(proc.wait(), 20) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            server.close()
    ready = [i for i, m in enumerate(messages) if m.startswith("READY=1")]
    assert ready, messages
    assert "STATUS=polling 1 devices" in messages[ready[0]]
    assert messages.index("STOPPING=1") > ready[0]
