"""Lighthouse REMOTE: conversion, record decoding, status bits, config, and the counter model."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
    WriteSingleRegisterResponse,
)

from controller.configload import load_profile
from drivers import lighthouse as lh
from drivers.particle_counter import ParticleCounterConfig, conc_tag
from simulators.particle_counter import (
    LIMIT_0_5UM_PER_M3,
    ParticleCounterModel,
    ParticleCounterSimConfig,
)

LITRES_PER_FT3 = 28.316846592  # 12 in × 12 in × 12 in × 16.387064 cm³/in³


def device(**extra: object) -> ParticleCounterConfig:
    return ParticleCounterConfig.model_validate(
        {
            "id": "pc1",
            "device_class": "particle_counter",
            "area": "grade-b-corridor",
            "driver": "lighthouse_remote",
            "host": "127.0.0.1",
            **extra,
        }
    )


# --- conversion -----------------------------------------------------------------------------


def test_one_cubic_foot_sample_converts_with_the_ft3_to_m3_factor() -> None:
    """1000 counts in 60 s at 1.00 CFM (1 ft³ sampled) is 1000/ft³ = 35 314.7/m³."""
    assert lh.per_m3(1000, 1.0, 60) == pytest.approx(1000 / (LITRES_PER_FT3 / 1000), rel=1e-12)
    assert lh.per_m3(1000, 1.0, 60) == pytest.approx(35_314.67, abs=0.01)


def test_volume_follows_flow_and_sample_time() -> None:
    """count / (CFM × sample_s / 60) per ft³: half the time or half the flow doubles it."""
    full = lh.per_m3(100, 1.0, 60)
    assert lh.per_m3(100, 1.0, 30) == pytest.approx(2 * full)
    assert lh.per_m3(100, lh.flow_cfm(50), 60) == pytest.approx(2 * full)
    assert lh.per_m3(100, 0.1, 600) == pytest.approx(full)


def test_flow_register_is_hundredths_of_a_cfm() -> None:
    """40023 = 100 means 1.00 CFM (28.3 L/min)."""
    assert lh.flow_cfm(100) == 1.0
    assert lh.flow_cfm(85) == 0.85


@pytest.mark.parametrize(("flow", "sample_s"), [(0.0, 60), (1.0, 0)])
def test_no_sampled_volume_is_an_error_not_zero(flow: float, sample_s: int) -> None:
    """Without flow or sample time there is no concentration: an error, never 0 or inf."""
    with pytest.raises(ValueError, match="no sampled volume"):
        lh.per_m3(5, flow, sample_s)


# --- record decoding and status bits -------------------------------------------------------


def test_record_block_decodes_big_endian_high_word_first() -> None:
    """Hand-built block: timestamp, sample time, status 6 and a count above 65535."""
    regs = [0] * lh.RECORD_COUNT_REGS
    regs[0:2] = [0x6553, 0xF1F0]  # 1 700 000 240 s
    regs[2:4] = [0x0000, 0x003C]  # 60 s
    regs[4:6] = [0x0000, 0x0007]  # location 7
    regs[6:8] = [0x0000, 0x0006]  # flow alert + particle overflow
    regs[8:10] = [0x0001, 0x1170]  # channel 1: 70 000
    regs[10:12] = [0x0000, 0x0400]  # channel 2: 1024
    regs[22:24] = [0x0000, 0x0003]  # channel 8: 3
    record = lh.decode_record(regs)
    assert record.timestamp_s == 1_700_000_240
    assert record.sample_time_s == 60
    assert record.location == 7
    assert record.data_status == 6
    assert record.counts == (70_000, 1024, 0, 0, 0, 0, 0, 3)


def test_short_record_block_is_rejected() -> None:
    """A block that cannot hold 8 channels is an error, not a record of zeros."""
    with pytest.raises(ValueError, match="too short"):
        lh.decode_record([0] * 20)


@given(
    t=st.integers(-(2**31), 2**31 - 1),
    sample=st.integers(1, 86_399),
    status=st.integers(0, 127),
    counts=st.lists(st.integers(0, 2**32 - 1), min_size=8, max_size=8),
)
def test_encode_decode_round_trip(t: int, sample: int, status: int, counts: list[int]) -> None:
    """What the simulator serves decodes back to the same record."""
    record = lh.RawRecord(t, sample, 1, status, tuple(counts))
    assert lh.decode_record(lh.encode_record(record, 6)) == record


def test_record_index_minus_one_is_0xffff() -> None:
    """40025 is signed: -1 (latest record) is written as 0xFFFF and reads back as -1."""
    assert lh.LATEST_RECORD == 0xFFFF
    assert lh.s16(0xFFFF) == -1
    assert lh.s16(0x7FFF) == 32767


def test_device_status_bits() -> None:
    """40003: bit0 RUNNING, bit1 SAMPLING, bit2 NEW DATA, bit3 DEVICE ERROR."""
    status = lh.DeviceStatus(7)
    assert lh.DeviceStatus.RUNNING in status
    assert lh.DeviceStatus.SAMPLING in status
    assert lh.DeviceStatus.NEW_DATA in status
    assert lh.DeviceStatus.DEVICE_ERROR not in status


@pytest.mark.parametrize(
    ("status", "bad", "reason"),
    [
        (0, False, None),
        (16, False, None),  # a threshold bit is information, not a measurement problem
        (1, False, "laser alert"),
        (2, False, "flow alert"),
        (6, False, "flow alert; particle overflow (count is a lower bound)"),
        (8, True, "instrument malfunction (service)"),
        (0x4A, True, "instrument malfunction (service); sampler error; flow alert"),
    ],
)
def test_data_status_verdict(status: int, bad: bool, reason: str | None) -> None:
    """Malfunction and sampler error make a record BAD; laser/flow alert and overflow UNCERTAIN."""
    assert lh.status_verdict(status) == (bad, reason)


def test_ascii_registers_round_trip() -> None:
    """Product name: two characters per register, first in the high byte, NUL-terminated."""
    regs = lh.ascii_regs("REMOTE 3104", 8)
    assert regs[0] == ord("R") << 8 | ord("E")
    assert lh.ascii_text(regs) == "REMOTE 3104"


def test_profile_agrees_with_the_driver_constants() -> None:
    """config/profiles/lighthouse-remote.toml and drivers/lighthouse.py name the same addresses."""
    regs = {r.tag: r for r in load_profile("lighthouse-remote", Path()).registers}
    expected = {
        ("command", 3): lh.HR_COMMAND,
        ("device_status", 3): lh.HR_STATUS,
        ("flow", 3): lh.HR_FLOW,
        ("record_count", 3): lh.HR_RECORD_COUNT,
        ("record_index", 3): lh.HR_RECORD_INDEX,
        ("clock", 3): lh.HR_CLOCK,
        ("initial_delay", 3): lh.HR_INITIAL_DELAY,
        ("hold_time", 3): lh.HR_HOLD_TIME,
        ("sample_time", 3): lh.HR_SAMPLE_TIME,
        ("record_timestamp", 4): lh.IR_TIMESTAMP,
        ("record_sample_time", 4): lh.IR_SAMPLE_TIME,
        ("record_data_status", 4): lh.IR_DATA_STATUS,
        ("record_channel_1", 4): lh.IR_CHANNELS,
        ("record_valid_particle_channels", 4): lh.IR_VALID_PARTICLE,
    }
    for (tag, function), address in expected.items():
        assert (regs[tag].function, regs[tag].address) == (function, address), tag
    assert regs["flow"].scale == 0.01
    assert regs["record_channel_8"].address == lh.IR_CHANNELS + 14


# --- config ------------------------------------------------------------------------------


def test_config_defaults_report_half_and_five_micron() -> None:
    """Defaults: 60 s samples, the 0.5 and 5.0 µm channels of a six-channel REMOTE 3104."""
    cfg = device()
    assert cfg.sample_time_s == 60
    assert cfg.channels_um == (0.5, 5.0)
    assert [conc_tag(s) for s in cfg.channels_um] == ["conc_0_5um", "conc_5_0um"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"channels_um": [0.5]}, "must include"),
        ({"channels_um": [0.5, 5.0, 2.0]}, "not channels of the instrument"),
        ({"channel_sizes_um": [0.5, 0.3, 5.0]}, "strictly increasing"),
        ({"sample_time_s": 86_400}, "less than or equal"),
        ({"simulator": {"faults": [{"kind": "nan", "start_s": 0, "duration_s": 1}]}}, "nan"),
        ({"simulator": {"grade": "E"}}, "grade"),
    ],
)
def test_config_rejects(extra: dict[str, object], message: str) -> None:
    """Wrong channels, an out-of-range sample time or a NaN fault are config errors."""
    with pytest.raises(ValidationError, match=message):
        device(**extra)


# --- the counter model -------------------------------------------------------------------


def model(**sim: object) -> ParticleCounterModel:
    cfg = ParticleCounterSimConfig.model_validate(sim)
    return ParticleCounterModel(cfg, (0.3, 0.5, 1.0, 3.0, 5.0, 10.0), 1_700_000_000)


def test_records_come_every_sample_plus_hold_with_the_device_clock() -> None:
    """Start, 60 s sample + 30 s hold: records at 60, 150, 240 s of device time."""
    counter = model()
    counter.sample_s, counter.hold_s = 60, 30
    counter.start()
    counter.run_to(250.0)
    assert [r.timestamp_s - 1_700_000_000 for r in counter.buffer] == [60, 150, 240]
    assert counter.new_data
    assert counter.status & lh.DeviceStatus.RUNNING


def test_channels_are_cumulative() -> None:
    """Each channel counts particles >= its size, so counts never rise with size."""
    counter = model(grade="D", seed=3)
    counter.start()
    counter.run_to(60.0 * 200)
    for record in counter.buffer:
        assert all(a >= b for a, b in zip(record.counts, record.counts[1:6], strict=False))


@pytest.mark.parametrize("grade", ["A", "B", "C", "D"])
def test_mean_concentration_follows_the_grade_well_below_its_limit(grade: str) -> None:
    """Without excursions the 0.5 µm mean is ~5 % of the Annex 1 limit, so far below it."""
    counter = model(grade=grade, seed=1, excursion_rate=0.0)
    counter.start()
    counter.run_to(60.0 * 400)
    conc = [lh.per_m3(r.counts[1], 1.0, 60) for r in counter.buffer]
    limit = LIMIT_0_5UM_PER_M3[grade]
    assert 0.02 * limit < statistics.mean(conc) < 0.1 * limit


def test_excursions_cross_the_limit() -> None:
    """At excursion rate 1 every sample is 30 × the mean: above the grade's 0.5 µm limit."""
    counter = model(grade="C", excursion_rate=1.0)
    counter.start()
    counter.run_to(60.0 * 20)
    conc = [lh.per_m3(r.counts[1], 1.0, 60) for r in counter.buffer]
    assert min(conc) > LIMIT_0_5UM_PER_M3["C"]


def test_ring_buffer_keeps_the_newest() -> None:
    """A full buffer drops its oldest record for each new one."""
    counter = model(buffer_records=5)
    counter.start()
    counter.run_to(60.0 * 12)
    assert counter.records_taken == 12
    assert [r.timestamp_s - 1_700_000_000 for r in counter.buffer] == [480, 540, 600, 660, 720]


def test_same_seed_same_counts() -> None:
    """One seed, one sequence of records, on every machine."""
    a, b = model(seed=9), model(seed=9)
    for counter in (a, b):
        counter.start()
        counter.run_to(60.0 * 30)
    assert list(a.buffer) == list(b.buffer)


def test_stopped_counter_takes_no_records() -> None:
    """Command 12 aborts the sample in progress; nothing is recorded while stopped."""
    counter = model()
    counter.start()
    counter.run_to(90.0)
    counter.stop()
    counter.run_to(600.0)
    assert len(counter.buffer) == 1
    assert counter.flow_raw == 0


# --- the Modbus calls -----------------------------------------------------------------------


class ReplyClient:
    """Stands in for AsyncModbusTcpClient: every request gets the one PDU it was given."""

    def __init__(self, reply: ModbusPDU) -> None:
        self.reply = reply
        self.connected = False

    async def connect(self) -> bool:
        self.connected = True
        return True

    def close(self) -> None:
        self.connected = False

    async def read_holding_registers(self, address: int, *, count: int, device_id: int) -> Any:
        return self.reply

    read_input_registers = read_holding_registers

    async def write_register(self, address: int, value: int, *, device_id: int) -> Any:
        return self.reply


async def session(monkeypatch: pytest.MonkeyPatch, reply: ModbusPDU) -> lh.Session:
    monkeypatch.setattr(lh, "AsyncModbusTcpClient", lambda *_a, **_k: ReplyClient(reply))
    s = lh.Session("127.0.0.1", 502, 1, 0.3)
    assert await s.connect()
    return s


async def test_matching_replies_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """FC 3 answered by FC 3 with the count asked; FC 6 echoed: no error."""
    s = await session(monkeypatch, ReadHoldingRegistersResponse(registers=[1, 2]))
    assert await s.read_holding(lh.HR_FLOW, 2) == [1, 2]
    s = await session(monkeypatch, WriteSingleRegisterResponse(address=24, registers=[0xFFFF]))
    await s.write(lh.HR_RECORD_INDEX, -1)


@pytest.mark.parametrize(
    ("reply", "detail"),
    [
        (ReadInputRegistersResponse(registers=[1, 2]), "function code 0x04"),
        (ReadHoldingRegistersResponse(registers=[1, 2, 3]), "3 registers, 2 asked"),
    ],
)
async def test_a_read_reply_to_another_request_is_invalid(
    monkeypatch: pytest.MonkeyPatch, reply: ModbusPDU, detail: str
) -> None:
    """Another function code or extra registers: DeviceError 'invalid reply', link down."""
    s = await session(monkeypatch, reply)
    with pytest.raises(lh.DeviceError, match=f"^invalid reply: .*{detail}") as caught:
        await s.read_holding(lh.HR_FLOW, 2)
    assert caught.value.link_down


@pytest.mark.parametrize(
    "reply",
    [
        WriteSingleRegisterResponse(address=24, registers=[5]),
        WriteSingleRegisterResponse(address=1, registers=[0xFFFF]),
        ReadHoldingRegistersResponse(registers=[24, 0xFFFF]),
    ],
)
async def test_a_write_not_echoed_fails(monkeypatch: pytest.MonkeyPatch, reply: ModbusPDU) -> None:
    """An FC 6 reply must echo address and value: anything else is an invalid reply."""
    s = await session(monkeypatch, reply)
    with pytest.raises(lh.DeviceError, match=r"^invalid reply: ") as caught:
        await s.write(lh.HR_RECORD_INDEX, -1)
    assert caught.value.link_down
