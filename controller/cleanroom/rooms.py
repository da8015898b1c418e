"""Rooms, their grades and pressure links, as config; and the limit rules they imply.

A room is held to a limit set (an Annex 1 monitoring table, `annex1.LIMIT_SETS`) whose
numbers are the action limits, plus site-defined alert levels below them. Every level a
room can need, in both operational states, is resolved when the config loads, so switching
a room between `at_rest` and `in_operation` by command can never reach a missing limit.

`derive_rules` turns the config and each room's current state into a flat list of
`LimitRule`s, independent of the alarm engine: the engine's config is built from them. Every
source tag also gets a `quality` rule: a counter or transmitter that fails, or whose data
stop being new, blinds its limit rules (they hold on bad data), so it must alarm itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, Self

from pydantic import Field, model_validator

from controller.cleanroom.annex1 import (
    DEFAULT_LOW_LEVEL_N_OF_M,
    MIN_PRESSURE_DIFFERENTIAL_PA,
    MONITORING_RULES,
    STATES,
    Grade,
    LimitSetName,
    ParticleSize,
    State,
    limit_set,
)
from drivers.registermap import Frozen

ROOM_ID_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,62}$"  # no dots: it sits inside alarm ids
SOURCE_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,62}\.[a-z][a-z0-9_]{0,62}$"  # device.tag
PARTICLE_UNIT: Final = "particles/m3"  # what drivers/particle_counter.py publishes
PRESSURE_UNIT: Final = "Pa"

DP_ALERT_PA: Final = 12.0  # domain.md §1.6 suggested daemon default, for QA to confirm
DP_ON_DELAY_S: Final = 60.0  # §1.6/§4.3: 30-60 s rides through door openings; upper end
DP_DEADBAND_PA: Final = 1.0  # §4.3: pressure 2 % of span; 2 % of a 50 Pa transmitter
# how long a source may give no new good reading before its quality alarm (docs/cleanroom.md)
PARTICLE_STALE_AFTER_S: Final = 180.0  # two missed 1-min records (sample + hold) and a margin
DP_STALE_AFTER_S: Final = 60.0  # as long as the ΔP on-delay: no blinder than a door opening


class SiteLevels(Frozen):
    """Site-defined levels for one particle size in one state, particles/m³."""

    action_per_m3: float | None = Field(
        default=None,
        gt=0.0,
        allow_inf_nan=False,
        description="required where the table prints no limit; else at most the table's",
    )
    alert_per_m3: float | None = Field(
        default=None, gt=0.0, allow_inf_nan=False, description="overrides alert_fraction"
    )


class StateLevels(Frozen):
    """Site-defined levels for one operational state."""

    p05: SiteLevels = SiteLevels()
    p50: SiteLevels = SiteLevels()


class NOfMConfig(Frozen):
    """Repeated low-level >= 5 µm counts: alarm when `n` of the last `m` samples are above.

    The level is `above_per_m3`, or the room's 5 µm alert level when unset (annex1's
    DEFAULT_LOW_LEVEL_N_OF_M says where 2 of 3 comes from).
    """

    enabled: bool = True
    n: int = Field(default=DEFAULT_LOW_LEVEL_N_OF_M.n, ge=1, le=100)
    m: int = Field(default=DEFAULT_LOW_LEVEL_N_OF_M.m, ge=1, le=100)
    above_per_m3: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _n_within_m(self) -> Self:
        if self.n > self.m:
            raise ValueError(f"n ({self.n}) is larger than m ({self.m})")
        return self


class RoomConfig(Frozen):
    """One classified room: its grade, limit set, state, and where its particle counts come from."""

    id: str = Field(pattern=ROOM_ID_PATTERN)
    name: str = ""
    grade: Grade
    limit_set: LimitSetName = "eu-annex1-2022"
    state: State = Field(
        default="in_operation",
        description="state at the first start; later the last state set by command (kept)",
    )
    p05_tag: str = Field(pattern=SOURCE_PATTERN, description="device.tag, ≥0.5 µm particles/m³")
    p50_tag: str = Field(pattern=SOURCE_PATTERN, description="device.tag, ≥5.0 µm particles/m³")
    alert_fraction: float | None = Field(
        default=None, gt=0.0, lt=1.0, description="alert level = fraction x action level"
    )
    at_rest: StateLevels = StateLevels()
    in_operation: StateLevels = StateLevels()
    n_of_m: NOfMConfig = Field(default=NOfMConfig(), description="repeated low-level 5 µm counts")
    stale_after_s: float = Field(
        default=PARTICLE_STALE_AFTER_S,
        gt=0.0,
        le=3600.0,
        description="no new good particle reading this long: quality alarm (> record period)",
    )

    @model_validator(mode="after")
    def _levels_resolve(self) -> Self:
        errors = [e for state in STATES for e in _level_errors(self, state)]
        if errors:
            raise ValueError("; ".join(errors))
        return self

    @property
    def label(self) -> str:
        """The room as messages name it."""
        return self.name or self.id


@dataclass(frozen=True, slots=True)
class ParticleLevels:
    """The levels one particle size is checked against in one state, particles/m³."""

    size: ParticleSize
    action: float
    alert: float
    action_basis: str  # the limit-set name, or "site" where the site set the action level


def _site(room: RoomConfig, state: State, size: ParticleSize) -> SiteLevels:
    levels: StateLevels = room.at_rest if state == "at_rest" else room.in_operation
    return levels.p05 if size is ParticleSize.P05 else levels.p50


def _action_level(
    room: RoomConfig, state: State, size: ParticleSize
) -> tuple[float | None, list[str]]:
    """The site's action level where it set one (never above the table), else the table's."""
    where = f"{state}.{size.value}.action_per_m3"
    table = limit_set(room.limit_set)
    printed = table.limit(room.grade, state, size)
    site = _site(room, state, size).action_per_m3
    value = site if site is not None else printed
    if value is None:
        why = table.blank_reason(room.grade, state, size)
        return None, [
            f"{where}: {room.limit_set} has no {size.label} limit for Grade {room.grade} "
            f"{state.replace('_', ' ')} ({why}); set one"
        ]
    if site is not None and printed is not None and site > printed:
        return site, [f"{where}: {site:g} is above the {room.limit_set} limit {printed}"]
    return float(value), []


def _alert_level(
    room: RoomConfig, state: State, size: ParticleSize, action: float
) -> tuple[float | None, list[str]]:
    """The site's explicit alert level, else alert_fraction x action; strictly below action."""
    where = f"{state}.{size.value}.alert_per_m3"
    alert = _site(room, state, size).alert_per_m3
    if alert is None and room.alert_fraction is not None:
        alert = room.alert_fraction * action
    if alert is None:
        return None, [f"{where}: no alert level; set it or alert_fraction"]
    if alert >= action:
        return alert, [f"{where}: {alert:g} is not below the action level {action:g}"]
    return alert, []


def _resolve(
    room: RoomConfig, state: State, size: ParticleSize
) -> tuple[ParticleLevels, list[str]]:
    """The levels of one cell and the problems found; a level is NaN where unresolved."""
    action, errors = _action_level(room, state, size)
    alert, alert_errors = (None, []) if action is None else _alert_level(room, state, size, action)
    basis = room.limit_set if _site(room, state, size).action_per_m3 is None else "site"
    nan = float("nan")
    levels = ParticleLevels(
        size, nan if action is None else action, nan if alert is None else alert, basis
    )
    return levels, errors + alert_errors


def _level_errors(room: RoomConfig, state: State) -> list[str]:
    errors: list[str] = []
    for size in ParticleSize:
        levels, found = _resolve(room, state, size)
        errors += found
        low = room.n_of_m.above_per_m3
        if size is ParticleSize.P50 and not found and low is not None and low >= levels.action:
            errors.append(
                f"n_of_m.above_per_m3: {low:g} is not below the {state} 5 µm action level "
                f"{levels.action:g}"
            )
    return errors


def room_levels(room: RoomConfig, state: State | None = None) -> dict[ParticleSize, ParticleLevels]:
    """The action and alert levels of `room` in `state` (default: its configured state)."""
    return {size: _resolve(room, state or room.state, size)[0] for size in ParticleSize}


class PressureLinkConfig(Frozen):
    """The pressure differential from a cleaner room to its neighbour, as one transmitter reads it.

    `tag` reads high_room minus low_room in Pa; the differential must stay at or above
    `min_pa` (the action level, Annex 1's 10 Pa guidance) and `alert_pa` (the alert level).
    """

    high_room: str = Field(pattern=ROOM_ID_PATTERN)
    low_room: str = Field(pattern=ROOM_ID_PATTERN)
    tag: str = Field(pattern=SOURCE_PATTERN, description="device.tag, ΔP in Pa")
    min_pa: float = Field(default=MIN_PRESSURE_DIFFERENTIAL_PA, gt=0.0, allow_inf_nan=False)
    alert_pa: float = Field(default=DP_ALERT_PA, gt=0.0, allow_inf_nan=False)
    on_delay_s: float = Field(
        default=DP_ON_DELAY_S, ge=0.0, le=3600.0, description="rides through door openings"
    )
    deadband_pa: float = Field(default=DP_DEADBAND_PA, ge=0.0, allow_inf_nan=False)
    stale_after_s: float = Field(
        default=DP_STALE_AFTER_S,
        gt=0.0,
        le=3600.0,
        description="no new good ΔP reading this long: quality alarm (> poll period)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.high_room == self.low_room:
            raise ValueError(f"low_room: same as high_room ({self.high_room!r})")
        if self.alert_pa <= self.min_pa:
            raise ValueError(
                f"alert_pa: {self.alert_pa:g} Pa must be above min_pa ({self.min_pa:g} Pa): "
                "the alert comes before the action level on a falling differential"
            )
        return self


def check_links(
    rooms: Iterable[RoomConfig],
    links: Iterable[PressureLinkConfig],
    unclassified: Iterable[str] = (),
) -> list[str]:
    """Problems with the room set: duplicate ids, links to unknown rooms, duplicate links."""
    errors: list[str] = []
    ids: set[str] = set()
    for i, room in enumerate(rooms):
        if room.id in ids:
            errors.append(f"rooms.{i}.id: duplicate room id {room.id!r}")
        ids.add(room.id)
    known = ids | set(unclassified)
    pairs: set[tuple[str, str]] = set()
    for i, link in enumerate(links):
        errors.extend(
            f"pressure_links.{i}.{side}: unknown room {name!r} (not in rooms or unclassified_areas)"
            for side, name in (("high_room", link.high_room), ("low_room", link.low_room))
            if name not in known
        )
        pair = (link.high_room, link.low_room)
        if pair in pairs:
            errors.append(f"pressure_links.{i}: a second link {pair[0]} -> {pair[1]}")
        pairs.add(pair)
    return errors


class CleanroomConfig(Frozen):
    """The site's rooms, the pressure links between them, and unclassified neighbours."""

    rooms: tuple[RoomConfig, ...] = ()
    pressure_links: tuple[PressureLinkConfig, ...] = ()
    unclassified_areas: tuple[str, ...] = Field(
        default=(), description="ids of unclassified spaces a link may name (a corridor)"
    )

    @model_validator(mode="after")
    def _links_resolve(self) -> Self:
        errors = check_links(self.rooms, self.pressure_links, self.unclassified_areas)
        if errors:
            raise ValueError("; ".join(errors))
        return self


# --- Limit rules: what the alarm engine evaluates ------------------------------------------

RuleKind = Literal["high", "low", "n_of_m", "quality"]
Priority = Literal["low", "medium", "high", "critical"]


@dataclass(frozen=True, slots=True)
class LimitRule:
    """One alarm the engine should evaluate on one source tag.

    `high`: active while value > limit (a table limit is the highest permitted value).
    `low`: active while value < limit (the differential must be at least the limit).
    `n_of_m`: active while at least `n` of the last `m` samples (new readings of the source,
    not ticks) are > limit. `quality`: active while the source has given no new good
    reading for `limit` seconds (its stale_after_s). Deadband is in the source's unit;
    delays in seconds. Particle rules keep the zero defaults: each sample is one whole
    measurement, judged on its own.
    """

    id: str
    source: str
    kind: RuleKind
    limit: float
    unit: str
    priority: Priority
    message: str
    on_delay_s: float = 0.0
    off_delay_s: float = 0.0
    deadband: float = 0.0
    n: int = 1
    m: int = 1


def _num(x: float) -> str:
    return f"{round(x):,}".replace(",", " ") if x == round(x) else f"{x:g}"


def _particle_rule(
    room: RoomConfig, state: State, lv: ParticleLevels, level: Literal["action", "alert"]
) -> LimitRule:
    """A particle level checked per sample.

    Priorities (domain.md §4.1-4.3): a Grade A ≥5.0 µm action excursion alarms at once and
    is the one critical particle alarm; other action levels are high; alert levels are
    medium in Grades A/B, where Annex 1 §9 asks for alarms on alert limits, and low in C/D,
    which keeps most alarms low as §4.2's distribution asks.
    """
    if level == "action":
        critical = room.grade == "A" and lv.size is ParticleSize.P50
        priority: Priority = "critical" if critical else "high"
        value, words = lv.action, f"the action limit {_num(lv.action)} /m³ ({lv.action_basis})"
    else:
        priority = "medium" if MONITORING_RULES[room.grade].alarm_on_alert else "low"
        value, words = lv.alert, f"the site alert level {_num(lv.alert)} /m³"
    source = room.p05_tag if lv.size is ParticleSize.P05 else room.p50_tag
    message = f"{_where(room, state)}: {lv.size.label} particles above {words}"
    rule_id = f"room.{room.id}.{lv.size.value}.{level}"
    return LimitRule(rule_id, source, "high", value, PARTICLE_UNIT, priority, message)


def _where(room: RoomConfig, state: State) -> str:
    return f"Room {room.label} (Grade {room.grade}, {state.replace('_', ' ')})"


def _low_level_rule(
    room: RoomConfig, state: State, lv: ParticleLevels, cfg: NOfMConfig
) -> LimitRule:
    """Repeated low-level 5 µm counts (Annex 1 2022 §9, domain.md §1.5): investigate.

    High in Grades A/B (a possible contamination event where 5 µm counts should be rare),
    medium in C/D.
    """
    level = lv.alert if cfg.above_per_m3 is None else cfg.above_per_m3
    priority: Priority = "high" if room.grade in ("A", "B") else "medium"
    message = (
        f"{_where(room, state)}: ≥5.0 µm particles above {_num(level)} /m³ in {cfg.n} of "
        f"the last {cfg.m} samples; repeated low-level counts, investigate"
    )
    rule_id = f"room.{room.id}.p50.n_of_m"
    return LimitRule(
        rule_id, room.p50_tag, "n_of_m", level, PARTICLE_UNIT, priority, message, n=cfg.n, m=cfg.m
    )


def room_rules(room: RoomConfig, state: State | None = None) -> list[LimitRule]:
    """The particle rules of `room` in `state` (default: its configured state)."""
    current = state or room.state
    levels = room_levels(room, current)
    rules = [
        _particle_rule(room, current, levels[size], level)
        for size in ParticleSize
        for level in ("action", "alert")
    ]
    if room.n_of_m.enabled:
        rules.append(_low_level_rule(room, current, levels[ParticleSize.P50], room.n_of_m))
    return rules


def source_rules(room: RoomConfig) -> list[LimitRule]:
    """A quality rule per particle source of `room`, whatever its state.

    The limit rules hold on bad data (a BAD sample neither raises nor clears), so a failed,
    frozen or UNCERTAIN-only counter would leave them silent. High in Grades A/B, where
    Annex 1 §9 asks for continuous monitoring during critical processing, medium in C/D.
    Not critical: that stays for the one real excursion (§4.2).
    """
    priority: Priority = "high" if room.grade in ("A", "B") else "medium"
    out = []
    for size in ParticleSize:
        source = room.p05_tag if size is ParticleSize.P05 else room.p50_tag
        message = (
            f"Room {room.label} (Grade {room.grade}): no new good {size.label} reading from "
            f"{source} for {_num(room.stale_after_s)} s; the room's particle alarms cannot see"
        )
        rule_id = f"room.{room.id}.{size.value}.quality"
        out.append(
            LimitRule(
                rule_id, source, "quality", room.stale_after_s, PARTICLE_UNIT, priority, message
            )
        )
    return out


def link_source_rules(link: PressureLinkConfig) -> list[LimitRule]:
    """The quality rule of a ΔP link's transmitter: high, as the action rule it blinds."""
    message = (
        f"Pressure {link.high_room} -> {link.low_room}: no new good reading from {link.tag} "
        f"for {_num(link.stale_after_s)} s; the ΔP alarms cannot see"
    )
    rule_id = f"dp.{link.high_room}.{link.low_room}.quality"
    return [
        LimitRule(rule_id, link.tag, "quality", link.stale_after_s, PRESSURE_UNIT, "high", message)
    ]


def link_rules(link: PressureLinkConfig) -> list[LimitRule]:
    """ΔP rules: action (below min_pa) high, alert (below alert_pa) medium, both delayed.

    The on-delay rides through a door opening (§1.6, §4.3); the deadband keeps a
    differential hovering at the limit from chattering.
    """
    base = f"dp.{link.high_room}.{link.low_room}"
    pair = f"Pressure {link.high_room} -> {link.low_room}"
    levels: tuple[tuple[str, float, Priority, str], ...] = (
        ("action", link.min_pa, "high", "the minimum"),
        ("alert", link.alert_pa, "medium", "the alert level"),
    )
    return [
        LimitRule(
            id=f"{base}.{level}",
            source=link.tag,
            kind="low",
            limit=limit,
            unit=PRESSURE_UNIT,
            priority=priority,
            on_delay_s=link.on_delay_s,
            off_delay_s=0.0,
            deadband=link.deadband_pa,
            message=f"{pair} below {words} {_num(limit)} Pa for {_num(link.on_delay_s)} s",
        )
        for level, limit, priority, words in levels
    ]


def derive_rules(
    site: CleanroomConfig, states: Mapping[str, State] | None = None
) -> list[LimitRule]:
    """Every rule of the site, rooms in their current `states` (room id -> state).

    A room missing from `states` is in its configured state; an unknown id raises. Call
    again after a state command: the result replaces the previous rules of that room.
    """
    current = dict(states or {})
    unknown = set(current) - {room.id for room in site.rooms}
    if unknown:
        raise ValueError(f"state given for unknown room(s): {', '.join(sorted(unknown))}")
    rules = [
        r
        for room in site.rooms
        for r in (*room_rules(room, current.get(room.id)), *source_rules(room))
    ]
    return rules + [
        r for link in site.pressure_links for r in (*link_rules(link), *link_source_rules(link))
    ]


def check_sources(rules: Iterable[LimitRule], units: Mapping[str, str]) -> list[str]:
    """Problems with the rules' sources against the fleet's tags (`device.tag` -> unit).

    Run once the device profiles are loaded: a source must exist and carry the rule's unit.
    """
    errors: list[str] = []
    for rule in rules:
        unit = units.get(rule.source)
        if unit is None:
            errors.append(f"{rule.id}: source {rule.source!r} is not a tag of any device")
        elif unit != rule.unit:
            errors.append(f"{rule.id}: source {rule.source!r} is in {unit!r}, not {rule.unit!r}")
    return errors
