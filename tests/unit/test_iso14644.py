"""ISO 14644-1:2015 class limits, rounding, sample volume and locations (domain.md §1.7)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.cleanroom import iso14644 as iso

SIZES = (0.1, 0.2, 0.3, 0.5, 1.0, 5.0)
NA = None  # a blank cell of the printed table: not applicable

# Table 1 (2015 edition, as printed), domain.md §1.7: class -> limits at SIZES.
TABLE1_2015: dict[int, tuple[int | None, ...]] = {
    1: (10, NA, NA, NA, NA, NA),
    2: (100, 24, 10, NA, NA, NA),
    3: (1_000, 237, 102, 35, NA, NA),
    4: (10_000, 2_370, 1_020, 352, 83, NA),
    5: (100_000, 23_700, 10_200, 3_520, 832, NA),
    6: (1_000_000, 237_000, 102_000, 35_200, 8_320, 293),
    7: (NA, NA, NA, 352_000, 83_200, 2_930),
    8: (NA, NA, NA, 3_520_000, 832_000, 29_300),
    9: (NA, NA, NA, 35_200_000, 8_320_000, 293_000),
}
CELLS = [(n, d, row[i]) for n, row in TABLE1_2015.items() for i, d in enumerate(SIZES)]

# Cells the 1999 edition printed and the 2015 edition leaves blank (§1.7).
CELLS_1999 = [(1, 0.2, 2), (2, 0.5, 4), (3, 1.0, 8), (5, 5.0, 29)]


@pytest.mark.parametrize(("n", "d_um", "printed"), CELLS)
def test_table1_2015_every_cell(n: int, d_um: float, printed: int | None) -> None:
    """Every Table 1 (2015) cell: the printed number, or None where the table is blank."""
    assert iso.class_limit(n, d_um) == printed
    assert iso.is_applicable(n, d_um) is (printed is not None)


@pytest.mark.parametrize(("n", "d_um", "printed"), CELLS)
def test_printed_values_are_the_rounded_formula(n: int, d_um: float, printed: int | None) -> None:
    """Each printed value is Cn = 10^N (0.1/D)^2.08 rounded to three significant figures."""
    if printed is not None:
        assert iso.formula_limit(n, d_um) == printed
        assert abs(iso.cn(n, d_um) - printed) <= max(0.5, 0.005 * printed)


@pytest.mark.parametrize(("n", "d_um", "printed_1999"), CELLS_1999)
def test_1999_cells_are_formula_values_but_blank_in_2015(
    n: int, d_um: float, printed_1999: int
) -> None:
    """The 1999 numbers (2, 4, 8, 29) come from the formula; 2015 prints nothing there."""
    assert iso.formula_limit(n, d_um) == printed_1999
    assert iso.class_limit(n, d_um) is None


@pytest.mark.parametrize(
    ("n", "d_um", "unrounded", "digits"),
    [
        (5, 0.5, 3516.76, 2),  # the §1.7 example: 3 516.76 -> 3 520, not 3 517
        (1, 0.2, 2.37, 2),
        (2, 0.5, 3.52, 2),
        (3, 1.0, 8.32, 2),
        (5, 5.0, 29.25, 2),
        (4.8, 0.5, 2219, 0),  # ISO 4.8, the old Grade A justification
        (4.8, 5.0, 18.5, 1),
    ],
)
def test_unrounded_formula_values(n: float, d_um: float, unrounded: float, digits: int) -> None:
    """The formula values domain.md §1.7 prints before rounding."""
    assert round(iso.cn(n, d_um), digits) == unrounded


def test_intermediate_class_iso_4_8() -> None:
    """ISO 4.8 has a 0.5 µm limit (2 220 after rounding) and none at 5 µm (M descriptor)."""
    assert iso.class_limit(4.8, 0.5) == 2_220
    assert iso.class_limit(4.8, 5.0) is None


@pytest.mark.parametrize(
    ("n", "d_um", "expected"),
    [(6.5, 0.1, None), (4.5, 5.0, None), (6.5, 0.5, 111_000), (1.5, 0.1, 32), (8.9, 5.0, 232_000)],
)
def test_intermediate_class_needs_both_neighbours(
    n: float, d_um: float, expected: int | None
) -> None:
    """An intermediate class is applicable only where both neighbouring classes are."""
    assert iso.class_limit(n, d_um) == expected


@pytest.mark.parametrize(
    ("value", "rounded"),
    [
        (3516.757, 3_520),
        (35_167_572.46, 35_200_000),
        (2.365, 2),
        (2.5, 3),  # half up
        (2.4951, 2),  # one rounding step, not 2.50 -> 3
        (0.4, 0),
        (999.4, 999),
        (999.5, 1_000),
        (100.5, 101),
        (12_350.0, 12_400),  # half up at the third significant figure
        (12_349.999, 12_300),
        (1e9, 1_000_000_000),
        (0.0, 0),
    ],
)
def test_rounding_edge_cases(value: float, rounded: int) -> None:
    """Nearest whole number, at most three significant figures, ties rounded up."""
    assert iso.round_class_limit(value) == rounded


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_rounding_rejects_non_limits(bad: float) -> None:
    """A negative, NaN or infinite value is not a class limit."""
    with pytest.raises(ValueError, match="class limit"):
        iso.round_class_limit(bad)


@given(st.floats(min_value=100.0, max_value=1e12))
def test_rounding_keeps_three_figures(value: float) -> None:
    """From 100 up, the rounded value has at most three significant digits and is within 0.5 %."""
    rounded = iso.round_class_limit(value)
    assert len(str(rounded).rstrip("0")) <= 3
    assert abs(rounded - value) <= 0.005 * value


@pytest.mark.parametrize("n", [0.9, 9.1, 10, 4.85, -1, math.nan])
def test_class_must_be_1_to_9_in_tenths(n: float) -> None:
    """Classes run from 1 to 9 in steps of 0.1."""
    with pytest.raises(ValueError, match="ISO class"):
        iso.cn(n, 0.5)


@pytest.mark.parametrize("d_um", [0.05, 5.1, 10.0])
def test_size_must_be_0_1_to_5_um(d_um: float) -> None:
    """Outside 0.1-5 µm ISO 14644-1 does not classify (M descriptor above 5 µm)."""
    with pytest.raises(ValueError, match="particle size"):
        iso.cn(5, d_um)


def test_class_limit_only_at_table_sizes() -> None:
    """class_limit answers for Table 1 sizes; the formula answers between them."""
    with pytest.raises(ValueError, match="not a Table 1 size"):
        iso.class_limit(5, 0.4)
    assert iso.formula_limit(5, 0.4) == 5_590  # 5 591.1


@pytest.mark.parametrize(
    ("limit_per_m3", "litres", "digits"),
    [(3_520, 5.68, 2), (29, 689.7, 1), (2_930, 6.83, 2)],
)
def test_min_sample_volume_worked_examples(limit_per_m3: float, litres: float, digits: int) -> None:
    """V_s = 20 / C_n,m x 1 000 L: the worked examples of §1.7."""
    assert round(iso.min_sample_volume_l(limit_per_m3), digits) == litres


def test_min_sample_volume_for_5um_is_about_700_litres() -> None:
    """PMS's "≈ 700 L" for the 29/m³ limit (§1.5) is the formula's 689.7 L."""
    assert iso.min_sample_volume_l(29) == pytest.approx(700, rel=0.02)


def test_min_sample_volume_at_least_2_litres() -> None:
    """A high class limit still needs 2 L per location."""
    assert iso.min_sample_volume_l(35_200_000) == 2.0


def test_min_sample_time_at_least_one_minute() -> None:
    """The sampling time is the volume at the flow, but never under 1 min."""
    assert iso.min_sample_time_s(3_520, 28.3) == 60.0
    assert iso.min_sample_time_s(29, 28.3) == pytest.approx(20_000 / 29 / 28.3 * 60)


@pytest.mark.parametrize("bad", [0.0, -5.0, math.nan])
def test_sample_volume_rejects_nonpositive(bad: float) -> None:
    """A zero, negative or NaN class limit or flow is refused."""
    with pytest.raises(ValueError, match="class limit"):
        iso.min_sample_volume_l(bad)
    with pytest.raises(ValueError, match="flow"):
        iso.min_sample_time_s(3_520, bad)


def test_min_sample_volume_for_class_uses_largest_size() -> None:
    """The largest considered size sets the volume; it must have a Table 1 limit."""
    assert iso.min_sample_volume_for_class(7, (0.5, 5.0)) == pytest.approx(20_000 / 2_930)
    assert iso.min_sample_volume_for_class(5, (0.5,)) == pytest.approx(20_000 / 3_520)
    with pytest.raises(ValueError, match="not applicable"):
        iso.min_sample_volume_for_class(5, (0.5, 5.0))
    with pytest.raises(ValueError, match="no considered"):
        iso.min_sample_volume_for_class(5, ())


TABLE_A1 = [
    (2, 1), (4, 2), (6, 3), (8, 4), (10, 5), (24, 6), (28, 7), (32, 8), (36, 9),
    (52, 10), (56, 11), (64, 12), (68, 13), (72, 14), (76, 15), (104, 16), (108, 17),
    (116, 18), (148, 19), (156, 20), (192, 21), (232, 22), (276, 23), (352, 24),
    (436, 25), (636, 26), (1_000, 27),
]  # fmt: skip


@pytest.mark.parametrize(("area_m2", "locations"), TABLE_A1)
def test_table_a1_every_row(area_m2: float, locations: int) -> None:
    """Every Table A.1 row as domain.md §1.7 prints it."""
    assert iso.sampling_locations(area_m2) == locations


@pytest.mark.parametrize(
    ("area_m2", "locations"),
    [(0.5, 1), (10.01, 6), (52.5, 11), (700, 27), (1_001, 28), (2_000, 54)],
)
def test_table_a1_between_rows_and_above(area_m2: float, locations: int) -> None:
    """Between rows the larger row applies; above 1 000 m², 27 x A/1 000 rounded up."""
    assert iso.sampling_locations(area_m2) == locations


def test_table_a1_rejects_nonpositive_area() -> None:
    """A room has a positive area."""
    with pytest.raises(ValueError, match="area"):
        iso.sampling_locations(0)
