"""Lighthouse REMOTE driver against the simulated counter over a real socket; mbpoll interop.

Most tests step the simulator's clock themselves (`sim.advance`), one sample at a time, so
which records exist when is decided by the test, not by the scheduler; one test lets the
runner's physics task drive it in scaled real time.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from drivers import lighthouse as lh
from drivers.base import Record, RecordDriver
from drivers.particle_counter import ParticleCounterConfig, ParticleCounterDriver
from drivers.sample import Quality, Sample
from simulators.particle_server import ParticleCounterSimulator
from simulators.runner import drive
from tests.servers import require_binary

pytestmark = pytest.mark.integration

T0 = 1_700_000_000  # the simulated counter's clock at start, Unix s
TIMEOUT_S = 0.2


@asynccontextmanager
async def counter(
    sim: dict[str, Any] | None = None, **dev: Any
) -> AsyncIterator[tuple[ParticleCounterSimulator, ParticleCounterConfig]]:
    """A simulated counter on an OS-assigned port and a driver config pointing at it."""
    cfg = ParticleCounterConfig.model_validate(
        {
            "id": "pc1",
            "device_class": "particle_counter",
            "area": "grade-b",
            "driver": "lighthouse_remote",
            "host": "127.0.0.1",
            "timeout_s": TIMEOUT_S,
            "reconnect_min_s": 0.02,
            "reconnect_max_s": 0.1,
            "simulator": {"grade": "B", "seed": 5, "clock_start_unix": T0, **(sim or {})},
            **dev,
        }
    )
    async with ParticleCounterSimulator(cfg, port=0) as simulator:
        await simulator.advance(0.0)
        yield simulator, cfg.model_copy(update={"port": simulator.endpoint[1]})


class Poller:
    """Reads the driver like the daemon does and keeps every record it hands over."""

    def __init__(self, driver: ParticleCounterDriver) -> None:
        self.driver = driver
        self.records: list[Record] = []

    async def until(
        self, ok: Callable[[dict[str, Sample]], bool], timeout_s: float = 10.0
    ) -> dict[str, Sample]:
        """Scan until `ok(samples_by_tag)` holds; reconnects need a few scans."""
        async with asyncio.timeout(timeout_s):
            while True:
                samples = {s.tag: s for s in await self.driver.read()}
                self.records += self.driver.drain_records()
                if ok(samples):
                    return samples
                await asyncio.sleep(0.02)  # scan cadence of the loop under test

    async def started(self) -> None:
        """Scan until the driver has run the sampling flow (the counter is RUNNING)."""
        await self.until(lambda s: s["device_status"].value is not None and s["flow"].value == 1.0)

    async def until_records(self, n: int, timeout_s: float = 10.0) -> list[Record]:
        """Scan until `n` records in all have been handed over."""
        await self.until(lambda _: len(self.records) >= n, timeout_s)
        return self.records


def good(samples: dict[str, Sample]) -> bool:
    return all(s.quality is Quality.GOOD for s in samples.values())


def expected(record: lh.RawRecord, channel: int, flow_cfm: float = 1.0) -> float:
    return lh.per_m3(record.counts[channel], flow_cfm, record.sample_time_s)


async def test_sampling_flow_starts_counter_and_records_carry_device_time() -> None:
    """Connect writes 30 s sample + save + start; each record has the device's timestamp."""
    async with counter(sample_time_s=30) as (sim, cfg), ParticleCounterDriver(cfg) as driver:
        assert isinstance(driver, RecordDriver)
        poller = Poller(driver)
        first = await poller.until(lambda s: s["flow"].quality is Quality.GOOD)
        assert sim.model.running and sim.model.sample_s == 30
        assert first["conc_0_5um"].reason == "no record yet (first sample in progress)"
        for n in range(1, 4):
            await sim.advance(30.0 * n)
            await poller.until_records(n)
        held = list(sim.model.buffer)
        assert [r.t_ns for r in poller.records] == [(T0 + 30 * n) * 10**9 for n in (1, 2, 3)]
        assert [r.t_ns // 10**9 for r in poller.records] == [r.timestamp_s for r in held]
        for record, raw in zip(poller.records, held, strict=True):
            assert not record.backfill
            by_tag = {s.tag: s for s in record.samples}
            assert by_tag["conc_0_5um"].value == pytest.approx(expected(raw, 1))
            assert by_tag["conc_5_0um"].value == pytest.approx(expected(raw, 4))
            assert by_tag["conc_0_5um"].t_device_ns == record.t_ns
            assert by_tag["conc_0_5um"].quality is Quality.GOOD
        live = await poller.until(good)
        assert live["conc_0_5um"].t_device_ns == poller.records[-1].t_ns
        assert live["flow"].value == 1.0


async def test_counter_runs_in_scaled_real_time() -> None:
    """Driven by the runner at time_scale 600, 60 s samples arrive ten a second, none missed."""
    async with counter({"time_scale": 600.0}) as (sim, cfg), ParticleCounterDriver(cfg) as drv:
        physics = asyncio.create_task(drive([sim]))
        try:
            records = await Poller(drv).until_records(3)
        finally:
            physics.cancel()
            await asyncio.wait([physics])
        times = [r.t_ns // 10**9 for r in records]
        assert all(b - a == 60 for a, b in itertools.pairwise(times))  # no gap, no repeat
        assert set(times) <= {r.timestamp_s for r in sim.model.buffer}


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("no_response", f"timeout: no reply within {TIMEOUT_S:g} s"),
        ("exception", "modbus exception 6 (server device busy)"),
        ("disconnect", None),
    ],
)
async def test_communication_faults_are_bad_then_recover(kind: str, reason: str | None) -> None:
    """Every tag is BAD with the fault's reason, then GOOD again without a restart."""
    async with counter() as (sim, cfg), ParticleCounterDriver(cfg) as driver:
        poller = Poller(driver)
        await poller.started()
        await sim.advance(60.0)
        await poller.until(good)
        await sim.inject(kind, True)
        try:
            down = await poller.until(lambda s: s["flow"].quality is Quality.BAD)
        finally:
            await sim.inject(kind, False)
        reasons = {s.reason for s in down.values()}
        assert all(s.value is None for s in down.values())
        if reason is None:
            (why,) = reasons
            assert why is not None and why.startswith(("disconnected", "timeout")), why
        else:
            assert reasons == {reason}
        await sim.advance(120.0)
        back = await poller.until(lambda s: good(s) and len(poller.records) == 2)
        assert back["conc_0_5um"].t_device_ns == (T0 + 120) * 10**9


@pytest.mark.parametrize(
    ("kind", "quality", "reason"),
    [
        ("flow_alert", Quality.UNCERTAIN, "flow alert"),
        ("laser_alert", Quality.UNCERTAIN, "laser alert"),
        ("overflow", Quality.UNCERTAIN, "particle overflow (count is a lower bound)"),
        ("malfunction", Quality.BAD, "instrument malfunction (service)"),
    ],
)
async def test_data_status_bits_downgrade_the_record(
    kind: str, quality: Quality, reason: str
) -> None:
    """A record taken while the instrument flags a condition carries it as quality + reason."""
    async with counter() as (sim, cfg), ParticleCounterDriver(cfg) as driver:
        poller = Poller(driver)
        await poller.started()
        await sim.advance(60.0)
        await poller.until_records(1)
        await sim.inject(kind, True)
        await sim.advance(120.0)
        (_, flagged) = await poller.until_records(2)
        await sim.inject(kind, False)
        await sim.advance(180.0)
        (*_, clean) = await poller.until_records(3)
    conc = {s.tag: s for s in flagged.samples}["conc_0_5um"]
    assert (conc.quality, conc.reason) == (quality, reason)
    assert (conc.value is None) == (quality is Quality.BAD)
    assert {s.tag: s for s in flagged.samples}["data_status"].value == sim.model.buffer[
        1
    ].data_status
    assert {s.tag: s for s in clean.samples}["conc_0_5um"].quality is Quality.GOOD


async def test_outage_is_backfilled_exactly_once_in_order() -> None:
    """Records taken while the link was down come back once each, flagged, then live ones."""
    async with counter() as (sim, cfg), ParticleCounterDriver(cfg) as driver:
        poller = Poller(driver)
        await poller.started()
        for n in (1, 2):
            await sim.advance(60.0 * n)
            await poller.until_records(n)
        await sim.inject("disconnect", True)
        await poller.until(lambda s: s["flow"].quality is Quality.BAD)
        for n in range(3, 9):  # the counter keeps sampling into its buffer: 6 records
            await sim.advance(60.0 * n)
        await sim.inject("disconnect", False)
        await poller.until_records(8)
        await sim.advance(60.0 * 9)
        records = await poller.until_records(9)
        await sim.advance(60.0 * 10)
        records = await poller.until_records(10)
        await poller.until(good)  # a few more scans: nothing new may appear
        held = list(sim.model.buffer)
    assert [r.t_ns // 10**9 for r in records] == [r.timestamp_s for r in held]
    assert [r.backfill for r in records] == [False] * 2 + [True] * 6 + [False] * 2
    for record, raw in zip(records, held, strict=True):
        by_tag = {s.tag: s for s in record.samples}
        assert by_tag["conc_0_5um"].value == pytest.approx(expected(raw, 1))
        assert by_tag["conc_0_5um"].t_device_ns == raw.timestamp_s * 10**9


async def test_wrapped_buffer_logs_the_lost_span(caplog: pytest.LogCaptureFixture) -> None:
    """With 3 records of buffer and 6 taken offline, 3 come back and 3 are logged as lost."""
    async with counter({"buffer_records": 3}) as (sim, cfg), ParticleCounterDriver(cfg) as driver:
        poller = Poller(driver)
        await poller.started()
        await sim.advance(60.0)
        await poller.until_records(1)
        await sim.inject("disconnect", True)
        await poller.until(lambda s: s["flow"].quality is Quality.BAD)
        for n in range(2, 8):
            await sim.advance(60.0 * n)
        await sim.inject("disconnect", False)
        with caplog.at_level(logging.ERROR, logger="drivers.particle_counter"):
            records = await poller.until_records(4)
        held = [r.timestamp_s for r in sim.model.buffer]
    assert [r.t_ns // 10**9 for r in records[1:]] == held == [T0 + 300, T0 + 360, T0 + 420]
    assert all(r.backfill for r in records[1:])
    errors = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR and r.name == "drivers.particle_counter"
    ]
    lost = f"about 3 records lost between {T0 + 60} and {T0 + 300} (Unix s)"
    assert errors == [f"device pc1: buffer overrun, {lost}"]


async def test_stopped_counter_is_started_again() -> None:
    """A counter stopped at its panel reads BAD 'not running', then the flow restarts it."""
    async with counter() as (sim, cfg), ParticleCounterDriver(cfg) as driver:
        poller = Poller(driver)
        await poller.until(lambda s: s["flow"].quality is Quality.GOOD)
        sim.model.stop()
        stopped = await poller.until(lambda s: s["conc_0_5um"].quality is Quality.BAD)
        assert stopped["conc_0_5um"].reason == "counter not running (status 0)"
        await poller.until(lambda _: sim.model.running)


# --- Debian's mbpoll (libmodbus) against the simulator ----------------------------------


async def mbpoll(port: int, *args: str) -> str:
    """Run mbpoll once against 127.0.0.1:port without blocking the simulator's event loop."""
    proc = await asyncio.create_subprocess_exec(
        require_binary("mbpoll"),
        *("-m", "tcp", "-p", str(port), "-0", "-1", "-o", "2"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    return out.decode()


def values(output: str) -> dict[int, int]:
    """mbpoll's `[ref]: value` lines."""
    return {int(m[1]): int(m[2]) for m in re.finditer(r"^\[(\d+)\]:\s+(-?\d+)", output, re.M)}


async def test_mbpoll_reads_map_version_status_and_a_record() -> None:
    """libmodbus sees what docs/devices/particle-counter.md says: 148, status, a record."""
    async with counter() as (sim, _):
        sim.model.start()
        await sim.advance(180.0)  # three records
        port = sim.endpoint[1]
        head = values(await mbpoll(port, "-t", "4", "-r", "0", "-c", "4", "127.0.0.1"))
        assert head == {0: 148, 1: 0, 2: 7, 3: 210}  # RUNNING | SAMPLING | NEW DATA
        out = await mbpoll(port, "-t", "4", "-r", "24", "127.0.0.1", "1")
        assert "Written 1 references" in out, out
        out = await mbpoll(port, "-t", "3:int", "-B", "-r", "0", "-c", "8", "127.0.0.1")
        record = values(out)
        raw = sim.model.buffer[1]
        assert record[0] == raw.timestamp_s == T0 + 120
        assert record[2] == 60
        assert [record[8 + 2 * i] for i in range(4)] == list(raw.counts[:4])
        assert values(await mbpoll(port, "-t", "4", "-r", "2", "127.0.0.1"))[2] == 3  # read
        out = await mbpoll(port, "-t", "4", "-r", "24", "127.0.0.1", "7")
        assert "Illegal data value" in out  # only 3 records held


async def test_clock_set_on_connect_does_not_hide_new_records() -> None:
    """A counter whose clock ran ahead gets UTC on connect; its next record is delivered."""
    ahead = 2_000_000_000  # 2033: records already in the buffer are stamped in the future
    async with (
        counter({"clock_start_unix": ahead}, set_clock=True) as (sim, cfg),
        ParticleCounterDriver(cfg) as driver,
    ):
        sim.model.start()
        await sim.advance(120.0)  # two future-stamped records before the driver connects
        before_s = time.time()
        poller = Poller(driver)
        await poller.started()
        after_s = time.time()
        assert int(before_s) <= sim.model.rtc_s <= int(after_s) + 1
        await sim.advance(180.0)
        (record,) = await poller.until_records(1)
    assert record.t_ns // 10**9 == sim.model.buffer[-1].timestamp_s < ahead
    assert not record.backfill
