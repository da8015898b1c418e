"""EU GMP Annex 1 particle tables (domain.md §1.1, §1.2, §1.4) and monitoring rules (§1.5)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.cleanroom import annex1, iso14644
from controller.cleanroom.annex1 import Grade, ParticleSize, ParticleTable, State

P05, P50 = ParticleSize.P05, ParticleSize.P50
COLUMNS: tuple[tuple[State, ParticleSize], ...] = (
    ("at_rest", P05),
    ("at_rest", P50),
    ("in_operation", P05),
    ("in_operation", P50),
)

# As printed: a number, or the table's words for a cell without one.
TABLE1_2022: dict[Grade, tuple[int | str, ...]] = {
    "A": (3_520, "not specified", 3_520, "not specified"),
    "B": (3_520, "not specified", 352_000, 2_930),
    "C": (352_000, 2_930, 3_520_000, 29_300),
    "D": (3_520_000, 29_300, "not predetermined", "not predetermined"),
}
TABLE5_2022: dict[Grade, tuple[int | str, ...]] = {
    "A": (3_520, 29, 3_520, 29),
    "B": (3_520, 29, 352_000, 2_930),
    "C": (352_000, 2_930, 3_520_000, 29_300),
    "D": (3_520_000, 29_300, "not predetermined", "not predetermined"),
}
TABLE_2008: dict[Grade, tuple[int | str, ...]] = {
    "A": (3_520, 20, 3_520, 20),
    "B": (3_520, 29, 352_000, 2_900),
    "C": (352_000, 2_900, 3_520_000, 29_000),
    "D": (3_520_000, 29_000, "not defined", "not defined"),
}


def _cells(
    table: ParticleTable, printed: dict[Grade, tuple[int | str, ...]]
) -> list[tuple[ParticleTable, Grade, State, ParticleSize, int | str]]:
    return [
        (table, grade, state, size, row[i])
        for grade, row in printed.items()
        for i, (state, size) in enumerate(COLUMNS)
    ]


CELLS = (
    _cells(annex1.ANNEX1_2022_CLASSIFICATION, TABLE1_2022)
    + _cells(annex1.ANNEX1_2022_MONITORING, TABLE5_2022)
    + _cells(annex1.ANNEX1_2008, TABLE_2008)
)


@pytest.mark.parametrize(
    ("table", "grade", "state", "size", "printed"),
    CELLS,
    ids=[f"{c[0].name}-{c[1]}-{c[2]}-{c[3].value}" for c in CELLS],
)
def test_every_printed_cell(
    table: ParticleTable, grade: Grade, state: State, size: ParticleSize, printed: int | str
) -> None:
    """Each cell is the printed number, or None with the table's own words for the blank."""
    limit = table.limit(grade, state, size)
    reason = table.blank_reason(grade, state, size)
    if isinstance(printed, int):
        assert limit == printed
        assert reason is None
    else:
        assert limit is None
        assert reason is not None
        assert reason.startswith(printed)


def test_tables_have_exactly_the_printed_cells() -> None:
    """Every table covers four grades, two states and two sizes: 16 cells, no more."""
    for table in (annex1.ANNEX1_2022_CLASSIFICATION, annex1.ANNEX1_2022_MONITORING):
        assert len(table.limits) == 16
    assert len(annex1.ANNEX1_2008.limits) == 16


def test_limit_sets_by_name() -> None:
    """The two selectable limit sets are Table 5 (2022) and the 2008 table."""
    assert annex1.limit_set("eu-annex1-2022") is annex1.ANNEX1_2022_MONITORING
    assert annex1.limit_set("eu-annex1-2008") is annex1.ANNEX1_2008
    assert set(annex1.LIMIT_SETS) == {"eu-annex1-2022", "eu-annex1-2008"}


def test_unknown_limit_set_names_the_choices() -> None:
    """An unknown limit-set name is an error listing the valid names."""
    with pytest.raises(ValueError, match="eu-annex1-2022, eu-annex1-2008"):
        annex1.limit_set("eu-annex1-2008/atmp-part-iv")


def test_tables_are_read_only() -> None:
    """Nobody can change a limit at run time."""
    with pytest.raises(TypeError):
        annex1.ANNEX1_2008.limits[("A", "at_rest", P50)] = 29  # type: ignore[index]


@pytest.mark.parametrize(("grade", "state"), list(annex1.CLASSIFICATION_ISO_CLASS))
def test_table1_is_the_iso_class_of_its_equivalent(grade: Grade, state: State) -> None:
    """Table 1 (2022) prints the ISO 14644-1 limit of the equivalent class, blank where ISO is."""
    iso_class = annex1.CLASSIFICATION_ISO_CLASS[(grade, state)]
    for size in ParticleSize:
        limit = annex1.ANNEX1_2022_CLASSIFICATION.limit(grade, state, size)
        if iso_class is None:
            assert limit is None
        else:
            assert limit == iso14644.class_limit(iso_class, size.um)


def test_grade_a_5um_monitoring_limit_is_the_iso_5_formula() -> None:
    """Table 5's Grade A 5 µm limit (29/m³) is ISO 5's formula value, blank in ISO 2015."""
    assert annex1.ANNEX1_2022_MONITORING.limit("A", "in_operation", P50) == 29
    assert iso14644.formula_limit(5, 5.0) == 29
    assert iso14644.class_limit(5, 5.0) is None


def test_particle_sizes() -> None:
    """The two sizes, their µm values and the keys used in alarm ids."""
    assert (P05.um, P50.um) == (0.5, 5.0)
    assert (P05.value, P50.value) == ("p05", "p50")
    assert P50.label == "≥5.0 µm"


def test_monitoring_rules_grades_a_and_b() -> None:
    """Grade A must be monitored continuously with alarms on alert limits; B similarly."""
    a, b = annex1.MONITORING_RULES["A"], annex1.MONITORING_RULES["B"]
    assert (a.continuous, a.alarm_on_alert) == ("required", True)
    assert "equipment assembly" in a.note
    assert (b.continuous, b.alarm_on_alert) == ("recommended", True)
    assert annex1.MONITORING_RULES["D"].alarm_on_alert is False


def test_grade_a_flow_and_pressure_guidance() -> None:
    """Grade A samples at >= 28 L/min (1 ft³/min); ΔP guidance minimum is 10 Pa."""
    assert annex1.GRADE_A_MIN_SAMPLE_FLOW_L_MIN == 28.0
    assert annex1.MIN_PRESSURE_DIFFERENTIAL_PA == 10.0


def test_5um_classification_sample_volume() -> None:
    """ISO's formula with the 29/m³ limit gives ≈ 700 L per location (§1.5: 689.7 L)."""
    assert round(iso14644.min_sample_volume_l(29), 1) == 689.7


def test_default_low_level_rule_is_2_of_3() -> None:
    """The default repeated-low-level rule is 2 of the last 3 samples (§4.3 example)."""
    rule = annex1.DEFAULT_LOW_LEVEL_N_OF_M
    assert (rule.n, rule.m) == (2, 3)


@pytest.mark.parametrize(
    ("window", "alarm"),
    [
        ([], False),
        ([50.0], False),  # one sample can never be 2 of 3
        ([50.0, 50.0], True),  # consecutive
        ([50.0, 0.0, 50.0], True),  # regular
        ([50.0, 0.0, 0.0, 50.0], False),  # the first one has left the window
        ([0.0, 0.0, 50.0], False),
        ([10.0, 10.0, 10.0], False),  # equal to the level is not above it
        ([math.nan, 50.0, math.nan], False),  # bad samples are not counts
        ([50.0, math.nan, 50.0], True),
    ],
)
def test_low_level_counts_2_of_3(window: list[float], alarm: bool) -> None:
    """At least 2 of the last 3 samples strictly above the level alarm; others do not."""
    assert annex1.low_level_counts(window, 10.0, annex1.NOfM(2, 3)) is alarm


@given(st.lists(st.floats(min_value=0.0, max_value=100.0), max_size=20), st.integers(1, 5))
def test_low_level_counts_n_of_n_is_all_consecutive(window: list[float], n: int) -> None:
    """With n == m the rule fires exactly when the last n samples are all above."""
    expected = len(window) >= n and all(v > 50.0 for v in window[-n:])
    assert annex1.low_level_counts(window, 50.0, annex1.NOfM(n, n)) is expected


@pytest.mark.parametrize(("n", "m"), [(0, 3), (4, 3), (-1, 1)])
def test_n_of_m_needs_1_le_n_le_m(n: int, m: int) -> None:
    """n must be at least 1 and at most m."""
    with pytest.raises(ValueError, match="N-of-M"):
        annex1.NOfM(n, m)
