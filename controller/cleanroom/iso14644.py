"""ISO 14644-1:2015 air-cleanliness classes: class limits, sample volume, sampling locations.

The class limit is `Cn = 10^N * (0.1/D)^2.08` particles/m³ of particles >= D µm, printed in
Table 1 "rounded to the nearest whole number, using no more than three significant figures"
(shared/domain.md §1.7). The 2015 Table 1 leaves some cells blank (not applicable: too few
particles to count reliably, too many, or > 1 µm where sampling losses dominate); those
cells are `None` here, never a number, because the 1999 edition printed numbers there and a
test oracle must not confuse the two (domain.md §0.2).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from decimal import ROUND_HALF_UP, Decimal
from typing import Final

TABLE1_SIZES_UM: Final = (0.1, 0.2, 0.3, 0.5, 1.0, 5.0)
"""The considered particle sizes of Table 1, smallest first."""

MIN_SIZE_UM: Final = 0.1
MAX_SIZE_UM: Final = 5.0  # larger particles: the macroparticle M descriptor (§1.7)
MIN_CLASS: Final = 1.0
MAX_CLASS: Final = 9.0
IN_OPERATION_ONLY: Final = frozenset({9})  # Table 1 prints ISO 9 "in operation only"

# (class, size) cells Table 1 (2015) prints a value in; every other cell is blank (§1.7).
_APPLICABLE: Final[frozenset[tuple[int, float]]] = frozenset(
    {(1, 0.1), (2, 0.1), (2, 0.2), (2, 0.3)}
    | {(3, d) for d in (0.1, 0.2, 0.3, 0.5)}
    | {(4, d) for d in (0.1, 0.2, 0.3, 0.5, 1.0)}
    | {(5, d) for d in (0.1, 0.2, 0.3, 0.5, 1.0)}
    | {(6, d) for d in TABLE1_SIZES_UM}
    | {(n, d) for n in (7, 8, 9) for d in (0.5, 1.0, 5.0)}
)

# Table A.1 (domain.md §1.7): (largest area in m², number of locations). The ≤ 52 m² row and
# the > 1 000 m² formula are verified; the other rows are from memory (unverified there).
_TABLE_A1: Final = (
    (2, 1), (4, 2), (6, 3), (8, 4), (10, 5), (24, 6), (28, 7), (32, 8), (36, 9),
    (52, 10), (56, 11), (64, 12), (68, 13), (72, 14), (76, 15), (104, 16), (108, 17),
    (116, 18), (148, 19), (156, 20), (192, 21), (232, 22), (276, 23), (352, 24),
    (436, 25), (636, 26), (1000, 27),
)  # fmt: skip
_TABLE_A1_AREAS: Final = tuple(a for a, _ in _TABLE_A1)

SAMPLE_COUNT_BASIS: Final = 20.0  # particles expected at the class limit (A.4.4)
MIN_SAMPLE_VOLUME_L: Final = 2.0
MIN_SAMPLE_TIME_S: Final = 60.0


def check_class(n: float) -> float:
    """Return `n` if it is an ISO class: 1 to 9 in steps of 0.1 (§1.7), else raise."""
    if not MIN_CLASS <= n <= MAX_CLASS or not math.isclose(n * 10, round(n * 10), abs_tol=1e-9):
        raise ValueError(f"ISO class {n!r}: must be 1 to 9 in steps of 0.1")
    return n


def check_size(d_um: float) -> float:
    """Return `d_um` if it is a size ISO 14644-1 classifies at (0.1 to 5 µm), else raise."""
    if not MIN_SIZE_UM <= d_um <= MAX_SIZE_UM:
        raise ValueError(
            f"particle size {d_um!r} µm: ISO 14644-1 classifies 0.1 to 5 µm; larger particles "
            "use the macroparticle M descriptor"
        )
    return d_um


def cn(n: float, d_um: float) -> float:
    """The unrounded class limit `10^N * (0.1/D)^2.08`, particles/m³ >= `d_um`."""
    return float(10.0 ** check_class(n) * (0.1 / check_size(d_um)) ** 2.08)


def round_class_limit(value: float) -> int:
    """Round as Table 1 prints: nearest whole number, no more than three significant figures.

    One rounding step, half up (3 516.76 -> 3 520; 2.37 -> 2; 29.25 -> 29), so a value is
    never rounded twice (2.4951 is 2, not 2.50 -> 3).
    """
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"class limit {value!r}: must be a finite, non-negative number")
    exact = Decimal(value)  # the float's exact binary value: no hidden pre-rounding
    step = Decimal(1).scaleb(max(0, exact.adjusted() - 2))
    return int((exact / step).quantize(Decimal(1), rounding=ROUND_HALF_UP) * step)


def formula_limit(n: float, d_um: float) -> int:
    """`cn` rounded as Table 1 rounds, whether or not the 2015 table prints that cell.

    This is what the 1999 edition printed in cells the 2015 edition leaves blank (ISO 5 at
    5 µm -> 29, the Annex 1 2022 Grade A 5 µm monitoring limit).
    """
    return round_class_limit(cn(n, d_um))


def _table_size(d_um: float) -> float:
    for size in TABLE1_SIZES_UM:
        if math.isclose(d_um, size, rel_tol=1e-9):
            return size
    raise ValueError(f"particle size {d_um!r} µm is not a Table 1 size {TABLE1_SIZES_UM}")


def is_applicable(n: float, d_um: float) -> bool:
    """Whether Table 1 (2015) gives class `n` a limit at size `d_um`.

    Integer classes follow the printed table. For an intermediate class (0.1 steps) cellfab
    requires both neighbouring integer classes to be applicable at that size: a rule of ours,
    conservative, since the standard's table of intermediate classes was not available
    (domain.md §5). So ISO 4.8 has a 0.5 µm limit but no 5 µm limit (M descriptor).
    """
    size = _table_size(d_um)
    check_class(n)
    return (math.floor(n), size) in _APPLICABLE and (math.ceil(n), size) in _APPLICABLE


def class_limit(n: float, d_um: float) -> int | None:
    """Table 1 (2015) limit for class `n` at size `d_um`, particles/m³; None where blank.

    `d_um` must be one of TABLE1_SIZES_UM. None means "not applicable", not zero: a caller
    that classifies at that size must use another size or the M descriptor.
    """
    return formula_limit(n, d_um) if is_applicable(n, d_um) else None


def min_sample_volume_l(limit_per_m3: float) -> float:
    """Minimum single sample volume per location, litres (A.4.4): (20 / Cn,m) x 1 000, >= 2 L.

    `limit_per_m3` is the class limit at the largest considered particle size: the volume in
    which 20 particles are expected at the limit. The sampling time must also be >= 1 min
    (`min_sample_time_s`).
    """
    if not math.isfinite(limit_per_m3) or limit_per_m3 <= 0:
        raise ValueError(f"class limit {limit_per_m3!r}: must be a positive number")
    return max(MIN_SAMPLE_VOLUME_L, SAMPLE_COUNT_BASIS / limit_per_m3 * 1000.0)


def min_sample_time_s(limit_per_m3: float, flow_l_min: float) -> float:
    """Shortest sampling time per location at `flow_l_min`: the minimum volume, and >= 1 min."""
    if not math.isfinite(flow_l_min) or flow_l_min <= 0:
        raise ValueError(f"flow {flow_l_min!r} L/min: must be a positive number")
    return max(MIN_SAMPLE_TIME_S, min_sample_volume_l(limit_per_m3) / flow_l_min * 60.0)


def min_sample_volume_for_class(n: float, sizes_um: tuple[float, ...]) -> float:
    """Minimum sample volume, litres, to classify class `n` at the considered `sizes_um`.

    The largest considered size sets the volume; it must have a Table 1 limit.
    """
    if not sizes_um:
        raise ValueError("no considered particle size")
    largest = max(sizes_um)
    limit = class_limit(n, largest)
    if limit is None:
        raise ValueError(f"ISO {n:g} has no Table 1 limit at {largest:g} µm (not applicable)")
    return min_sample_volume_l(limit)


def sampling_locations(area_m2: float) -> int:
    """Minimum number of sampling locations for a cleanroom of `area_m2` (Table A.1).

    An area between two rows takes the larger row; above 1 000 m², 27 x (A / 1 000) rounded
    up (domain.md §1.7; the intermediate rows and the rounding are marked unverified there).
    """
    if not math.isfinite(area_m2) or area_m2 <= 0:
        raise ValueError(f"area {area_m2!r} m²: must be a positive number")
    if area_m2 > _TABLE_A1_AREAS[-1]:
        return math.ceil(27 * area_m2 / 1000)
    return _TABLE_A1[bisect_left(_TABLE_A1_AREAS, area_m2)][1]
