"""The compiled block decoder and `codec.decode` agree on float32 no-data codes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.codec import DecodeError, decode, encode, plan_reads
from drivers.registermap import RegisterSpec, WordOrder

NO_DATA = "not available (device sent its no-data code)"
MINUS_9999 = 0xC61C3C00  # -9999.0 as float32


def float_tag(code: int, word_order: WordOrder = "big") -> RegisterSpec:
    return RegisterSpec(
        tag="t", address=0, type="float32", word_order=word_order, not_available_raw=code
    )


def reference(spec: RegisterSpec, words: list[int]) -> float | str:
    """What `codec.decode` says: the value, or the reason it is not one."""
    try:
        return decode(spec, words)
    except DecodeError as exc:
        return str(exc)


@pytest.mark.parametrize("word_order", ["big", "little"])
def test_float_no_data_code_is_bad_in_both_decoders(word_order: WordOrder) -> None:
    """-9999.0 sent as the device's no-data code 0xC61C3C00 is BAD, never a GOOD -9999."""
    spec = float_tag(MINUS_9999, word_order)
    words = encode(spec, -9999.0)
    (req,) = plan_reads([spec])
    assert reference(spec, words) == NO_DATA
    assert req.decoder.good_values(words) is None
    assert req.decoder.decode(words) == [NO_DATA]


def test_float_whose_value_equals_the_code_as_an_integer_stays_good() -> None:
    """A code of 0x8000 means the bits 0x00008000, not the value 32768.0, which is good."""
    spec = float_tag(0x8000)
    words = encode(spec, 32768.0)
    (req,) = plan_reads([spec])
    assert reference(spec, words) == 32768.0
    assert req.decoder.good_values(words) == [32768.0]
    assert req.decoder.decode(words) == [32768.0]


@given(
    code=st.integers(0, 0xFFFF_FFFF),
    other=st.integers(0, 0xFFFF_FFFF),
    sends_code=st.booleans(),
    word_order=st.sampled_from(["big", "little"]),
)
def test_block_decoder_agrees_with_decode_on_any_float_code(
    code: int, other: int, sends_code: bool, word_order: WordOrder
) -> None:
    """Whatever the code (NaN patterns, -0.0, ±inf too) and whatever is sent, both agree."""
    spec = float_tag(code, word_order)
    bits = code if sends_code else other
    hi, lo = bits >> 16, bits & 0xFFFF
    words = [hi, lo] if word_order == "big" else [lo, hi]
    (req,) = plan_reads([spec])
    want = reference(spec, words)
    (got,) = req.decoder.decode(words)
    assert got == want
    fast = req.decoder.good_values(words)
    assert fast == ([want] if isinstance(want, float) else None)
