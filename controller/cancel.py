"""Cancellation that holds on Python 3.11, where one `cancel()` can be lost.

`asyncio.wait_for` in 3.11 swallows a cancellation that arrives in the loop iteration in
which its result does (CPython gh-86296, fixed in 3.12). aiomqtt waits for every PUBACK
that way, so a sink task cancelled just as an acknowledgement landed kept running and the
daemon never finished its shutdown (tests/integration/test_no_loss_mqtt.py, one run in
eight on uvloop). Our own timed waits use `asyncio.timeout`, which has no such window.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any


async def cancel_and_wait(task: asyncio.Task[Any], every_s: float = 0.5) -> None:
    """Cancel `task` again every `every_s` until it is done; its outcome stays in the task."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=every_s)


async def wait_at_most(waited: Awaitable[Any], seconds: float) -> None:
    """Await `waited` for up to `seconds` (none if negative); at the limit it is cancelled."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await waited
