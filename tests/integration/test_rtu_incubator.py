"""The RS-485 variant of the CO2 incubator: one RTU slave next to a ΔP transmitter on one line.

Real transports only: the pymodbus RTU server on a pty pair, our bus session and drivers on
the other end, and Debian's mbpoll as an independent master.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from controller.configload import load_profile
from drivers.modbus_rtu import ModbusRtuConfig, ModbusRtuDriver
from drivers.rtubus import RtuBus, RtuBusConfig
from drivers.sample import Quality
from simulators.incubator import ALARM_BITS, IncubatorModel
from simulators.rtu_server import RtuBusSimulator
from tests.scanning import Samples, read_until
from tests.servers import require_binary

pytestmark = pytest.mark.integration

INC, DP = 5, 41


def bus_config(port: Path) -> RtuBusConfig:
    return RtuBusConfig.model_validate(
        {
            "id": "rs485-1",
            "port": str(port),
            "timeout_s": 0.2,
            "slave_backoff_min_s": 0.3,
            "slave_backoff_max_s": 1.0,
            "reopen_min_s": 0.1,
            "reopen_max_s": 0.5,
        }
    )


def device_configs() -> list[ModbusRtuConfig]:
    common = {"driver": "modbus_rtu", "bus": "rs485-1", "area": "suite"}
    incubator = {
        "id": "inc-rtu",
        "device_class": "co2_incubator",
        "unit_id": INC,
        "register_map": load_profile("co2-incubator-rtu", Path()),
        "simulator": {
            "model": "co2_incubator",
            "seed": 5,
            "probe_warmup_s": 0.0,
            "door_open_s": 0.0,
            "remote_timeout_s": 60.0,
        },
    }
    transmitter = {
        "id": "dp-b",
        "device_class": "room_dp",
        "unit_id": DP,
        "register_map": load_profile("huba-699m", Path()),
        "max_gap_registers": 3,
        "simulator": {"seed": 41, "setpoint_pa": 45.0, "door_open_s": 0.0},  # no `model` key
    }
    return [ModbusRtuConfig.model_validate(common | d) for d in (incubator, transmitter)]


Line = tuple[RtuBusSimulator, RtuBus, dict[int, ModbusRtuDriver]]


@pytest_asyncio.fixture(loop_scope="session")
async def line() -> AsyncIterator[Line]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = bus_config(Path(tmp) / "rs485-inc")
        devices = device_configs()
        async with RtuBusSimulator(cfg, devices) as sim, RtuBus(cfg) as bus:
            await sim.advance(0.0)
            drivers = {d.unit_id: ModbusRtuDriver(d, bus) for d in devices}
            yield sim, bus, drivers


def all_good(samples: Samples) -> bool:
    return all(s.quality is Quality.GOOD for s in samples.values())


def model(sim: RtuBusSimulator) -> IncubatorModel:
    return sim.incubators[INC]


async def test_incubator_and_transmitter_read_on_one_line(line: Line) -> None:
    """Both slaves read GOOD through one bus: chamber at 37 °C, mirrored CO2 at 5 %, room 45 Pa."""
    sim, _, drivers = line
    inc = await read_until(drivers[INC], all_good)
    dp = await read_until(drivers[DP], all_good)
    assert inc["chamber_temp"].value == pytest.approx(37.0, abs=0.3)
    assert inc["co2"].value == pytest.approx(5.0, abs=0.1)
    assert inc["probe_co2_status"].value == 0
    assert inc["temp_local_auto"].value == 1
    assert inc["operating_hours"].value == 8760
    assert dp["dp1"].value == pytest.approx(45.0, abs=3.0)
    assert sorted(sim.model.rooms) == [DP]  # the incubator is not a room of the cascade


async def test_set_point_and_demand_written_over_rtu_reach_the_model(line: Line) -> None:
    """temp_setpoint (FC 16) and heater_demand (FC 6) land in the model and read back."""
    sim, _, drivers = line
    await read_until(drivers[INC], all_good)  # the poll path has opened the port
    await drivers[INC].write("temp_setpoint", 36.5)
    await drivers[INC].write("heater_demand", 42.5)
    assert model(sim).temp_setpoint_degC == 36.5
    assert model(sim).heater_demand_pct == 42.5
    back = await read_until(drivers[INC], lambda s: s["temp_setpoint"].value == 36.5)
    assert back["heater_demand"].value == 42.5
    await drivers[INC].write("temp_setpoint", 37.0)


async def test_refusals_over_rtu(line: Line) -> None:
    """Out-of-limit set point: the slave's exception 3 as RuntimeError; read-only: ValueError."""
    sim, _, drivers = line
    await read_until(drivers[INC], all_good)
    with pytest.raises(RuntimeError, match=r"device inc-rtu: write co2_setpoint=25 refused: .*3"):
        await drivers[INC].write("co2_setpoint", 25.0)
    with pytest.raises(RuntimeError, match=r"temp_local_auto=2 refused: modbus exception 3"):
        await drivers[INC].write("temp_local_auto", 2)
    with pytest.raises(ValueError, match="'co2' is not a writable tag"):
        await drivers[INC].write("co2", 5.0)
    with pytest.raises(ValueError, match="'type_code' is not a writable tag"):
        await drivers[DP].write("type_code", 1.0)
    assert model(sim).co2_setpoint_pct == 5.0 and model(sim).heater_local_auto


async def test_writes_queue_with_concurrent_scans(line: Line) -> None:
    """A write issued while both slaves are being scanned waits its turn and succeeds."""
    sim, _, drivers = line
    await read_until(drivers[DP], all_good)
    results = await asyncio.gather(
        drivers[DP].read(),
        drivers[INC].read(),
        drivers[INC].write("co2_valve_demand", 12.5),
        drivers[DP].read(),
    )
    assert all(s.quality is Quality.GOOD for s in results[0] + results[1] + results[3])
    assert model(sim).valve_demand_pct == 12.5


async def test_remote_heater_over_rtu_then_watchdog(line: Line) -> None:
    """temp_local_auto=0 + heater_demand=100 over RS-485 drives heater_output to 100 %;
    without further writes the incubator goes back to local auto with alarm bit 5."""
    sim, _, drivers = line
    await read_until(drivers[INC], all_good)
    await drivers[INC].write("heater_demand", 100.0)
    await drivers[INC].write("temp_local_auto", 0)
    model(sim).run(20)
    await sim.advance(0.0)
    remote = await read_until(drivers[INC], lambda s: s["heater_output"].value == 100.0)
    assert remote["temp_local_auto"].value == 0
    model(sim).run(round(70.0 / model(sim).cfg.step_s))  # past the 60 s watchdog
    await sim.advance(0.0)
    local = await read_until(drivers[INC], lambda s: s["temp_local_auto"].value == 1)
    assert int(local["alarm_word"].value or 0) & 1 << ALARM_BITS["remote_lost"]
    await drivers[INC].write("temp_local_auto", 1)
    assert not model(sim).heater_remote_lost


async def test_probe_fault_makes_mirrored_co2_bad(line: Line) -> None:
    """sensor_fault on the incubator slave: the probe reads 'not ready', co2 BAD via status."""
    sim, _, drivers = line
    await sim.inject("sensor_fault", True, unit=INC)
    try:
        bad = await read_until(drivers[INC], lambda s: s["co2"].quality is Quality.BAD)
        assert bad["co2"].reason == "nan (device has no valid measurement)"
        assert bad["probe_co2_status"].value == 256
        assert bad["chamber_temp"].quality is Quality.GOOD
    finally:
        await sim.inject("sensor_fault", False, unit=INC)
    await read_until(drivers[INC], all_good)


async def test_write_before_the_port_is_open_is_refused() -> None:
    """A write never opens the port (the poll path does): RuntimeError, nothing changed."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = bus_config(Path(tmp) / "rs485-closed")
        devices = device_configs()
        async with RtuBusSimulator(cfg, devices) as sim, RtuBus(cfg) as bus:
            driver = ModbusRtuDriver(devices[0], bus)
            with pytest.raises(RuntimeError, match=r"disconnected.*not open"):
                await driver.write("temp_setpoint", 36.0)
            assert sim.incubators[INC].temp_setpoint_degC == 37.0
            assert not bus.port_open


async def mbpoll(port: str, *args: str) -> str:
    """Debian's mbpoll as an RTU master at 19200 8N1 on the pty, once (1-based references)."""
    proc = await asyncio.create_subprocess_exec(
        require_binary("mbpoll"),
        *("-m", "rtu", "-b", "19200", "-P", "none", "-1", "-o", "1"),
        *args,
        port,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    return out.decode()


def values(output: str) -> dict[int, float]:
    """mbpoll's `[ref]: value` lines."""
    return {int(m[1]): float(m[2]) for m in re.finditer(r"^\[(\d+)\]:\s+(\S+)", output, re.M)}


async def test_mbpoll_reads_the_incubator_slave_as_documented() -> None:
    """mbpoll sees the documented layout: FC 4 floats high word first at 3x0001 (temperature)
    and 3x0012 (CO2 %), probe status at 3x0014, set points at 4x0101, switches at 4x0113."""
    require_binary("mbpoll")
    with tempfile.TemporaryDirectory() as tmp:
        link = Path(tmp) / "rs485-mb"
        async with RtuBusSimulator(bus_config(link), device_configs()) as sim:
            await sim.advance(0.0)
            unit = str(INC)
            temp = values(await mbpoll(str(link), "-a", unit, "-t", "3:float", "-B", "-r", "1"))
            co2 = values(await mbpoll(str(link), "-a", unit, "-t", "3:float", "-B", "-r", "12"))
            status = values(await mbpoll(str(link), "-a", unit, "-t", "3", "-r", "14", "-c", "2"))
            sps = values(
                await mbpoll(str(link), "-a", unit, "-t", "4:float", "-B", "-r", "101", "-c", "2")
            )
            remote = values(await mbpoll(str(link), "-a", unit, "-t", "4", "-r", "113", "-c", "4"))
            outside = await mbpoll(str(link), "-a", unit, "-t", "3", "-r", "30", "-c", "1")
            m = sim.incubators[INC]
    assert temp[1] == pytest.approx(m.temp_degC, abs=0.3)
    assert co2[12] == pytest.approx(m.co2_pct, abs=0.1)
    assert status == {14: 0, 15: 0}  # probe CO2 status, probe device status
    assert sps == {101: 37.0, 103: 5.0}
    assert remote == {113: 1, 114: 0, 115: 1, 116: 0}  # local auto, demands 0 %
    assert "Illegal data address" in outside
