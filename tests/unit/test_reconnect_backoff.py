"""Modbus TCP and Lighthouse drivers against a scripted device on a loopback socket.

The peer serves fixed register images (or stays silent), so what the device says is
decided by the test; reconnect timing runs on a virtual clock.
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from drivers import lighthouse as lh
from drivers.modbus_tcp import ModbusTcpConfig, ModbusTcpDriver
from drivers.particle_counter import ParticleCounterConfig, ParticleCounterDriver
from drivers.registermap import RegisterMap, RegisterSpec
from drivers.sample import Quality, Sample
from tests.virtual_clock import Clock

MIN_S = 1.0  # reconnect_min_s: a reset backoff never waits longer than this
FAR = 10_000.0  # virtual seconds: past any backoff
TIMEOUT_S = 0.05
T0 = 1_700_000_000  # the counter's record timestamp, Unix s


class Peer:
    """A Modbus TCP device: FC 3/4 from register images, FC 6 stored and echoed.

    `silent`: requests are read and never answered (a gateway whose target is gone).
    """

    def __init__(self) -> None:
        self.holding = [0] * 128
        self.inputs = [0] * 128
        self.silent = False
        self.connections = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            while True:
                tid, _, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                pdu = await reader.readexactly(length - 1)
                if not self.silent:
                    body = self._reply(pdu)
                    writer.write(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the driver closed the connection
        finally:
            writer.close()

    def _reply(self, pdu: bytes) -> bytes:
        function = pdu[0]
        address, count = struct.unpack(">HH", pdu[1:5])
        if function in {3, 4}:
            image = self.holding if function == 3 else self.inputs
            regs = image[address : address + count]
            return bytes([function, 2 * count]) + struct.pack(f">{count}H", *regs)
        if function == 6:
            self.holding[address] = count  # for FC 6 the second word is the value
            return pdu[:5]
        return bytes([function | 0x80, 1])

    def close(self) -> None:
        for writer in self._writers:
            writer.close()


@asynccontextmanager
async def peer() -> AsyncIterator[tuple[Peer, int]]:
    """A peer listening on an OS-assigned loopback port: (peer, port)."""
    device = Peer()
    server = await asyncio.start_server(device.serve, "127.0.0.1", 0)
    try:
        yield device, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        device.close()
        await server.wait_closed()


COMMON: dict[str, object] = {
    "device_class": "x",
    "area": "a",
    "host": "127.0.0.1",
    "timeout_s": TIMEOUT_S,
    "reconnect_min_s": MIN_S,
    "reconnect_max_s": 1000.0,
}


def tcp_driver(port: int, clock: Clock) -> ModbusTcpDriver:
    regs = RegisterMap(name="t", registers=(RegisterSpec(tag="a", address=0, type="u16"),))
    raw = {"id": "d", "driver": "modbus_tcp", "port": port, "register_map": regs, **COMMON}
    cfg = ModbusTcpConfig.model_validate(raw)
    return ModbusTcpDriver(cfg, random.Random(1), clock)


def counter_driver(port: int, clock: Clock) -> ParticleCounterDriver:
    raw = {"id": "pc", "driver": "lighthouse_remote", "port": port, **COMMON}
    cfg = ParticleCounterConfig.model_validate(raw)
    # resume from just before the record the peer holds: the first poll delivers it
    return ParticleCounterDriver(cfg, random.Random(1), resume_after_s=T0 - 60, clock=clock)


def reasons(samples: Sequence[Sample]) -> set[str]:
    return {s.reason or "" for s in samples}


def starts(samples: Sequence[Sample], prefix: str) -> bool:
    return all(r.startswith(prefix) for r in reasons(samples))


# --- the reconnect backoff resets on a reply, not on a connect ------------------------------


async def test_tcp_device_that_connects_but_never_answers_is_retried_ever_more_slowly() -> None:
    """Four connects whose reads time out: the fifth waits far longer than reconnect_min_s."""
    clock = Clock()
    async with peer() as (device, port), tcp_driver(port, clock) as driver:
        device.silent = True
        for _ in range(4):
            clock.t += FAR
            assert starts(await driver.read(), "timeout")
        clock.t += MIN_S  # enough for a backoff reset at every connect
        assert starts(await driver.read(), "disconnected (next connect in")
        assert device.connections == 4


async def test_tcp_backoff_resets_after_a_reply() -> None:
    """After a read that returned data, the next loss waits at most reconnect_min_s again."""
    clock = Clock()
    async with peer() as (device, port), tcp_driver(port, clock) as driver:
        device.silent = True
        for _ in range(4):
            clock.t += FAR
            await driver.read()
        device.silent = False
        clock.t += FAR
        assert [s.quality for s in await driver.read()] == [Quality.GOOD]
        device.silent = True
        assert starts(await driver.read(), "timeout")
        clock.t += MIN_S
        assert starts(await driver.read(), "timeout")  # connected again: waited the minimum
        assert device.connections == 6


async def test_counter_that_connects_but_never_answers_is_retried_ever_more_slowly() -> None:
    """The Lighthouse driver too: a connect alone does not reset its backoff."""
    clock = Clock()
    async with peer() as (device, port), counter_driver(port, clock) as driver:
        device.silent = True
        for _ in range(4):
            clock.t += FAR
            assert starts(await driver.read(), "timeout")
        clock.t += MIN_S
        assert starts(await driver.read(), "disconnected (next connect in")
        assert device.connections == 4


# --- Lighthouse DEVICE ERROR (40003 bit 3) -------------------------------------------------


def running_counter(device: Peer) -> None:
    """Running at the driver's settings (60 s sample), one record in the buffer at T0."""
    device.holding[lh.HR_STATUS] = lh.DeviceStatus.RUNNING
    device.holding[lh.HR_FLOW] = 100  # 1.00 CFM
    device.holding[lh.HR_RECORD_COUNT] = 1
    device.holding[lh.HR_SAMPLE_TIME : lh.HR_SAMPLE_TIME + 2] = lh.words32(60)
    record = lh.RawRecord(T0, 60, 1, 0, (2000, 1000, 500, 100, 10, 1, 0, 0))
    device.inputs[: lh.RECORD_COUNT_REGS] = lh.encode_record(record, 6)


async def test_device_error_bit_makes_live_concentrations_bad() -> None:
    """While 40003 bit 3 is set the concentrations read BAD naming the bit; flow and the
    status code stay live; when the bit clears the record's values are GOOD again."""
    async with peer() as (device, port), counter_driver(port, Clock()) as driver:
        running_counter(device)
        before = {s.tag: s for s in await driver.read()}
        assert before["conc_0_5um"].quality is Quality.GOOD
        device.holding[lh.HR_STATUS] |= lh.DeviceStatus.DEVICE_ERROR
        during = {s.tag: s for s in await driver.read()}
        for tag in ("conc_0_5um", "conc_5_0um", "data_status"):
            assert during[tag].quality is Quality.BAD and during[tag].value is None
            assert "DEVICE ERROR (40003 bit 3)" in (during[tag].reason or "")
        assert during["device_status"].value == 9.0  # RUNNING | DEVICE ERROR
        assert during["flow"].quality is Quality.GOOD
        device.holding[lh.HR_STATUS] = lh.DeviceStatus.RUNNING
        after = {s.tag: s for s in await driver.read()}
        assert after["conc_0_5um"].quality is Quality.GOOD
        assert after["conc_0_5um"].value == before["conc_0_5um"].value


async def test_device_error_does_not_hide_that_the_counter_is_stopped() -> None:
    """Not RUNNING still wins (the driver restarts the counter); the status shows both bits."""
    async with peer() as (device, port), counter_driver(port, Clock()) as driver:
        running_counter(device)
        await driver.read()
        device.holding[lh.HR_STATUS] = lh.DeviceStatus.DEVICE_ERROR
        samples = {s.tag: s for s in await driver.read()}
        assert (samples["conc_0_5um"].reason or "").startswith("counter not running")
