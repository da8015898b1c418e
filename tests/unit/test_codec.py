"""Register arithmetic: word orders, scaling, NaN, the Vaisala golden vector, coalescing."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest

from controller.configload import load_profile
from drivers.blockdecode import BlockDecoder
from drivers.codec import DecodeError, decode, encode, plan_reads, raw_value
from drivers.registermap import RegisterSpec


def spec(**kw: object) -> RegisterSpec:
    base: dict[str, object] = {"tag": "x", "address": 0, "type": "float32"}
    base.update(kw)
    return RegisterSpec.model_validate(base)


def test_float32_big_endian_word_order() -> None:
    """21.5 is 0x41AC0000: high word first decodes to 21.5 (shared/libraries.md §1.3)."""
    assert decode(spec(word_order="big"), [0x41AC, 0x0000]) == 21.5


def test_float32_little_endian_word_order() -> None:
    """The same registers with the low word first decode only when the spec says little."""
    assert decode(spec(word_order="little"), [0x0000, 0x41AC]) == 21.5
    assert decode(spec(word_order="little"), [0x41AC, 0x0000]) != pytest.approx(21.5)


def test_gmp252_golden_vector_from_the_wire() -> None:
    """The GMP252 manual's frame F0 03 04 D4 7A 43 E8 33 AB is 465.66 ppm (domain.md §3.5)."""
    framer = FramerRTU(DecodePDU(False))
    request = ReadHoldingRegistersRequest(address=0, count=2, dev_id=0xF0)
    assert framer.buildFrame(request).hex() == "f00300000002d12a"
    used, pdu = framer.handleFrame(bytes.fromhex("F00304D47A43E833AB"), 0, 0)
    assert used == 9 and pdu is not None
    assert pdu.registers == [0xD47A, 0x43E8]
    co2 = spec(word_order="little", unit="ppm")
    assert decode(co2, pdu.registers) == pytest.approx(465.66, abs=0.005)


def test_nan_is_a_decode_error_not_a_number() -> None:
    """A quiet NaN (probe not ready) must never become a value."""
    nan_regs = encode(spec(word_order="little"), math.nan)
    with pytest.raises(DecodeError, match="nan"):
        decode(spec(word_order="little"), nan_regs)


def test_infinity_is_a_decode_error() -> None:
    """An infinite float is out of range, not a reading."""
    with pytest.raises(DecodeError, match="inf"):
        decode(spec(), [0x7F80, 0x0000])


def test_scale_and_offset() -> None:
    """value = raw * scale + offset, with signed 16-bit raw values."""
    s = spec(type="s16", scale=0.1, offset=2.0)
    assert decode(s, [0xFFFB]) == pytest.approx(1.5)  # raw -5
    assert decode(spec(type="u16", scale=0.01), [9350]) == pytest.approx(93.5)


def test_not_available_code_is_a_decode_error() -> None:
    """Vaisala's 0x8000 in a 16-bit register means 'not available', not -327.68."""
    s = spec(type="s16", scale=0.01, not_available_raw=0x8000)
    with pytest.raises(DecodeError, match="not available"):
        decode(s, [0x8000])


def test_32_bit_integers_both_word_orders() -> None:
    """u32 and s32 assemble their two words in the configured order."""
    assert raw_value(spec(type="u32"), [0x0001, 0x0002]) == 0x00010002
    assert raw_value(spec(type="u32", word_order="little"), [0x0002, 0x0001]) == 0x00010002
    assert raw_value(spec(type="s32"), [0xFFFF, 0xFFFE]) == -2


def test_short_register_list_is_an_error() -> None:
    """A float needs two registers; one is a short reply, never half a value."""
    with pytest.raises(DecodeError, match="short reply"):
        decode(spec(), [0x41AC])


@given(
    st.sampled_from(["u16", "s16", "u32", "s32", "float32"]),
    st.sampled_from(["big", "little"]),
    st.integers(min_value=-30000, max_value=30000),
)
def test_encode_decode_round_trip(kind: str, order: str, raw: int) -> None:
    """encode is the inverse of decode for every type and word order."""
    if kind.startswith("u"):
        raw = abs(raw)
    s = spec(type=kind, word_order=order, scale=0.5, offset=-3.0)
    value = raw * 0.5 - 3.0
    assert decode(s, encode(s, value)) == pytest.approx(value)


def test_incubator_profile_coalesces_into_four_reads() -> None:
    """The sparse incubator map (two unit ids, FC 3 and 4, gaps) needs exactly four reads."""
    regmap = load_profile("co2-incubator", Path())
    plan = plan_reads(regmap.registers)
    got = [(r.device_id, r.function, r.address, r.count) for r in plan]
    assert got == [(1, 3, 100, 16), (1, 4, 0, 11), (240, 3, 0, 6), (240, 3, 0x800, 2)]
    covered = sorted(s.tag for r in plan for s, _ in r.specs)
    assert covered == sorted(s.tag for s in regmap.registers)


def test_reads_never_exceed_125_registers_nor_split_a_float() -> None:
    """100 contiguous floats (200 registers) become reads of <= 125 registers, whole floats."""
    specs = [spec(tag=f"t{i}", address=2 * i) for i in range(100)]
    plan = plan_reads(specs)
    assert [r.count for r in plan] == [124, 76]
    for req in plan:
        for s, offset in req.specs:
            assert offset + s.words <= req.count


def test_gap_is_bridged_only_when_allowed() -> None:
    """Registers 0 and 3 are two reads by default, one read with max_gap >= 2."""
    specs = [spec(tag="a", type="u16", address=0), spec(tag="b", type="u16", address=3)]
    assert len(plan_reads(specs)) == 2
    (req,) = plan_reads(specs, max_gap=2)
    assert (req.address, req.count) == (0, 4)
    assert {s.tag: off for s, off in req.specs} == {"a": 0, "b": 3}


@st.composite
def register_maps(draw: st.DrawFn) -> list[RegisterSpec]:
    """Random contiguous-or-gapped maps of every type, word order, scale and no-data code."""
    specs, address = [], 0
    for i in range(draw(st.integers(min_value=1, max_value=12))):
        kind = draw(st.sampled_from(["u16", "s16", "u32", "s32", "float32"]))
        words = 1 if kind.endswith("16") else 2
        address += draw(st.integers(min_value=0, max_value=2))
        specs.append(
            spec(
                tag=f"t{i}",
                address=address,
                type=kind,
                word_order=draw(st.sampled_from(["big", "little"])),
                scale=draw(st.sampled_from([1.0, 0.1, 0.01, 10.0])),
                offset=draw(st.sampled_from([0.0, -40.0])),
                not_available_raw=draw(st.sampled_from([None, 0x8000, 0xFFFF])),
            )
        )
        address += words
    return specs


@given(register_maps(), st.data())
def test_block_decoder_agrees_with_the_reference_decode(
    specs: list[RegisterSpec], data: st.DataObject
) -> None:
    """The compiled one-struct-call decoder gives what `decode` gives, value or reason."""
    for req in plan_reads(specs, max_gap=2):
        words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=req.count, max_size=req.count))
        got = req.decoder.decode(words)
        for (s, offset), value in zip(req.specs, got, strict=True):
            try:
                want: float | str = decode(s, words[offset : offset + s.words])
            except DecodeError as exc:
                want = str(exc)
            if isinstance(want, float) and isinstance(value, float):
                assert value == pytest.approx(want, nan_ok=False)
            else:
                assert value == want


def test_tag_names_that_collide_with_influx_fields_are_refused() -> None:
    """`x_quality` would overwrite the quality field of tag `x` in InfluxDB."""
    with pytest.raises(ValueError, match="reserved"):
        spec(tag="co2_quality")


def test_no_data_code_of_a_32_bit_value_honours_the_word_order() -> None:
    """LSW first: [0x0000, 0xFFFF] on the wire is 0xFFFF0000, not the no-data code 0xFFFF."""
    spec = RegisterSpec(
        tag="t", address=0, type="u32", word_order="little", not_available_raw=0xFFFF
    )
    assert decode(spec, [0x0000, 0xFFFF]) == 0xFFFF0000
    with pytest.raises(DecodeError, match="not available"):
        decode(spec, [0xFFFF, 0x0000])
    block = BlockDecoder([(spec, 0)], 2)
    assert block.decode([0x0000, 0xFFFF]) == [0xFFFF0000]
    assert block.decode([0xFFFF, 0x0000]) == ["not available (device sent its no-data code)"]
