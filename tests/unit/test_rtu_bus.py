"""The 699M profile, RTU config, the shared bus's scheduling and backoff, the cascade model.

Bus tests use a fake serial client (no pty): they check what the bus does with the
replies, timeouts and port failures it is given, on a hand-driven clock.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)

from controller.configload import load_profile
from drivers.codec import encode, plan_reads
from drivers.modbus_reader import apply_validity, decode_request, read_plan
from drivers.modbus_rtu import ModbusRtuConfig, ModbusRtuDriver
from drivers.registermap import RegisterSpec
from drivers.rtubus import RtuBus, RtuBusConfig
from drivers.sample import Quality, Sample
from simulators.dp_cascade import CascadeModel, DpTransmitterSimConfig, RtuBusSimConfig
from simulators.rtu_server import RtuBusSimulator, bus_simulators


def huba_samples(dp1: float, reliability: int) -> list[Sample]:
    """Decode a full 699M image through the real plan and validity rule."""
    specs = load_profile("huba-699m", Path()).registers
    values = {"type_code": 9710, "error_code": 0, "dp1_reliability": reliability}
    memory = [0] * 80
    for spec in specs:
        memory[spec.address] = encode(spec, values.get(spec.tag, dp1))[0]
    samples: list[Sample] = []
    for req in plan_reads(specs, 3):
        samples += decode_request(req, memory[req.address : req.address + req.count], 1)
    by_tag = {s.tag: s for s in samples}
    return apply_validity(specs, [by_tag[s.tag] for s in specs])


def test_reliability_zero_vouches_for_the_values() -> None:
    """Reliability 0: ΔP1, the Pa value and the averages are GOOD, negatives read negative."""
    samples = {s.tag: s for s in huba_samples(-12.0, 0)}
    assert all(s.quality is Quality.GOOD for s in samples.values())
    assert samples["dp1"].value == -12.0 and samples["dp_avg_16s"].value == -12.0
    assert samples["type_code"].value == 9710


def test_reliability_fault_makes_every_pressure_bad() -> None:
    """Reliability ≠ 0: every pressure is BAD naming the register; the status stays GOOD."""
    samples = {s.tag: s for s in huba_samples(45.0, 2)}
    pressures = ["dp1", "dp_pa", "dp_avg_500ms", "dp_avg_1s", "dp_avg_4s", "dp_avg_16s"]
    for tag in pressures:
        assert samples[tag].quality is Quality.BAD and samples[tag].value is None
        assert samples[tag].reason == "dp1_reliability=2"
    assert samples["dp1_reliability"].quality is Quality.GOOD


def test_profile_names_its_source_and_partly_seen_registers() -> None:
    """The profile cites the manual and marks the partly seen block."""
    regmap = load_profile("huba-699m", Path())
    assert any("699M manual" in s for s in regmap.sources)
    partly = {r.tag for r in regmap.registers if "PARTLY SEEN" in r.description}
    assert partly == {"dp_pa", "dp_avg_500ms", "dp_avg_1s", "dp_avg_4s", "dp_avg_16s"}


def rtu_config(**extra: Any) -> ModbusRtuConfig:
    raw = {
        "id": "dp-1",
        "device_class": "room_dp",
        "area": "grade-b",
        "driver": "modbus_rtu",
        "bus": "rs485-1",
        "unit_id": 40,
        "register_map": load_profile("huba-699m", Path()).model_dump(),
    }
    return ModbusRtuConfig.model_validate(raw | extra)


def test_rtu_config_addresses_the_map_to_its_unit() -> None:
    """Every register is read from `unit_id`, whatever the profile's device_id says."""
    assert {r.device_id for r in rtu_config().registers} == {40}


def test_rtu_config_rejects_bad_input() -> None:
    """No map, a unit id outside 1..247 and a nan fault on an integer device are errors."""
    with pytest.raises(ValidationError, match="profile"):
        rtu_config(register_map=None)
    with pytest.raises(ValidationError, match="unit_id"):
        rtu_config(unit_id=248)
    fault = {"kind": "nan", "start_s": 0, "duration_s": 1}
    with pytest.raises(ValidationError, match="sensor_faults"):
        rtu_config(simulator={"faults": [fault]})
    with pytest.raises(ValidationError, match="disconnect"):
        RtuBusSimConfig.model_validate({"faults": [fault]})


def bus_config(**extra: Any) -> RtuBusConfig:
    raw = {"id": "rs485-1", "port": "/dev/null-bus", "post_connect_pause_s": 0.0}
    return RtuBusConfig.model_validate(
        raw | {"slave_backoff_min_s": 1.0, "slave_backoff_max_s": 4.0} | extra
    )


def test_frame_gap_is_three_and_a_half_characters() -> None:
    """3.5 characters of 10 or 11 bits at ≤ 19200 Bd, 1.75 ms above, or the override."""
    assert bus_config().frame_gap_s == pytest.approx(3.5 * 10 / 19200)
    assert bus_config(baudrate=9600, parity="E").frame_gap_s == pytest.approx(3.5 * 11 / 9600)
    assert bus_config(baudrate=115200).frame_gap_s == pytest.approx(0.00175)
    assert bus_config(inter_frame_gap_s=0.01).frame_gap_s == 0.01


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeClient:
    """Answers every unit with its unit id; `dead` units time out; records the order.

    `held` units keep their frame on the wire (`on_wire` set) until `release`; `wrong_fc`
    units answer FC 3 with FC 4; `port_dies` makes the next frame fail with an OSError.
    """

    def __init__(self, clock: Callable[[], float], opens: bool = True) -> None:
        self.clock, self.opens = clock, opens
        self.connected = False
        self.dead: set[int] = set()
        self.held: set[int] = set()
        self.wrong_fc: set[int] = set()
        self.port_dies = False
        self.on_wire = asyncio.Event()
        self.release = asyncio.Event()
        self.calls: list[tuple[int, float]] = []
        self.closed = 0

    async def connect(self) -> bool:
        self.connected = self.opens
        return self.opens

    def close(self) -> None:
        self.closed += 1
        self.connected = False

    async def read_holding_registers(self, address: int, *, count: int, device_id: int) -> Any:
        self.calls.append((device_id, self.clock()))
        await asyncio.sleep(0)  # a real request yields to the loop
        if self.port_dies:
            self.connected = False
            raise OSError(5, "Input/output error")
        if device_id in self.held:
            self.on_wire.set()
            await self.release.wait()
        if device_id in self.dead:
            raise ModbusIOException("no response")
        fc4 = device_id in self.wrong_fc
        reply = ReadInputRegistersResponse if fc4 else ReadHoldingRegistersResponse
        return reply(registers=[device_id] * count, dev_id=device_id)

    read_input_registers = read_holding_registers


def fake_bus(clock: Clock, client: FakeClient, **extra: Any) -> RtuBus:
    return RtuBus(bus_config(**extra), client_factory=lambda _: client, clock=clock)


async def test_requests_are_served_one_at_a_time_in_arrival_order() -> None:
    """Concurrent requests from several slaves get the line FIFO, never overlapping."""
    clock = Clock()
    client = FakeClient(clock)
    async with fake_bus(clock, client, inter_frame_gap_s=0.0) as bus:
        units = [5, 3, 9, 3, 1]
        replies = await asyncio.gather(*(bus.request(3, 0, 2, u) for u in units))
        assert [c[0] for c in client.calls] == units
        assert [r.registers[0] for r in replies] == units
        assert bus.queue_depth == 0


async def test_inter_frame_gap_is_kept() -> None:
    """Back-to-back requests are spaced by at least the frame gap on the monotonic clock."""
    loop = asyncio.get_running_loop()
    client = FakeClient(Clock())
    client.clock = loop.time  # stamp sends with real time
    bus = RtuBus(bus_config(inter_frame_gap_s=0.02), client_factory=lambda _: client)
    async with bus:
        for _ in range(3):
            await bus.request(3, 0, 1, 1)
    stamps = [t for _, t in client.calls]
    assert all(b - a >= 0.02 for a, b in itertools.pairwise(stamps))


async def test_dead_slave_is_backed_off_without_touching_the_line() -> None:
    """After a timeout the slave is refused at once until its backoff ends; others go on."""
    clock = Clock()
    client = FakeClient(clock)
    client.dead.add(7)
    async with fake_bus(clock, client) as bus:
        with pytest.raises(ModbusIOException):
            await bus.request(3, 0, 1, 7)
        assert (bus.unavailable(7) or "").startswith("slave backed off after 1 timeouts")
        sent = len(client.calls)
        with pytest.raises(ModbusIOException):
            await bus.request(3, 0, 1, 7)
        assert len(client.calls) == sent and bus.stats(7).skipped == 1
        assert (await bus.request(3, 0, 1, 2)).registers == [2]
        assert client.closed == 0 and bus.port_open  # a silent slave never closes the port
        clock.t += 5.0  # past the longest backoff
        client.dead.clear()
        assert bus.unavailable(7) is None
        assert (await bus.request(3, 0, 1, 7)).registers == [7]
        assert bus.stats(7).timeouts == 1 and bus.stats(7).replies == 1


async def test_backoff_grows_while_the_slave_stays_silent() -> None:
    """Each further timeout doubles the wait, up to the configured maximum."""
    clock = Clock()
    client = FakeClient(clock)
    client.dead.add(7)
    async with fake_bus(clock, client) as bus:
        waits = []
        for _ in range(5):
            clock.t += 10.0
            with pytest.raises(ModbusIOException):
                await bus.request(3, 0, 1, 7)
            waits.append(bus.stats(7).backoff.remaining_s())
        assert waits[1] > waits[0] * 0.9 and all(w <= 4.0 for w in waits)
        assert bus.stats(7).backoff.failures == 5


async def test_port_that_cannot_open_is_retried_with_backoff() -> None:
    """A missing adapter fails fast as 'disconnected' and is retried only after its backoff."""
    clock = Clock()
    client = FakeClient(clock, opens=False)
    async with fake_bus(clock, client, reopen_min_s=1.0, reopen_max_s=2.0) as bus:
        with pytest.raises(ConnectionException):
            await bus.request(3, 0, 1, 1)
        assert (bus.unavailable(1) or "").startswith("disconnected: port /dev/null-bus")
        with pytest.raises(ConnectionException):
            await bus.request(3, 0, 1, 1)
        assert client.calls == []
        clock.t += 3.0
        client.opens = True
        assert (await bus.request(3, 0, 1, 1)).registers == [1]


async def test_driver_of_a_backed_off_slave_reads_bad_at_once() -> None:
    """The driver returns one BAD sample per tag with the bus's reason, sending nothing."""
    clock = Clock()
    client = FakeClient(clock)
    client.dead.add(40)
    async with fake_bus(clock, client) as bus:
        driver = ModbusRtuDriver(rtu_config(), bus)
        first = await driver.read()
        assert {s.reason for s in first} == {"timeout: no reply within 0.3 s"}
        sent = len(client.calls)
        second = await driver.read()
        assert len(second) == len(driver.tags) and len(client.calls) == sent
        assert all((s.reason or "").startswith("slave backed off") for s in second)
        assert all(s.value is None and s.quality is Quality.BAD for s in second)


async def test_time_queued_behind_another_slave_is_not_a_timeout() -> None:
    """A scan that waits for the line longer than its whole guard still reads GOOD.

    The guard is 0.52 s (one read, timeout 0.01 s); only the bus's per-frame guard applies
    on a shared line, and that starts when the frame has the line.
    """
    client = FakeClient(time.monotonic)
    client.held.add(1)
    plan = plan_reads([RegisterSpec(tag="dp", address=0, type="u16", device_id=2)])
    async with RtuBus(bus_config(timeout_s=5.0), client_factory=lambda _: client) as bus:
        holding = asyncio.create_task(bus.request(3, 0, 1, 1))
        await client.on_wire.wait()
        scan = asyncio.create_task(read_plan(bus.view(2), plan, 0.01))
        await asyncio.sleep(0.6)  # the stimulus: slave 1 keeps the line past that guard
        client.release.set()
        await holding
        samples, down = await scan
    assert down is None
    assert [(s.quality, s.value) for s in samples] == [(Quality.GOOD, 2.0)]


async def test_a_request_cancelled_on_the_wire_keeps_the_line_quiet_for_its_reply() -> None:
    """The next frame waits one reply timeout: the late reply cannot collide or be misread.

    The cancelled request counts as a timeout of its slave, without backing it off.
    """
    loop = asyncio.get_running_loop()
    client = FakeClient(loop.time)
    client.held.add(1)
    async with RtuBus(
        bus_config(timeout_s=0.05), client_factory=lambda _: client, clock=loop.time
    ) as bus:
        first = asyncio.create_task(bus.request(3, 0, 1, 1))
        await client.on_wire.wait()
        cancelled_at = loop.time()
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        assert (await bus.request(3, 0, 1, 2)).registers == [2]
    assert client.calls[-1][1] - cancelled_at >= 0.05
    assert bus.stats(1).timeouts == 1 and not bus.stats(1).backed_off


async def test_a_reply_to_another_request_reads_bad_and_holds_the_line() -> None:
    """FC 4 back for FC 3: BAD 'invalid reply', counted, and the line waits a reply timeout."""
    loop = asyncio.get_running_loop()
    client = FakeClient(loop.time)
    client.wrong_fc.add(3)
    plan = plan_reads([RegisterSpec(tag="dp", address=0, type="u16", device_id=3)])
    async with RtuBus(
        bus_config(timeout_s=0.05), client_factory=lambda _: client, clock=loop.time
    ) as bus:
        samples, down = await read_plan(bus.view(3), plan, 0.05)
        answered_at = loop.time()
        assert (await bus.request(3, 0, 1, 2)).registers == [2]
    assert down is not None and down.reason.startswith("invalid reply: function code 0x04")
    assert [s.quality for s in samples] == [Quality.BAD]
    assert client.calls[-1][1] - answered_at >= 0.05
    assert bus.stats(3).invalid == 1


async def test_port_backoff_grows_until_a_slave_answers() -> None:
    """A port that opens but dies at the first frame backs off longer each time.

    Opening is no proof the line works; only a reply resets the reopen backoff.
    """
    clock = Clock()
    client = FakeClient(clock)
    client.port_dies = True
    async with fake_bus(clock, client, reopen_min_s=1.0, reopen_max_s=8.0) as bus:
        for failures in (1, 2, 3):
            with pytest.raises(ConnectionException):
                await bus.request(3, 0, 1, 1)
            assert bus.port_failures == failures and not bus.port_open
            clock.t += 10.0  # past the longest backoff
        client.port_dies = False
        assert (await bus.request(3, 0, 1, 1)).registers == [1]
        assert bus.port_failures == 0


def cascade(door_open_s: float = 0.0) -> CascadeModel:
    rooms = [
        (1, DpTransmitterSimConfig(setpoint_pa=45.0, seed=1, door_open_s=door_open_s)),
        (2, DpTransmitterSimConfig(setpoint_pa=30.0, seed=2, door_open_s=0.0)),
        (3, DpTransmitterSimConfig(setpoint_pa=15.0, seed=3, door_open_s=0.0)),
    ]
    return CascadeModel(rooms, step_s=0.1)


def test_cascade_is_seeded_and_holds_its_set_points() -> None:
    """Same seeds, same trajectory; with doors shut every room stays near its set point."""
    a, b = cascade(), cascade()
    a.run(600)
    b.run(600)
    assert a.state(2) == b.state(2)
    for unit, sp in {1: 45.0, 2: 30.0, 3: 15.0}.items():
        assert a.state(unit)["dp_avg_16s"] == pytest.approx(sp, abs=0.5)


def test_door_opening_collapses_the_room_and_it_recovers() -> None:
    """An open door drops the room toward the next room down; it recovers once closed."""
    model = cascade(door_open_s=30.0)
    room = model.rooms[1]
    while not room.door_open:
        model.step()
    model.run(150)  # 15 s into the opening
    assert room.pressure_pa < 30.0 + 0.25 * 15.0  # near the Grade C room's 30 Pa
    while room.door_open:
        model.step()
    model.run(600)  # 60 s after closing
    assert room.pressure_pa == pytest.approx(45.0, abs=1.0)
    assert room.door_open_count == 1


def test_one_simulator_per_bus_with_simulated_slaves() -> None:
    """The runner helper builds a simulator only for buses that have simulated slaves."""
    sim = {"setpoint_pa": 30.0}
    devices = [rtu_config(simulator=sim), rtu_config(id="dp-2", unit_id=41, simulator=sim)]
    buses = [bus_config(), bus_config(id="rs485-2", port="/dev/null-bus-2")]
    sims = bus_simulators(buses, devices)
    assert [s.where for s in sims] == ["/dev/null-bus"]
    assert sorted(sims[0].model.rooms) == [40, 41]
    with pytest.raises(ValueError, match="file path"):
        RtuBusSimulator(bus_config(port="socket://127.0.0.1:5020"), devices)
    with pytest.raises(ValueError, match="simulated twice"):
        RtuBusSimulator(bus_config(), [devices[0], devices[0]])
