"""The Modbus TCP driver against a device that misbehaves on the wire (real sockets).

The peer is a few lines of asyncio speaking raw MBAP frames, so it can send what pymodbus'
own server never would: short replies, garbage, exceptions, silence, a closed port.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from drivers.modbus_tcp import ModbusTcpConfig, ModbusTcpDriver
from drivers.sample import Quality, Sample

pytestmark = pytest.mark.integration


class RawDevice:
    """A Modbus TCP 'device' whose reply mode the test chooses: good/short/garbage/exc/silent."""

    def __init__(self) -> None:
        self.mode = "good"
        self.requests = 0
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in self.writers:
                writer.close()
            await self.server.wait_closed()
            self.server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                tid, _, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                fc, _addr, _count = struct.unpack(">BHH", await reader.readexactly(length - 1))
                self.requests += 1
                body = self._reply(fc)
                if body is None:
                    continue
                writer.write(struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body)
                await writer.drain()
        self.writers.discard(writer)
        writer.close()

    def _reply(self, fc: int) -> bytes | None:
        if self.mode == "good":
            return struct.pack(">BBHH", fc, 4, 0x41AC, 0x0000)  # 21.5, ABCD
        if self.mode == "short":
            return struct.pack(">BBH", fc, 2, 0x41AC)
        if self.mode == "exc":
            return struct.pack(">BB", fc | 0x80, 6)
        if self.mode == "garbage":
            return b"\xde\xad\xbe\xef"
        return None  # silent


@pytest_asyncio.fixture(loop_scope="session")
async def device() -> AsyncIterator[RawDevice]:
    dev = RawDevice()
    await dev.start()
    yield dev
    await dev.stop()


def config(port: int) -> ModbusTcpConfig:
    return ModbusTcpConfig.model_validate(
        {
            "id": "raw",
            "device_class": "test",
            "area": "lab",
            "driver": "modbus_tcp",
            "host": "127.0.0.1",
            "port": port,
            "timeout_s": 0.2,
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.2,
            "register_map": {
                "name": "one-float",
                "registers": [{"tag": "temp", "unit": "degC", "address": 0, "type": "float32"}],
            },
        }
    )


async def read_until(driver: ModbusTcpDriver, want: Quality, timeout_s: float = 10) -> Sample:
    """Read until a sample of the wanted quality comes back (reconnects take a few reads)."""
    async with asyncio.timeout(timeout_s):
        while True:
            (sample,) = await driver.read()
            if sample.quality is want:
                return sample
            await asyncio.sleep(0.02)  # poll cadence of the loop under test, not a sync point


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("short", "short reply: 1 of 2 registers"),
        ("exc", "modbus exception 6 (server device busy)"),
        ("garbage", "invalid reply: function code 0xde, exception code 173"),
        ("silent", "timeout: no reply within 0.2 s"),
    ],
)
async def test_bad_reply_is_a_bad_sample_then_recovers(
    device: RawDevice, mode: str, reason: str
) -> None:
    """After a good value, a faulty reply gives BAD with the reason (no 0, no stale value)."""
    async with ModbusTcpDriver(config(device.port)) as driver:
        device.mode = "good"
        good = await read_until(driver, Quality.GOOD)
        assert good.value == 21.5
        device.mode = mode
        (bad,) = await driver.read()
        assert (bad.quality, bad.value, bad.reason) == (Quality.BAD, None, reason)
        device.mode = "good"
        assert (await read_until(driver, Quality.GOOD)).value == 21.5


async def test_refused_connection_backs_off_then_reconnects() -> None:
    """A device that is not listening reads BAD 'disconnected'; it is found once it is back."""
    dev = RawDevice()
    await dev.start()
    port = dev.port
    await dev.stop()
    async with ModbusTcpDriver(config(port)) as driver:
        (first,) = await driver.read()
        assert first.quality is Quality.BAD and first.value is None
        assert first.reason is not None and first.reason.startswith("disconnected")
        (second,) = await driver.read()  # within the backoff: no new connect attempt
        assert second.reason is not None and "next connect in" in second.reason
        await dev.start(port)
        try:
            assert (await read_until(driver, Quality.GOOD)).value == 21.5
        finally:
            await dev.stop()
