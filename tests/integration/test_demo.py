"""`cellfab demo`, the README's first command: the whole simulated floor and the daemon.

Run as the user runs it (a process, embedded defaults, no external service), it must come
up with every device, take over every loop and hand every loop back on the way out.
"""

from __future__ import annotations

import asyncio
import re
import sys

import pytest

from controller.configload import load_site_text
from tests.unit.test_config import REPO

pytestmark = pytest.mark.integration


async def test_demo_runs_the_whole_floor_and_stops_cleanly() -> None:
    cfg = load_site_text((REPO / "config" / "demo.toml").read_text(), REPO / "config/demo.toml")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller.cli", "demo", "--duration-s", "12", "--no-view",
        "--log-level", "INFO",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    log = out.decode(errors="replace")
    assert proc.returncode == 0, log[-3000:]
    assert f"ready: {len(cfg.devices)} devices" in log
    taken = set(re.findall(r"loop (\S+): took over", log))
    handed = set(re.findall(r"loop (\S+): control handed back", log))
    with_takeover = {loop.id for loop in cfg.loops if loop.takeover is not None}
    assert taken == handed == with_takeover
    assert "Traceback" not in log
    assert " ERROR " not in log
