"""Decode every value of one Modbus read with a single struct call.

Decoding value by value costs ~4 µs a tag in Python; a busy floor reads tens of thousands
of tags a second. The layout of a read never changes, so it is compiled once into a word
permutation (for least-significant-word-first values) and one big-endian struct format;
only scaling and the NaN / no-data checks remain per value. `codec.decode` stays the
readable reference, and the tests check that both agree.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from operator import eq

from drivers.registermap import RegisterSpec

_FORMAT = {"u16": "H", "s16": "h", "u32": "I", "s32": "i", "float32": "f"}
# The same layout with float32 read as its bit pattern: no-data codes are compared as bits,
# as `codec.decode` does (-9999.0f is 0xC61C3C00, which no float compares equal to).
_CODE_FORMAT = _FORMAT | {"float32": "I"}

Decoded = float | str  # a value, or the reason it is not one


class BlockDecoder:
    """Compiled decoder for the tags of one read: `decode(registers)` -> value or reason."""

    def __init__(self, specs: Sequence[tuple[RegisterSpec, int]], count: int) -> None:
        """`specs`: (spec, offset of its first register), in increasing offset order."""
        self.count = count
        perm = list(range(count))
        fmt = [">"]
        code_fmt = [">"]
        cursor = 0
        for spec, offset in specs:
            if offset < cursor:
                raise ValueError(f"{spec.tag}: specs must be in increasing, disjoint offsets")
            if offset > cursor:
                fmt.append(f"{2 * (offset - cursor)}x")
                code_fmt.append(fmt[-1])
            fmt.append(_FORMAT[spec.type])
            code_fmt.append(_CODE_FORMAT[spec.type])
            if spec.words == 2 and spec.word_order == "little":
                perm[offset], perm[offset + 1] = offset + 1, offset
            cursor = offset + spec.words
        self._perm = None if perm == list(range(count)) else perm
        self._struct = struct.Struct("".join(fmt))
        self._code_struct = struct.Struct("".join(code_fmt))
        self._words = struct.Struct(f">{count}H")
        self._scaling = [(s.scale, s.offset, _no_data(s)) for s, _ in specs]
        self._scale_offset = [(s.scale, s.offset) for s, _ in specs]
        codes = [code for _, _, code in self._scaling]
        self._codes = None if codes.count(None) == len(codes) else codes
        self.tags = tuple(s.tag for s, _ in specs)
        self.units = tuple(s.unit for s, _ in specs)

    def good_values(self, registers: Sequence[int]) -> list[float] | None:
        """The values when every one is good (the common case), else None: use `decode`.

        The checks run as C loops over the whole read (`isfinite`, no-data codes), so a
        good read costs one scaling per value and nothing else.
        """
        if len(registers) < self.count:
            return None
        words = registers if self._perm is None else [registers[i] for i in self._perm]
        packed = self._words.pack(*words[: self.count])  # inline: this is the hot path
        raws = self._struct.unpack(packed)
        if not all(map(math.isfinite, raws)):
            return None
        if self._codes is not None and any(map(eq, self._code_struct.unpack(packed), self._codes)):
            return None
        return [
            raw * scale + offset
            for raw, (scale, offset) in zip(raws, self._scale_offset, strict=True)
        ]

    def decode(self, registers: Sequence[int]) -> list[Decoded]:
        """Values (or reasons) in the order of the specs."""
        if len(registers) < self.count:
            reason = f"short reply: {len(registers)} of {self.count} registers"
            return [reason] * len(self._scaling)
        packed = self._pack(registers)
        raws = self._struct.unpack(packed)
        bits = self._code_struct.unpack(packed)
        out: list[Decoded] = []
        for raw, code, (scale, offset, no_data) in zip(raws, bits, self._scaling, strict=True):
            if code == no_data:
                out.append("not available (device sent its no-data code)")
            elif raw != raw:  # noqa: PLR0124 - NaN is the one value not equal to itself
                out.append("nan (device has no valid measurement)")
            elif math.isinf(raw):
                out.append("inf (device reports out of range)")
            else:
                out.append(raw * scale + offset)
        return out

    def _pack(self, registers: Sequence[int]) -> bytes:
        """The read's bytes with every value's words in big-endian order."""
        words = registers if self._perm is None else [registers[i] for i in self._perm]
        return self._words.pack(*words[: self.count])


def _no_data(spec: RegisterSpec) -> int | None:
    """The device's no-data code as the code struct decodes it (signed for s16/s32, the
    bit pattern for float32)."""
    code = spec.not_available_raw
    if code is None:
        return None
    bits = 16 * spec.words
    if spec.type in ("s16", "s32") and code >= 1 << (bits - 1):
        return code - (1 << bits)
    return code
