"""Reload and shutdown together: control is always handed back, nothing starts after the end.

The real Daemon runs on in-memory drivers (a unit test: the wire is covered by the
integration tests). Each case holds a driver's read on a gate, so the moment that matters
(a reload waiting for a scan, a stop before a first scan) is reached by events, not sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from controller import app
from controller.configload import load_site
from controller.daemon_parts import ConfigSource
from controller.loops_check import device_tags
from drivers.sample import Sample, utc_now_ns

SITE = """
[site]
id = "t"
[state]
dir = "{state}"
[[devices]]
id = "br-1"
device_class = "bioreactor"
area = "a"
driver = "opcua"
url = "opc.tcp://127.0.0.1:1/x/"
profile = "xuri-like-bioreactor"
mode = "poll"
poll_period_s = {period}
timeout_s = 2.0
[[loop_groups]]
id = "br-1"
period_s = 0.05
stale_after_s = 5.0
[[loops]]
id = "br-1.temp"
group = "br-1"
pv = "br-1.temperature"
output = "br-1.heater_output"
{takeover}
sp_min = 30.0
sp_max = 39.0
setpoint = 37.0
kp = 12.0
ki_per_s = 0.8
out_min = 0.0
out_max = 100.0
safe_after_s = 1.0
safe_output = 5.0
"""
TAKEOVER = 'takeover = { tag = "br-1.temperature_auto", remote = 0.0, local = 1.0 }'


class Plant:
    """The fake drivers' shared world: every write, and a gate a read can be held on."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, float]] = []
        self.hold: asyncio.Event | None = None  # set: reads wait for it to be set
        self.hold_new: asyncio.Event | None = None  # the next driver's first read waits
        self.held = asyncio.Event()  # a read is waiting on a gate

    def takeover_writes(self, tag: str = "temperature_auto") -> list[float]:
        return [v for t, v in self.writes if t == tag]


class FakeDriver:
    """A bioreactor that always reads 37.0 and records what is written to it."""

    plant: Plant

    def __init__(self, cfg: Any, buses: Any = None) -> None:
        self.tags = tuple(_Tag(t, m.unit) for t, m in device_tags(cfg).items())
        self.first_gate, self.plant.hold_new = self.plant.hold_new, None

    async def __aenter__(self) -> FakeDriver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def read(self) -> list[Sample]:
        gate, self.first_gate = self.first_gate or self.plant.hold, None
        if gate is not None:
            self.plant.held.set()
            await gate.wait()
        now = utc_now_ns()
        return [Sample.good(t.tag, 37.0, t.unit, now) for t in self.tags]

    async def write(self, tag: str, value: float) -> None:
        self.plant.writes.append((tag, value))


class _Tag:
    def __init__(self, tag: str, unit: str) -> None:
        self.tag, self.unit = tag, unit


@pytest.fixture
def plant(monkeypatch: pytest.MonkeyPatch) -> Plant:
    world = Plant()
    monkeypatch.setattr(FakeDriver, "plant", world, raising=False)
    monkeypatch.setattr(app, "make_driver", FakeDriver)
    return world


def write_site(path: Path, period: float = 0.05, takeover: str = TAKEOVER) -> None:
    path.write_text(SITE.format(state=path.parent / "state", period=period, takeover=takeover))


class Running:
    """A daemon on `path`, started; `stop()` ends it and returns how `run` ended."""

    def __init__(self, path: Path) -> None:
        self.daemon = app.Daemon(load_site(path), {}, ConfigSource(str(path), "0" * 64))
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(self.daemon.run(self.stop_event))

    async def ticked(self, more: int = 1) -> None:
        """Until the loop group now running has ticked `more` times."""
        group = self.daemon.loop_groups[0]
        target = group.ticks + more
        async with asyncio.timeout(10):
            while group.ticks < target:
                await self.daemon.journal.changed()

    async def reload(self) -> str | None:
        done = self.daemon.reloaded
        self.daemon.request_reload()
        async with asyncio.timeout(10):
            await done.wait()
        return self.daemon.last_reload

    async def stop(self) -> None:
        self.stop_event.set()
        async with asyncio.timeout(20):
            await self.task


@pytest.fixture
async def started(tmp_path: Path, plant: Plant) -> AsyncIterator[Callable[[], Running]]:
    runs: list[Running] = []

    def start() -> Running:
        runs.append(Running(tmp_path / "site.toml"))
        return runs[-1]

    yield start
    for run in runs:
        if not run.task.done():
            await run.stop()


async def ticking(tmp_path: Path, started: Callable[[], Running]) -> Running:
    """A daemon on the default site file, ready, its loop group past a first tick."""
    write_site(tmp_path / "site.toml")
    run = started()
    await asyncio.wait_for(run.daemon.ready.wait(), 10)
    await run.ticked()
    return run


async def test_a_reload_that_moves_a_takeover_hands_the_old_one_back(
    tmp_path: Path, plant: Plant, started: Callable[[], Running]
) -> None:
    run = await ticking(tmp_path, started)
    assert plant.takeover_writes() == [0.0]  # taken over
    write_site(tmp_path / "site.toml", takeover=TAKEOVER.replace("temperature_auto", "ph_auto"))
    assert await run.reload() == "accepted: loops/command tags changed"
    await run.ticked()
    assert plant.takeover_writes() == [0.0, 1.0]  # the old tag is given back at the reload
    assert plant.takeover_writes("ph_auto") == [0.0]
    await run.stop()
    assert plant.takeover_writes("ph_auto") == [0.0, 1.0]


async def test_a_reload_that_drops_a_takeover_hands_it_back(
    tmp_path: Path, plant: Plant, started: Callable[[], Running]
) -> None:
    run = await ticking(tmp_path, started)
    write_site(tmp_path / "site.toml", takeover="")
    assert await run.reload() == "accepted: loops/command tags changed"
    await run.stop()
    assert plant.takeover_writes() == [0.0, 1.0]


async def test_a_stop_before_the_first_tick_after_a_reload_still_hands_control_back(
    tmp_path: Path, plant: Plant, started: Callable[[], Running]
) -> None:
    run = await ticking(tmp_path, started)
    write_site(tmp_path / "site.toml", period=0.1)  # br-1 changed: a new poller
    plant.hold_new = gate = asyncio.Event()  # ... whose first read does not return yet
    assert await run.reload() == "accepted: devices ~br-1"
    await asyncio.wait_for(plant.held.wait(), 10)
    run.stop_event.set()
    gate.set()
    await asyncio.wait_for(run.task, 20)
    assert plant.takeover_writes() == [0.0, 1.0]


async def test_a_stop_during_a_reload_waits_for_it_and_hands_control_back(
    tmp_path: Path, plant: Plant, started: Callable[[], Running], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = await ticking(tmp_path, started)
    plant.hold = gate = asyncio.Event()  # br-1's scan in progress does not end yet
    await asyncio.wait_for(plant.held.wait(), 10)
    write_site(tmp_path / "site.toml", period=0.1)
    waiting = asyncio.Event()
    stop_devices = run.daemon._stop_devices  # the moment under test

    async def reached(runs: list[Any]) -> None:
        waiting.set()
        await stop_devices(runs)

    monkeypatch.setattr(run.daemon, "_stop_devices", reached)
    done = run.daemon.reloaded
    run.daemon.request_reload()
    await asyncio.wait_for(waiting.wait(), 10)  # the reload waits for br-1's scan to end ...
    run.stop_event.set()  # ... and the stop arrives meanwhile
    plant.hold = None
    gate.set()
    await asyncio.wait_for(done.wait(), 10)
    await asyncio.wait_for(run.task, 20)  # no KeyError, no task started after the end
    assert plant.takeover_writes()[-1] == 1.0
