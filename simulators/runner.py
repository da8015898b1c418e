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
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from drivers.cell_counter import CellCounterConfig
from drivers.modbus_rtu import ModbusRtuConfig
from drivers.modbus_tcp import ModbusTcpConfig
from drivers.opcua_config import OpcUaConfig
from drivers.particle_counter import ParticleCounterConfig
from drivers.registry import AnyDeviceConfig
from drivers.rtubus import RtuBusConfig
from simulators.base import Simulator
from simulators.cell_counter import CellCounterSimulator
from simulators.modbus_server import IncubatorSimulator
from simulators.particle_server import ParticleCounterSimulator
from simulators.rtu_server import bus_simulators

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Simulation:
    """The running simulators by device id, and the task that drives their physics."""

    sims: Mapping[str, Simulator]
    task: asyncio.Task[None]

    async def wait_ready(self) -> None:
        """Return once every simulator accepts connections (at once, unless disconnected)."""
        await asyncio.gather(*(sim.wait_listening() for sim in self.sims.values()))

    async def wait(self) -> None:
        """Wait on the physics task: it ends only by cancellation or a bug, which it raises."""
        await self.task


def make_simulator(dev: AnyDeviceConfig) -> Simulator:
    """The simulator for one device, by its `[devices.simulator]` model (explicit table)."""
    if dev.simulator is None:
        raise ValueError(f"device {dev.id} has no simulator")
    return SIMULATORS[dev.simulator.model](dev)


def _incubator(dev: AnyDeviceConfig) -> Simulator:
    if not isinstance(dev, ModbusTcpConfig) or dev.simulator is None:
        raise TypeError(f"device {dev.id}: co2_incubator simulates Modbus TCP devices only")
    return IncubatorSimulator(dev.registers, dev.simulator, dev.host, dev.port)


def _particle_counter(dev: AnyDeviceConfig) -> Simulator:
    if not isinstance(dev, ParticleCounterConfig):
        raise TypeError(f"device {dev.id}: lighthouse_remote simulates lighthouse_remote only")
    return ParticleCounterSimulator(dev)


def _cell_counter(dev: AnyDeviceConfig) -> Simulator:
    if not isinstance(dev, CellCounterConfig):
        raise TypeError(f"device {dev.id}: cell_counter simulates cell_counter_serial only")
    return CellCounterSimulator.from_device(dev)


def _bioreactor(dev: AnyDeviceConfig) -> Simulator:
    if not isinstance(dev, OpcUaConfig):
        raise TypeError(f"device {dev.id}: bioreactor simulates opcua devices only")
    from simulators.bioreactor_server import BioreactorSimulator  # noqa: PLC0415 - asyncua

    return BioreactorSimulator.from_device(dev)


SIMULATORS: dict[str, Callable[[AnyDeviceConfig], Simulator]] = {
    "bioreactor": _bioreactor,
    "co2_incubator": _incubator,
    "lighthouse_remote": _particle_counter,
    "cell_counter": _cell_counter,
}


@asynccontextmanager
async def serve_devices(
    devices: Iterable[AnyDeviceConfig], buses: Sequence[RtuBusConfig] = ()
) -> AsyncIterator[Simulation]:
    """Serve every device with a simulator at its endpoint until the block exits.

    RS-485 slaves are served by one simulator per bus (keyed by the bus id), the others one
    per device. On entry all servers listen (readiness is this function returning); on exit
    the physics task and every server are stopped and awaited. A bug in the physics task is
    raised on exit and by `Simulation.wait()`.
    """
    devices = tuple(devices)
    sims: dict[str, Simulator] = {
        dev.id: make_simulator(dev)
        for dev in devices
        if dev.simulator is not None and not isinstance(dev, ModbusRtuConfig)
    }
    sims.update({sim.bus_id: sim for sim in bus_simulators(buses, devices)})
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


async def drive(sims: Iterable[Simulator]) -> None:
    """Advance every simulator on its own tick, forever (cancel to stop)."""
    sims = tuple(sims)
    period = min((sim.tick_s for sim in sims), default=0.5)
    t0 = time.monotonic()
    while True:
        elapsed = time.monotonic() - t0
        for sim in sims:
            await sim.advance(elapsed)
        await asyncio.sleep(period)  # a period timer, not synchronisation


async def serve_until(
    devices: Iterable[AnyDeviceConfig], stop: asyncio.Event, buses: Sequence[RtuBusConfig] = ()
) -> None:
    """Serve every simulated device until `stop` is set (`cellfab simulate`)."""
    async with serve_devices(devices, buses) as simulation:
        if not simulation.sims:
            raise ValueError("no device has a [devices.simulator] table")
        for dev_id, sim in simulation.sims.items():
            log.info("simulating %s at %s", dev_id, sim.where)
        stopped = asyncio.create_task(stop.wait(), name="simulator-stop")
        try:
            await asyncio.wait([stopped, simulation.task], return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when we are cancelled: leave no task behind
            stopped.cancel()
            await asyncio.wait([stopped])


async def run_forever(devices: Iterable[AnyDeviceConfig]) -> None:
    """Serve every simulated device until cancelled."""
    await serve_until(devices, asyncio.Event())
