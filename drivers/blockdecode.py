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

Decoded = float | str  # a value, or the reason it is not one


class BlockDecoder:
    """Compiled decoder for the tags of one read: `decode(registers)` -> value or reason."""

    def __init__(self, specs: Sequence[tuple[RegisterSpec, int]], count: int) -> None:
        """`specs`: (spec, offset of its first register), in increasing offset order."""
        self.count = count
        perm = list(range(count))
        fmt = [">"]
        cursor = 0
        for spec, offset in specs:
            if offset < cursor:
                raise ValueError(f"{spec.tag}: specs must be in increasing, disjoint offsets")
            if offset > cursor:
                fmt.append(f"{2 * (offset - cursor)}x")
            fmt.append(_FORMAT[spec.type])
            if spec.words == 2 and spec.word_order == "little":
                perm[offset], perm[offset + 1] = offset + 1, offset
            cursor = offset + spec.words
        self._perm = None if perm == list(range(count)) else perm
        self._struct = struct.Struct("".join(fmt))
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
        raws = self._struct.unpack(self._words.pack(*words[: self.count]))
        if not all(map(math.isfinite, raws)):
            return None
        if self._codes is not None and any(map(eq, raws, self._codes)):
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
        words = registers if self._perm is None else [registers[i] for i in self._perm]
        raws = self._struct.unpack(self._words.pack(*words[: self.count]))
        out: list[Decoded] = []
        for raw, (scale, offset, no_data) in zip(raws, self._scaling, strict=True):
            if raw == no_data:
                out.append("not available (device sent its no-data code)")
            elif raw != raw:  # noqa: PLR0124 - NaN is the one value not equal to itself
                out.append("nan (device has no valid measurement)")
            elif math.isinf(raw):
                out.append("inf (device reports out of range)")
            else:
                out.append(raw * scale + offset)
        return out


def _no_data(spec: RegisterSpec) -> int | None:
    """The device's no-data code as the struct format decodes it (signed for s16/s32)."""
    code = spec.not_available_raw
    if code is None:
        return None
    bits = 16 * spec.words
    if spec.type in ("s16", "s32") and code >= 1 << (bits - 1):
        return code - (1 << bits)
    return code
