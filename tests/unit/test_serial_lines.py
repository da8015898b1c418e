"""SerialLines over a pty: when a line's timeout starts, and what a timed-out line leaves."""

from __future__ import annotations

import asyncio
import os
import pty
import tty
from collections.abc import AsyncIterator

import pytest

from drivers.serial_lines import SerialLines

RECORD = b"$CC,NC2-100412,BATCH-001-0007,2026-11-22T08:50:17Z,1.346E+06,1.258E+06,93.5,9.49*ABB8"


@pytest.fixture
async def line() -> AsyncIterator[tuple[int, SerialLines]]:
    """The master end of a raw pty (the instrument) and SerialLines open on its slave end."""
    master, slave = pty.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    try:
        async with SerialLines(os.ttyname(slave)) as port:
            yield master, port
    finally:
        os.close(master)
        os.close(slave)


async def test_idle_wait_before_a_line_does_not_count_against_its_timeout(
    line: tuple[int, SerialLines],
) -> None:
    """A line that starts after a silence longer than the line timeout is read whole."""
    master, port = line
    reading = asyncio.create_task(port.readline(0.05))
    await asyncio.sleep(0.2)  # the stimulus: the line stays idle for 4 line timeouts
    assert not reading.done()
    os.write(master, RECORD + b"\r\n")
    assert await reading == RECORD


async def test_a_started_line_that_does_not_end_times_out_with_its_partial(
    line: tuple[int, SerialLines],
) -> None:
    """Half a record then silence: TimeoutError, and the half is handed over once."""
    master, port = line
    os.write(master, RECORD[:40])
    with pytest.raises(TimeoutError):
        await port.readline(0.05)
    assert port.take_partial() == RECORD[:40]
    os.write(master, RECORD + b"\n")
    assert await port.readline(5.0) == RECORD


async def test_idle_timeout_bounds_the_wait_for_a_line_to_start(
    line: tuple[int, SerialLines],
) -> None:
    """With `idle_timeout_s` a silent port ends the wait with TimeoutError and no partial."""
    _, port = line
    with pytest.raises(TimeoutError):
        await port.readline(5.0, idle_timeout_s=0.05)
    assert port.take_partial() == b""
