"""The poll schedule: fixed monotonic slots, no drift, overruns skip slots instead of bursts."""

from __future__ import annotations

import asyncio
import logging
import struct

import pytest

from controller.hub import Hub
from controller.journal import Journal
from controller.poller import Poller, scan_phase_s
from controller.tagstore import TagStore
from drivers.registermap import RegisterSpec
from drivers.sample import Quality, Sample


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeDriver:
    """Unit-test stand-in: returns one good and one bad sample; each read costs `cost_s`."""

    def __init__(self, clock: FakeClock, cost_s: float) -> None:
        self.clock = clock
        self.cost_s = cost_s
        self.reads = 0
        self.tags = (
            RegisterSpec(tag="a", unit="u", address=0, type="u16"),
            RegisterSpec(tag="b", unit="u", address=1, type="u16"),
        )

    async def read(self) -> list[Sample]:
        self.reads += 1
        self.clock.now += self.cost_s
        return [Sample.good("a", 1.0, "u", 5), Sample.bad("b", "u", "timeout", 5)]


def make(cost_s: float) -> tuple[Poller, FakeClock, Hub]:
    clock = FakeClock()
    driver = FakeDriver(clock, cost_s)
    store = TagStore([("dev", driver.tags)])
    hub = Hub(store, Journal(100))
    return Poller("dev", driver, 1.0, hub, clock), clock, hub


async def test_scan_reaches_tag_store_and_journal() -> None:
    """One scan lands in the tag store (value, quality, reason) and in the journal."""
    poller, _, hub = make(0.1)
    scan = await poller.scan_once()
    assert hub.journal.last_seq == 1
    assert [s.tag for s in scan.samples] == ["a", "b"]
    rows = hub.store.rows()
    assert (rows[0].value, rows[0].quality) == (1.0, Quality.GOOD)
    assert (rows[1].value, rows[1].quality, rows[1].reason) == (None, Quality.BAD, "timeout")


def test_slots_do_not_drift_with_read_time() -> None:
    """A 0.3 s read does not push the next slot: due times stay t0 + k*period."""
    poller, clock, _ = make(0.3)
    clock.now = 100.3
    assert poller._next_due(100.0) == 101.0
    assert poller.stats.skipped == 0


def test_slightly_late_scan_runs_at_once() -> None:
    """Less than half a period behind: the next scan starts immediately, nothing skipped."""
    poller, clock, _ = make(0.0)
    clock.now = 101.2
    assert poller._next_due(100.0) == 101.0
    assert poller.stats.skipped == 0


def test_overrun_skips_missed_slots() -> None:
    """A scan that took 2.7 periods skips the missed slots rather than bursting."""
    poller, clock, _ = make(0.0)
    clock.now = 102.7
    assert poller._next_due(100.0) == 103.0
    assert poller.stats.skipped == 2


async def test_run_stops_after_the_current_scan() -> None:
    """Setting stop ends the loop; the scan in progress is completed and published."""
    clock = FakeClock()
    driver = FakeDriver(clock, 0.0)
    hub = Hub(TagStore([("dev", driver.tags)]), Journal(100))
    stop = asyncio.Event()

    class StopAfterThree(FakeDriver):
        async def read(self) -> list[Sample]:
            samples = await super().read()
            if self.reads == 3:
                stop.set()
            return samples

    fast = StopAfterThree(clock, 0.0)
    poller = Poller("dev", fast, 0.001, hub, clock)
    await asyncio.wait_for(poller.run(stop), timeout=10)
    assert fast.reads == 3 and hub.journal.last_seq == 3


async def test_stop_cuts_a_long_wait_short() -> None:
    """A poller sleeping towards a slot an hour away returns as soon as stop is set."""
    driver = FakeDriver(FakeClock(), 0.0)
    hub = Hub(TagStore([("dev", driver.tags)]), Journal(100))
    poller = Poller("dev", driver, 3600.0, hub)
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop))
    await poller.scanned.wait()
    stop.set()
    await asyncio.wait_for(task, timeout=10)
    assert driver.reads == 1


async def test_scans_without_a_good_value_are_counted_as_failed() -> None:
    """Health reports per device how many scans found it unreachable (every tag BAD)."""
    poller, _clock, _ = make(0.0)
    await poller.scan_once()  # one good, one bad: not a failed scan
    assert poller.stats.failed == 0

    async def unreachable() -> list[Sample]:
        return [Sample.bad("a", "u", "timeout", 5), Sample.bad("b", "u", "timeout", 5)]

    poller._driver.read = unreachable  # type: ignore[method-assign]
    await poller.scan_once()
    assert (poller.stats.scans, poller.stats.failed) == (2, 1)


def test_first_slot_after_the_immediate_scan_is_on_the_phase_grid() -> None:
    """With phase 0.25 s at 1 Hz, slots are k + 0.25; the first is at least half a period on."""
    clock = FakeClock()
    driver = FakeDriver(clock, 0.0)
    hub = Hub(TagStore([("dev", driver.tags)]), Journal(100))
    poller = Poller("dev", driver, 1.0, hub, clock, phase_s=0.25)
    clock.now = 100.1
    assert poller._on_grid(100.1) == 101.25  # 100.25 is only 0.15 s away
    clock.now = 100.7
    assert poller._on_grid(100.7) == 101.25
    assert poller.stats.skipped == 0


def test_devices_sharing_a_period_spread_over_it_in_slots() -> None:
    """45 devices at 1 s: three slots (0, 1/3, 2/3 s) round-robin; another period its own."""

    class Dev:
        def __init__(self, id: str, poll_period_s: float) -> None:
            self.id, self.poll_period_s = id, poll_period_s

    devices = [Dev(f"d{k}", 1.0) for k in range(45)] + [Dev("slow", 10.0)]
    phases = [scan_phase_s(d.id, devices) for d in devices]
    assert phases[:4] == [0.0, 1 / 3, 2 / 3, 0.0]
    assert sorted(phases[:45]).count(1 / 3) == 15 and phases[45] == 0.0
    assert [scan_phase_s(d.id, devices[:20]) for d in devices[:20]] == [0.0] * 20


async def test_a_driver_that_raises_reads_bad_and_the_poller_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bug in one driver must not end the daemon (and every other device's monitoring)."""
    poller, _clock, hub = make(0.0)
    driver = poller._driver
    good_read = driver.read

    async def broken() -> list[Sample]:
        raise struct.error("unpack requires a buffer of 4 bytes")

    driver.read = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="controller.poller"):
        first = await poller.scan_once()
        await poller.scan_once()
    assert [s.quality for s in first.samples] == [Quality.BAD, Quality.BAD]
    assert first.samples[0].reason == "driver error: error: unpack requires a buffer of 4 bytes"
    assert len(caplog.records) == 1  # the traceback once, not every scan
    assert (poller.stats.scans, poller.stats.failed) == (2, 2)
    driver.read = good_read  # type: ignore[method-assign]
    again = await poller.scan_once()
    assert again.samples[0].quality is Quality.GOOD
    assert hub.journal.last_seq == 3
