"""The `$CC` result record of a cell counter: format, CRC and a parser that never half-applies.

No cell counter publishes a serial protocol (shared/domain.md §3.8), so this is cellfab's own
design after the NMEA 0183 sentence shape (docs/devices/cell-counter.md):

    $CC,<serial>,<sample id>,<YYYY-MM-DDTHH:MM:SSZ>,<total/mL>,<viable/mL>,<viab %>,<diam um>*HHHH

HHHH is the CRC-16/XMODEM (binascii.crc_hqx, init 0) of the bytes between `$` and `*`, as four
upper-case hex digits: unlike NMEA's XOR byte it also catches swapped and doubled bytes.
`$`, `*`, `,` and `\\` never occur inside a field (the sample id escapes them as `\\HH`), so a
receiver resynchronises on `$`. A line is either a whole `CellCount` or a `RecordError` with
a reason code from `REASONS`; nothing in between.
"""

from __future__ import annotations

import binascii
import datetime as dt
import re
from typing import NamedTuple

START = "$CC,"
REASONS = ("garbage", "truncated", "checksum", "fields", "timestamp", "range", "inconsistent")
MAX_COUNT_PER_ML = 1.0e9  # above any culture; a counter reports "over range" as a sample error
DIAMETER_RANGE_UM = (2.0, 60.0)  # detection limits of image-based counters
VIABILITY_TOLERANCE_PCT = 0.5  # viability vs viable/total, after rounding to 4 digits
MAX_SAMPLE_ID = 32
SERIAL_RE = re.compile(r"[A-Z0-9][A-Z0-9-]{0,15}")
NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?(?:E[+-]\d{1,3})?")
TIMESTAMP_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
ESCAPE_RE = re.compile(r"\\([0-9A-F]{2})")
SPECIAL = frozenset("$*,\\")


class RecordError(ValueError):
    """A line that is not a valid record; `reason` is one of REASONS, `detail` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class CellCount(NamedTuple):
    """One measurement as the instrument reported it; the time is the instrument's (UTC)."""

    instrument: str
    sample_id: str
    t_ns: int
    total_per_mL: float
    viable_per_mL: float
    viability_pct: float
    diameter_um: float


def crc16(payload: bytes) -> int:
    """CRC-16/XMODEM (poly 0x1021, init 0): `crc16(b"123456789") == 0x31C3`."""
    return binascii.crc_hqx(payload, 0)


def escape_sample_id(text: str) -> str:
    """UTF-8 bytes outside printable ASCII and the four separators become `\\HH`."""
    out = []
    for byte in text.encode():
        char = chr(byte)
        out.append(f"\\{byte:02X}" if char in SPECIAL or not 0x20 <= byte <= 0x7E else char)
    return "".join(out)


def unescape_sample_id(field: str) -> str:
    """The sample id as the operator typed it; RecordError for a broken escape."""
    if "\\" in ESCAPE_RE.sub("", field):
        raise RecordError("fields", f"bad escape in sample id {field!r}")
    raw = ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), field).encode("latin-1")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise RecordError("fields", f"sample id {field!r} is not UTF-8") from None
    if not text or len(text) > MAX_SAMPLE_ID:
        raise RecordError("fields", f"sample id must have 1..{MAX_SAMPLE_ID} characters")
    return text


def format_timestamp(t_ns: int) -> str:
    """UTC, whole seconds, `Z` suffix."""
    return dt.datetime.fromtimestamp(t_ns // 1_000_000_000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_record(rec: CellCount, *, crc: int | None = None) -> bytes:
    """The line for `rec`, with CRLF; `crc` overrides the checksum (for fault injection)."""
    body = ",".join(
        (
            "CC",
            rec.instrument,
            escape_sample_id(rec.sample_id),
            format_timestamp(rec.t_ns),
            f"{rec.total_per_mL:.3E}",
            f"{rec.viable_per_mL:.3E}",
            f"{rec.viability_pct:.1f}",
            f"{rec.diameter_um:.2f}",
        )
    ).encode()
    check = crc16(body) if crc is None else crc
    return b"$" + body + f"*{check:04X}\r\n".encode()


def parse_record(line: bytes) -> CellCount:
    """A whole record from one line (terminator stripped), or RecordError."""
    text = _frame(line)
    fields = text[len(START) :].split(",")
    if len(fields) != 7:
        raise RecordError("fields", f"{len(fields)} fields after $CC, 7 expected")
    instrument, sample_field, stamp, *numbers = fields
    if not SERIAL_RE.fullmatch(instrument):
        raise RecordError("fields", f"bad instrument serial {instrument!r}")
    sample_id = unescape_sample_id(sample_field)
    t_ns = _parse_timestamp(stamp)
    total, viable, viability, diameter = (
        _number(name, v) for name, v in zip(_NAMES, numbers, strict=True)
    )
    _check_ranges(total, viable, viability, diameter)
    return CellCount(instrument, sample_id, t_ns, total, viable, viability, diameter)


_NAMES = ("total", "viable", "viability", "diameter")


def _frame(line: bytes) -> str:
    """The record text after its start and checksum were checked."""
    if not line.startswith(START.encode()):
        raise RecordError("garbage", f"does not start with {START!r}: {line[:40]!r}")
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise RecordError("garbage", "non-ASCII byte in record") from None
    if "$" in text[1:]:
        raise RecordError("truncated", "a new record starts inside this one")
    body, star, check = text[1:].rpartition("*")
    if not star:
        raise RecordError("truncated", "no *checksum")
    if not re.fullmatch(r"[0-9A-F]{4}", check):
        raise RecordError("truncated", f"checksum field {check!r} is not 4 hex digits")
    expected = crc16(body.encode())
    if int(check, 16) != expected:
        raise RecordError("checksum", f"CRC {check} received, {expected:04X} computed")
    return "$" + body


def _parse_timestamp(stamp: str) -> int:
    if not TIMESTAMP_RE.fullmatch(stamp):
        raise RecordError("timestamp", f"{stamp!r} is not YYYY-MM-DDTHH:MM:SSZ")
    try:
        when = dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError as exc:
        raise RecordError("timestamp", f"{stamp!r}: {exc}") from None
    return int(when.timestamp()) * 1_000_000_000


def _number(name: str, text: str) -> float:
    if not NUMBER_RE.fullmatch(text):
        raise RecordError("fields", f"{name} {text!r} is not a number")
    return float(text)


def _check_ranges(total: float, viable: float, viability: float, diameter: float) -> None:
    if not (viable >= 0.0 and 0.0 <= total <= MAX_COUNT_PER_ML):
        raise RecordError("range", f"counts {total:g}/{viable:g} outside 0..{MAX_COUNT_PER_ML:g}")
    if not 0.0 <= viability <= 100.0:
        raise RecordError("range", f"viability {viability:g} % outside 0..100")
    low, high = DIAMETER_RANGE_UM
    if not low <= diameter <= high:
        raise RecordError("range", f"diameter {diameter:g} um outside {low:g}..{high:g}")
    if viable > total:
        raise RecordError("inconsistent", f"viable {viable:g} > total {total:g}")
    computed = 100.0 * viable / total if total > 0 else 0.0
    if abs(computed - viability) > VIABILITY_TOLERANCE_PCT:
        raise RecordError(
            "inconsistent", f"viability {viability:g} % but counts give {computed:.1f}"
        )
