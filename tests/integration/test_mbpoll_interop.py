"""Interoperability: Debian's mbpoll (libmodbus, code we did not write) against our simulator.

If our simulator's word order, addressing or exceptions were wrong in a way our own driver
shares, these tests would still catch it: mbpoll knows nothing of our codec.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from controller.configload import load_profile
from drivers.modbus_tcp import ModbusTcpConfig, ModbusTcpDriver
from simulators.config import IncubatorSimConfig
from simulators.modbus_server import IncubatorSimulator

pytestmark = pytest.mark.integration


def mbpoll_path() -> str:
    path = shutil.which("mbpoll")
    if path is None:
        message = "Debian's mbpoll is not installed (`make test` installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


async def mbpoll(port: int, *args: str, write: tuple[str, ...] = ()) -> str:
    """Run mbpoll once against 127.0.0.1:port without blocking the simulator's event loop."""
    proc = await asyncio.create_subprocess_exec(
        mbpoll_path(),
        "-m",
        "tcp",
        "-p",
        str(port),
        "-0",
        "-1",
        "-o",
        "2",
        *args,
        "127.0.0.1",
        *write,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    return out.decode()


def values(output: str) -> dict[int, float]:
    """mbpoll's `[ref]: value` lines."""
    return {int(m[1]): float(m[2]) for m in re.finditer(r"^\[(\d+)\]:\s+(\S+)", output, re.M)}


@pytest_asyncio.fixture(loop_scope="session")
async def sim() -> AsyncIterator[IncubatorSimulator]:
    regmap = load_profile("co2-incubator", Path())
    cfg = IncubatorSimConfig(probe_warmup_s=0.0, door_open_s=0.0, seed=7)
    async with IncubatorSimulator(regmap.registers, cfg) as simulator:
        await simulator.update(0.0)
        yield simulator


async def test_mbpoll_reads_gmp251_float_lsw_first(sim: IncubatorSimulator) -> None:
    """mbpoll's default (little-endian word order) float at unit 240 reg 0 is CO2 in ppm."""
    out = await mbpoll(sim.endpoint[1], "-a", "240", "-r", "0", "-c", "1", "-t", "4:float")
    ppm = values(out)[0]
    assert ppm == pytest.approx(sim.model.co2_pct * 10_000, abs=500)


async def test_mbpoll_reads_controller_float_big_endian(sim: IncubatorSimulator) -> None:
    """Unit 1's chamber temperature is an input-register float, high word first (-B)."""
    out = await mbpoll(sim.endpoint[1], "-a", "1", "-r", "0", "-c", "1", "-t", "3:float", "-B")
    assert values(out)[0] == pytest.approx(sim.model.temp_degC, abs=0.3)


async def test_mbpoll_sees_exception_for_unmapped_address(sim: IncubatorSimulator) -> None:
    """A read outside the GMP251 map is refused with 'illegal data address', as the probe does."""
    out = await mbpoll(sim.endpoint[1], "-a", "240", "-r", "10", "-c", "1", "-t", "4")
    assert "Illegal data address" in out


async def test_set_point_written_by_mbpoll_is_read_by_our_driver(sim: IncubatorSimulator) -> None:
    """A float written by mbpoll (FC16, -B) is the set point our driver and the model see."""
    out = await mbpoll(
        sim.endpoint[1], "-a", "1", "-r", "100", "-t", "4:float", "-B", write=("36.5",)
    )
    assert "Written 1 references" in out, out
    cfg = ModbusTcpConfig(
        id="inc-m",
        device_class="co2_incubator",
        area="lab",
        driver="modbus_tcp",
        host="127.0.0.1",
        port=sim.endpoint[1],
        register_map=load_profile("co2-incubator", Path()),
    )
    async with ModbusTcpDriver(cfg) as driver:
        samples = {s.tag: s for s in await driver.read()}
    assert samples["temp_setpoint"].value == 36.5
    assert sim.model.temp_setpoint_degC == 36.5
