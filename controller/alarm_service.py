"""The alarm engine at run time: every configured alarm evaluated from the tag store each tick.

Alarms come from `[[alarms]]` and from `[cleanroom]` (controller/cleanroom: the Annex 1
limits of each room, for both operational states, the state not in force suppressed by
design, the ΔP links, and a quality alarm per source). Each room's state is a tag of its own
stream (`room.<id>`, `in_operation` 1/0), recorded like any reading and switched by the
`room_state` command; it is kept in `rooms.json` beside `alarms.json`, so a restart goes on
with the limits in force, not with the config's (looser in operation) first default.
Every transition goes out three ways: the alarm's retained snapshot on
`<prefix>/alarms/<alarm>`, an `alarm` event (InfluxDB `alarm_events`, MQTT
`events/alarm`), and, through the command that caused it, the audit trail.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from controller.alarms import (
    AlarmConfig,
    AlarmEngine,
    AlarmEvent,
    AlarmRefused,
    HealthTracker,
    persist,
)
from controller.alarms.events import iso_utc
from controller.cancel import wait_at_most
from controller.cleanroom.annex1 import State
from controller.cleanroom.rooms import (
    CleanroomConfig,
    LimitRule,
    link_rules,
    link_source_rules,
    room_rules,
    source_rules,
)
from controller.command_actions import AlarmAction, RoomState
from controller.loops import loop_tags
from controller.tagstore import TagStore
from drivers.sample import Quality, Sample, Scan, utc_now_ns

if TYPE_CHECKING:
    from controller.config import SiteConfig

log = logging.getLogger(__name__)

STATES: tuple[State, ...] = ("at_rest", "in_operation")
ROOM_TAG = "in_operation"
ROOMS_FILE = "rooms.json"  # beside alarms.json: each room's state as last set


@dataclass(frozen=True, slots=True)
class RoomTag:
    """A tag of a stream the daemon records itself (a room's state, its own health)."""

    tag: str = ROOM_TAG
    unit: str = "bool"


def room_stream(room: str) -> str:
    """The stream a room's operational state is recorded under."""
    return f"room.{room}"


def derived_tags(cfg: SiteConfig) -> list[str]:
    """`stream.tag` of what the daemon itself records: the loops' terms, the rooms' states."""
    out = [f"{loop.id}.{t.tag}" for loop in cfg.loops for t in loop_tags("", "")]
    rooms = cfg.cleanroom.rooms if cfg.cleanroom else ()
    out += [f"{SYSTEM}.{t.tag}" for t in SYSTEM_TAGS]
    return out + [f"{room_stream(room.id)}.{ROOM_TAG}" for room in rooms]


def cleanroom_alarms(cleanroom: CleanroomConfig | None) -> list[AlarmConfig]:
    """The cleanroom's rules as engine alarms: per room both states, the other suppressed;
    each source's quality alarm (failed or stale data) in every state."""
    if cleanroom is None:
        return []
    out = []
    for room in cleanroom.rooms:
        for state in STATES:
            equals = 0.0 if state == "in_operation" else 1.0  # suppressed in the other state
            for rule in room_rules(room, state):
                alarm_id = rule.id.replace(f"room.{room.id}.", f"room.{room.id}.{state}.", 1)
                suppress = {"tag": f"{room_stream(room.id)}.{ROOM_TAG}", "equals": equals}
                out.append(_alarm(rule, alarm_id, suppress))
        out += [_alarm(rule, rule.id, None) for rule in source_rules(room)]
    for link in cleanroom.pressure_links:
        rules = [*link_rules(link), *link_source_rules(link)]
        out += [_alarm(rule, rule.id, None) for rule in rules]
    return out


def _alarm(rule: LimitRule, alarm_id: str, suppress: dict[str, object] | None) -> AlarmConfig:
    if rule.kind == "quality":  # its limit is the time without a new good reading
        return AlarmConfig.model_validate(
            {
                "id": alarm_id,
                "tag": rule.source,
                "kind": "quality",
                "priority": rule.priority,
                "message": rule.message,
                "stale_after_s": rule.limit,
            }
        )
    fields: dict[str, object] = {
        "id": alarm_id,
        "tag": rule.source,
        "kind": rule.kind,
        "priority": rule.priority,
        "message": rule.message,
        "limit": rule.limit,
        "on_delay_s": rule.on_delay_s,
        "off_delay_s": rule.off_delay_s,
    }
    if rule.kind == "n_of_m":
        fields |= {"window_n": rule.n, "window_m": rule.m}
    elif rule.deadband:
        fields["deadband"] = rule.deadband
    if suppress is not None:
        fields["suppress_when"] = suppress
    return AlarmConfig.model_validate(fields)


class AlarmService:
    """Evaluates, publishes and operates the site's alarms (implements plant.AlarmDesk)."""

    def __init__(
        self,
        configs: Sequence[AlarmConfig],
        store: TagStore,
        rooms: Mapping[str, str],
        *,
        publish_state: Callable[[str, bytes], None],
        record_event: Callable[[AlarmEvent], None],
        record_scan: Callable[[Scan], object],
        state_path: Path | None = None,
    ) -> None:
        self.engine = AlarmEngine(configs)
        self._state_path = state_path
        self._rooms_path = None if state_path is None else state_path.with_name(ROOMS_FILE)
        self.health = HealthTracker()
        # room id -> at_rest | in_operation: the config's first default until start() puts
        # back the state last set (rooms.json); who set it and when, for the log and the file
        self.rooms = dict(rooms)
        self._room_set: dict[str, dict[str, object]] = {}
        self._store = store
        self._publish_state = publish_state
        self._record_event = record_event
        self._record_scan = record_scan
        columns = {f"{dev}.{tag}": i for (dev, tag), i in store.index.items()}
        self._value, self._sp, self._sup = self.engine.table.tag_columns(columns)
        self._last_rx = np.full(len(self._value), -1, dtype=np.int64)
        self.ticks = 0
        self.events = 0

    # --- per tick -------------------------------------------------------------------
    def start(self) -> None:
        """Restore what operators did before a restart (alarm and room states), record every
        room's state, publish every alarm's snapshot (late joiners)."""
        self._restore()
        self._restore_rooms()
        for room in self.rooms:
            self._record_room(room)
        for alarm in self.engine.ids:
            self._publish_state(f"alarms/{alarm}", self._snapshot(alarm))

    def tick(self, now_s: float, t_ns: int) -> list[AlarmEvent]:
        """Evaluate every alarm on the latest values; publish what moved."""
        store, cols = self._store, self._value
        value = store.value[cols]
        quality = store.quality[cols]
        good = quality == Quality.GOOD
        uncertain = quality == Quality.UNCERTAIN  # may raise an alarm, never clear one
        rx = store.t_receive_ns[cols]
        fresh = rx != self._last_rx
        self._last_rx = rx
        sp = store.value[self._sp]  # an alarm without a set-point tag reads its own (ignored)
        suppress = self.engine.table.suppression(store.value[self._sup])
        events = self.engine.tick(now_s, t_ns, value, good, sp, suppress, fresh, uncertain)
        self.ticks += 1
        self._emit(events)
        return events

    async def run(self, stop: asyncio.Event, period_s: float) -> None:
        """Tick every `period_s` (monotonic) until `stop`."""
        self.start()
        while not stop.is_set():
            self.tick(time.monotonic(), utc_now_ns())
            await wait_at_most(stop.wait(), period_s)

    def rebind(self, store: TagStore) -> None:
        """Read from a new tag store (a config reload that left the alarms as they were)."""
        columns = {f"{dev}.{tag}": i for (dev, tag), i in store.index.items()}
        self._value, self._sp, self._sup = self.engine.table.tag_columns(columns)
        self._last_rx = store.t_receive_ns[self._value].copy()
        self._store = store

    def health_doc(self, t_ns: int) -> dict[str, object]:
        """ISA-18.2 / EEMUA 191 alarm-system health now (docs/alarms.md)."""
        return self.health.metrics(t_ns).as_dict()

    def attention(self) -> list[tuple[str, str, str, str]]:
        """(alarm, state, priority, message) of every alarm not normal nor suppressed."""
        quiet = ("normal", "suppressed")
        out: list[tuple[str, str, str, str]] = []
        for i, alarm in enumerate(self.engine.ids):
            state = str(self.engine.records[i].state)
            if state not in quiet:
                cfg = self.engine.table.configs[i]
                out.append((alarm, state, cfg.priority, cfg.message))
        return out

    # --- commands (plant.AlarmDesk) -------------------------------------------------
    def state(self, alarm: str) -> str | None:
        """The alarm's ISA-18.2 state, None for no such alarm."""
        try:
            return str(self.engine.state(alarm))
        except AlarmRefused:
            return None

    def operate(self, action: AlarmAction, user: str, reason: str) -> None:
        """ack / reset / shelve / unshelve / out_of_service / in_service; ValueError if refused."""
        eng, t_ns, alarm = self.engine, utc_now_ns(), action.alarm
        try:
            if action.verb == "ack":
                events = eng.ack(alarm, user=user, t_ns=t_ns, reason=reason)
            elif action.verb == "reset":
                events = eng.reset(alarm, user=user, t_ns=t_ns, reason=reason)
            elif action.verb == "shelve":
                events = eng.shelve(
                    alarm,
                    duration_s=action.duration_s or 0.0,
                    reason=reason,
                    user=user,
                    now_s=time.monotonic(),
                    t_ns=t_ns,
                )
            elif action.verb == "unshelve":
                events = eng.unshelve(alarm, user=user, t_ns=t_ns, reason=reason)
            elif action.verb == "out_of_service":
                events = eng.out_of_service(alarm, user=user, reason=reason, t_ns=t_ns)
            else:
                events = eng.in_service(alarm, user=user, t_ns=t_ns, reason=reason)
        except AlarmRefused as exc:
            raise ValueError(exc.message) from None
        self._emit(events)

    def room_state(self, room: str) -> str | None:
        """at_rest / in_operation, None for no such room."""
        return self.rooms.get(room)

    def set_room_state(self, action: RoomState, user: str) -> None:
        """Switch a room's operational state: its other limit set takes over at the next tick."""
        if action.room not in self.rooms:
            raise ValueError(f"there is no room {action.room!r}")
        self.rooms[action.room] = action.state
        self._room_set[action.room] = {"by": user, "t_ns": utc_now_ns()}
        self._save_rooms()
        self._record_room(action.room)
        log.info("room %s is now %s (by %s)", action.room, action.state, user)

    # --- output ---------------------------------------------------------------------
    def _emit(self, events: list[AlarmEvent]) -> None:
        if not events:
            return
        self.health.observe(events)
        self.events += len(events)
        self._save()
        for alarm in dict.fromkeys(ev.alarm for ev in events):
            self._publish_state(f"alarms/{alarm}", self._snapshot(alarm))
        for ev in events:
            self._record_event(ev)

    def _restore(self) -> None:
        """Alarm states from alarms.json, then the health tracker from them (no events)."""
        if self._state_path is not None:
            self._restore_alarms(self._state_path)
        eng = self.engine
        current = zip(eng.ids, eng.records, strict=True)
        self.health.seed(((a, r.state, r.t_active_ns) for a, r in current), utc_now_ns())

    def _restore_alarms(self, path: Path) -> None:
        """Whatever is readable is restored; the rest starts from normal (more alarms, never
        fewer), the file is kept aside for inspection and the daemon starts regardless."""
        try:
            saved, wrong = persist.read(path)
        except OSError as exc:
            log.error("alarm states in %s unreadable, starting from normal: %s", path, exc)  # noqa: TRY400
            return
        kept = _set_aside(path, wrong, "alarm states", "those alarms start from normal")
        n = persist.restore(self.engine, saved, time.monotonic(), utc_now_ns())
        if n:
            log.info("alarm states restored for %d alarms from %s", n, path)
        if kept:
            self._save()  # a clean file again, with what could be restored

    def _restore_rooms(self) -> None:
        """Each room's state as last set; the config's `state` only for a room never set."""
        path = self._rooms_path
        if path is None:
            return
        try:
            saved, wrong = _read_rooms(path)
        except OSError as exc:
            log.error("room states in %s unreadable, using the config's: %s", path, exc)  # noqa: TRY400
            return
        _set_aside(path, wrong, "room states", "those rooms take the config's state")
        for room, facts in saved.items():
            if room not in self.rooms:
                continue  # no longer configured
            state, by, t_ns = facts["state"], facts.get("by"), facts.get("t_ns")
            if state != self.rooms[room]:
                when = "?" if t_ns is None else iso_utc(t_ns)
                log.warning(
                    "room %s restored %s (set by %s at %s), not the config's first default %s",
                    room,
                    state,
                    by,
                    when,
                    self.rooms[room],
                )
            self.rooms[room] = state
            self._room_set[room] = {"by": by, "t_ns": t_ns}
        self._save_rooms()  # a first start keeps the config's states from now on

    def _save_rooms(self) -> None:
        if self._rooms_path is None:
            return
        doc = {
            room: {"state": state, **self._room_set.get(room, {})}
            for room, state in self.rooms.items()
        }
        try:
            persist.write_atomic(self._rooms_path, doc)
        except OSError as exc:
            log.error("room states not saved to %s: %s", self._rooms_path, exc)  # noqa: TRY400

    def _save(self) -> None:
        if self._state_path is None:
            return
        try:
            persist.save(self.engine, self._state_path)
        except OSError as exc:
            log.error("alarm states not saved to %s: %s", self._state_path, exc)  # noqa: TRY400

    def _snapshot(self, alarm: str) -> bytes:
        doc = self.engine.snapshot(alarm)
        return json.dumps(doc, separators=(",", ":"), allow_nan=False, default=str).encode()

    def _record_room(self, room: str) -> None:
        """The room's state into the tag store now (alarms see it at once) and the record."""
        t_ns = utc_now_ns()
        on = 1.0 if self.rooms[room] == "in_operation" else 0.0
        scan = Scan(room_stream(room), t_ns, (Sample.good(ROOM_TAG, on, "bool", t_ns),))
        self._record_scan(scan)


def _read_rooms(path: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """(room id -> {state, by, t_ns} as saved, what is wrong with the file); OSError if
    it exists but cannot be read."""
    if not path.exists():
        return {}, []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        return {}, [f"not JSON ({exc})"]
    if not isinstance(data, dict):
        return {}, [f"not an object of rooms but {json.dumps(data)[:40]}"]
    good: dict[str, dict[str, Any]] = {}
    wrong: list[str] = []
    for room, facts in data.items():
        if not isinstance(facts, dict) or facts.get("state") not in STATES:
            wrong.append(f"{room}: no state at_rest or in_operation")
        elif not isinstance(facts.get("by"), str | None):
            wrong.append(f"{room}: 'by' is not text")
        elif facts.get("t_ns") is not None and type(facts["t_ns"]) is not int:
            wrong.append(f"{room}: 't_ns' is not a time in ns")
        else:
            good[room] = facts
    return good, wrong


def _set_aside(path: Path, wrong: list[str], what: str, consequence: str) -> bool:
    """Log what is wrong with a state file and rename it aside; True if it was renamed."""
    if not wrong:
        return False
    listed = "; ".join(wrong[:5]) + (f"; and {len(wrong) - 5} more" if len(wrong) > 5 else "")
    try:
        where = f"kept as {persist.set_aside(path, utc_now_ns())}"
    except OSError as exc:
        where = f"could not be kept aside ({exc})"
    log.error("%s in %s not restorable: %s; %s; file %s", what, path, listed, consequence, where)
    return where.startswith("kept")


SYSTEM = "cellfab"  # the daemon's own stream: its health as tags, alarmed like any other
SYSTEM_TAGS = (
    RoomTag("spool_usage", "fraction"),  # of the spool's disk budget
    RoomTag("spool_buffered", "scans"),  # appended, not yet committed (disk failing?)
    RoomTag("sink_lag_max", "scans"),  # the furthest-behind sink
    RoomTag("stuck", "count"),  # components the watchdog sees overdue
    RoomTag("spool_failing", "bool"),  # commits or reads of the spool fail (spool.failure)
    RoomTag("state_disk_free", "fraction"),  # of the state dir's file system (disk_free.py)
)
BUILT_IN = (
    AlarmConfig(
        id="cellfab.spool_usage",
        tag=f"{SYSTEM}.spool_usage",
        kind="high",
        limit=0.8,
        deadband=0.05,
        priority="high",
        message="spool above 80 % of its disk budget: a sink has been down for long; at "
        "100 % the oldest non-GMP data are dropped (recorded as gaps)",
    ),
    AlarmConfig(
        id="cellfab.stuck",
        tag=f"{SYSTEM}.stuck",
        kind="high",
        limit=0.5,
        priority="critical",
        message="a poller, loop group or sink has stopped making progress (watchdog)",
    ),
    AlarmConfig(
        id="cellfab.spool_failing",
        tag=f"{SYSTEM}.spool_failing",
        kind="high",
        limit=0.5,
        priority="critical",
        message="the spool cannot write or read its file (disk full, I/O error, corrupt): "
        "scans are held in memory and the sinks wait; at the memory limit scans are refused",
    ),
    AlarmConfig(
        id="cellfab.disk_free",
        tag=f"{SYSTEM}.state_disk_free",
        kind="low",
        limit=0.1,
        deadband=0.02,
        priority="high",
        message="less than 10 % free on the state directory's disk: the audit trail, batch "
        "archives and alarm states have no budget of their own and fail when it is full",
    ),
)
