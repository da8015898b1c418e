"""EU GMP Annex 1 airborne-particle limits as data, and its monitoring rules that are rules.

Three tables, as transcribed in shared/domain.md §1 (total particles/m³, >= the size):

* 2022 Table 1, classification (§1.1): `ANNEX1_2022_CLASSIFICATION`.
* 2022 Table 5, monitoring (§1.2): `ANNEX1_2022_MONITORING`, limit set `eu-annex1-2022`.
* 2008 table, classification and monitoring alike, also the basis of the EU GMP guidelines
  for ATMPs, Part IV (§1.4, §0.1): `ANNEX1_2008`, limit set `eu-annex1-2008`.

A cell the table prints no number in is `None`, with the table's words kept in `blanks`: a
blank is never a zero and never a neighbour's value. A limit set is the table a room's
particle counts are monitored against; its numbers are the action limits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final, Literal, get_args

Grade = Literal["A", "B", "C", "D"]
State = Literal["at_rest", "in_operation"]
LimitSetName = Literal["eu-annex1-2022", "eu-annex1-2008"]

GRADES: Final[tuple[Grade, ...]] = get_args(Grade)
STATES: Final[tuple[State, ...]] = get_args(State)
LIMIT_SET_NAMES: Final[tuple[LimitSetName, ...]] = get_args(LimitSetName)


class ParticleSize(StrEnum):
    """The two sizes Annex 1 sets limits for; the value is the key used in alarm ids."""

    P05 = "p05"  # >= 0.5 µm
    P50 = "p50"  # >= 5.0 µm

    @property
    def um(self) -> float:
        """The size in µm."""
        return 0.5 if self is ParticleSize.P05 else 5.0

    @property
    def label(self) -> str:
        """The size as the tables print it."""
        return "≥0.5 µm" if self is ParticleSize.P05 else "≥5.0 µm"


Cell = tuple[Grade, State, ParticleSize]
_Printed = int | str  # a number, or the words the table prints instead of one
_ORDER: Final[tuple[tuple[State, ParticleSize], ...]] = (
    ("at_rest", ParticleSize.P05),
    ("at_rest", ParticleSize.P50),
    ("in_operation", ParticleSize.P05),
    ("in_operation", ParticleSize.P50),
)


@dataclass(frozen=True, slots=True)
class ParticleTable:
    """One printed table: a limit (or None) per grade, state and size, and where it is from."""

    name: str
    title: str
    source: str
    limits: Mapping[Cell, int | None]
    blanks: Mapping[Cell, str]

    def limit(self, grade: Grade, state: State, size: ParticleSize) -> int | None:
        """The printed limit, particles/m³; None where the table prints no number."""
        return self.limits[(grade, state, size)]

    def blank_reason(self, grade: Grade, state: State, size: ParticleSize) -> str | None:
        """The table's words for a cell without a number ("not predetermined"), else None."""
        return self.blanks.get((grade, state, size))


def _table(
    name: str, title: str, source: str, rows: Mapping[Grade, Iterable[_Printed]]
) -> ParticleTable:
    limits: dict[Cell, int | None] = {}
    blanks: dict[Cell, str] = {}
    for grade, printed in rows.items():
        for (state, size), cell in zip(_ORDER, printed, strict=True):
            limits[(grade, state, size)] = cell if isinstance(cell, int) else None
            if isinstance(cell, str):
                blanks[(grade, state, size)] = cell
    return ParticleTable(name, title, source, MappingProxyType(limits), MappingProxyType(blanks))


_NOT_SPECIFIED = (
    "not specified (classification including 5 µm may be considered where the CCS or "
    "historical trends indicate it)"
)
_NOT_PREDETERMINED = (
    "not predetermined (the manufacturer sets in-operation limits from risk assessment and "
    "routine data)"
)

ANNEX1_2022_CLASSIFICATION: Final = _table(
    "eu-annex1-2022-table1",
    "EU GMP Annex 1 (2022) Table 1, maximum permitted total particle concentration for "
    "classification",
    "shared/domain.md §1.1 (labox.eu transcription, corroborated by TSI)",
    {
        # at rest 0.5, at rest 5.0, in operation 0.5, in operation 5.0
        "A": (3_520, _NOT_SPECIFIED, 3_520, _NOT_SPECIFIED),
        "B": (3_520, _NOT_SPECIFIED, 352_000, 2_930),
        "C": (352_000, 2_930, 3_520_000, 29_300),
        "D": (3_520_000, 29_300, _NOT_PREDETERMINED, _NOT_PREDETERMINED),
    },
)

ANNEX1_2022_MONITORING: Final = _table(
    "eu-annex1-2022",
    "EU GMP Annex 1 (2022) Table 5, maximum permitted total particle concentration for monitoring",
    "shared/domain.md §1.2 (labox.eu transcription)",
    {
        "A": (3_520, 29, 3_520, 29),
        "B": (3_520, 29, 352_000, 2_930),
        "C": (352_000, 2_930, 3_520_000, 29_300),
        "D": (3_520_000, 29_300, "not predetermined", "not predetermined"),
    },
)

ANNEX1_2008: Final = _table(
    "eu-annex1-2008",
    "EU GMP Annex 1 (2008), maximum permitted number of particles/m³ (also EU GMP Part IV "
    "for ATMPs)",
    "shared/domain.md §1.4 (Pace Labs transcription; labox.eu 'rev. 2007' identical)",
    {
        "A": (3_520, 20, 3_520, 20),
        "B": (3_520, 29, 352_000, 2_900),
        "C": (352_000, 2_900, 3_520_000, 29_000),
        "D": (3_520_000, 29_000, "not defined", "not defined"),
    },
)

LIMIT_SETS: Final[Mapping[LimitSetName, ParticleTable]] = MappingProxyType(
    {"eu-annex1-2022": ANNEX1_2022_MONITORING, "eu-annex1-2008": ANNEX1_2008}
)
"""The tables a room can be monitored against, by limit-set name (the config's key)."""

CLASSIFICATION_ISO_CLASS: Final[Mapping[tuple[Grade, State], int | None]] = MappingProxyType(
    {
        ("A", "at_rest"): 5,
        ("A", "in_operation"): 5,
        ("B", "at_rest"): 5,
        ("B", "in_operation"): 7,
        ("C", "at_rest"): 7,
        ("C", "in_operation"): 8,
        ("D", "at_rest"): 8,
        ("D", "in_operation"): None,
    }
)
"""ISO 14644-1 class Annex 1 (2022) Table 1 names as equivalent per grade and state (§1.1)."""


# --- Monitoring rules, Annex 1 2022 §9 (domain.md §1.5) -------------------------------------

GRADE_A_MIN_SAMPLE_FLOW_L_MIN: Final = 28.0
"""Grade A continuous monitoring samples at >= 28 L/min (1 ft³/min) (§1.5, TSI)."""

MIN_PRESSURE_DIFFERENTIAL_PA: Final = 10.0
"""Between adjacent rooms of different grades: "a minimum of 10 Pa (guidance value)" (§1.6)."""

Continuous = Literal["required", "recommended", "risk_based"]


@dataclass(frozen=True, slots=True)
class MonitoringRule:
    """What Annex 1 §9 asks of particle monitoring in one grade (domain.md §1.5)."""

    grade: Grade
    continuous: Continuous
    alarm_on_alert: bool
    note: str


MONITORING_RULES: Final[Mapping[Grade, MonitoringRule]] = MappingProxyType(
    {
        "A": MonitoringRule(
            "A",
            "required",
            alarm_on_alert=True,
            note="for the full duration of critical processing, including equipment assembly; "
            "alarms triggered if alert limits are exceeded",
        ),
        "B": MonitoringRule(
            "B",
            "recommended",
            alarm_on_alert=True,
            note="a similar system to Grade A; sample frequency may be lower",
        ),
        "C": MonitoringRule(
            "C", "risk_based", alarm_on_alert=False, note="frequency from the site's CCS"
        ),
        "D": MonitoringRule(
            "D", "risk_based", alarm_on_alert=False, note="frequency from the site's CCS"
        ),
    }
)
"""§1.5 names rules for Grades A and B only; C and D are risk-based (cellfab's reading)."""


@dataclass(frozen=True, slots=True)
class NOfM:
    """Alarm when at least `n` of the last `m` samples are above a level."""

    n: int
    m: int

    def __post_init__(self) -> None:
        if not 1 <= self.n <= self.m:
            raise ValueError(f"N-of-M {self.n} of {self.m}: need 1 <= n <= m")


DEFAULT_LOW_LEVEL_N_OF_M: Final = NOfM(2, 3)
"""Default for repeated low-level 5 µm counts.

Annex 1 2022 (§9, quoted in domain.md §1.5) says only that "consecutive or regular counting
of low levels is an indicator of a possible contamination event and should be investigated";
it prints no N or M. 2 of 3 is the example domain.md §4.3 gives for counts above the alert
limit (unverified, for QA to approve): two consecutive counts, or two within three samples.
"""


def low_level_counts(window: Iterable[float], level_per_m3: float, rule: NOfM) -> bool:
    """Whether at least `rule.n` of the last `rule.m` samples in `window` exceed the level.

    `window` is oldest first. A NaN (a bad sample) is not an exceedance: bad data is the
    communication-failure alarm's job, not a particle count. Fewer than `n` samples never
    alarm.
    """
    recent = list(window)[-rule.m :]
    return sum(1 for v in recent if not math.isnan(v) and v > level_per_m3) >= rule.n


def limit_set(name: str) -> ParticleTable:
    """The monitoring table of a limit-set name; an unknown name raises, naming the choices."""
    for key, table in LIMIT_SETS.items():
        if key == name:
            return table
    raise ValueError(f"unknown limit set {name!r}; choose one of {', '.join(LIMIT_SET_NAMES)}")
