"""Scan a driver until a condition holds: the one waiting helper of the driver tests.

A driver offers nothing to await but its next read, so the tests read at a short cadence
under a hard deadline; the cadence is the loop under test's, never a synchronisation sleep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from drivers.sample import Sample

Samples = dict[str, Sample]


class Readable(Protocol):
    """Anything with a driver's `read()`."""

    async def read(self) -> list[Sample]: ...


async def read_until(
    driver: Readable, ok: Callable[[Samples], bool], timeout_s: float = 10.0
) -> Samples:
    """Samples by tag of the first scan for which `ok` holds; TimeoutError at the deadline."""
    async with asyncio.timeout(timeout_s):
        while True:
            samples = {s.tag: s for s in await driver.read()}
            if ok(samples):
                return samples
            await asyncio.sleep(0.02)  # scan cadence of the loop under test
