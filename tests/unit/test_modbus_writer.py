"""Modbus writes without a device: what may be written, how it is encoded, what a reply means."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.pdu import ExceptionResponse
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    WriteMultipleRegistersResponse,
    WriteSingleRegisterResponse,
)

from drivers.codec import decode, encode
from drivers.modbus_writer import RegisterWriter, encode_write
from drivers.registermap import RegisterSpec


def spec(**kw: Any) -> RegisterSpec:
    base: dict[str, Any] = {"tag": "sp", "address": 100, "type": "u16", "writable": True}
    return RegisterSpec.model_validate(base | kw)


SPECS = (
    spec(tag="heater_demand", type="s16", scale=0.1, address=113),
    spec(tag="temp_setpoint", type="float32", address=100),
    spec(tag="count_sp", type="u32", word_order="little", address=120),
    spec(tag="chamber_temp", type="float32", address=0, function=4, writable=True),
    spec(tag="read_only", address=130, writable=False),
)


class FakeClient:
    """Records writes and answers with what `reply` says (a PDU, or an exception to raise)."""

    def __init__(self, reply: object = None) -> None:
        self.calls: list[tuple[int, int, list[int], int]] = []
        self.reply = reply

    async def write_register(self, address: int, value: int, *, device_id: int) -> Any:
        self.calls.append((6, address, [value], device_id))
        return self._answer(WriteSingleRegisterResponse(address=address, registers=[value]))

    async def write_registers(self, address: int, values: Sequence[int], *, device_id: int) -> Any:
        self.calls.append((16, address, list(values), device_id))
        return self._answer(WriteMultipleRegistersResponse(address=address, count=len(values)))

    def _answer(self, ok: object) -> object:
        if isinstance(self.reply, BaseException):
            raise self.reply
        return ok if self.reply is None else self.reply


class HangingClient(FakeClient):
    async def write_register(self, address: int, value: int, *, device_id: int) -> Any:
        await asyncio.Event().wait()  # a library that never returns


def writer() -> RegisterWriter:
    return RegisterWriter(SPECS, "device inc-x")


async def send(client: FakeClient, tag: str, value: float, timeout_s: float = 0.5) -> None:
    w = writer()
    s, regs = w.prepare(tag, value)
    await w.write(client, s, regs, value=value, timeout_s=timeout_s)


async def test_one_register_goes_as_fc6_two_as_fc16() -> None:
    """An s16 demand is one FC 6 write; a float32 set point one FC 16 write of two words."""
    client = FakeClient()
    await send(client, "heater_demand", 55.5)
    await send(client, "temp_setpoint", 36.5)
    await send(client, "count_sp", 70000)
    assert client.calls == [
        (6, 113, [555], 1),
        (16, 100, encode(SPECS[1], 36.5), 1),
        (16, 120, [70000 & 0xFFFF, 70000 >> 16], 1),  # least significant word first
    ]
    assert decode(SPECS[1], client.calls[1][2]) == 36.5


@pytest.mark.parametrize("tag", ["unknown", "read_only", "chamber_temp"])
def test_unknown_read_only_and_input_register_tags_are_refused(tag: str) -> None:
    """Only writable holding registers (FC 3) can be written; the message names the tag."""
    with pytest.raises(ValueError, match=f"device inc-x: '{tag}' is not a writable tag"):
        writer().prepare(tag, 1.0)


@pytest.mark.parametrize(
    ("tag", "value"),
    [
        ("heater_demand", 3276.8),  # 32768 raw: one past s16
        ("heater_demand", -3276.9),
        ("count_sp", -1.0),  # u32 has no negative values
        ("count_sp", 2.0**32),
        ("heater_demand", math.nan),
        ("temp_setpoint", math.inf),
        ("temp_setpoint", 1e39),  # beyond float32
    ],
)
def test_values_the_register_cannot_hold_are_refused(tag: str, value: float) -> None:
    """Out of the type's range after scaling, NaN, inf: ValueError naming tag and value."""
    with pytest.raises(ValueError, match=f"cannot write {tag}: "):
        writer().prepare(tag, value)


def test_u16_range_is_checked_after_scale_and_offset() -> None:
    """A u16 with scale 0.01 and offset -40 holds -40..615.35 and nothing outside."""
    s = spec(scale=0.01, offset=-40.0)
    assert encode_write(s, -40.0) == [0]
    assert encode_write(s, 615.35) == [0xFFFF]
    for outside in (-40.01, 615.36):
        with pytest.raises(ValueError, match=r"sp: .* does not fit u16"):
            encode_write(s, outside)


@given(st.integers(-32768, 32767))
def test_every_s16_raw_value_round_trips(raw: int) -> None:
    """encode_write accepts exactly the s16 range and decodes back to the value."""
    s = SPECS[0]
    assert decode(s, encode_write(s, raw * 0.1)) == pytest.approx(raw * 0.1)


async def test_exception_reply_is_a_runtime_error_with_its_name() -> None:
    """A Modbus exception 3 reply raises RuntimeError naming device, tag and exception."""
    client = FakeClient(ExceptionResponse(0x10, 3))
    with pytest.raises(
        RuntimeError,
        match=r"device inc-x: write temp_setpoint=80 refused: .*3 \(illegal data value\)",
    ):
        await send(client, "temp_setpoint", 80.0)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ModbusIOException("no response"), "no reply"),
        (ConnectionException("socket closed"), "disconnected"),
    ],
)
async def test_link_failures_are_runtime_errors(error: Exception, reason: str) -> None:
    """No reply or a lost connection: RuntimeError with the reason, nothing swallowed."""
    with pytest.raises(RuntimeError, match=f"write heater_demand=10 failed: {reason}"):
        await send(FakeClient(error), "heater_demand", 10.0)


async def test_a_hanging_library_call_times_out() -> None:
    """A call that never returns is cut off by the guard and reported as a timeout."""
    with pytest.raises(RuntimeError, match=r"timeout: no reply within 0\.01 s"):
        await send(HangingClient(), "heater_demand", 10.0, timeout_s=0.01)


@pytest.mark.parametrize(
    ("tag", "value", "reply"),
    [
        ("heater_demand", 55.5, WriteSingleRegisterResponse(address=113, registers=[7])),
        ("heater_demand", 55.5, WriteSingleRegisterResponse(address=112, registers=[555])),
        ("heater_demand", 55.5, ReadHoldingRegistersResponse(registers=[555])),
        ("temp_setpoint", 36.5, WriteMultipleRegistersResponse(address=100, count=1)),
        ("temp_setpoint", 36.5, WriteMultipleRegistersResponse(address=102, count=2)),
        ("temp_setpoint", 36.5, WriteSingleRegisterResponse(address=100, registers=[0])),
    ],
)
async def test_a_reply_that_does_not_echo_the_write_fails_it(
    tag: str, value: float, reply: object
) -> None:
    """FC 6 must echo address and value, FC 16 address and count, with the same code."""
    with pytest.raises(RuntimeError, match=f"write {tag}={value:g} failed: invalid reply: "):
        await send(FakeClient(reply), tag, value)
