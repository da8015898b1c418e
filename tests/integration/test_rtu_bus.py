"""Several ΔP transmitters on one simulated RS-485 line, read through one RtuBus session.

Real transports only: the pymodbus RTU server on a pty pair, the client end symlinked at the
bus port, our bus and drivers on the other end, and Debian's mbpoll as an independent master.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from controller.configload import load_profile
from drivers.modbus_rtu import ModbusRtuConfig, ModbusRtuDriver
from drivers.rtubus import RtuBus, RtuBusConfig
from drivers.sample import Quality, Sample
from simulators.rtu_server import RtuBusSimulator
from tests.scanning import read_until
from tests.servers import require_binary

pytestmark = pytest.mark.integration

UNITS = {11: 45.0, 12: 30.0, 13: 15.0}  # Grade B, C, D rooms against the corridor
PERIOD_S = 0.05


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
            "simulator": {"time_scale": 1.0},
        }
    )


def device_configs() -> list[ModbusRtuConfig]:
    regmap = load_profile("huba-699m", Path())
    return [
        ModbusRtuConfig.model_validate(
            {
                "id": f"dp-{unit}",
                "device_class": "room_dp",
                "area": f"room-{unit}",
                "driver": "modbus_rtu",
                "bus": "rs485-1",
                "unit_id": unit,
                "register_map": regmap,
                "max_gap_registers": 3,
                "simulator": {"seed": unit, "setpoint_pa": sp, "door_open_s": 0.0},
            }
        )
        for unit, sp in UNITS.items()
    ]


Line = tuple[RtuBusSimulator, RtuBus, dict[int, ModbusRtuDriver]]


@pytest_asyncio.fixture(loop_scope="session")
async def line() -> AsyncIterator[Line]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = bus_config(Path(tmp) / "rs485-1")
        devices = device_configs()
        async with RtuBusSimulator(cfg, devices) as sim, RtuBus(cfg) as bus:
            await sim.advance(0.0)
            drivers = {d.unit_id: ModbusRtuDriver(d, bus) for d in devices}
            yield sim, bus, drivers


def linked(path: str) -> bool:
    """True if something (a symlink, live or stale) sits at `path`."""
    return Path(path).is_symlink() or Path(path).exists()


def all_good(samples: dict[str, Sample]) -> bool:
    return all(s.quality is Quality.GOOD for s in samples.values())


async def test_every_slave_reads_its_room(line: Line) -> None:
    """Three transmitters on one line each report their own room's differential, GOOD."""
    _, _, drivers = line
    for unit, setpoint in UNITS.items():
        samples = await read_until(drivers[unit], all_good)
        assert samples["type_code"].value == 9710
        assert samples["dp1"].value == pytest.approx(setpoint, abs=3.0)
        assert samples["dp_avg_16s"].value == pytest.approx(setpoint, abs=3.0)


async def test_sensor_fault_makes_values_bad_via_reliability(line: Line) -> None:
    """Reliability ≠ 0 turns dp1 and the averages BAD with the register as reason."""
    sim, _, drivers = line
    await sim.inject("sensor_fault", True, unit=12, code=2)
    try:
        bad = await read_until(drivers[12], lambda s: s["dp1"].quality is Quality.BAD)
        assert bad["dp1"].reason == "dp1_reliability=2" and bad["dp1"].value is None
        assert bad["dp_pa"].reason == "dp1_reliability=2"
        assert bad["dp1_reliability"].value == 2 and bad["error_code"].value == 1
        assert all_good(await read_until(drivers[11], all_good))
    finally:
        await sim.inject("sensor_fault", False, unit=12)
    await read_until(drivers[12], all_good)


async def test_exception_is_the_reason_then_recovers(line: Line) -> None:
    """A busy slave's exception 6 is the reason on all its tags; its neighbours read on."""
    sim, _, drivers = line
    await sim.inject("exception", True, unit=13, code=6)
    try:
        busy = await read_until(drivers[13], lambda s: s["dp1"].quality is Quality.BAD)
        assert {s.reason for s in busy.values()} == {"modbus exception 6 (server device busy)"}
        await read_until(drivers[12], all_good)
    finally:
        await sim.inject("exception", False, unit=13)
    await read_until(drivers[13], all_good)


async def test_silent_slave_times_out_is_backed_off_and_recovers(line: Line) -> None:
    """No reply: BAD 'timeout', then 'slave backed off' at once; back to GOOD afterwards."""
    sim, bus, drivers = line
    await read_until(drivers[11], all_good)
    await sim.inject("no_response", True, unit=11)
    try:
        silent = await read_until(drivers[11], lambda s: s["dp1"].quality is Quality.BAD)
        assert {s.reason for s in silent.values()} == {"timeout: no reply within 0.2 s"}
        sent = bus.stats(11).requests
        off = await read_until(drivers[11], lambda s: s["dp1"].quality is Quality.BAD)
        assert (off["dp1"].reason or "").startswith("slave backed off"), off["dp1"].reason
        assert bus.stats(11).requests == sent  # refused without touching the line
        assert bus.port_open
        await read_until(drivers[12], all_good)
    finally:
        await sim.inject("no_response", False, unit=11)
    await read_until(drivers[11], all_good)


async def scan_counts(drivers: dict[int, ModbusRtuDriver], window_s: float) -> dict[int, int]:
    """GOOD scans per slave in a window, each polled on a fixed schedule (catching up)."""
    counts = dict.fromkeys(drivers, 0)
    end = time.monotonic() + window_s

    async def poll(unit: int) -> None:
        due = time.monotonic()
        while time.monotonic() < end:
            if all(s.quality is Quality.GOOD for s in await drivers[unit].read()):
                counts[unit] += 1
            due += PERIOD_S
            await asyncio.sleep(max(0.0, due - time.monotonic()))  # the poll period

    await asyncio.gather(*(poll(unit) for unit in drivers))
    return counts


async def test_dead_slave_does_not_slow_the_others(line: Line) -> None:
    """With one slave dead, the others' scan rate stays within 10 % of normal."""
    sim, _, drivers = line
    for driver in drivers.values():
        await read_until(driver, all_good)
    normal = await scan_counts(drivers, 3.0)
    await sim.inject("no_response", True, unit=13)
    try:
        await read_until(drivers[13], lambda s: s["dp1"].quality is Quality.BAD)
        dead = await scan_counts(drivers, 3.0)
    finally:
        await sim.inject("no_response", False, unit=13)
    assert dead[13] == 0
    for unit in (11, 12):
        ratio = dead[unit] / normal[unit]
        assert 0.9 <= ratio <= 1.1, (unit, normal, dead)
    await read_until(drivers[13], all_good)


async def test_line_disconnect_then_reopen(line: Line) -> None:
    """The pty going away reads 'disconnected' on every slave; the port reopens after."""
    sim, bus, drivers = line
    await read_until(drivers[12], all_good)
    await sim.inject("disconnect", True)
    try:
        assert not linked(sim.where)
        down = await read_until(
            drivers[12], lambda s: (s["dp1"].reason or "").startswith("disconnected")
        )
        assert down["dp1"].value is None
        assert not bus.port_open
    finally:
        await sim.inject("disconnect", False)
    for driver in drivers.values():
        await read_until(driver, all_good)


async def test_symlink_is_created_and_removed() -> None:
    """The simulator links the client end at the bus port, and removes the link on exit."""
    with tempfile.TemporaryDirectory() as tmp:
        link = Path(tmp) / "ttyRS485"
        async with RtuBusSimulator(bus_config(link), device_configs()) as sim:
            await sim.wait_listening()
            assert link.is_symlink()
            assert str(link.readlink()).startswith("/dev/pts/")
        assert not link.exists() and not link.is_symlink()


async def mbpoll(port: str, *args: str) -> str:
    """Debian's mbpoll as an RTU master at 19200 8N1 on the pty, once."""
    proc = await asyncio.create_subprocess_exec(
        require_binary("mbpoll"),
        "-m",
        "rtu",
        "-b",
        "19200",
        "-P",
        "none",
        "-1",
        "-o",
        "1",
        *args,
        port,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    return out.decode()


def values(output: str) -> dict[int, int]:
    """mbpoll's `[ref]: value` lines."""
    return {int(m[1]): int(m[2]) for m in re.finditer(r"^\[(\d+)\]:\s+(-?\d+)", output, re.M)}


async def test_mbpoll_reads_a_transmitter_as_documented() -> None:
    """mbpoll sees the documented 699M layout: 4x0001 type code, 4x0068 Pa, 4x0764 address."""
    require_binary("mbpoll")
    with tempfile.TemporaryDirectory() as tmp:
        link = Path(tmp) / "rs485-mb"
        async with RtuBusSimulator(bus_config(link), device_configs()) as sim:
            await sim.advance(0.0)
            head = values(await mbpoll(str(link), "-a", "11", "-r", "1", "-c", "5"))
            pa = values(await mbpoll(str(link), "-a", "11", "-r", "68", "-c", "1"))
            addr = values(await mbpoll(str(link), "-a", "12", "-r", "764", "-c", "3"))
    assert head[1] == 9710 and head[2] == 0 and head[4] == 0  # type, error, reliability
    assert head[5] == pytest.approx(45, abs=3)
    assert pa[68] == pytest.approx(45, abs=3)
    assert addr == {764: 12, 765: 1, 766: 2}  # address 12, 19200 Bd, 8N1


SIMULATE = """
import asyncio, json, sys
from drivers.modbus_rtu import ModbusRtuConfig
from drivers.rtubus import RtuBusConfig
from simulators.rtu_server import RtuBusSimulator

async def main():
    bus = RtuBusConfig.model_validate_json(sys.argv[1])
    devices = [ModbusRtuConfig.model_validate(d) for d in json.loads(sys.argv[2])]
    async with RtuBusSimulator(bus, devices) as sim:
        await sim.advance(0.0)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

asyncio.run(main())
"""


async def test_simulator_and_driver_in_two_processes() -> None:
    """A simulator process links its pty at the port; another process's bus reads it."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = bus_config(Path(tmp) / "rs485-2p")
        devices = [d.model_dump(mode="json") for d in device_configs()]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            SIMULATE,
            cfg.model_dump_json(),
            json.dumps(devices),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=Path(__file__).parents[2],
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            async with asyncio.timeout(20):
                assert await proc.stdout.readline() == b"ready\n"
            async with RtuBus(cfg) as bus:
                driver = ModbusRtuDriver(device_configs()[1], bus)
                samples = await read_until(driver, all_good)
            assert samples["dp1"].value == pytest.approx(UNITS[12], abs=3.0)
        finally:
            proc.stdin.close()
            async with asyncio.timeout(20):
                await proc.wait()
        assert proc.returncode == 0
        assert not linked(str(cfg.port))
