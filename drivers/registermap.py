"""A Modbus register map given as data: which registers hold which tag, and how to decode them.

Profiles in `config/profiles/*.toml` are validated against these models, so a wrong type,
an overlapping register or a status register that does not exist is an error at load time,
naming the profile file and the key, never a wrong number at run time.
"""

from __future__ import annotations

import itertools
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

RegisterType = Literal["u16", "s16", "u32", "s32", "float32"]
WordOrder = Literal["big", "little"]
TAG_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"

RESERVED_SUFFIXES = ("_quality", "_reason")  # InfluxDB field names derived from a tag (influx.md)
WORDS: dict[str, int] = {"u16": 1, "s16": 1, "u32": 2, "s32": 2, "float32": 2}


class Frozen(BaseModel):
    """Base of every config model: immutable, and an unknown key is an error."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Validity(Frozen):
    """Quality of a value taken from a status register of the same device (Vaisala, Huba)."""

    tag: str = Field(pattern=TAG_PATTERN, description="status tag in the same map")
    good: tuple[int, ...] = Field(default=(0,), description="status values meaning OK")
    uncertain: tuple[int, ...] = Field(
        default=(), description="status values meaning 'use with care'"
    )


class RegisterSpec(Frozen):
    """One tag: where it lives, how its registers decode, and its engineering unit."""

    tag: str = Field(pattern=TAG_PATTERN)
    unit: str = ""
    description: str = ""
    device_id: int = Field(default=1, ge=0, le=247, description="Modbus unit id")
    function: Literal[3, 4] = Field(default=3, description="3 holding, 4 input registers")
    address: int = Field(ge=0, le=65535, description="0-based PDU address")
    type: RegisterType
    word_order: WordOrder = Field(default="big", description="big: high word first (ABCD)")
    scale: float = 1.0
    offset: float = 0.0
    not_available_raw: int | None = Field(
        default=None, description="integer raw value the device sends for 'no data' (0x8000)"
    )
    validity: Validity | None = None
    writable: bool = False

    @property
    def words(self) -> int:
        """How many 16-bit registers the value occupies."""
        return WORDS[self.type]

    @model_validator(mode="after")
    def _fits_address_space(self) -> RegisterSpec:
        if self.tag.endswith(RESERVED_SUFFIXES):
            raise ValueError(f"tag {self.tag!r}: names ending in {RESERVED_SUFFIXES} are reserved")
        if self.address + self.words > 65536:
            raise ValueError(f"{self.type} at {self.address} runs past register 65535")
        return self


class RegisterMap(Frozen):
    """A device profile: the tags of one device family and the documents they follow."""

    name: str
    description: str = ""
    sources: tuple[str, ...] = ()
    registers: tuple[RegisterSpec, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> RegisterMap:
        by_tag = {r.tag: r for r in self.registers}
        if len(by_tag) != len(self.registers):
            tags = [r.tag for r in self.registers]
            dup = next(t for i, t in enumerate(tags) if t in tags[:i])
            raise ValueError(f"tag {dup!r} appears more than once")
        for reg in self.registers:
            if reg.validity is not None:
                status = by_tag.get(reg.validity.tag)
                if status is None:
                    raise ValueError(f"{reg.tag}: validity tag {reg.validity.tag!r} not in map")
                if status.words != 1:
                    raise ValueError(f"{reg.tag}: validity tag {status.tag!r} must be u16/s16")
        _check_overlaps(self.registers)
        return self


def _check_overlaps(registers: tuple[RegisterSpec, ...]) -> None:
    spans = sorted(
        (r.device_id, r.function, r.address, r.address + r.words, r.tag) for r in registers
    )
    for a, b in itertools.pairwise(spans):
        if a[:2] == b[:2] and b[2] < a[3]:
            raise ValueError(f"registers of {a[4]!r} and {b[4]!r} overlap at address {b[2]}")
