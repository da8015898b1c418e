"""The cell counter driver against our simulated counter over a real pty.

The simulator creates a pty and links its client end at a path in tmp_path, as
`cellfab simulate` does; the driver opens that path with pyserial like a USB adapter.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from drivers.base import Record, RecordDriver
from drivers.cell_counter import CellCounterConfig, CellCounterDriver
from drivers.sample import Quality, Sample
from simulators.cell_counter import CellCounterSimulator, LineFaultKind
from simulators.runner import drive
from tests.servers import async_wait_until

pytestmark = pytest.mark.integration
TIMEOUT_S = 10.0


def config(port: Path, **sim: Any) -> CellCounterConfig:
    """A counter measuring every simulated second at 20x: a record every 50 ms of wall time."""
    return CellCounterConfig.model_validate(
        {
            "id": "cc-1",
            "device_class": "cell_counter",
            "area": "qc-lab",
            "driver": "cell_counter_serial",
            "port": str(port),
            "record_timeout_s": 0.3,
            "stale_after_s": 1.0,
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.2,
            "simulator": {"seed": 7, "time_scale": 20.0, "period_s": 1.0} | sim,
        }
    )


@contextlib.asynccontextmanager
async def simulated(cfg: CellCounterConfig) -> AsyncIterator[CellCounterSimulator]:
    """The simulator, driven in real time by the runner's own loop."""
    async with CellCounterSimulator.from_device(cfg) as sim:
        await sim.wait_listening()
        task = asyncio.create_task(drive([sim]), name="test-sim")
        try:
            yield sim
        finally:
            task.cancel()
            await asyncio.wait([task])


async def read_until(
    driver: CellCounterDriver, ok: Callable[[dict[str, Sample]], bool]
) -> dict[str, Sample]:
    """Read at a scan cadence until `ok(samples)` holds, with a deadline."""
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            samples = {s.tag: s for s in await driver.read()}
            assert len(samples) == len(driver.tags)
            if ok(samples):
                return samples
            await asyncio.sleep(0.02)  # scan cadence


def all_good(samples: dict[str, Sample]) -> bool:
    return all(s.quality is Quality.GOOD for s in samples.values())


def reason_is(expected: str) -> Callable[[dict[str, Sample]], bool]:
    def check(samples: dict[str, Sample]) -> bool:
        return all(s.quality is Quality.BAD and s.reason == expected for s in samples.values())

    return check


def assert_subsequence(drained: list[Record], sim: CellCounterSimulator) -> None:
    """Every drained record is one the simulator sent intact, in order, none twice."""
    sent = {rec.t_ns: rec for rec in sim.sent}
    times = [r.t_ns for r in drained]
    assert times == sorted(set(times)), "duplicate or out-of-order records"
    for record in drained:
        original = sent[record.t_ns]
        values = {s.tag: s.value for s in record.samples}
        assert values["viability"] == original.viability_pct
        assert values["total_cells"] == original.total_per_mL


async def test_records_arrive_exactly_once_with_instrument_time(tmp_path: Path) -> None:
    """Every record sent arrives once, in order, stamped with the instrument's own time."""
    cfg = config(tmp_path / "cc0")
    async with simulated(cfg) as sim, CellCounterDriver(cfg) as driver:
        assert isinstance(driver, RecordDriver)
        drained: list[Record] = []

        def collect() -> bool:
            drained.extend(driver.drain_records())
            return len(drained) >= 10

        await async_wait_until(collect, TIMEOUT_S, "10 records")
        # pyserial flushes the input on open: what was sent before that is not expected
        first = [c.t_ns for c in sim.sent].index(drained[0].t_ns)
        expected = sim.sent[first : first + len(drained)]
        assert [r.t_ns for r in drained] == [c.t_ns for c in expected]
        assert [r.t_ns - drained[0].t_ns for r in drained[:3]] == [0, 1_000_000_000, 2 * 10**9]
        for record, sent in zip(drained, expected, strict=True):
            by_tag = {s.tag: s for s in record.samples}
            assert by_tag["viable_cells"].value == sent.viable_per_mL
            assert by_tag["mean_diameter"].value == sent.diameter_um
            assert {s.t_device_ns for s in record.samples} == {sent.t_ns}
            assert not record.backfill
        await async_wait_until(collect, TIMEOUT_S, "more records")
        assert [r.t_ns for r in drained] == [c.t_ns for c in sim.sent[first:][: len(drained)]]
        live = await read_until(driver, all_good)
        assert live["viability"].unit == "%"
        assert 50.0 <= (live["viability"].value or 0.0) <= 100.0
        assert sum(driver.rejected.values()) == 0


REJECTIONS: list[tuple[LineFaultKind, str]] = [
    ("garbage", "garbage"),
    ("bad_checksum", "checksum"),
    ("out_of_range", "range"),
    ("truncated", "truncated"),
]


@pytest.mark.parametrize(("kind", "reason"), REJECTIONS)
async def test_rejected_lines_then_recovery(
    tmp_path: Path, kind: LineFaultKind, reason: str
) -> None:
    """A corrupted line is counted under its reason, read() says so, the next good one heals."""
    cfg = config(tmp_path / "cc0")
    async with simulated(cfg) as sim, CellCounterDriver(cfg) as driver:
        await read_until(driver, all_good)
        await sim.inject(kind, True)
        await read_until(driver, reason_is(f"record rejected: {reason}"))
        assert driver.rejected[reason] >= 1
        await sim.inject(kind, False)
        accepted = driver.accepted
        await read_until(driver, lambda s: all_good(s) and driver.accepted > accepted)
        others = {r: n for r, n in driver.rejected.items() if r != reason}
        assert sum(others.values()) == 0, others
        assert_subsequence(driver.drain_records(), sim)


async def test_silence_goes_bad_then_recovers(tmp_path: Path) -> None:
    """No line for longer than stale_after_s: BAD 'no data for N s'; GOOD once lines return."""
    cfg = config(tmp_path / "cc0")
    async with simulated(cfg) as sim, CellCounterDriver(cfg) as driver:
        await read_until(driver, all_good)
        await sim.inject("silent", True)
        silent = await read_until(
            driver, lambda s: all((x.reason or "").startswith("no data for") for x in s.values())
        )
        assert all(x.value is None for x in silent.values())
        await sim.inject("silent", False)
        await read_until(driver, all_good)
        assert sum(driver.rejected.values()) == 0


async def test_pty_disappears_and_reappears(tmp_path: Path) -> None:
    """A hang-up gives BAD 'port closed'; the driver reopens the new pty at the same path."""
    cfg = config(tmp_path / "cc0")
    async with simulated(cfg) as sim, CellCounterDriver(cfg) as driver:
        await read_until(driver, all_good)
        before = len(sim.sent)
        await sim.inject("disconnect", True)
        down = await read_until(driver, lambda s: not all_good(s))
        assert {x.reason for x in down.values()} <= {
            "port closed (hang-up)",
            f"port error: cannot open {cfg.port}: No such file or directory",
        }
        await sim.inject("disconnect", False)
        await read_until(driver, lambda s: all_good(s) and len(sim.sent) > before + 2)
        assert driver.opens >= 2
        assert_subsequence(driver.drain_records(), sim)


async def test_scheduled_faults_from_config(tmp_path: Path) -> None:
    """The wall-clock schedule in the config (FaultSpec and line faults) reaches the driver."""
    cfg = config(
        tmp_path / "cc0",
        faults=[{"kind": "disconnect", "start_s": 0.5, "duration_s": 0.5}],
        line_faults=[{"kind": "bad_checksum", "start_s": 1.5, "duration_s": 0.3}],
    )
    async with simulated(cfg) as sim, CellCounterDriver(cfg) as driver:
        await async_wait_until(lambda: driver.rejected["checksum"] > 0, TIMEOUT_S, "bad CRC")
        await read_until(driver, lambda s: all_good(s) and driver.opens >= 2)
        assert_subsequence(driver.drain_records(), sim)


async def test_port_appears_later_and_is_exclusive(tmp_path: Path) -> None:
    """Before the port exists the driver reads BAD; a second driver cannot share the port."""
    cfg = config(tmp_path / "cc0")
    async with CellCounterDriver(cfg) as driver:
        missing = await read_until(driver, lambda s: "cannot open" in (s["viability"].reason or ""))
        assert {x.quality for x in missing.values()} == {Quality.BAD}
        assert {x.reason for x in missing.values()} == {
            f"port error: cannot open {cfg.port}: No such file or directory"
        }
        async with simulated(cfg):
            await read_until(driver, all_good)
            async with CellCounterDriver(cfg) as second:
                locked = await read_until(
                    second,
                    lambda s: (s["viability"].reason or "").endswith("locked by another process"),
                )
                assert locked["viability"].quality is Quality.BAD
                assert second.accepted == 0
            accepted = driver.accepted
            await async_wait_until(lambda: driver.accepted > accepted, TIMEOUT_S, "more records")
