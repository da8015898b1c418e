"""Alarm-system health per ISA-18.2 / EEMUA 191 (domain.md §4.2), from the event history.

`HealthTracker.observe` takes each tick's events (cheap: a few appends per event) and
`metrics` is called about once a minute: counts over rolling windows, the alarms that
chattered or stand, and the lists of shelved, suppressed and out-of-service alarms. After a
restart `seed` starts it from the restored states: they come back without events, and the
lists and counts of what is true now must not read empty.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from controller.alarms.events import AlarmEvent, iso_utc
from controller.alarms.states import Cause, State

NS = 1_000_000_000
HOUR_NS = 3600 * NS
FLOOD_WINDOW_NS = 600 * NS  # > FLOOD_COUNT annunciations in 10 min is a flood
FLOOD_COUNT = 10
CHATTER_WINDOW_NS = 60 * NS  # ≥ CHATTER_COUNT process transitions in 60 s is chattering
CHATTER_COUNT = 3
STANDING_NS = 24 * HOUR_NS  # annunciated and active for more than 24 h
ACTIVE = frozenset({State.UNACK, State.ACKED})
PROCESS_CAUSES = frozenset({Cause.ALARM, Cause.RETURN})


@dataclass(frozen=True, slots=True)
class HealthMetrics:
    """One health report; `as_dict` is the JSON the lead publishes and stores."""

    t_ns: int
    annunciated_last_hour: int  # transitions into "unacknowledged", rolling 60 min
    annunciated_last_10min: int
    flood: bool  # more than 10 annunciations in the last 10 min
    chattering: tuple[str, ...]  # ≥ 3 process transitions within 60 s, in the last hour
    standing: tuple[str, ...]  # active (unacknowledged or acknowledged) for > 24 h
    shelved: tuple[str, ...]
    suppressed: tuple[str, ...]
    out_of_service: tuple[str, ...]
    unacknowledged: int  # alarms in B, D or E now

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["ts"] = iso_utc(self.t_ns)
        for key in ("chattering", "standing", "shelved", "suppressed", "out_of_service"):
            d[key] = list(d[key])
        return d


class HealthTracker:
    """The event history that the metrics need, trimmed to the windows it covers."""

    def __init__(self) -> None:
        self._annunciated: deque[int] = deque()  # times, last hour
        self._recent: dict[str, deque[int]] = {}  # per alarm, process transitions, last 60 s
        self._chattered: dict[str, int] = {}  # alarm → last time it met the chatter rule
        self._active_since: dict[str, int] = {}
        self._state: dict[str, State] = {}

    def seed(self, current: Iterable[tuple[str, State, int | None]], now_ns: int) -> None:
        """Take each alarm's (id, state, activation time) as it is now, e.g. just restored.

        The states feed the lists and the unacknowledged count; an active alarm stands from
        its activation time (now if unknown). Rates and chattering restart empty: the events
        before the restart are in the record, not here.
        """
        for alarm, state, t_active_ns in current:
            self._state[alarm] = state
            if state in ACTIVE:
                self._active_since[alarm] = now_ns if t_active_ns is None else t_active_ns
            else:
                self._active_since.pop(alarm, None)

    def observe(self, events: Iterable[AlarmEvent]) -> None:
        """Take events in time order, as `AlarmEngine` returns them."""
        for ev in events:
            self._state[ev.alarm] = ev.to_state
            if ev.to_state == State.UNACK and ev.from_state != State.UNACK:
                self._annunciated.append(ev.t_ns)
            if ev.to_state not in ACTIVE:
                self._active_since.pop(ev.alarm, None)
            elif ev.from_state not in ACTIVE:
                self._active_since[ev.alarm] = ev.t_ns
            if ev.cause in PROCESS_CAUSES:
                self._chatter(ev.alarm, ev.t_ns)

    def metrics(self, now_ns: int) -> HealthMetrics:
        """The report at `now_ns` (UTC); trims what has left every window."""
        ann = self._annunciated
        while ann and ann[0] <= now_ns - HOUR_NS:
            ann.popleft()
        last_10 = sum(1 for t in ann if t > now_ns - FLOOD_WINDOW_NS)
        for alarm in [a for a, t in self._chattered.items() if t <= now_ns - HOUR_NS]:
            del self._chattered[alarm]
        standing = [a for a, t in self._active_since.items() if now_ns - t > STANDING_NS]

        def listed(state: State) -> tuple[str, ...]:
            return tuple(sorted(a for a, s in self._state.items() if s == state))

        unacked = (State.UNACK, State.RTN_UNACK, State.LATCHED_UNACK)
        return HealthMetrics(
            t_ns=now_ns,
            annunciated_last_hour=len(ann),
            annunciated_last_10min=last_10,
            flood=last_10 > FLOOD_COUNT,
            chattering=tuple(sorted(self._chattered)),
            standing=tuple(sorted(standing)),
            shelved=listed(State.SHELVED),
            suppressed=listed(State.SUPPRESSED),
            out_of_service=listed(State.OUT_OF_SERVICE),
            unacknowledged=sum(1 for s in self._state.values() if s in unacked),
        )

    def _chatter(self, alarm: str, t_ns: int) -> None:
        times = self._recent.setdefault(alarm, deque())
        times.append(t_ns)
        while times[0] <= t_ns - CHATTER_WINDOW_NS:
            times.popleft()
        if len(times) >= CHATTER_COUNT:
            self._chattered[alarm] = t_ns
