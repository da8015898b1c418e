"""The incubator simulator over a real socket, read with plain pymodbus (not our driver)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Literal, cast

import pytest
import pytest_asyncio
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu import ModbusPDU

from controller.configload import load_profile
from drivers import codec
from drivers.modbus_tcp import ModbusTcpConfig
from drivers.registermap import RegisterSpec
from simulators.config import FaultSpec, IncubatorSimConfig
from simulators.incubator import CO2_STATUS_NOT_READY
from simulators.modbus_server import IncubatorSimulator, free_port, registers_for
from simulators.runner import run_forever, serve_devices, serve_until

pytestmark = pytest.mark.integration

PROFILE = load_profile("co2-incubator", Path.cwd())
SPECS = {spec.tag: spec for spec in PROFILE.registers}
FLOAT32 = AsyncModbusTcpClient.DATATYPE.FLOAT32
DEADLINE_S = 10.0


async def eventually(check: Callable[[], bool | Awaitable[bool]]) -> None:
    """Poll `check` (plain or async) until it holds; fail at DEADLINE_S, never a fixed wait."""
    async with asyncio.timeout(DEADLINE_S):
        while True:
            result = check()
            if await result if inspect.isawaitable(result) else result:
                return
            await asyncio.sleep(0.01)  # poll period of a remote condition, not a wait for it


def floats(regs: Sequence[int], word_order: Literal["big", "little"] = "big") -> list[float]:
    """Float32 values as pymodbus itself decodes them (a scalar for one value: made a list)."""
    out = AsyncModbusTcpClient.convert_from_registers(list(regs), FLOAT32, word_order=word_order)
    return [float(v) for v in cast(list[float], out if isinstance(out, list) else [out])]


def new_client(endpoint: tuple[str, int]) -> AsyncModbusTcpClient:
    host, port = endpoint
    return AsyncModbusTcpClient(host, port=port, timeout=0.5, retries=0, reconnect_delay=0)


async def read(client: AsyncModbusTcpClient, spec: RegisterSpec) -> ModbusPDU:
    fn = client.read_input_registers if spec.function == 4 else client.read_holding_registers
    return await fn(spec.address, count=spec.words, device_id=spec.device_id)


async def write(client: AsyncModbusTcpClient, tag: str, value: float) -> ModbusPDU:
    spec = SPECS[tag]
    regs = codec.encode(spec, value)
    return await client.write_registers(spec.address, regs, device_id=spec.device_id)


@pytest_asyncio.fixture(loop_scope="session")
async def sim() -> AsyncIterator[IncubatorSimulator]:
    cfg = IncubatorSimConfig(probe_warmup_s=0.0)
    async with IncubatorSimulator(PROFILE.registers, cfg, "127.0.0.1", 0) as simulator:
        yield simulator


@pytest_asyncio.fixture(loop_scope="session")
async def client(sim: IncubatorSimulator) -> AsyncIterator[AsyncModbusTcpClient]:
    modbus = new_client(sim.endpoint)
    assert await modbus.connect()
    yield modbus
    modbus.close()


async def test_port_zero_reports_the_bound_port(sim: IncubatorSimulator) -> None:
    """Started on port 0, the simulator reports the port the OS gave it."""
    host, port = sim.endpoint
    assert (host, sim.listening) == ("127.0.0.1", True)
    assert port > 0


async def test_every_tag_reads_back_as_the_model_value(
    sim: IncubatorSimulator, client: AsyncModbusTcpClient
) -> None:
    """Each tag of the profile reads the registers of the model's value at its unit/FC/address."""
    state = sim.model.state
    for tag, spec in SPECS.items():
        reply = await read(client, spec)
        assert not reply.isError(), tag
        assert reply.registers == registers_for(spec, state[tag]), tag
        assert codec.decode(spec, reply.registers) == pytest.approx(state[tag], abs=spec.scale), tag


async def test_probe_floats_are_least_significant_word_first(
    sim: IncubatorSimulator, client: AsyncModbusTcpClient
) -> None:
    """pymodbus decodes the GMP251's ppm float only with word_order='little' (domain.md §3.5)."""
    reply = await client.read_holding_registers(0x0000, count=6, device_id=240)
    co2_ppm, comp, probe = floats(reply.registers, word_order="little")
    assert co2_ppm == pytest.approx(sim.model.state["co2"] * 10_000, rel=1e-6)
    assert comp == 37.0
    assert probe == pytest.approx(sim.model.state["probe_temp"], rel=1e-6)
    (wrong,) = floats(reply.registers[:2])
    assert wrong != pytest.approx(co2_ppm)


def test_golden_vector_encodes_like_the_probe() -> None:
    """465.66 ppm is sent as D47A 43E8, the GMP252 manual's example reply (domain.md §3.5)."""
    golden = [0xD47A, 0x43E8]
    (ppm,) = floats(golden, word_order="little")
    assert ppm == pytest.approx(465.66, abs=0.005)
    assert registers_for(SPECS["co2"], codec.decode(SPECS["co2"], golden)) == golden


@pytest.mark.parametrize(
    ("device_id", "function", "address", "count", "code"),
    [
        (240, 3, 0x0006, 2, 2),  # past the three probe floats
        (240, 3, 0x0800, 3, 2),  # status block is two registers
        (240, 3, 0x0100, 1, 2),  # a GMP251 register the profile does not use
        (1, 4, 0x000B, 1, 2),  # past the controller's input registers
        (1, 3, 0x0000, 2, 2),  # input registers are not holding registers
        (240, 4, 0x0000, 2, 1),  # the probe has no input registers (FC 3/16/43 only)
    ],
)
async def test_read_outside_the_map_is_refused(
    client: AsyncModbusTcpClient,
    *,
    device_id: int,
    function: int,
    address: int,
    count: int,
    code: int,
) -> None:
    """A read of an address the profile does not define gets exception 2, as the probe answers."""
    fn = client.read_input_registers if function == 4 else client.read_holding_registers
    reply = await fn(address, count=count, device_id=device_id)
    assert reply.isError()
    assert reply.exception_code == code


async def test_probe_warmup_reads_nan_over_the_wire() -> None:
    """Before warm-up ends the probe's CO2 registers hold a quiet NaN and status is 256."""
    cfg = IncubatorSimConfig(probe_warmup_s=60.0)
    async with IncubatorSimulator(PROFILE.registers, cfg) as warming:
        modbus = new_client(warming.endpoint)
        assert await modbus.connect()
        co2 = await read(modbus, SPECS["co2"])
        status = await read(modbus, SPECS["probe_co2_status"])
        modbus.close()
    (ppm,) = floats(co2.registers, word_order="little")
    assert math.isnan(ppm)
    assert status.registers == [CO2_STATUS_NOT_READY]


async def test_nan_fault_makes_co2_nan_then_clears(
    sim: IncubatorSimulator, client: AsyncModbusTcpClient
) -> None:
    """The nan fault shows NaN CO2 with status 256; switched off, the real value returns."""
    await sim.inject("nan", True)
    co2 = await read(client, SPECS["co2"])
    assert math.isnan(codec.raw_value(SPECS["co2"], co2.registers))
    assert (await read(client, SPECS["probe_co2_status"])).registers == [CO2_STATUS_NOT_READY]
    assert not (await read(client, SPECS["probe_temp"])).isError()
    await sim.inject("nan", False)
    co2 = await read(client, SPECS["co2"])
    assert codec.decode(SPECS["co2"], co2.registers) == pytest.approx(5.0, abs=0.1)
    assert (await read(client, SPECS["probe_co2_status"])).registers == [0]


async def test_no_response_fault_makes_the_client_time_out(
    sim: IncubatorSimulator, client: AsyncModbusTcpClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Requests go unanswered (client timeout), leave no task behind, and the link recovers."""
    caplog.set_level(logging.CRITICAL, logger="pymodbus")  # the client's timeout ERROR is expected
    await sim.inject("no_response", True)
    with pytest.raises(ModbusIOException, match="No response"):
        await read(client, SPECS["chamber_temp"])
    pending = [t for t in asyncio.all_tasks() if "handle_request" in repr(t.get_coro())]
    assert pending == []
    await sim.inject("no_response", False)
    assert client.connected
    assert not (await read(client, SPECS["chamber_temp"])).isError()


@pytest.mark.parametrize("code", [6, 4])
async def test_exception_fault_answers_the_configured_code(
    sim: IncubatorSimulator, client: AsyncModbusTcpClient, code: int
) -> None:
    """Every read and write gets the injected exception code until the fault is cleared."""
    await sim.inject("exception", True, exception_code=code)
    assert (await read(client, SPECS["co2"])).exception_code == code
    assert (await write(client, "temp_setpoint", 38.0)).exception_code == code
    assert sim.model.temp_setpoint_degC == 37.0
    await sim.inject("exception", False)
    assert not (await read(client, SPECS["co2"])).isError()


async def test_disconnect_refuses_connections_then_recovers(
    sim: IncubatorSimulator, client: AsyncModbusTcpClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A disconnect drops open links and refuses new ones; afterwards the same port serves again."""
    caplog.set_level(logging.CRITICAL, logger="pymodbus")  # "Failed to connect" is expected
    endpoint = sim.endpoint
    await sim.inject("disconnect", True)
    assert not sim.listening
    await eventually(lambda: not client.connected)
    refused = new_client(endpoint)
    assert not await refused.connect()
    refused.close()
    await sim.inject("disconnect", False)
    assert sim.endpoint == endpoint
    assert await client.connect()
    assert not (await read(client, SPECS["chamber_temp"])).isError()


async def test_scheduled_fault_follows_its_window() -> None:
    """A configured fault is in force from start_s for duration_s of wall time, then clears."""
    fault = FaultSpec(kind="exception", start_s=10.0, duration_s=5.0, exception_code=4)
    cfg = IncubatorSimConfig(probe_warmup_s=0.0, faults=(fault,))
    async with IncubatorSimulator(PROFILE.registers, cfg) as scheduled:
        modbus = new_client(scheduled.endpoint)
        assert await modbus.connect()
        codes = []
        for elapsed_s in (9.9, 10.0, 14.9, 15.0):
            await scheduled.update(elapsed_s)
            reply = await read(modbus, SPECS["chamber_temp"])
            codes.append(reply.exception_code if reply.isError() else 0)
        modbus.close()
    assert codes == [0, 4, 4, 0]


async def test_written_set_points_read_back_and_reach_the_model(
    sim: IncubatorSimulator, client: AsyncModbusTcpClient
) -> None:
    """Set points written with FC 16 read back and drive the model; bad writes are refused."""
    assert not (await write(client, "temp_setpoint", 38.5)).isError()
    assert not (await write(client, "co2_setpoint", 6.0)).isError()
    reply = await client.read_holding_registers(100, count=4, device_id=1)
    temp, co2 = floats(reply.registers)
    assert (temp, co2) == (38.5, 6.0)
    assert (sim.model.temp_setpoint_degC, sim.model.co2_setpoint_pct) == (38.5, 6.0)
    assert (await write(client, "temp_setpoint", 80.0)).exception_code == 3  # outside 20..50
    reply = await client.write_registers(0, [0, 0], device_id=1)  # chamber_temp is read-only
    assert reply.exception_code == 2
    assert sim.model.temp_setpoint_degC == 38.5


def simulated_device(dev_id: str, simulator: IncubatorSimConfig | None) -> ModbusTcpConfig:
    return ModbusTcpConfig(
        id=dev_id,
        driver="modbus_tcp",
        device_class="incubator",
        area="room-b",
        host="127.0.0.1",
        port=free_port(),
        register_map=PROFILE,
        simulator=simulator,
    )


async def test_runner_steps_the_physics_and_publishes() -> None:
    """serve_devices serves only devices with a simulator and publishes the stepped model."""
    fast = IncubatorSimConfig(time_scale=1000.0, door_period_s=60.0, door_open_s=5.0)
    devices = [simulated_device("inc-1", fast), simulated_device("plain", None)]
    async with serve_devices(devices) as simulation:
        await simulation.wait_ready()
        assert set(simulation.sims) == {"inc-1"}
        sim = simulation.sims["inc-1"]
        assert sim.endpoint == (devices[0].host, devices[0].port)
        modbus = new_client(sim.endpoint)
        assert await modbus.connect()

        async def door_opened_twice() -> bool:
            reply = await read(modbus, SPECS["door_open_count"])
            return codec.decode(SPECS["door_open_count"], reply.registers) >= 2

        await eventually(door_opened_twice)
        assert sim.model.probe_ready
        modbus.close()
    assert simulation.task.done()
    assert not sim.listening


async def test_serve_until_stops_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    """`cellfab simulate`'s coroutine serves until its stop event is set, then closes the port."""
    caplog.set_level(logging.CRITICAL, logger="pymodbus")
    device = simulated_device("inc-2", IncubatorSimConfig())
    stop = asyncio.Event()
    serving = asyncio.create_task(serve_until([device], stop))
    modbus = new_client((device.host, device.port))
    await eventually(modbus.connect)
    modbus.close()
    stop.set()
    await serving
    assert not await modbus.connect()
    modbus.close()
    assert simulator_tasks() == []


async def test_run_forever_ends_cleanly_when_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    """Cancelling `run_forever` closes the port, leaves no task behind and stays cancelled."""
    caplog.set_level(logging.CRITICAL, logger="pymodbus")
    device = simulated_device("inc-3", IncubatorSimConfig())
    serving = asyncio.create_task(run_forever([device]))
    modbus = new_client((device.host, device.port))
    await eventually(modbus.connect)
    modbus.close()
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
    assert not await modbus.connect()
    modbus.close()
    assert simulator_tasks() == []


def simulator_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("simulator-")]
