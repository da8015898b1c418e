"""The `$CC` record: what is accepted, every reason a line is rejected, and CRC coverage."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.cellcount_record import (
    CellCount,
    RecordError,
    crc16,
    escape_sample_id,
    format_record,
    parse_record,
    unescape_sample_id,
)

T_NS = 1_795_337_417_000_000_000  # 2026-11-22T08:50:17Z
GOOD = CellCount("NC2-100412", "BATCH-001-0007", T_NS, 1.346e6, 1.258e6, 93.5, 9.49)


def line_of(body: str) -> bytes:
    """A line with a correct CRC around `body` (the text between `$` and `*`)."""
    return f"${body}*{crc16(body.encode()):04X}".encode()


def reason(line: bytes) -> str:
    with pytest.raises(RecordError) as info:
        parse_record(line)
    return info.value.reason


def test_crc_is_xmodem() -> None:
    """The checksum is CRC-16/XMODEM: its standard check value for "123456789" is 0x31C3."""
    assert crc16(b"123456789") == 0x31C3


def test_good_record_parses_with_instrument_time() -> None:
    """A documented example line parses to its fields and the instrument's UTC time."""
    line = b"$CC,NC2-100412,BATCH-001-0007,2026-11-22T08:50:17Z,1.346E+06,1.258E+06,93.5,9.49*ABB8"
    assert parse_record(line) == GOOD
    assert format_record(GOOD) == line + b"\r\n"


def test_sample_id_escapes_separators() -> None:
    """Separators, `$`, `\\` and non-ASCII in a sample id are escaped and come back intact."""
    text = "Donor 7, bag $2 * 50\\50 µL"
    escaped = escape_sample_id(text)
    assert not set("$*,") & set(escaped)
    assert unescape_sample_id(escaped) == text
    assert parse_record(format_record(GOOD._replace(sample_id=text)).rstrip()).sample_id == text


BODY = "CC,NC2-100412,S1,2026-11-22T08:50:17Z,{total},{viable},{viab},{diam}"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"\x00\xffnoise", "garbage"),
        (b"GPGGA,123519,4807.038,N", "garbage"),
        (b"$CC,NC2-100412,S1,2026-11-22T08:5", "truncated"),
        (b"$CC,NC2-100412,S1,2026-11-22T08:50:17Z,1.0E+06,9.0E+05,90.0,9.40*12", "truncated"),
        (
            line_of(BODY.format(total="1.0E+06", viable="9.0E+05", viab="90.0", diam="9.40"))[:-1]
            + b"0",
            "checksum",
        ),
        (line_of("CC,NC2-100412,S1,2026-11-22T08:50:17Z,1.0E+06,9.0E+05,90.0"), "fields"),
        (line_of(BODY.format(total="nan", viable="9.0E+05", viab="90.0", diam="9.40")), "fields"),
        (line_of("CC,nc2 bad,S1,2026-11-22T08:50:17Z,1.0E+06,9.0E+05,90.0,9.40"), "fields"),
        (line_of("CC,NC2-100412,,2026-11-22T08:50:17Z,1.0E+06,9.0E+05,90.0,9.40"), "fields"),
        (line_of("CC,NC2-100412,S\\G1,2026-11-22T08:50:17Z,1.0E+06,9.0E+05,90.0,9.40"), "fields"),
        (line_of("CC,NC2-100412,S1,2026-13-22T08:50:17Z,1.0E+06,9.0E+05,90.0,9.40"), "timestamp"),
        (line_of("CC,NC2-100412,S1,22.11.2026 08:50:17,1.0E+06,9.0E+05,90.0,9.40"), "timestamp"),
        (
            line_of("CC,NC2-100412,S1,2026-11-22T08:50:17+01:00,1.0E+06,9.0E+05,90.0,9.40"),
            "timestamp",
        ),
        (
            line_of(BODY.format(total="1.0E+06", viable="1.3E+06", viab="130.0", diam="9.40")),
            "range",
        ),
        (line_of(BODY.format(total="-1.0E+06", viable="0", viab="0.0", diam="9.40")), "range"),
        (line_of(BODY.format(total="1.0E+06", viable="-5", viab="0.0", diam="9.40")), "range"),
        (
            line_of(BODY.format(total="2.0E+09", viable="1.0E+09", viab="50.0", diam="9.40")),
            "range",
        ),
        (
            line_of(BODY.format(total="1.0E+06", viable="9.0E+05", viab="90.0", diam="0.50")),
            "range",
        ),
        (
            line_of(BODY.format(total="1.0E+06", viable="1.1E+06", viab="100.0", diam="9.40")),
            "inconsistent",
        ),
        (
            line_of(BODY.format(total="1.0E+06", viable="5.0E+05", viab="90.0", diam="9.40")),
            "inconsistent",
        ),
        (b"$CC,NC2-100412,S1,2026-11-22T08:50" + format_record(GOOD).rstrip(), "truncated"),
    ],
)
def test_rejections(line: bytes, expected: str) -> None:
    """Each kind of bad line is rejected with its own reason code, never half-parsed."""
    assert reason(line) == expected


def test_valid_record_still_parses() -> None:
    """The template used for rejections is itself valid (so each case fails for its reason)."""
    good = line_of(BODY.format(total="1.0E+06", viable="9.0E+05", viab="90.0", diam="9.40"))
    assert parse_record(good).viability_pct == 90.0


def counts() -> st.SearchStrategy[float]:
    """Counts as the instrument prints them: 4 significant digits, 1e3..1e9 cells/mL."""
    return st.builds(lambda m, e: float(m * 10**e), st.integers(1000, 9999), st.integers(0, 5))


@st.composite
def records(draw: st.DrawFn) -> CellCount:
    total = draw(counts())
    viable = float(f"{total * draw(st.integers(0, 1000)) / 1000:.3E}")
    viable = min(viable, total)
    viability = round(100.0 * viable / total, 1)
    text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=32)
    return CellCount(
        draw(st.from_regex(r"[A-Z0-9][A-Z0-9-]{0,15}", fullmatch=True)),
        draw(text),
        draw(st.integers(0, 4_102_444_799)) * 1_000_000_000,  # until 2099-12-31
        total,
        viable,
        viability,
        draw(st.integers(200, 6000)) / 100,
    )


@given(records())
def test_round_trip(rec: CellCount) -> None:
    """Any valid record formats to one line that parses back to the same record."""
    line = format_record(rec)
    assert line.endswith(b"\r\n") and line.count(b"\n") == 1
    assert parse_record(line[:-2]) == rec


@given(records(), st.data())
def test_any_single_corrupted_byte_is_rejected(rec: CellCount, data: st.DataObject) -> None:
    """Changing any one byte of a valid line to any other value makes it a rejected line."""
    line = bytearray(format_record(rec)[:-2])
    index = data.draw(st.integers(0, len(line) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != line[index]))
    line[index] = new
    assert reason(bytes(line)) in {"garbage", "truncated", "checksum"}


def doc_examples() -> list[tuple[str, bytes]]:
    """(expected outcome, line) pairs from the example block of the device page."""
    page = Path(__file__).parents[2] / "docs" / "devices" / "cell-counter.md"
    block = page.read_text().split("```text cellcount-examples\n")[1].split("```")[0]
    lines = block.splitlines()
    return [
        (comment.removeprefix("# ").split(" (")[0], line.encode())
        for comment, line in zip(lines[::2], lines[1::2], strict=True)
    ]


def test_doc_examples() -> None:
    """Every example on docs/devices/cell-counter.md is parsed the way the page says."""
    examples = doc_examples()
    assert len(examples) >= 10
    for outcome, line in examples:
        if outcome == "accepted":
            assert parse_record(line).instrument == "NC2-100412"
        else:
            assert f"rejected: {reason(line)}" == outcome, line
