"""Run the simulator of every configured device that has a `[devices.simulator]` table.

One task steps every model by `time_scale` × the wall time elapsed since start (measured
with `time.monotonic()`), in whole steps of `step_s`, so a run at any speed follows the same
trajectory as the unit tests, only sampled at other moments; then it publishes the values
and applies the wall-clock fault schedule. Used by `cellfab simulate`, `cellfab demo` and
the integration tests.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from drivers.modbus_tcp import ModbusTcpConfig
from simulators.modbus_server import IncubatorSimulator

log = logging.getLogger(__name__)

TICK_MIN_S = 0.05  # publishing faster than 20 Hz only burns CPU
TICK_MAX_S = 0.5  # fault windows and the door still resolve to half a second


@dataclass(frozen=True)
class Simulation:
    """The running simulators by device id, and the task that drives their physics."""

    sims: Mapping[str, IncubatorSimulator]
    task: asyncio.Task[None]

    async def wait_ready(self) -> None:
        """Return once every simulator accepts connections (at once, unless disconnected)."""
        await asyncio.gather(*(sim.wait_listening() for sim in self.sims.values()))

    async def wait(self) -> None:
        """Wait on the physics task: it ends only by cancellation or a bug, which it raises."""
        await self.task


def steps_due(elapsed_wall_s: float, time_scale: float, step_s: float) -> int:
    """Whole model steps that fit into the simulated time since start."""
    return math.floor(elapsed_wall_s * time_scale / step_s + 1e-9)


def tick_s(sims: Iterable[IncubatorSimulator]) -> float:
    """Wall seconds between physics ticks: one step of the fastest model, within bounds."""
    periods = [sim.model.cfg.step_s / sim.model.cfg.time_scale for sim in sims]
    return min(TICK_MAX_S, max(TICK_MIN_S, min(periods, default=TICK_MAX_S)))


@asynccontextmanager
async def serve_devices(devices: Iterable[ModbusTcpConfig]) -> AsyncIterator[Simulation]:
    """Serve every device with a simulator at its host/port until the block exits.

    On entry all servers listen (readiness is this function returning); on exit the physics
    task and every server are stopped and awaited. A bug in the physics task is raised on
    exit and by `Simulation.wait()`.
    """
    sims = {
        dev.id: IncubatorSimulator(dev.registers, dev.simulator, dev.host, dev.port)
        for dev in devices
        if dev.simulator is not None
    }
    async with AsyncExitStack() as stack:
        for sim in sims.values():
            await stack.enter_async_context(sim)
        task = asyncio.create_task(drive(sims.values()), name="simulator-physics")
        try:
            yield Simulation(sims, task)
        finally:
            task.cancel()
            await asyncio.wait([task])  # a cancellation of our own caller still propagates
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error


async def drive(sims: Iterable[IncubatorSimulator]) -> None:
    """Step, publish and apply faults for every simulator, forever (cancel to stop)."""
    sims = tuple(sims)
    period = tick_s(sims)
    t0 = time.monotonic()
    while True:
        elapsed = time.monotonic() - t0
        for sim in sims:
            cfg = sim.model.cfg
            sim.model.run(steps_due(elapsed, cfg.time_scale, cfg.step_s) - sim.model.steps)
            await sim.update(elapsed)
        await asyncio.sleep(period)  # a period timer, not synchronisation


async def serve_until(devices: Iterable[ModbusTcpConfig], stop: asyncio.Event) -> None:
    """Serve every simulated device until `stop` is set (`cellfab simulate`)."""
    async with serve_devices(devices) as simulation:
        if not simulation.sims:
            raise ValueError("no device has a [devices.simulator] table")
        for dev_id, sim in simulation.sims.items():
            host, port = sim.endpoint
            log.info("simulating %s at %s:%d", dev_id, host, port)
        stopped = asyncio.create_task(stop.wait(), name="simulator-stop")
        try:
            await asyncio.wait([stopped, simulation.task], return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when we are cancelled: leave no task behind
            stopped.cancel()
            await asyncio.wait([stopped])


async def run_forever(devices: Iterable[ModbusTcpConfig]) -> None:
    """Serve every simulated device until cancelled."""
    await serve_until(devices, asyncio.Event())
