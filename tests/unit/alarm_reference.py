"""The alarm engine written plainly, one alarm at a time, in floats and if-statements.

Used by the tests (the vectorised engine must produce the same events) and by
bench/alarms.py as its baseline: this is the straightforward per-alarm implementation. It
shares only the configuration model with controller/alarms; the state machine here is
if-statements, not the transition tables, so a wrong table entry shows up as a difference.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import NamedTuple

from controller.alarms.config import AlarmConfig


class Ev(NamedTuple):
    """An event as both implementations can produce it, for comparison."""

    alarm: str
    from_state: str
    to_state: str
    cause: str
    t_ns: int
    value: float | None
    limit: float
    user: str | None = None
    reason: str | None = None


class Refused(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


UNACK_STATES = ("unacknowledged", "rtn_unacknowledged", "latched_unacknowledged")


class RefAlarm:
    """One alarm: its condition with deadband and delays, and its ISA-18.2 state."""

    def __init__(self, cfg: AlarmConfig) -> None:
        self.cfg = cfg
        self.limit = cfg.compared_limit
        self.on_delay = cfg.on_delay_s
        if cfg.kind == "discrete":
            self.on_delay = cfg.for_s or 0.0
        if cfg.kind == "quality":
            self.on_delay = cfg.stale_after_s or 0.0
        self.raw = self.active = False
        self.since = 0.0
        self.measure = math.nan
        self.last_v, self.last_t, self.rate = math.nan, math.nan, math.nan
        self.window: deque[bool] = deque(maxlen=cfg.window_m or 1)
        self.state = self.under = "normal"
        self.oos = self.shelved = self.suppressed = False
        self.shelved_until = math.inf

    def condition(  # noqa: PLR0917 - one tick's inputs of one alarm
        self, v: float, good: bool, sp: float, now: float, fresh: bool, uncertain: bool = False
    ) -> bool:
        """Update the condition; True if `active` flipped."""
        cfg, lim = self.cfg, self.limit
        usable = good and math.isfinite(v)
        unc = not good and uncertain and math.isfinite(v)  # may raise, never clear
        self.measure = v if usable or unc else math.nan
        if cfg.kind in ("high", "high_high"):
            e = v - lim
        elif cfg.kind in ("low", "low_low"):
            e = lim - v
        elif cfg.kind == "deviation":
            usable = usable and math.isfinite(sp)
            unc = unc and math.isfinite(sp)
            self.measure = v - sp if usable or unc else math.nan
            e = abs(self.measure) - lim
        elif cfg.kind == "roc":
            unc = False  # no rate from an UNCERTAIN sample
            if usable and fresh and not self.last_t >= now:
                self.rate = (v - self.last_v) / (now - self.last_t) * 60.0
                self.last_v, self.last_t = v, now
            self.measure = self.rate if usable else math.nan
            usable = math.isfinite(self.rate)
            e = abs(self.rate) - lim
        elif cfg.kind == "discrete":
            e = 1.0 if v == lim else -1.0
        elif cfg.kind == "quality":
            e = -1.0 if usable and fresh else 1.0
            usable = True
        else:  # n_of_m
            if fresh and (usable or (unc and v > lim)):
                self.window.append(v > lim)
            count = sum(self.window)
            n, unseen = cfg.window_n or 0, (cfg.window_m or 1) - len(self.window)
            self.measure = float(count)
            e = count - n + 0.5
            usable = count >= n or count + unseen < n  # else it could go either way: hold
            unc = False
        raw = e > 0 or (self.active and e >= -cfg.deadband)
        taken = usable or (unc and raw)  # bad holds; UNCERTAIN only raises
        if taken and raw != self.raw:
            self.raw, self.since = raw, now
        delay = self.on_delay if self.raw else self.cfg.off_delay_s
        if self.raw != self.active and now - self.since >= delay:
            self.active = self.raw
            return True
        return False

    def go(
        self, to: str, cause: str, t_ns: int, user: str | None = None, reason: str | None = None
    ) -> list[Ev]:
        if to == self.state:
            return []
        value = self.measure if math.isfinite(self.measure) else None
        ev = Ev(self.cfg.id, self.state, to, cause, t_ns, value, self.limit, user, reason)
        self.state = to
        return [ev]

    def resettle(
        self, cause: str, t_ns: int, user: str | None = None, reason: str | None = None
    ) -> list[Ev]:
        if self.state not in ("out_of_service", "shelved", "suppressed"):
            self.under = self.state
        under, latch = self.under, self.cfg.latch
        if self.oos:
            to = "out_of_service"
        elif self.shelved:
            to = "shelved"
        elif self.suppressed:
            to = "suppressed"
        elif self.active:
            to = "unacknowledged"
        elif under == "unacknowledged":  # returned under the mask, never acknowledged
            to = "latched_unacknowledged" if latch else "rtn_unacknowledged"
        elif under == "acknowledged":
            to = "latched_acknowledged" if latch else "normal"
        else:  # normal stays normal; D, E and F still need their ack or reset
            to = under
        return self.go(to, cause, t_ns, user, reason)

    def process(self, t_ns: int) -> list[Ev]:
        s, latch = self.state, self.cfg.latch
        if self.active:
            if s in (
                "normal",
                "rtn_unacknowledged",
                "latched_unacknowledged",
                "latched_acknowledged",
            ):
                return self.go("unacknowledged", "alarm", t_ns)
        elif s == "unacknowledged":
            return self.go(
                "latched_unacknowledged" if latch else "rtn_unacknowledged", "return", t_ns
            )
        elif s == "acknowledged":
            return self.go("latched_acknowledged" if latch else "normal", "return", t_ns)
        return []

    def tick(  # noqa: PLR0917 - one tick of one alarm
        self,
        v: float,
        good: bool,
        sp: float,
        supp: bool,
        now: float,
        t_ns: int,
        fresh: bool,
        uncertain: bool = False,
    ) -> list[Ev]:
        flipped = self.condition(v, good, sp, now, fresh, uncertain)
        events: list[Ev] = []
        if self.shelved and self.shelved_until <= now:
            self.shelved, self.shelved_until = False, math.inf
            events += self.resettle("shelve_expired", t_ns)
        if supp != self.suppressed:
            self.suppressed = supp
            events += self.resettle("suppress" if supp else "unsuppress", t_ns)
        if flipped:
            events += self.process(t_ns)
        return events

    # operator actions, with the engine's refusal codes

    def ack(self, user: str, t_ns: int) -> list[Ev]:
        to = {
            "unacknowledged": "acknowledged",
            "rtn_unacknowledged": "normal",
            "latched_unacknowledged": "latched_acknowledged",
        }.get(self.state)
        if to is None:
            raise Refused("not_acknowledgeable")
        return self.go(to, "ack", t_ns, user)

    def reset(self, user: str, t_ns: int) -> list[Ev]:
        if self.state != "latched_acknowledged":
            raise Refused("not_resettable")
        return self.go("normal", "reset", t_ns, user)

    def shelve(self, duration: float, reason: str, user: str, now: float, t_ns: int) -> list[Ev]:
        if not (duration > 0 and duration <= self.cfg.shelve_max_s):
            raise Refused("bad_duration")
        if not reason.strip():
            raise Refused("reason_required")
        if self.oos:
            raise Refused("out_of_service")
        if self.shelved:
            raise Refused("already_shelved")
        self.shelved, self.shelved_until = True, now + duration
        return self.resettle("shelve", t_ns, user, reason)

    def unshelve(self, user: str, t_ns: int) -> list[Ev]:
        if not self.shelved:
            raise Refused("not_shelved")
        self.shelved, self.shelved_until = False, math.inf
        return self.resettle("unshelve", t_ns, user)

    def out_of_service(self, user: str, reason: str, t_ns: int) -> list[Ev]:
        if not reason.strip():
            raise Refused("reason_required")
        if self.oos:
            raise Refused("already_out_of_service")
        self.shelved, self.shelved_until, self.oos = False, math.inf, True
        return self.resettle("out_of_service", t_ns, user, reason)

    def in_service(self, user: str, t_ns: int) -> list[Ev]:
        if not self.oos:
            raise Refused("not_out_of_service")
        self.oos = False
        return self.resettle("in_service", t_ns, user)


class RefEngine:
    """Alarms in the given order; a tick is a loop over them with Python lists."""

    def __init__(self, configs: Sequence[AlarmConfig]) -> None:
        self.alarms = [RefAlarm(c) for c in configs]
        self.by_id = {a.cfg.id: a for a in self.alarms}

    def tick(  # noqa: PLR0917 - as AlarmEngine.tick
        self,
        now_s: float,
        t_ns: int,
        value: Sequence[float],
        good: Sequence[bool],
        setpoint: Sequence[float],
        suppress: Sequence[bool],
        fresh: Sequence[bool],
        uncertain: Sequence[bool] | None = None,
    ) -> list[Ev]:
        events: list[Ev] = []
        unc = [False] * len(self.alarms) if uncertain is None else uncertain
        for k, alarm in enumerate(self.alarms):
            events += alarm.tick(
                value[k], good[k], setpoint[k], suppress[k], now_s, t_ns, fresh[k], unc[k]
            )
        return events
