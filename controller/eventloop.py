"""The event loop the daemon, the simulators and the demo run on: uvloop unless told not to.

Why: at 100 Modbus devices nearly all of the daemon's CPU is spent per request, and a good
part of that is the event loop's own Python code waking for each reply; uvloop (libuv, in
C) took 14 % off the daemon's CPU per sample in `bench/poll.py`. It compiles ahead of
time, so the unit's `MemoryDenyWriteExecute=yes` still holds.
`CELLFAB_EVENT_LOOP=asyncio` falls back to the standard loop, to rule the loop out when
chasing a fault; a platform without uvloop (it does not build on Windows) falls back too.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
CHOICES = ("uvloop", "asyncio")


class EventLoopChoiceError(ValueError):
    """`CELLFAB_EVENT_LOOP` names no loop we have."""


def chosen(env: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """The loop to run on, from `CELLFAB_EVENT_LOOP` (default uvloop)."""
    name = env.get("CELLFAB_EVENT_LOOP", "uvloop").strip().lower() or "uvloop"
    if name not in CHOICES:
        given = env["CELLFAB_EVENT_LOOP"]
        raise EventLoopChoiceError(
            f"CELLFAB_EVENT_LOOP={given!r}: expected one of {', '.join(CHOICES)}"
        )
    return name


def run(main: Coroutine[Any, Any, T], name: str | None = None) -> T:
    """`asyncio.run(main)` on the chosen loop."""
    name = chosen() if name is None else name
    if name == "uvloop":
        try:
            import uvloop  # noqa: PLC0415 - optional on platforms it does not build on
        except ImportError:
            log.warning("uvloop is not installed: running on the standard asyncio loop")
        else:
            return uvloop.run(main)
    return asyncio.run(main)
