"""Status registers downgrade the values they vouch for; replies must answer their request."""

from __future__ import annotations

from typing import Any

import pytest
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
    WriteSingleRegisterResponse,
)

from drivers.codec import plan_reads
from drivers.modbus_reader import apply_validity, read_plan
from drivers.registermap import RegisterSpec
from drivers.sample import Quality, Sample

STATUS = RegisterSpec(tag="status", address=10, type="u16")
CO2 = RegisterSpec.model_validate(
    {
        "tag": "co2",
        "unit": "%",
        "address": 0,
        "type": "float32",
        "validity": {"tag": "status", "good": [0], "uncertain": [2]},
    }
)


def run(status: Sample) -> Sample:
    co2 = Sample.good("co2", 5.0, "%", 1)
    return apply_validity([CO2, STATUS], [co2, status])[0]


def test_good_status_keeps_the_value() -> None:
    """Status 0: the value stands as read."""
    assert run(Sample.good("status", 0, "", 1)) == Sample.good("co2", 5.0, "%", 1)


def test_uncertain_status_keeps_value_with_reason() -> None:
    """Status 2 (not reliable): the value is kept but marked uncertain with the code."""
    out = run(Sample.good("status", 2, "", 1))
    assert (out.quality, out.value, out.reason) == (Quality.UNCERTAIN, 5.0, "status=2")


def test_other_status_makes_the_value_bad() -> None:
    """Status 256 (not ready): BAD, and no value survives."""
    out = run(Sample.good("status", 256, "", 1))
    assert (out.quality, out.value, out.reason) == (Quality.BAD, None, "status=256")


def test_unreadable_status_makes_the_value_uncertain() -> None:
    """A value whose status could not be read cannot be called good."""
    out = run(Sample.bad("status", "", "timeout", 1))
    assert (out.quality, out.value, out.reason) == (Quality.UNCERTAIN, 5.0, "status unreadable")


class ReplyClient:
    """Answers every read with one fixed PDU, whatever was asked."""

    def __init__(self, reply: ModbusPDU) -> None:
        self.reply = reply

    async def read_holding_registers(self, address: int, *, count: int, device_id: int) -> Any:
        return self.reply

    read_input_registers = read_holding_registers


TWO_REGISTERS = plan_reads(
    [RegisterSpec(tag="a", address=0, type="u16"), RegisterSpec(tag="b", address=1, type="u16")]
)


async def test_a_reply_that_answers_the_request_is_good() -> None:
    """FC 3 asked for two registers, FC 3 with two registers back: both values GOOD."""
    client = ReplyClient(ReadHoldingRegistersResponse(registers=[5, 6]))
    samples, down = await read_plan(client, TWO_REGISTERS, 0.3)
    assert [(s.value, s.quality) for s in samples] == [(5.0, Quality.GOOD), (6.0, Quality.GOOD)]
    assert down is None


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (ReadInputRegistersResponse(registers=[1234, 1234]), "function code 0x04"),
        (ReadHoldingRegistersResponse(registers=[7] * 5), "5 registers, 2 asked"),
        (WriteSingleRegisterResponse(address=0, registers=[2]), "function code 0x06"),
    ],
)
async def test_a_reply_to_another_request_is_bad_and_drops_the_link(
    reply: ModbusPDU, reason: str
) -> None:
    """Another function code or extra registers: BAD 'invalid reply', the link resyncs."""
    samples, down = await read_plan(ReplyClient(reply), TWO_REGISTERS, 0.3)
    assert down is not None and down.link_down
    assert down.reason.startswith("invalid reply: ") and reason in down.reason
    assert {(s.quality, s.value, s.reason) for s in samples} == {(Quality.BAD, None, down.reason)}
