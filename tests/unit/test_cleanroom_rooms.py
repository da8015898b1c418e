"""Room and pressure-link config, its validation, and the limit rules derived from it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from controller.cleanroom.annex1 import GRADES, LIMIT_SET_NAMES, STATES, ParticleSize
from controller.cleanroom.rooms import (
    CleanroomConfig,
    LimitRule,
    PressureLinkConfig,
    RoomConfig,
    check_sources,
    derive_rules,
    link_rules,
    link_source_rules,
    room_levels,
    room_rules,
    source_rules,
)

P05, P50 = ParticleSize.P05, ParticleSize.P50


def room(**over: Any) -> RoomConfig:
    """A valid room, changed by `over`."""
    cfg: dict[str, Any] = {
        "id": "fill-1",
        "grade": "A",
        "p05_tag": "pc-1.conc_0_5um",
        "p50_tag": "pc-1.conc_5_0um",
        "alert_fraction": 0.5,
    }
    return RoomConfig.model_validate(cfg | over)


def by_id(rules: list[LimitRule]) -> dict[str, LimitRule]:
    return {r.id: r for r in rules}


def errors_of(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    return "\n".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.value.errors())


GRADE_A = [
    ("eu-annex1-2022", "at_rest", 3_520, 29),
    ("eu-annex1-2022", "in_operation", 3_520, 29),
    ("eu-annex1-2008", "at_rest", 3_520, 20),
    ("eu-annex1-2008", "in_operation", 3_520, 20),
]


@pytest.mark.parametrize(("limit_set", "state", "p05", "p50"), GRADE_A)
def test_grade_a_rules(limit_set: str, state: str, p05: int, p50: int) -> None:
    """A Grade A room: five rules, 5 µm action critical and at once, alerts medium."""
    rules = by_id(room_rules(room(limit_set=limit_set, state=state)))
    assert set(rules) == {
        "room.fill-1.p05.action",
        "room.fill-1.p05.alert",
        "room.fill-1.p50.action",
        "room.fill-1.p50.alert",
        "room.fill-1.p50.n_of_m",
    }
    crit = rules["room.fill-1.p50.action"]
    assert (crit.kind, crit.limit, crit.priority, crit.on_delay_s) == ("high", p50, "critical", 0)
    assert crit.source == "pc-1.conc_5_0um"
    assert crit.unit == "particles/m3"
    assert f"Grade A, {state.replace('_', ' ')}" in crit.message
    assert "action limit" in crit.message
    assert limit_set in crit.message
    act = rules["room.fill-1.p05.action"]
    assert (act.kind, act.limit, act.priority, act.source) == (
        "high",
        p05,
        "high",
        "pc-1.conc_0_5um",
    )
    assert rules["room.fill-1.p05.alert"].limit == p05 / 2
    assert rules["room.fill-1.p50.alert"].limit == p50 / 2
    assert {rules[i].priority for i in ("room.fill-1.p05.alert", "room.fill-1.p50.alert")} == {
        "medium"
    }
    low = rules["room.fill-1.p50.n_of_m"]
    assert (low.kind, low.n, low.m, low.limit, low.priority) == ("n_of_m", 2, 3, p50 / 2, "high")
    assert all(r.deadband == 0 and r.off_delay_s == 0 for r in rules.values())


def test_one_5um_particle_per_cubic_foot_breaks_grade_a_in_both_sets() -> None:
    """One ≥5 µm count in a 1 ft³ sample (35.3/m³) is above the Grade A action limit."""
    one_per_ft3 = 1 / 0.0283168
    for limit_set in LIMIT_SET_NAMES:
        crit = by_id(room_rules(room(limit_set=limit_set)))["room.fill-1.p50.action"]
        assert one_per_ft3 > crit.limit


def test_switching_state_re_derives_limits() -> None:
    """A Grade B room's limits change with its operational state."""
    b = room(id="b-1", grade="B")
    at_rest = by_id(room_rules(b, "at_rest"))
    in_op = by_id(room_rules(b, "in_operation"))
    assert (at_rest["room.b-1.p05.action"].limit, at_rest["room.b-1.p50.action"].limit) == (
        3_520,
        29,
    )
    assert (in_op["room.b-1.p05.action"].limit, in_op["room.b-1.p50.action"].limit) == (
        352_000,
        2_930,
    )
    assert "at rest" in at_rest["room.b-1.p05.action"].message
    site = CleanroomConfig.model_validate({"rooms": [b.model_dump()]})
    assert by_id(derive_rules(site))["room.b-1.p05.action"].limit == 352_000  # configured
    assert by_id(derive_rules(site, {"b-1": "at_rest"}))["room.b-1.p05.action"].limit == 3_520


def test_only_grade_a_5um_action_is_critical() -> None:
    """Grade B-D action levels are high; alerts in C/D are low, their N-of-M medium."""
    b = by_id(room_rules(room(id="b", grade="B")))
    assert b["room.b.p50.action"].priority == "high"
    assert b["room.b.p50.alert"].priority == "medium"
    c = by_id(room_rules(room(id="c", grade="C")))
    assert c["room.c.p50.action"].priority == "high"
    assert c["room.c.p05.alert"].priority == "low"
    assert c["room.c.p50.n_of_m"].priority == "medium"


def test_explicit_levels_override_fraction() -> None:
    """An explicit alert level wins over alert_fraction; a tighter site action level is used."""
    r = room(in_operation={"p50": {"alert_per_m3": 10, "action_per_m3": 25}})
    levels = room_levels(r)
    assert (levels[P50].action, levels[P50].alert, levels[P50].action_basis) == (25, 10, "site")
    assert (levels[P05].action, levels[P05].alert) == (3_520, 1_760)
    assert levels[P05].action_basis == "eu-annex1-2022"
    assert room_levels(r, "at_rest")[P50].action == 29


def test_grade_d_in_operation_needs_site_limits() -> None:
    """Table 5 sets no Grade D in-operation limit: the site must, and the rules use its."""
    with pytest.raises(ValidationError) as exc:
        room(id="d", grade="D")
    text = errors_of(exc)
    assert "in_operation.p05.action_per_m3" in text
    assert "in_operation.p50.action_per_m3" in text
    assert "not predetermined" in text
    d = room(
        id="d",
        grade="D",
        in_operation={"p05": {"action_per_m3": 5e6}, "p50": {"action_per_m3": 40_000}},
    )
    rules = by_id(room_rules(d))
    assert rules["room.d.p05.action"].limit == 5e6
    assert "(site)" in rules["room.d.p05.action"].message
    assert by_id(room_rules(d, "at_rest"))["room.d.p05.action"].limit == 3_520_000


def test_grade_d_2008_says_not_defined() -> None:
    """The 2008 table's words appear in the error for the missing Grade D limit."""
    with pytest.raises(ValidationError, match="not defined"):
        room(id="d", grade="D", limit_set="eu-annex1-2008")


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"limit_set": "eu-annex1-2008/atmp-part-iv"}, "limit_set"),
        ({"grade": "E"}, "grade"),
        ({"state": "operational"}, "state"),
        ({"alert_fraction": 1.0}, "alert_fraction"),
        ({"alert_fraction": 0.0}, "alert_fraction"),
        ({"p05_tag": "pc-1/conc_0_5um"}, "p05_tag"),
        ({"p50_tag": "conc_5_0um"}, "p50_tag"),
        ({"id": "fill.1"}, "id"),
        ({"colour": "blue"}, "colour"),
        ({"n_of_m": {"n": 4, "m": 3}}, "n_of_m"),
        ({"n_of_m": {"n": 0}}, "n_of_m.n"),
        ({"at_rest": {"p50": {"alert_per_m3": 30}}}, "at_rest.p50.alert_per_m3"),
        ({"at_rest": {"p50": {"alert_per_m3": 29}}}, "at_rest.p50.alert_per_m3"),
        ({"in_operation": {"p05": {"action_per_m3": 4_000}}}, "in_operation.p05.action_per_m3"),
        ({"in_operation": {"p05": {"action_per_m3": -1}}}, "in_operation.p05.action_per_m3"),
        ({"alert_fraction": None}, "alert_per_m3: no alert level"),
        ({"n_of_m": {"above_per_m3": 29}}, "n_of_m.above_per_m3"),
    ],
)
def test_validation_errors_name_the_field(over: dict[str, Any], field: str) -> None:
    """Each invalid room is refused with the offending field in the error."""
    with pytest.raises(ValidationError) as exc:
        room(**over)
    assert field in errors_of(exc)


def test_alert_fraction_may_be_replaced_by_every_explicit_alert() -> None:
    """Without alert_fraction every size and state needs its own alert level."""
    explicit = {"p05": {"alert_per_m3": 2_000}, "p50": {"alert_per_m3": 15}}
    r = room(alert_fraction=None, at_rest=explicit, in_operation=explicit)
    assert room_levels(r, "at_rest")[P50].alert == 15


def test_room_config_is_frozen() -> None:
    """A loaded room cannot be changed in place; a state change goes through derive_rules."""
    with pytest.raises(ValidationError):
        room().state = "at_rest"  # type: ignore[misc]


def test_n_of_m_can_be_disabled_or_set_to_any_count() -> None:
    """n_of_m.enabled = false drops the rule; above_per_m3 = 0 counts any 5 µm particle."""
    assert "room.fill-1.p50.n_of_m" not in by_id(room_rules(room(n_of_m={"enabled": False})))
    rule = by_id(room_rules(room(n_of_m={"n": 3, "m": 10, "above_per_m3": 0})))
    low = rule["room.fill-1.p50.n_of_m"]
    assert (low.n, low.m, low.limit) == (3, 10, 0)


@given(
    st.sampled_from(GRADES),
    st.sampled_from(LIMIT_SET_NAMES),
    st.sampled_from(STATES),
    st.floats(min_value=0.01, max_value=0.99),
)
def test_alert_always_below_action(grade: Any, limit_set: Any, state: Any, fraction: float) -> None:
    """For any grade, set, state and fraction, each alert rule sits below its action rule."""
    site_set = {"in_operation": {s: {"action_per_m3": 1e7} for s in ("p05", "p50")}}
    extra = site_set if grade == "D" else {}  # Table 5 / 2008 print no Grade D in-op limit
    r = room(grade=grade, limit_set=limit_set, alert_fraction=fraction, **extra)
    rules = by_id(room_rules(r, state))
    for size in ("p05", "p50"):
        assert rules[f"room.fill-1.{size}.alert"].limit < rules[f"room.fill-1.{size}.action"].limit
    assert RoomConfig.model_validate(r.model_dump()) == r


# --- pressure links ------------------------------------------------------------------------


def link(**over: Any) -> PressureLinkConfig:
    cfg: dict[str, Any] = {"high_room": "fill-1", "low_room": "airlock-1", "tag": "dp-1.dp"}
    return PressureLinkConfig.model_validate(cfg | over)


def test_pressure_link_defaults_and_rules() -> None:
    """Defaults: action below 10 Pa (high), alert below 12 Pa (medium), 60 s on-delay."""
    rules = by_id(link_rules(link()))
    action, alert = rules["dp.fill-1.airlock-1.action"], rules["dp.fill-1.airlock-1.alert"]
    assert (action.kind, action.limit, action.priority) == ("low", 10.0, "high")
    assert (alert.kind, alert.limit, alert.priority) == ("low", 12.0, "medium")
    for rule in (action, alert):
        assert (rule.source, rule.unit, rule.on_delay_s, rule.deadband) == ("dp-1.dp", "Pa", 60, 1)
        assert "fill-1 -> airlock-1" in rule.message


def test_pressure_link_settings_carry_into_rules() -> None:
    """Configured limits, delay and deadband are what the rules carry."""
    rules = by_id(link_rules(link(min_pa=15, alert_pa=18, on_delay_s=30, deadband_pa=0.5)))
    action = rules["dp.fill-1.airlock-1.action"]
    assert (action.limit, action.on_delay_s, action.deadband) == (15, 30, 0.5)
    assert rules["dp.fill-1.airlock-1.alert"].limit == 18


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"alert_pa": 10}, "alert_pa"),
        ({"alert_pa": 9}, "alert_pa"),
        ({"low_room": "fill-1"}, "low_room"),
        ({"min_pa": 0}, "min_pa"),
        ({"on_delay_s": -1}, "on_delay_s"),
        ({"tag": "dp-1"}, "tag"),
        ({"delay_s": 5}, "delay_s"),
    ],
)
def test_pressure_link_validation(over: dict[str, Any], field: str) -> None:
    """An inconsistent link is refused, naming the field."""
    with pytest.raises(ValidationError) as exc:
        link(**over)
    assert field in errors_of(exc)


def site(**over: Any) -> CleanroomConfig:
    cfg: dict[str, Any] = {
        "rooms": [room().model_dump(), room(id="airlock-1", grade="B").model_dump()],
        "pressure_links": [
            link().model_dump(),
            {"high_room": "airlock-1", "low_room": "corridor", "tag": "dp-2.dp"},
        ],
        "unclassified_areas": ["corridor"],
    }
    return CleanroomConfig.model_validate(cfg | over)


def test_site_rules_are_rooms_then_links() -> None:
    """A two-room site with two links: 2 x (5 particle + 2 source) rules and 2 x (2 ΔP + 1
    source) rules, unique ids."""
    rules = derive_rules(site())
    ids = [r.id for r in rules]
    assert len(ids) == len(set(ids)) == 20
    assert ids[5:7] == ["room.fill-1.p05.quality", "room.fill-1.p50.quality"]
    assert ids[-6:] == [
        "dp.fill-1.airlock-1.action",
        "dp.fill-1.airlock-1.alert",
        "dp.fill-1.airlock-1.quality",
        "dp.airlock-1.corridor.action",
        "dp.airlock-1.corridor.alert",
        "dp.airlock-1.corridor.quality",
    ]


@pytest.mark.parametrize(("grade", "priority"), [("A", "high"), ("B", "high"), ("C", "medium")])
def test_every_particle_source_has_a_quality_rule(grade: str, priority: str) -> None:
    """A failed or frozen counter blinds the limit rules (they hold on bad data): each
    source tag gets its own quality rule, high where Annex 1 wants continuous monitoring."""
    r = room(id="r", grade=grade, p05_tag="pc-1.conc_0_5um", p50_tag="pc-9.conc_5_0um")
    rules = by_id(source_rules(r))
    assert set(rules) == {"room.r.p05.quality", "room.r.p50.quality"}
    p05, p50 = rules["room.r.p05.quality"], rules["room.r.p50.quality"]
    assert (p05.source, p50.source) == ("pc-1.conc_0_5um", "pc-9.conc_5_0um")
    for rule in (p05, p50):
        assert (rule.kind, rule.limit, rule.unit, rule.priority) == (
            "quality",
            180.0,
            "particles/m3",
            priority,
        )
    assert source_rules(room(stale_after_s=300))[0].limit == 300


def test_every_pressure_link_has_a_quality_rule() -> None:
    """The ΔP transmitter's quality rule: high (it blinds the high action rule), 60 s."""
    (rule,) = link_source_rules(link())
    assert (rule.id, rule.source, rule.kind) == (
        "dp.fill-1.airlock-1.quality",
        "dp-1.dp",
        "quality",
    )
    assert (rule.limit, rule.unit, rule.priority) == (60.0, "Pa", "high")
    assert link_source_rules(link(stale_after_s=20))[0].limit == 20
    with pytest.raises(ValidationError):
        link(stale_after_s=0)


def test_site_validation_names_links_and_rooms() -> None:
    """Unknown rooms, duplicate ids and duplicate links are refused with their path."""
    with pytest.raises(ValidationError) as exc:
        site(unclassified_areas=[])
    assert "pressure_links.1.low_room: unknown room 'corridor'" in errors_of(exc)
    with pytest.raises(ValidationError) as exc:
        site(rooms=[room().model_dump(), room().model_dump()])
    assert "rooms.1.id: duplicate room id 'fill-1'" in errors_of(exc)
    with pytest.raises(ValidationError) as exc:
        site(pressure_links=[link().model_dump(), link(tag="dp-9.dp").model_dump()])
    assert "pressure_links.1: a second link fill-1 -> airlock-1" in errors_of(exc)


def test_state_for_unknown_room_is_an_error() -> None:
    """derive_rules refuses a state for a room the site does not have."""
    with pytest.raises(ValueError, match="unknown room"):
        derive_rules(site(), {"fill-2": "at_rest"})


def test_check_sources_against_the_fleet() -> None:
    """A rule whose source is missing or in another unit is reported by id."""
    units = {
        "pc-1.conc_0_5um": "particles/m3",
        "pc-1.conc_5_0um": "counts",
        "dp-1.dp": "Pa",
    }
    rules = room_rules(room()) + link_rules(link())
    problems = check_sources(rules, units)
    assert "room.fill-1.p50.action: source 'pc-1.conc_5_0um' is in 'counts'" in problems[0]
    assert not any("p05" in p or "dp." in p for p in problems)
    assert check_sources(link_rules(link(tag="dp-2.dp")), units)[0].startswith(
        "dp.fill-1.airlock-1.action: source 'dp-2.dp' is not a tag"
    )


def test_docs_example_config_is_valid() -> None:
    """The TOML example in docs/cleanroom.md loads and yields its rules."""
    text = (Path(__file__).parents[2] / "docs" / "cleanroom.md").read_text(encoding="utf-8")
    block = text.split("```toml\n", 1)[1].split("```", 1)[0]
    cfg = CleanroomConfig.model_validate(tomllib.loads(block)["cleanroom"])
    rules = by_id(derive_rules(cfg))
    assert rules["room.fill-1.p50.action"].priority == "critical"
    assert rules["room.prep-d.p05.action"].limit == 3_520_000
    assert rules["dp.fill-1.prep-d.action"].on_delay_s == 60
