"""Wire faults of the Modbus TCP simulators: garbage, short frames and slow replies.

Real sockets: the simulators' pymodbus servers, our drivers, and a raw asyncio client that
looks at the bytes themselves. The faults live in the shared `ModbusTcpEndpoint`, so the
incubator is tested in depth and the particle counter once, to show it shares them.
"""

from __future__ import annotations

import asyncio
import re
import struct
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pydantic import ValidationError

from controller.configload import load_profile
from drivers.modbus_tcp import ModbusTcpConfig, ModbusTcpDriver
from drivers.particle_counter import ParticleCounterConfig, ParticleCounterDriver
from drivers.sample import Quality, Sample
from simulators.config import FaultSpec, IncubatorSimConfig
from simulators.modbus_server import IncubatorSimulator
from simulators.particle_server import ParticleCounterSimulator
from tests.scanning import read_until

pytestmark = pytest.mark.integration

TIMEOUT_S = 0.2
SHORT = re.compile(r"short reply: (\d+) of (\d+) registers")
Check = Callable[[dict[str, Sample]], bool]


@pytest_asyncio.fixture(loop_scope="session")
async def incubator() -> AsyncIterator[tuple[IncubatorSimulator, ModbusTcpConfig]]:
    async with incubator_at(IncubatorSimConfig(probe_warmup_s=0.0, door_open_s=0.0)) as pair:
        yield pair


@asynccontextmanager
async def incubator_at(
    sim_cfg: IncubatorSimConfig,
) -> AsyncIterator[tuple[IncubatorSimulator, ModbusTcpConfig]]:
    """An incubator simulator on an OS-assigned port and a driver config pointing at it."""
    regmap = load_profile("co2-incubator", Path())
    async with IncubatorSimulator(regmap.registers, sim_cfg) as sim:
        await sim.update(0.0)
        host, port = sim.endpoint
        yield (
            sim,
            ModbusTcpConfig(
                id="inc-w",
                device_class="co2_incubator",
                area="lab",
                driver="modbus_tcp",
                host=host,
                port=port,
                register_map=regmap,
                timeout_s=TIMEOUT_S,
                reconnect_min_s=0.05,
                reconnect_max_s=0.2,
            ),
        )


def all_good(samples: dict[str, Sample]) -> bool:
    return all(s.quality is Quality.GOOD for s in samples.values())


def all_bad(samples: dict[str, Sample]) -> bool:
    return all(s.quality is Quality.BAD for s in samples.values())


def halved(reason: str | None) -> bool:
    """A short reply that carries half the registers asked for (rounded down)."""
    match = SHORT.fullmatch(reason or "")
    return match is not None and int(match[1]) == int(match[2]) // 2


async def test_garbage_is_an_invalid_reply_then_recovers(
    incubator: tuple[IncubatorSimulator, ModbusTcpConfig],
) -> None:
    """Random bytes in a well-framed reply read BAD 'invalid reply', then GOOD once it stops."""
    sim, cfg = incubator
    async with ModbusTcpDriver(cfg) as driver:
        await read_until(driver, all_good)
        await sim.inject("garbage", True)
        try:
            bad = await read_until(driver, all_bad)
        finally:
            await sim.inject("garbage", False)
        (reason,) = {s.reason for s in bad.values()}
        assert reason is not None and reason.startswith("invalid reply: function code 0x"), reason
        assert all(s.value is None for s in bad.values())
        back = await read_until(driver, all_good)
        assert 3.0 < (back["co2"].value or 0) < 7.0


async def test_short_frame_is_a_short_reply_then_recovers(
    incubator: tuple[IncubatorSimulator, ModbusTcpConfig],
) -> None:
    """Half the registers in every read reply: each tag BAD 'short reply: n/2 of n', then GOOD."""
    sim, cfg = incubator
    async with ModbusTcpDriver(cfg) as driver:
        await read_until(driver, all_good)
        await sim.inject("short_frame", True)
        try:
            bad = await read_until(driver, all_bad)
        finally:
            await sim.inject("short_frame", False)
        reasons = {s.reason for s in bad.values()}
        assert all(halved(r) for r in reasons), reasons
        assert all(s.value is None for s in bad.values())
        back = await read_until(driver, all_good)
        assert 36.0 < (back["chamber_temp"].value or 0) < 38.0


async def test_slow_beyond_the_timeout_is_a_timeout_then_recovers(
    incubator: tuple[IncubatorSimulator, ModbusTcpConfig],
) -> None:
    """Replies later than the master's timeout read BAD 'timeout', then GOOD once prompt."""
    sim, cfg = incubator
    async with ModbusTcpDriver(cfg) as driver:
        await read_until(driver, all_good)
        await sim.inject("slow", True, delay_s=TIMEOUT_S * 3)
        try:
            bad = await read_until(driver, all_bad)
        finally:
            await sim.inject("slow", False)
        assert {s.reason for s in bad.values()} == {f"timeout: no reply within {TIMEOUT_S:g} s"}
        assert all(s.value is None for s in bad.values())
        await read_until(driver, all_good)


async def test_slow_within_the_timeout_only_makes_the_scan_late(
    incubator: tuple[IncubatorSimulator, ModbusTcpConfig],
) -> None:
    """Replies late but inside the timeout give GOOD samples; the scan takes at least the delay."""
    sim, cfg = incubator
    patient = cfg.model_copy(update={"timeout_s": 5.0})
    delay_s = 0.1
    async with ModbusTcpDriver(patient) as driver:
        await read_until(driver, all_good)
        await sim.inject("slow", True, delay_s=delay_s)
        try:
            begun = time.monotonic()
            samples = {s.tag: s for s in await driver.read()}
            took_s = time.monotonic() - begun
        finally:
            await sim.inject("slow", False)
    assert all_good(samples), {s.tag: s.reason for s in samples.values() if s.reason}
    assert 3.0 < (samples["co2"].value or 0) < 7.0
    assert took_s >= delay_s  # a lower bound set by the fault itself, not a speed claim


@pytest.mark.parametrize(
    ("fault", "is_the_fault"),
    [
        ({"kind": "garbage"}, lambda r: r.startswith("invalid reply: function code 0x")),
        ({"kind": "short_frame"}, halved),
        ({"kind": "slow", "delay_s": 0.6}, lambda r: r == "timeout: no reply within 0.2 s"),
    ],
)
async def test_configured_wire_fault_comes_and_goes_with_its_window(
    fault: dict[str, Any], is_the_fault: Callable[[str], bool]
) -> None:
    """A `[[devices.simulator.faults]]` entry acts only inside its [start_s, +duration_s) window."""
    sim_cfg = IncubatorSimConfig.model_validate(
        {
            "probe_warmup_s": 0.0,
            "door_open_s": 0.0,
            "faults": [{**fault, "start_s": 10.0, "duration_s": 5.0}],
        }
    )
    async with incubator_at(sim_cfg) as (sim, cfg), ModbusTcpDriver(cfg) as driver:
        await read_until(driver, all_good)
        await sim.update(11.0)
        assert fault["kind"] in sim.active_faults
        bad = await read_until(driver, all_bad)
        assert all(is_the_fault(s.reason or "") for s in bad.values()), bad["co2"].reason
        await sim.update(15.0)
        assert not sim.active_faults
        await read_until(driver, all_good)


def test_delay_s_belongs_to_slow_only() -> None:
    """`delay_s` on another kind is a config error, not silently ignored; slow keeps it."""
    slow = FaultSpec.model_validate({"kind": "slow", "start_s": 0, "duration_s": 1, "delay_s": 2})
    assert slow.delay_s == 2.0
    with pytest.raises(ValidationError, match="delay_s applies to kind 'slow' only"):
        FaultSpec.model_validate({"kind": "garbage", "start_s": 0, "duration_s": 1, "delay_s": 2})


async def raw_read(port: int, tid: int, address: int, count: int) -> bytes:
    """One FC 3 request to unit 1 on a fresh socket; the whole reply frame as received."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(struct.pack(">HHHBBHH", tid, 0, 6, 1, 3, address, count))
        async with asyncio.timeout(5.0):
            header = await reader.readexactly(7)
            (length,) = struct.unpack(">H", header[4:6])
            return header + await reader.readexactly(length - 1)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_wire_bytes_of_garbage_and_short_frames(
    incubator: tuple[IncubatorSimulator, ModbusTcpConfig],
) -> None:
    """On the socket: garbage keeps the MBAP header and length; a short frame's count matches."""
    sim, cfg = incubator
    spec = next(s for s in cfg.register_map.registers if s.device_id == 1 and s.function == 3)
    count = spec.words
    good = await raw_read(sim.endpoint[1], 7, spec.address, count)
    assert good[:4] == struct.pack(">HH", 7, 0) and good[7:9] == bytes((3, 2 * count))

    await sim.inject("garbage", True)
    try:
        garbage = await raw_read(sim.endpoint[1], 8, spec.address, count)
    finally:
        await sim.inject("garbage", False)
    assert garbage[:4] == struct.pack(">HH", 8, 0) and garbage[6] == 1
    assert len(garbage) == len(good)
    assert garbage[7] > 0x80 and garbage[7] != 0x83

    await sim.inject("short_frame", True)
    try:
        short = await raw_read(sim.endpoint[1], 9, spec.address, count)
    finally:
        await sim.inject("short_frame", False)
    kept = count // 2 * 2
    assert short[7:9] == bytes((3, kept)) and len(short) == 9 + kept
    assert struct.unpack(">H", short[4:6]) == (3 + kept,)
    assert short[9:] == good[9 : 9 + kept]


async def test_particle_counter_shares_the_wire_faults() -> None:
    """The particle counter's endpoint sends short frames too: BAD 'short reply', then GOOD."""
    cfg = ParticleCounterConfig.model_validate(
        {
            "id": "pc-w",
            "device_class": "particle_counter",
            "area": "grade-b",
            "driver": "lighthouse_remote",
            "host": "127.0.0.1",
            "timeout_s": TIMEOUT_S,
            "reconnect_min_s": 0.02,
            "reconnect_max_s": 0.1,
            "simulator": {"grade": "B", "seed": 5, "clock_start_unix": 1_700_000_000},
        }
    )
    async with ParticleCounterSimulator(cfg, port=0) as sim:
        await sim.advance(0.0)
        cfg = cfg.model_copy(update={"port": sim.endpoint[1]})
        async with ParticleCounterDriver(cfg) as driver:
            await read_until(driver, lambda s: s["flow"].quality is Quality.GOOD)
            await sim.inject("short_frame", True)
            try:
                bad = await read_until(driver, lambda s: s["flow"].quality is Quality.BAD)
            finally:
                await sim.inject("short_frame", False)
            (reason,) = {s.reason for s in bad.values()}
            assert halved(reason), reason
            await read_until(driver, lambda s: s["flow"].quality is Quality.GOOD)
