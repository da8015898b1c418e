"""The alarm engine: vectorised conditions per tick, the state machine for the few that move.

`AlarmEngine.tick` evaluates every alarm's condition as arrays (evaluate.py), then walks
only the alarms whose condition flipped, whose suppression changed or whose shelving
expired, through the transition tables (states.py), one small Python step each. Operator
actions are methods that return the events they caused, or raise `AlarmRefused` saying why.
No clock, no I/O: the caller passes a monotonic `now_s` (delays, shelving) and a UTC `t_ns`
(the events' time), and publishes what comes back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from controller.alarms import states
from controller.alarms.config import AlarmConfig
from controller.alarms.evaluate import Conditions, evaluate
from controller.alarms.events import AlarmEvent, iso_utc, number
from controller.alarms.states import Cause, State
from controller.alarms.table import F64, AlarmTable, Bool, pack

# bound once: an enum member lookup costs ~0.4 µs on Python 3.11, a global ~0.03 µs
_UNACK, _ACK, _ALARM, _RETURN = State.UNACK, Cause.ACK, Cause.ALARM, Cause.RETURN


class AlarmRefused(Exception):
    """An operator action that does not apply: a machine `code` and a `message` for a human."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(slots=True)
class Record:
    """One alarm's state and the facts its retained message carries."""

    state: State = State.NORMAL
    under: State = State.NORMAL  # the process state under the masks, while masked
    out_of_service: bool = False
    shelved: bool = False
    suppressed: bool = False
    t_state_ns: int | None = None  # the last transition
    t_active_ns: int | None = None
    t_ack_ns: int | None = None
    ack_user: str | None = None
    t_return_ns: int | None = None
    shelved_until_s: float = math.inf  # monotonic
    shelved_until_ns: int | None = None  # UTC, for display
    shelved_by: str | None = None
    shelve_reason: str | None = None
    oos_by: str | None = None
    oos_reason: str | None = None


class AlarmEngine:
    """Every configured alarm; input arrays of a tick are aligned with `ids`."""

    def __init__(self, configs: Sequence[AlarmConfig]) -> None:
        self.table: AlarmTable = pack(configs)
        self.ids = self.table.ids
        self.conditions = Conditions(self.table)
        self.records = [Record() for _ in self.ids]
        self.suppressed = np.zeros(self.table.n, dtype=bool)
        self._index = {alarm: i for i, alarm in enumerate(self.ids)}
        self._no_setpoint = np.full(self.table.n, np.nan)
        self._limit: list[float] = self.table.limit.tolist()
        self._next_expiry_s = math.inf

    def index(self, alarm_id: str) -> int:
        """Position of an alarm in the packed order; AlarmRefused if unknown."""
        try:
            return self._index[alarm_id]
        except KeyError:
            raise AlarmRefused("unknown_alarm", f"no alarm {alarm_id!r}") from None

    def state(self, alarm_id: str) -> State:
        return self.records[self.index(alarm_id)].state

    def tick(  # noqa: PLR0917 - the tick's inputs, as evaluate takes them
        self,
        now_s: float,
        t_ns: int,
        value: F64,
        good: Bool,
        setpoint: F64 | None = None,
        suppress: Bool | None = None,
        fresh: Bool | None = None,
        uncertain: Bool | None = None,
    ) -> list[AlarmEvent]:
        """Evaluate every alarm once; return the transitions, in the order they happened.

        Shelving expiries come first, then suppression changes, then process transitions:
        an alarm unmasked this tick is re-evaluated against this tick's condition.
        `uncertain` marks UNCERTAIN samples: they may raise a condition, never clear it.
        """
        sp = self._no_setpoint if setpoint is None else setpoint
        flips = evaluate(self.table, self.conditions, value, good, sp, now_s, fresh, uncertain)
        events: list[AlarmEvent] = []
        if now_s >= self._next_expiry_s:
            self._expire(now_s, t_ns, events)
        if suppress is not None:
            for i in (suppress != self.suppressed).nonzero()[0].tolist():
                on = bool(suppress[i])
                self.suppressed[i] = on
                self.records[i].suppressed = on
                cause = Cause.SUPPRESS if on else Cause.UNSUPPRESS
                self._settle(i, cause, t_ns, events)
        active, latch, records = self.conditions.active, self.table.latch, self.records
        for i in flips.tolist():
            cause = _ALARM if active[i] else _RETURN
            new = states.process(records[i].state, cause, bool(latch[i]))
            self._move(i, new, cause, t_ns, events)
        return events

    # --- operator actions ------------------------------------------------------------

    def ack(
        self, alarm_id: str, *, user: str, t_ns: int, reason: str | None = None
    ) -> list[AlarmEvent]:
        """Acknowledge: B → C, D → A, E → F."""
        i = self.index(alarm_id)
        rec = self.records[i]
        new = states.operator(rec.state, Cause.ACK)
        if new is None:
            why = "it needs a reset" if rec.state == State.LATCHED_ACKED else "nothing to ack"
            raise AlarmRefused("not_acknowledgeable", f"{alarm_id} is {rec.state}: {why}")
        return self._move(i, new, Cause.ACK, t_ns, [], user, reason)

    def reset(
        self, alarm_id: str, *, user: str, t_ns: int, reason: str | None = None
    ) -> list[AlarmEvent]:
        """Release a latched, acknowledged alarm whose condition has returned: F → A."""
        i = self.index(alarm_id)
        rec = self.records[i]
        new = states.operator(rec.state, Cause.RESET)
        if new is None:
            why = "acknowledge it first" if rec.state == State.LATCHED_UNACK else "not latched"
            raise AlarmRefused("not_resettable", f"{alarm_id} is {rec.state}: {why}")
        return self._move(i, new, Cause.RESET, t_ns, [], user, reason)

    def shelve(
        self, alarm_id: str, *, duration_s: float, reason: str, user: str, now_s: float, t_ns: int
    ) -> list[AlarmEvent]:
        """Hide an alarm for at most its shelve_max_s; expiry returns it to evaluation."""
        i = self.index(alarm_id)
        rec, most = self.records[i], self.table.configs[i].shelve_max_s
        if not 0.0 < duration_s <= most:  # NaN fails too
            raise AlarmRefused(
                "bad_duration", f"shelve {alarm_id} for {duration_s} s: allowed is (0, {most}] s"
            )
        _need_reason(reason, "shelve")
        if rec.out_of_service:
            raise AlarmRefused("out_of_service", f"{alarm_id} is out of service")
        if rec.shelved:
            raise AlarmRefused("already_shelved", f"{alarm_id} is shelved; unshelve it first")
        rec.shelved, rec.shelved_by, rec.shelve_reason = True, user, reason
        rec.shelved_until_s = now_s + duration_s
        rec.shelved_until_ns = t_ns + round(duration_s * 1e9)
        self._next_expiry_s = min(self._next_expiry_s, rec.shelved_until_s)
        return self._settle(i, Cause.SHELVE, t_ns, [], user, reason)

    def unshelve(
        self, alarm_id: str, *, user: str, t_ns: int, reason: str | None = None
    ) -> list[AlarmEvent]:
        """End a shelving early; the alarm is re-evaluated."""
        i = self.index(alarm_id)
        if not self.records[i].shelved:
            raise AlarmRefused("not_shelved", f"{alarm_id} is not shelved")
        self._clear_shelf(i)
        return self._settle(i, Cause.UNSHELVE, t_ns, [], user, reason)

    def out_of_service(
        self, alarm_id: str, *, user: str, reason: str, t_ns: int
    ) -> list[AlarmEvent]:
        """Take an alarm out of service (maintenance, MOC); ends any shelving."""
        i = self.index(alarm_id)
        rec = self.records[i]
        _need_reason(reason, "out_of_service")
        if rec.out_of_service:
            raise AlarmRefused("already_out_of_service", f"{alarm_id} is out of service")
        self._clear_shelf(i)
        rec.out_of_service, rec.oos_by, rec.oos_reason = True, user, reason
        return self._settle(i, Cause.OUT_OF_SERVICE, t_ns, [], user, reason)

    def in_service(
        self, alarm_id: str, *, user: str, t_ns: int, reason: str | None = None
    ) -> list[AlarmEvent]:
        """Return an alarm to service; it is re-evaluated (active → unacknowledged)."""
        i = self.index(alarm_id)
        rec = self.records[i]
        if not rec.out_of_service:
            raise AlarmRefused("not_out_of_service", f"{alarm_id} is in service")
        rec.out_of_service, rec.oos_by, rec.oos_reason = False, None, None
        return self._settle(i, Cause.IN_SERVICE, t_ns, [], user, reason)

    # --- what is published ------------------------------------------------------------

    def snapshot(self, alarm_id: str) -> dict[str, object]:
        """The full retained `<prefix>/alarms/<alarm>` message (docs/alarms.md)."""
        i = self.index(alarm_id)
        rec, cfg = self.records[i], self.table.configs[i]
        return {
            "alarm": cfg.id,
            "tag": cfg.tag,
            "kind": cfg.kind,
            "state": rec.state.value,
            "priority": cfg.priority,
            "message": cfg.message,
            "value": number(float(self.conditions.measure[i])),
            "limit": float(self.table.limit[i]),
            "active": bool(self.conditions.active[i]),
            "ts": _iso(rec.t_state_ns),
            "activated": _iso(rec.t_active_ns),
            "acknowledged": _iso(rec.t_ack_ns),
            "acknowledged_by": rec.ack_user,
            "returned": _iso(rec.t_return_ns),
            "shelved_until": _iso(rec.shelved_until_ns),
            "shelved_by": rec.shelved_by,
            "shelve_reason": rec.shelve_reason,
            "out_of_service_by": rec.oos_by,
            "out_of_service_reason": rec.oos_reason,
            "suppressed": rec.suppressed,
        }

    # --- internals --------------------------------------------------------------------

    def _expire(self, now_s: float, t_ns: int, events: list[AlarmEvent]) -> None:
        due = [i for i, r in enumerate(self.records) if r.shelved and r.shelved_until_s <= now_s]
        for i in due:
            self._clear_shelf(i)
            self._settle(i, Cause.SHELVE_EXPIRED, t_ns, events)

    def reschedule_expiry(self) -> None:
        """Recompute when the next shelving expires (after records were restored)."""
        self._next_expiry_s = min(
            (r.shelved_until_s for r in self.records if r.shelved), default=math.inf
        )

    def _clear_shelf(self, i: int) -> None:
        rec = self.records[i]
        rec.shelved, rec.shelved_until_s, rec.shelved_until_ns = False, math.inf, None
        rec.shelved_by = rec.shelve_reason = None
        self._next_expiry_s = min(
            (r.shelved_until_s for r in self.records if r.shelved), default=math.inf
        )

    def _settle(  # noqa: PLR0917 - internal, mirrors _move
        self,
        i: int,
        cause: Cause,
        t_ns: int,
        events: list[AlarmEvent],
        user: str | None = None,
        reason: str | None = None,
    ) -> list[AlarmEvent]:
        rec = self.records[i]
        if rec.state not in states.MASKS:  # the first mask: remember what it lies over
            rec.under = rec.state
        active = bool(self.conditions.active[i])
        latch = bool(self.table.latch[i])
        new = states.settle(
            rec.out_of_service, rec.shelved, rec.suppressed, active, rec.under, latch
        )
        return self._move(i, new, cause, t_ns, events, user, reason)

    def _move(  # noqa: PLR0917 - internal: one transition, appended to `events`
        self,
        i: int,
        new: State,
        cause: Cause,
        t_ns: int,
        events: list[AlarmEvent],
        user: str | None = None,
        reason: str | None = None,
    ) -> list[AlarmEvent]:
        rec = self.records[i]
        old = rec.state
        if new == old:
            return events
        rec.state, rec.t_state_ns = new, t_ns
        if new is _UNACK:  # a new occurrence: its times start afresh
            rec.t_active_ns, rec.t_ack_ns, rec.ack_user, rec.t_return_ns = t_ns, None, None, None
        elif cause is _ACK:
            rec.t_ack_ns, rec.ack_user = t_ns, user
        elif cause is _RETURN:
            rec.t_return_ns = t_ns
        cfg = self.table.configs[i]
        value = number(float(self.conditions.measure[i]))
        events.append(
            AlarmEvent(
                cfg.id,
                old,
                new,
                cause,
                t_ns,
                value,
                self._limit[i],
                cfg.priority,
                cfg.message,
                user,
                reason,
            )
        )
        return events


def _need_reason(reason: str, action: str) -> None:
    if not reason.strip():
        raise AlarmRefused("reason_required", f"{action} needs a reason")


def _iso(t_ns: int | None) -> str | None:
    return None if t_ns is None else iso_utc(t_ns)
