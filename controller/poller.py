"""One device's scan loop on a fixed monotonic schedule.

Scans start at phase + k·period on the monotonic clock, so they do not drift with the time
a read takes, and devices given different phases do not all start their scans in the same
millisecond (see `scan_phase_s`). A scan that overran skips the missed slots (counted)
instead of bursting to catch up (less than half a period behind, it starts at once).
Stopping is cooperative: a scan in progress completes, so no half scan is lost.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from controller.hub import Hub
from controller.watchdog import Heart, Liveness
from drivers.base import Driver, RecordDriver
from drivers.sample import Quality, Sample, Scan, utc_now_ns

log = logging.getLogger(__name__)


class Polled(Protocol):
    """What the phase of a device's scans depends on."""

    @property
    def id(self) -> str: ...
    @property
    def poll_period_s(self) -> float: ...


SCANS_PER_SLOT = 20  # devices whose scans start together; more wait for each other's CPU


def scan_phase_s(device: str, devices: Sequence[Polled]) -> float:
    """`device`'s phase: devices sharing a period split into slots of ≤ 20, spread over it.

    A burst of 100 scan starts made the last one wait ~45 ms for the others' CPU; one slot
    per device made every request wake the event loop alone and cost 2.4x the CPU per
    sample (bench/poll.py). Round-robin in file order: deterministic, so a restart or a
    reload keeps every unchanged device's slot.
    """
    mine = next(d for d in devices if d.id == device)
    peers = [d.id for d in devices if d.poll_period_s == mine.poll_period_s]
    slots = math.ceil(len(peers) / SCANS_PER_SLOT)
    return mine.poll_period_s * (peers.index(device) % slots) / slots


@dataclass
class ScheduleStats:
    """How well a poller keeps its schedule: lateness of scan starts, skipped slots."""

    scans: int = 0
    skipped: int = 0
    failed: int = 0  # scans with no good value at all: the device was not reachable
    lateness_s: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))

    def p99_lateness_s(self) -> float:
        """99th percentile of recent scan-start lateness (0 before any scan)."""
        if not self.lateness_s:
            return 0.0
        ordered = sorted(self.lateness_s)
        return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


class Poller:
    """Polls one driver every `period_s` until `stop` is set."""

    def __init__(
        self,
        device: str,
        driver: Driver,
        period_s: float,
        hub: Hub,
        clock: Callable[[], float] = time.monotonic,
        *,
        liveness: Liveness | None = None,
        scan_budget_s: float = 30.0,
        phase_s: float = 0.0,
    ) -> None:
        self.device = device
        self._heart = Heart(liveness, f"poll:{device}")
        self._budget_s = 2 * period_s + scan_budget_s  # a scan that takes longer is stuck
        self._driver = driver
        self._period = period_s
        self._phase = phase_s % period_s
        self._hub = hub
        self._clock = clock
        self.stats = ScheduleStats()
        self.scanned = asyncio.Event()  # set after the first scan (or when the loop ends)
        self._wake: asyncio.Future[None] | None = None
        self._broken: str | None = None  # the driver's last unexpected error, until it reads
        # Decided once: a runtime Protocol check costs microseconds on every scan.
        self._records = driver if isinstance(driver, RecordDriver) else None

    async def run(self, stop: asyncio.Event) -> None:
        """Scan until `stop` is set; the first scan is immediate, the next on the phase grid."""
        due = self._clock()
        first = True
        watcher = asyncio.create_task(self._wake_on(stop), name=f"stop-watch:{self.device}")
        try:
            while not stop.is_set():
                self._heart.busy(self._budget_s)
                self.stats.lateness_s.append(max(0.0, self._clock() - due))
                await self.scan_once()
                self.scanned.set()
                due = self._on_grid(due) if first else self._next_due(due)
                first = False
                await self._wait_until(due, stop)
        finally:
            self._heart.idle()
            self.scanned.set()
            watcher.cancel()
            await asyncio.wait([watcher])

    async def _wait_until(self, due: float, stop: asyncio.Event) -> None:
        """Sleep until `due`, or until `stop` wakes us.

        One future and one timer per scan: `asyncio.timeout` around `stop.wait()` cost
        ~50 µs of CPU more per scan (a cancellation and an exception every time).
        """
        delay = due - self._clock()
        if delay <= 0 or stop.is_set():
            return
        loop = asyncio.get_running_loop()
        self._wake = wake = loop.create_future()
        timer = loop.call_later(delay, _resolve, wake)
        try:
            await wake
        finally:
            timer.cancel()
            self._wake = None

    async def _wake_on(self, stop: asyncio.Event) -> None:
        await stop.wait()
        if self._wake is not None:
            _resolve(self._wake)

    async def scan_once(self) -> Scan:
        """Read the device once and hand the scan (or the device's records) to the hub."""
        t_scan = utc_now_ns()
        try:
            samples = await self._driver.read()
        except Exception as exc:
            samples = self._driver_failed(exc)
        else:
            if self._broken is not None:
                log.warning("%s: driver reads again after %s", self.device, self._broken)
                self._broken = None
        scan = Scan(self.device, t_scan, tuple(samples))
        if self._records is not None:
            self._hub.latest(scan)  # latest state only: the device's records are the record
            for rec in self._records.drain_records():
                self._hub.record(Scan(self.device, rec.t_ns, tuple(rec.samples), rec.backfill))
        else:
            self._hub.publish(scan)
        self.stats.scans += 1
        # a link failure makes every sample BAD; the first and last tell it in O(1)
        if samples and samples[0].quality is Quality.BAD and samples[-1].quality is Quality.BAD:
            self.stats.failed += 1
        return scan

    def _driver_failed(self, exc: Exception) -> list[Sample]:
        """BAD samples naming the error; the traceback is logged once per kind of error.

        Expected device faults become quality inside the drivers. An exception that gets
        here is a bug (or a reply nobody foresaw): it must not end the daemon and with it
        the monitoring of every other device, so the device reads BAD until it passes.
        """
        why = f"driver error: {type(exc).__name__}: {str(exc)[:160]}"
        if self._broken != type(exc).__name__:
            log.error("%s: %s", self.device, why, exc_info=exc)
            self._broken = type(exc).__name__
        now = utc_now_ns()
        return [Sample.bad(t.tag, t.unit, why, now) for t in self._driver.tags]

    def _on_grid(self, start: float) -> float:
        """The first slot of the phase grid at least half a period after `start`."""
        k = math.ceil((start + self._period / 2 - self._phase) / self._period)
        return self._next_due(self._phase + (k - 1) * self._period)

    def _next_due(self, due: float) -> float:
        due += self._period
        behind = self._clock() - due
        # Less than half a period behind: start now, a little late. More: skip the slot.
        missed = math.ceil(behind / self._period - 0.5) if behind > 0 else 0
        if missed > 0:
            self.stats.skipped += missed
            due += missed * self._period
        return due


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
