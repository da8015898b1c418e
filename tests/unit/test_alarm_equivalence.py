"""The vectorised engine against the plain per-alarm reference: same events, same states."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.alarms import AlarmConfig, AlarmEngine, AlarmEvent, AlarmRefused
from tests.unit.alarm_reference import Ev, RefEngine, Refused

KINDS = ["high", "low", "high_high", "low_low", "deviation", "roc", "discrete", "quality"]
KINDS += ["n_of_m"]
VERBS = ["ack", "reset", "shelve", "unshelve", "out_of_service", "in_service"]


def random_config(rng: np.random.Generator, j: int) -> AlarmConfig:
    """A random alarm of a random kind, with every option drawn."""
    kind = str(rng.choice(KINDS))
    c: dict[str, Any] = {"id": f"a{j}", "tag": f"dev.t{j}", "kind": kind}
    c["priority"] = str(rng.choice(["low", "medium", "high", "critical"]))
    c["latch"] = bool(rng.random() < 0.3)
    c["off_delay_s"] = float(rng.choice([0.0, 0.0, 1.5, 4.0]))
    c["shelve_max_s"] = float(rng.choice([5.0, 60.0]))
    if rng.random() < 0.25:
        c["suppress_when"] = {"tag": "dev.state", "equals": 1.0}
    if kind in ("discrete", "quality"):
        key = "for_s" if kind == "discrete" else "stale_after_s"
        c[key] = float(rng.choice([0.0, 2.0, 5.0]))
        if kind == "discrete":
            c["state"] = float(rng.integers(0, 2))
        return AlarmConfig.model_validate(c)
    c["on_delay_s"] = float(rng.choice([0.0, 0.0, 1.0, 3.0]))
    if kind == "n_of_m":
        m = int(rng.integers(1, 8))
        c |= {"limit": float(rng.normal(0, 1)), "window_m": m}
        c["window_n"] = int(rng.integers(1, m + 1))
        return AlarmConfig.model_validate(c)
    c["deadband"] = float(rng.choice([0.0, 0.1, 0.5]))
    if kind == "roc":
        c["rate_per_min"] = float(rng.uniform(5.0, 60.0))
    else:
        c["limit"] = float(rng.normal(0, 1))
    if kind == "deviation":
        c["setpoint_tag"] = "dev.sp"
    return AlarmConfig.model_validate(c)


class Signals:
    """Random inputs for `n` alarms and `ticks` ticks, aligned with the packed order."""

    def __init__(self, rng: np.random.Generator, eng: AlarmEngine, ticks: int) -> None:
        n = eng.table.n
        self.dt = rng.uniform(0.2, 2.0, ticks)
        self.value = np.cumsum(rng.normal(0, 0.3, (ticks, n)), axis=0)
        disc = eng.table.groups["discrete"]
        flips = rng.random((ticks, disc.stop - disc.start)) < 0.15
        self.value[:, disc] = np.cumsum(flips, axis=0) % 2
        self.value[rng.random((ticks, n)) < 0.03] = np.nan
        self.good = rng.random((ticks, n)) > 0.1
        # about half the not-good samples UNCERTAIN; some good ones flagged too (good wins)
        self.uncertain = rng.random((ticks, n)) < 0.06
        self.sp = np.cumsum(rng.normal(0, 0.1, (ticks, n)), axis=0)
        self.sp[rng.random((ticks, n)) < 0.02] = np.nan
        self.suppress = (np.cumsum(rng.random((ticks, n)) < 0.05, axis=0) % 2).astype(bool)
        self.fresh = rng.random((ticks, n)) > 0.2


def as_ev(e: AlarmEvent) -> Ev:
    return Ev(
        e.alarm,
        e.from_state.value,
        e.to_state.value,
        e.cause.value,
        e.t_ns,
        e.value,
        e.limit,
        e.user,
        e.reason,
    )


def per_alarm(events: list[Ev]) -> dict[str, list[Ev]]:
    out: dict[str, list[Ev]] = defaultdict(list)
    for e in events:
        out[e.alarm].append(e)
    return dict(out)


def operator(
    rng: np.random.Generator, eng: AlarmEngine, ref: RefEngine, now: float, t_ns: int
) -> None:
    """One random operator action on one random alarm, applied to both; same outcome."""
    alarm = str(rng.choice(eng.ids))
    verb = str(rng.choice(VERBS))
    ra = ref.by_id[alarm]
    duration = float(rng.choice([1.0, 3.0, 30.0, 100.0]))
    reason = str(rng.choice(["", "maintenance"]))
    calls: dict[str, tuple[Any, Any]] = {
        "ack": (lambda: eng.ack(alarm, user="u", t_ns=t_ns), lambda: ra.ack("u", t_ns)),
        "reset": (lambda: eng.reset(alarm, user="u", t_ns=t_ns), lambda: ra.reset("u", t_ns)),
        "shelve": (
            lambda: eng.shelve(
                alarm, duration_s=duration, reason=reason, user="u", now_s=now, t_ns=t_ns
            ),
            lambda: ra.shelve(duration, reason, "u", now, t_ns),
        ),
        "unshelve": (
            lambda: eng.unshelve(alarm, user="u", t_ns=t_ns),
            lambda: ra.unshelve("u", t_ns),
        ),
        "out_of_service": (
            lambda: eng.out_of_service(alarm, user="u", reason=reason, t_ns=t_ns),
            lambda: ra.out_of_service("u", reason, t_ns),
        ),
        "in_service": (
            lambda: eng.in_service(alarm, user="u", t_ns=t_ns),
            lambda: ra.in_service("u", t_ns),
        ),
    }
    ours, theirs = calls[verb]
    try:
        got: list[Ev] | str = [as_ev(e) for e in ours()]
    except AlarmRefused as err:
        got = err.code
    try:
        want: list[Ev] | str = theirs()
    except Refused as err:
        want = err.code
    assert got == want, (verb, alarm)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.integers(1, 40))
def test_engine_equals_reference(seed: int, n: int) -> None:
    """Random alarms, signals and operator actions: identical events, states and values."""
    rng = np.random.default_rng(seed)
    eng = AlarmEngine([random_config(rng, j) for j in range(n)])
    ref = RefEngine(eng.table.configs)
    ticks = 150
    sig = Signals(rng, eng, ticks)
    now = 0.0
    for k in range(ticks):
        now += float(sig.dt[k])
        t_ns = 1_700_000_000_000_000_000 + k * 1_000_000
        got = eng.tick(
            now,
            t_ns,
            sig.value[k],
            sig.good[k],
            sig.sp[k],
            sig.suppress[k],
            sig.fresh[k],
            sig.uncertain[k],
        )
        want = ref.tick(
            now,
            t_ns,
            sig.value[k].tolist(),
            sig.good[k].tolist(),
            sig.sp[k].tolist(),
            sig.suppress[k].tolist(),
            sig.fresh[k].tolist(),
            sig.uncertain[k].tolist(),
        )
        assert per_alarm([as_ev(e) for e in got]) == per_alarm(want), k
        if rng.random() < 0.3:
            operator(rng, eng, ref, now, t_ns + 1)
        assert [r.state.value for r in eng.records] == [a.state for a in ref.alarms]
        assert eng.conditions.active.tolist() == [a.active for a in ref.alarms]
        np.testing.assert_array_equal(eng.conditions.measure, [a.measure for a in ref.alarms])


def test_reference_sees_transitions() -> None:
    """The random setup is not vacuous: it produces every cause and most states."""
    rng = np.random.default_rng(7)
    eng = AlarmEngine([random_config(rng, j) for j in range(60)])
    sig = Signals(rng, eng, 300)
    seen: set[str] = set()
    now = 0.0
    for k in range(300):
        now += float(sig.dt[k])
        events = eng.tick(
            now, k, sig.value[k], sig.good[k], sig.sp[k], sig.suppress[k], sig.fresh[k]
        )
        seen |= {e.cause.value for e in events} | {e.to_state.value for e in events}
        alarm = str(rng.choice(eng.ids))
        for action in (eng.ack, eng.reset):
            with contextlib.suppress(AlarmRefused):
                seen |= {
                    e.cause.value + ">" + e.to_state.value for e in action(alarm, user="u", t_ns=k)
                }
    assert {"alarm", "return", "suppress", "unsuppress", "ack>acknowledged", "reset>normal"} <= seen
    assert {"rtn_unacknowledged", "latched_unacknowledged", "latched_acknowledged"} <= seen
    assert {"ack>normal", "ack>latched_acknowledged"} <= seen
