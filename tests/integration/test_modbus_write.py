"""Writes through our Modbus TCP driver to the real incubator simulator, read back over the wire.

Also the remote control of the incubator's heater and CO2 valve: cellfab's own loops take
over with `*_local_auto = 0` and `*_demand`, and the incubator's watchdog hands control back
to its own PI when the writes stop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from controller.configload import load_profile
from drivers.base import Writer
from drivers.modbus_tcp import ModbusTcpConfig, ModbusTcpDriver
from drivers.sample import Quality
from simulators.config import IncubatorSimConfig
from simulators.incubator import ALARM_BITS
from simulators.modbus_server import IncubatorSimulator
from tests.scanning import Samples, read_until

pytestmark = pytest.mark.integration

PROFILE = load_profile("co2-incubator", Path.cwd())
REMOTE_TIMEOUT_S = 60.0


def driver_config(port: int) -> ModbusTcpConfig:
    return ModbusTcpConfig(
        id="inc-w",
        device_class="co2_incubator",
        area="lab",
        driver="modbus_tcp",
        host="127.0.0.1",
        port=port,
        timeout_s=0.5,
        register_map=PROFILE,
    )


Rig = tuple[IncubatorSimulator, ModbusTcpDriver]


@pytest_asyncio.fixture(loop_scope="session")
async def rig() -> AsyncIterator[Rig]:
    cfg = IncubatorSimConfig(
        probe_warmup_s=0.0, door_open_s=0.0, seed=3, remote_timeout_s=REMOTE_TIMEOUT_S
    )
    async with (
        IncubatorSimulator(PROFILE.registers, cfg) as sim,
        ModbusTcpDriver(driver_config(sim.endpoint[1])) as driver,
    ):
        await read_until(driver, all_good)  # connected
        yield sim, driver


def all_good(samples: Samples) -> bool:
    return all(s.quality is Quality.GOOD for s in samples.values())


async def test_written_set_point_round_trips(rig: Rig) -> None:
    """temp_setpoint written by the driver (FC 16) reaches the model and reads back."""
    sim, driver = rig
    writer: Writer = driver
    await writer.write("temp_setpoint", 36.25)
    assert sim.model.temp_setpoint_degC == 36.25
    samples = await read_until(driver, lambda s: s["temp_setpoint"].value == 36.25)
    assert samples["temp_setpoint"].quality is Quality.GOOD
    await driver.write("temp_setpoint", 37.0)
    assert sim.model.temp_setpoint_degC == 37.0


async def test_read_only_tag_is_refused_before_sending(rig: Rig) -> None:
    """An input register (chamber_temp) is not writable: ValueError, the model unchanged."""
    sim, driver = rig
    before = sim.model.temp_degC
    with pytest.raises(ValueError, match="device inc-w: 'chamber_temp' is not a writable tag"):
        await driver.write("chamber_temp", 20.0)
    assert sim.model.temp_degC == before


async def test_set_point_outside_device_limits_is_the_devices_exception(rig: Rig) -> None:
    """80 °C fits a float32 but not the incubator's 20..50 °C: exception 3 as RuntimeError."""
    sim, driver = rig
    with pytest.raises(
        RuntimeError,
        match=r"device inc-w: write temp_setpoint=80 refused: modbus exception 3 \(illegal",
    ):
        await driver.write("temp_setpoint", 80.0)
    assert sim.model.temp_setpoint_degC == 37.0


async def test_value_outside_the_register_type_is_a_value_error(rig: Rig) -> None:
    """A demand beyond s16 × 0.1 never reaches the wire: ValueError naming the tag."""
    _, driver = rig
    with pytest.raises(ValueError, match="cannot write heater_demand: 5000"):
        await driver.write("heater_demand", 5000.0)


async def test_write_before_connecting_is_refused() -> None:
    """A driver that has not polled yet has no link: RuntimeError, no reconnect in write."""
    cfg = IncubatorSimConfig(probe_warmup_s=0.0, door_open_s=0.0)
    async with (
        IncubatorSimulator(PROFILE.registers, cfg) as sim,
        ModbusTcpDriver(driver_config(sim.endpoint[1])) as driver,
    ):
        with pytest.raises(RuntimeError, match="write temp_setpoint failed: not connected"):
            await driver.write("temp_setpoint", 36.0)
        assert sim.model.temp_setpoint_degC == cfg.setpoint_degC


async def test_exception_fault_refuses_the_write_with_its_name(rig: Rig) -> None:
    """A busy device's exception 6 comes back as RuntimeError naming it."""
    sim, driver = rig
    await sim.inject("exception", True, exception_code=6)
    try:
        with pytest.raises(RuntimeError, match=r"6 \(server device busy\)"):
            await driver.write("temp_setpoint", 36.0)
    finally:
        await sim.inject("exception", False)
    await read_until(driver, all_good)


async def publish_after(sim: IncubatorSimulator, sim_seconds: float) -> None:
    """Run the physics `sim_seconds` ahead and publish (the runner's job, done by hand)."""
    sim.model.run(round(sim_seconds / sim.model.cfg.step_s))
    await sim.update(0.0)


async def test_remote_heater_demand_drives_the_heater_then_watchdog_hands_back(
    rig: Rig,
) -> None:
    """temp_local_auto=0 + heater_demand=100 puts the heater at 100 % and the chamber warms;
    once the writes stop, the watchdog returns to local control and raises alarm bit 5."""
    sim, driver = rig
    start = (await read_until(driver, all_good))["chamber_temp"].value
    assert start is not None
    await driver.write("heater_demand", 100.0)
    await driver.write("temp_local_auto", 0)
    await publish_after(sim, REMOTE_TIMEOUT_S / 2)
    await driver.write("heater_demand", 100.0)  # the supervisor keeps its demand alive
    await publish_after(sim, REMOTE_TIMEOUT_S / 2)
    remote = await read_until(driver, lambda s: s["heater_output"].value == 100.0)
    assert remote["temp_local_auto"].value == 0
    assert remote["heater_demand"].value == 100.0
    assert remote["chamber_temp"].value is not None
    assert remote["chamber_temp"].value > start + 0.3
    assert not int(remote["alarm_word"].value or 0) & 1 << ALARM_BITS["remote_lost"]
    await publish_after(sim, REMOTE_TIMEOUT_S)  # no writes: the watchdog expires
    local = await read_until(driver, lambda s: s["temp_local_auto"].value == 1)
    assert int(local["alarm_word"].value or 0) & 1 << ALARM_BITS["remote_lost"]
    assert local["heater_output"].value is not None
    assert local["heater_output"].value < 100.0  # its own PI cuts back the too-warm chamber
    await driver.write("temp_local_auto", 1)  # the supervisor acknowledges
    await sim.update(0.0)
    cleared = await read_until(driver, all_good)
    assert not int(cleared["alarm_word"].value or 0) & 1 << ALARM_BITS["remote_lost"]
