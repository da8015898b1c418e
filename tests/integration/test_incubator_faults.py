"""Simulator faults reach the driver as BAD samples with the right reason, then recover.

Real sockets: the pymodbus simulator server and our Modbus TCP driver, in one event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from controller.configload import load_profile
from drivers.modbus_tcp import ModbusTcpConfig, ModbusTcpDriver
from drivers.sample import Quality, Sample
from simulators.config import IncubatorSimConfig
from simulators.modbus_server import IncubatorSimulator
from tests.scanning import read_until

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session")
async def incubator() -> AsyncIterator[tuple[IncubatorSimulator, ModbusTcpConfig]]:
    regmap = load_profile("co2-incubator", Path())
    sim_cfg = IncubatorSimConfig(probe_warmup_s=0.0, door_open_s=0.0)
    async with IncubatorSimulator(regmap.registers, sim_cfg) as sim:
        await sim.update(0.0)
        host, port = sim.endpoint
        cfg = ModbusTcpConfig(
            id="inc-f",
            device_class="co2_incubator",
            area="lab",
            driver="modbus_tcp",
            host=host,
            port=port,
            register_map=regmap,
            timeout_s=0.2,
            reconnect_min_s=0.05,
            reconnect_max_s=0.2,
        )
        yield sim, cfg


def all_good(samples: dict[str, Sample]) -> bool:
    return all(s.quality is Quality.GOOD for s in samples.values())


async def test_nan_then_silence_then_recovery(
    incubator: tuple[IncubatorSimulator, ModbusTcpConfig],
) -> None:
    """NaN CO2 -> BAD 'nan' on co2 only; no reply -> every tag BAD 'timeout'; then GOOD."""
    sim, cfg = incubator
    async with ModbusTcpDriver(cfg) as driver:
        good = await read_until(driver, all_good)
        assert 3.0 < (good["co2"].value or 0) < 7.0

        await sim.inject("nan", True)
        nan = await read_until(driver, lambda s: s["co2"].quality is Quality.BAD)
        assert nan["co2"].value is None
        assert nan["co2"].reason == "nan (device has no valid measurement)"
        assert nan["chamber_temp"].quality is Quality.GOOD
        assert nan["probe_co2_status"].value == 256

        await sim.inject("no_response", True)
        silent = await read_until(driver, lambda s: s["chamber_temp"].quality is Quality.BAD)
        assert {s.reason for s in silent.values()} == {"timeout: no reply within 0.2 s"}
        assert all(s.value is None for s in silent.values())

        await sim.inject("no_response", False)
        await sim.inject("nan", False)
        back = await read_until(driver, all_good)
        assert 3.0 < (back["co2"].value or 0) < 7.0


async def test_busy_device_reports_the_exception(
    incubator: tuple[IncubatorSimulator, ModbusTcpConfig],
) -> None:
    """Modbus exception 6 from the device is the reason on every tag, until it clears."""
    sim, cfg = incubator
    async with ModbusTcpDriver(cfg) as driver:
        await read_until(driver, all_good)
        await sim.inject("exception", True, exception_code=6)
        try:
            busy = await read_until(driver, lambda s: s["co2"].quality is Quality.BAD)
            assert {s.reason for s in busy.values()} == {"modbus exception 6 (server device busy)"}
        finally:
            await sim.inject("exception", False)
        await read_until(driver, all_good)


async def test_disconnect_then_reconnect(
    incubator: tuple[IncubatorSimulator, ModbusTcpConfig],
) -> None:
    """A device that drops off the network reads 'disconnected' and is found again."""
    sim, cfg = incubator
    async with ModbusTcpDriver(cfg) as driver:
        await read_until(driver, all_good)
        await sim.inject("disconnect", True)
        try:
            down = await read_until(driver, lambda s: s["co2"].quality is Quality.BAD)
            reason = down["co2"].reason or ""
            assert reason.startswith(("disconnected", "timeout")), reason
        finally:
            await sim.inject("disconnect", False)
        await read_until(driver, all_good)


async def test_probe_status_downgrades_quality(
    incubator: tuple[IncubatorSimulator, ModbusTcpConfig],
) -> None:
    """While the probe is warming up, its status register (256) makes co2 BAD, not a value."""
    regmap = load_profile("co2-incubator", Path())
    warm = IncubatorSimConfig(probe_warmup_s=3600.0, door_open_s=0.0)
    async with IncubatorSimulator(regmap.registers, warm) as sim:
        await sim.update(0.0)
        host, port = sim.endpoint
        cfg = incubator[1].model_copy(update={"host": host, "port": port})
        async with ModbusTcpDriver(cfg) as driver:
            samples = await read_until(driver, lambda s: s["chamber_temp"].quality is Quality.GOOD)
    assert samples["co2"].quality is Quality.BAD and samples["co2"].value is None
    assert samples["probe_co2_status"].value == 256
