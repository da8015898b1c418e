"""Pure Modbus register arithmetic: decode values and plan as few reads as the protocol allows.

No I/O here, so every rule (word order, scale, NaN, coalescing) is unit-tested on its own.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from drivers.blockdecode import BlockDecoder
from drivers.registermap import RegisterSpec

MAX_READ_REGISTERS = 125  # Modbus limit for FC 3/4 (a 253-byte PDU)


class DecodeError(ValueError):
    """The registers do not hold a usable value; the message is the sample's bad reason."""


def raw_value(spec: RegisterSpec, regs: Sequence[int]) -> float:
    """The value as the device encodes it, before scale/offset (int for ints, float32 as float)."""
    if len(regs) != spec.words:
        raise DecodeError(f"short reply: {spec.tag} needs {spec.words} registers, got {len(regs)}")
    if spec.words == 1:
        (word,) = regs
        return word - 0x10000 if spec.type == "s16" and word & 0x8000 else word
    hi, lo = (regs[0], regs[1]) if spec.word_order == "big" else (regs[1], regs[0])
    fmt = {"u32": ">I", "s32": ">i", "float32": ">f"}[spec.type]
    (value,) = struct.unpack(fmt, struct.pack(">HH", hi, lo))
    return float(value) if spec.type == "float32" else int(value)


def decode(spec: RegisterSpec, regs: Sequence[int]) -> float:
    """Engineering value of one tag; raises DecodeError for NaN, inf or 'not available'."""
    raw = raw_value(spec, regs)
    if spec.not_available_raw is not None and _unsigned(spec, regs) == spec.not_available_raw:
        raise DecodeError("not available (device sent its no-data code)")
    if math.isnan(raw):
        raise DecodeError("nan (device has no valid measurement)")
    if math.isinf(raw):
        raise DecodeError("inf (device reports out of range)")
    return float(raw) * spec.scale + spec.offset


RAW_RANGES: dict[str, tuple[int, int]] = {
    "u16": (0, 0xFFFF),
    "s16": (-0x8000, 0x7FFF),
    "u32": (0, 0xFFFF_FFFF),
    "s32": (-0x8000_0000, 0x7FFF_FFFF),
}
FLOAT32_MAX = 3.4028234663852886e38


def encode(spec: RegisterSpec, value: float) -> list[int]:
    """Registers for an engineering value: the inverse of `decode` (simulators, writes).

    Raises ValueError, naming the tag, for a value the type cannot hold: out of an integer
    type's range after scale/offset, NaN or inf in an integer, beyond float32's range.
    NaN and inf stay encodable as float32 (a probe that is not ready sends NaN).
    """
    raw = (value - spec.offset) / spec.scale
    if spec.type == "float32":
        if math.isfinite(raw) and abs(raw) > FLOAT32_MAX:
            raise ValueError(f"{spec.tag}: {value} does not fit float32")
        hi, lo = struct.unpack(">HH", struct.pack(">f", raw))
        return [hi, lo] if spec.word_order == "big" else [lo, hi]
    low, high = RAW_RANGES[spec.type]
    if not math.isfinite(raw) or not low <= round(raw) <= high:
        raise ValueError(
            f"{spec.tag}: {value} does not fit {spec.type} "
            f"(raw {raw:g} outside {low}..{high} after scale/offset)"
        )
    if spec.words == 2:
        fmt = ">i" if spec.type == "s32" else ">I"
        hi, lo = struct.unpack(">HH", struct.pack(fmt, round(raw)))
        return [hi, lo] if spec.word_order == "big" else [lo, hi]
    fmt = ">h" if spec.type == "s16" else ">H"
    (word,) = struct.unpack(">H", struct.pack(fmt, round(raw)))
    return [word]


def _unsigned(spec: RegisterSpec, regs: Sequence[int]) -> int:
    """The registers as one unsigned integer, high word first whatever the word order."""
    if spec.words == 1:
        return regs[0]
    hi, lo = (regs[0], regs[1]) if spec.word_order == "big" else (regs[1], regs[0])
    return (hi << 16) | lo


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One Modbus read covering one or more tags: (spec, offset of its first register)."""

    device_id: int
    function: int
    address: int
    count: int
    specs: tuple[tuple[RegisterSpec, int], ...]
    decoder: BlockDecoder = field(compare=False, repr=False)


def plan_reads(
    specs: Iterable[RegisterSpec], max_gap: int = 0, max_count: int = MAX_READ_REGISTERS
) -> list[ReadRequest]:
    """Group tags into the fewest reads: same unit id and function, contiguous addresses.

    `max_gap` lets a read span up to that many unused registers; the default 0 never reads
    an address outside the map, which many devices (Vaisala) answer with an exception.
    A 32-bit value is never split across two reads.
    """
    ordered = sorted(specs, key=lambda s: (s.device_id, s.function, s.address))
    plan: list[ReadRequest] = []
    group: list[RegisterSpec] = []
    for spec in ordered:
        if group and not _extends(group, spec, max_gap, max_count):
            plan.append(_request(group))
            group = []
        group.append(spec)
    if group:
        plan.append(_request(group))
    return plan


def _extends(group: list[RegisterSpec], spec: RegisterSpec, max_gap: int, max_count: int) -> bool:
    first, last = group[0], group[-1]
    end = max(s.address + s.words for s in group)
    return (
        (spec.device_id, spec.function) == (last.device_id, last.function)
        and spec.address - end <= max_gap
        and spec.address + spec.words - first.address <= max_count
    )


def _request(group: list[RegisterSpec]) -> ReadRequest:
    start = group[0].address
    end = max(s.address + s.words for s in group)
    specs = tuple((s, s.address - start) for s in group)
    return ReadRequest(
        group[0].device_id,
        group[0].function,
        start,
        end - start,
        specs,
        BlockDecoder(specs, end - start),
    )
