"""The event loop choice: uvloop by default, asyncio on request, a clear error otherwise."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from controller import eventloop


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_default_is_uvloop_and_asyncio_can_be_chosen() -> None:
    assert eventloop.chosen({}) == "uvloop"
    assert eventloop.chosen({"CELLFAB_EVENT_LOOP": " AsyncIO "}) == "asyncio"
    assert eventloop.run(loop_module(), "uvloop") == "uvloop"
    assert eventloop.run(loop_module(), "asyncio") == "asyncio"


def test_an_unknown_loop_is_refused_by_name() -> None:
    with pytest.raises(eventloop.EventLoopChoiceError, match=r"'tokio'.*uvloop, asyncio"):
        eventloop.chosen({"CELLFAB_EVENT_LOOP": "tokio"})


def test_cli_refuses_an_unknown_loop_with_exit_2() -> None:
    """Before any device is touched: the message names the variable and the choices."""
    proc = subprocess.run(
        [sys.executable, "-m", "controller.cli", "demo", "--no-view", "--duration-s", "1"],
        env={"CELLFAB_EVENT_LOOP": "tokio", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "CELLFAB_EVENT_LOOP='tokio'" in proc.stderr
