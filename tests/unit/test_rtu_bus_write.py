"""Writes on a shared RS-485 session: in turn with the reads, never opening the port."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from pymodbus.exceptions import ConnectionException
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    WriteMultipleRegistersResponse,
    WriteSingleRegisterResponse,
)

from drivers.rtubus import RtuBus, RtuBusConfig


class LineClient:
    """A fake port that logs each frame's start and end: overlap would show in the log."""

    def __init__(self) -> None:
        self.connected = False
        self.log: list[tuple[str, str, int]] = []

    async def connect(self) -> bool:
        self.connected = True
        return True

    def close(self) -> None:
        self.connected = False

    async def _frame(self, kind: str, unit: int) -> None:
        self.log.append(("start", kind, unit))
        await asyncio.sleep(0)  # a real frame yields to the loop while on the wire
        await asyncio.sleep(0)
        self.log.append(("end", kind, unit))

    async def read_holding_registers(self, address: int, *, count: int, device_id: int) -> Any:
        await self._frame("read", device_id)
        return ReadHoldingRegistersResponse(registers=[0] * count, dev_id=device_id)

    read_input_registers = read_holding_registers

    async def write_register(self, address: int, value: int, *, device_id: int) -> Any:
        await self._frame("fc6", device_id)
        return WriteSingleRegisterResponse(address=address, registers=[value])

    async def write_registers(self, address: int, values: Sequence[int], *, device_id: int) -> Any:
        await self._frame("fc16", device_id)
        return WriteMultipleRegistersResponse(address=address, count=len(values))


def bus(client: LineClient) -> RtuBus:
    cfg = RtuBusConfig(id="rs485-w", port="/dev/null-bus", post_connect_pause_s=0.0)
    return RtuBus(cfg, client_factory=lambda _: client)


async def test_writes_queue_fifo_with_reads_and_never_interleave() -> None:
    """Concurrent reads and writes of several slaves take the line one at a time, in order."""
    client = LineClient()
    async with bus(client) as line:
        await line.request(3, 0, 1, 1)  # the poll path opens the port
        client.log.clear()
        await asyncio.gather(
            line.request(3, 0, 2, 5),
            line.write(112, [0], 7),
            line.request(4, 0, 2, 7),
            line.write(100, [1, 2], 5),
        )
    assert client.log == [
        (edge, kind, unit)
        for kind, unit in [("read", 5), ("fc6", 7), ("read", 7), ("fc16", 5)]
        for edge in ("start", "end")
    ]


async def test_a_write_never_opens_the_port() -> None:
    """Before the first poll (port closed) a write fails at once and nothing is sent."""
    client = LineClient()
    async with bus(client) as line:
        with pytest.raises(ConnectionException, match="not open"):
            await line.write(112, [0], 7)
        assert client.log == [] and not line.port_open
        assert line.stats(7).skipped == 1
