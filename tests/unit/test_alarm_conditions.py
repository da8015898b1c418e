"""Process conditions: deadband, delays, N-of-M, rate of change, discrete, quality."""

from __future__ import annotations

from collections import deque
from itertools import pairwise
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.alarms import AlarmConfig, AlarmEngine, Cause

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def engine(*alarms: dict[str, Any]) -> AlarmEngine:
    return AlarmEngine([AlarmConfig.model_validate(a) for a in alarms])


def run(
    eng: AlarmEngine,
    times: list[float],
    values: list[float],
    *,
    good: list[bool] | None = None,
    sp: float = np.nan,
) -> list[tuple[float, Cause]]:
    """Feed one alarm a signal; return (time, cause) of its process transitions."""
    out = []
    for k, (t, v) in enumerate(zip(times, values, strict=True)):
        ok = True if good is None else good[k]
        events = eng.tick(t, int(t * 1e9), np.array([v]), np.array([ok]), setpoint=np.array([sp]))
        out += [(t, e.cause) for e in events]
    return out


def activations(events: list[tuple[float, Cause]]) -> int:
    return sum(1 for _, c in events if c == Cause.ALARM)


# dyadic numbers: sums and differences are exact, so the band edges are exactly representable
limits = st.integers(-4000, 4000).map(lambda k: k / 4)
deadbands = st.integers(1, 160).map(lambda j: j / 16)
steps = st.lists(st.integers(1, 40).map(lambda k: k / 8), min_size=1, max_size=60)


@FAST
@given(
    limits,
    deadbands,
    st.sampled_from(["high", "low"]),
    st.lists(st.integers(-64, 64), min_size=1, max_size=80),
    st.integers(0, 8),
    st.integers(0, 8),
)
def test_deadband_band_signal_does_not_chatter(  # noqa: PLR0917 - hypothesis arguments
    limit: float, d: float, kind: str, band: list[int], on: int, off: int
) -> None:
    """After an activation, a signal that stays within [limit−d, limit+d] never re-activates."""
    eng = engine(
        {"id": "a", "tag": "x.y", "kind": kind, "limit": limit, "deadband": d}
        | {"on_delay_s": on, "off_delay_s": off}
    )
    sign = 1.0 if kind == "high" else -1.0
    first = [limit + sign * 2 * d] * (on + 1)  # clearly abnormal for the whole on-delay
    values = first + [limit + d * i / 64 for i in band]
    events = run(eng, [float(t) for t in range(len(values))], values)
    assert activations(events) == 1
    assert all(c == Cause.ALARM for _, c in events)
    # and it can return: leave the band on the normal side for the off-delay
    back = run(
        eng, [float(len(values) + t) for t in range(off + 1)], [limit - sign * 2 * d] * (off + 1)
    )
    assert [c for _, c in back] == [Cause.RETURN]


@FAST
@given(st.lists(st.booleans(), min_size=1, max_size=60), steps)
def test_on_delay_shorter_condition_never_activates(pattern: list[bool], dts: list[float]) -> None:
    """A condition shorter than the on-delay never activates; one that lasts it does."""
    n = min(len(pattern), len(dts))
    pattern, times = pattern[:n], np.cumsum(dts[:n]).tolist()
    spans = _runs(pattern, times)
    longest = max(spans, default=0.0)
    values = [50.0 if p else 30.0 for p in pattern]  # limit 40
    alarm = {"id": "a", "tag": "x.y", "kind": "high", "limit": 40.0}
    quiet = run(engine(alarm | {"on_delay_s": longest + 0.0625}), times, values)
    assert activations(quiet) == 0
    if spans:
        loud = run(engine(alarm | {"on_delay_s": longest}), times, values)
        assert activations(loud) >= 1


def _runs(pattern: list[bool], times: list[float]) -> list[float]:
    """The span (last − first sample time) of every run of True."""
    spans, start = [], None
    for k, p in enumerate(pattern):
        if p and start is None:
            start = times[k]
        if p:
            spans.append(times[k] - start)
        else:
            start = None
    return spans


@FAST
@given(st.lists(st.booleans(), min_size=1, max_size=60), steps)
def test_off_delay_shorter_return_never_returns(pattern: list[bool], dts: list[float]) -> None:
    """Once active, a return shorter than the off-delay never returns the alarm."""
    n = min(len(pattern), len(dts))
    pattern, times = pattern[:n], (100.0 + np.cumsum(dts[:n])).tolist()
    spans = _runs([not p for p in pattern], times)
    off = max(spans, default=0.0) + 0.0625
    eng = engine({"id": "a", "tag": "x.y", "kind": "high", "limit": 40.0, "off_delay_s": off})
    run(eng, [0.0], [50.0])
    events = run(eng, times, [50.0 if p else 30.0 for p in pattern])
    assert [c for _, c in events] == []


@FAST
@given(
    st.lists(
        st.tuples(st.integers(1, 12), st.integers(1, 12)).map(lambda nm: (min(nm), max(nm))),
        min_size=1,
        max_size=6,
    ),
    st.integers(0, 2**31),
)
def test_n_of_m_matches_a_plain_window(windows: list[tuple[int, int]], seed: int) -> None:
    """N-of-M (several alarms, different windows) equals a list of the last M samples."""
    rng = np.random.default_rng(seed)
    k, ticks = len(windows), 80
    eng = engine(
        *(
            {"id": f"a{j}", "tag": "x.y", "kind": "n_of_m", "limit": 0.0}
            | {"window_n": n, "window_m": m}
            for j, (n, m) in enumerate(windows)
        )
    )
    value = rng.normal(0.0, 1.0, (ticks, k))
    good = rng.random((ticks, k)) > 0.1
    value[rng.random((ticks, k)) < 0.05] = np.nan
    fresh = rng.random((ticks, k)) > 0.2
    plain = [deque[bool](maxlen=m) for _, m in windows]
    for t in range(ticks):
        eng.tick(float(t), t, value[t], good[t], fresh=fresh[t])
        for j, (n, _) in enumerate(windows):
            if good[t, j] and fresh[t, j] and np.isfinite(value[t, j]):
                plain[j].append(bool(value[t, j] > 0.0))
            assert eng.conditions.measure[j] == sum(plain[j])
            assert eng.conditions.active[j] == (sum(plain[j]) >= n)


def test_n_of_m_two_of_three() -> None:
    """Annex 1 style 2-of-3: one excursion does not alarm, the second within three does."""
    eng = engine(
        {"id": "p", "tag": "pc.p05", "kind": "n_of_m", "limit": 3520.0}
        | {"window_n": 2, "window_m": 3, "priority": "high"}
    )
    events = run(eng, [1.0, 2.0, 3.0, 4.0, 5.0], [4000.0, 100.0, 100.0, 4000.0, 4000.0])
    assert events == [(5.0, Cause.ALARM)]


def test_rate_of_change_over_measured_dt() -> None:
    """The rate is per minute over the time between samples, held between fresh samples."""
    eng = engine({"id": "r", "tag": "x.y", "kind": "roc", "rate_per_min": 5.0})
    t = [0.0, 10.0, 30.0, 31.0]  # 0.5 per 10 s = 3/min, then 1.5 per 20 s = 4.5/min
    v = [20.0, 20.5, 22.0, 22.2]  # then 0.2 per 1 s = 12/min
    assert run(eng, t[:3], v[:3]) == []
    assert eng.snapshot("r")["value"] == 4.5
    assert run(eng, t[3:], v[3:]) == [(31.0, Cause.ALARM)]
    assert abs(eng.conditions.measure[0] - 12.0) < 1e-9
    # a falling rate counts too; not fresh: the rate is held
    eng2 = engine({"id": "r", "tag": "x.y", "kind": "roc", "rate_per_min": 5.0})
    eng2.tick(0.0, 0, np.array([30.0]), np.array([True]))
    ev = eng2.tick(6.0, 1, np.array([29.0]), np.array([True]))
    assert [e.value for e in ev] == [-10.0]
    ev = eng2.tick(7.0, 2, np.array([0.0]), np.array([True]), fresh=np.array([False]))
    assert ev == []
    assert eng2.conditions.measure[0] == -10.0


def test_deviation_from_the_setpoint() -> None:
    """|value − set point| > limit alarms either side; a NaN set point is a bad input."""
    eng = engine(
        {"id": "d", "tag": "inc.co2", "kind": "deviation", "limit": 0.5, "deadband": 0.1}
        | {"setpoint_tag": "loop.co2_sp"}
    )
    assert run(eng, [1.0], [5.4], sp=5.0) == []
    assert run(eng, [2.0], [4.4], sp=5.0) == [(2.0, Cause.ALARM)]
    assert run(eng, [3.0], [5.0], sp=np.nan) == []  # held
    assert run(eng, [4.0], [5.55], sp=5.0) == []  # inside the deadband
    assert run(eng, [5.0], [5.35], sp=5.0) == [(5.0, Cause.RETURN)]


def test_discrete_state_for_longer_than() -> None:
    """A door open (state 1) for for_s alarms; closing it returns at once."""
    eng = engine({"id": "door", "tag": "r1.door", "kind": "discrete", "state": 1, "for_s": 30})
    t = [0.0, 10.0, 25.0, 26.0, 40.0, 56.0, 60.0]
    v = [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    assert run(eng, t, v) == [(56.0, Cause.ALARM), (60.0, Cause.RETURN)]


def test_quality_alarm_after_stale_after_s() -> None:
    """No good sample for stale_after_s raises the communication alarm; a good one clears it."""
    eng = engine({"id": "c", "tag": "inc.t", "kind": "quality", "stale_after_s": 20})
    t = [0.0, 5.0, 15.0, 20.0, 30.0, 40.0, 41.0]
    good = [True, False, False, True, False, False, True]
    v = [37.0, np.nan, np.nan, 37.0, np.nan, 37.0, 37.0]  # 37 with good=False is still bad
    assert run(eng, t, v, good=good) == []
    eng = engine({"id": "c", "tag": "inc.t", "kind": "quality", "stale_after_s": 20})
    good = [True, False, False, False, False, False, True]
    assert run(eng, t, v, good=good) == [(30.0, Cause.ALARM), (41.0, Cause.RETURN)]


def test_limit_crossing_is_strict_and_deadband_edge_holds() -> None:
    """value == limit is normal; on return, value == limit − deadband still holds the alarm."""
    eng = engine({"id": "h", "tag": "x.y", "kind": "high", "limit": 40.0, "deadband": 0.5})
    t = [float(k) for k in range(5)]
    events = run(eng, t, [40.0, 40.25, 39.5, 39.25, 39.5])
    assert events == [(1.0, Cause.ALARM), (3.0, Cause.RETURN)]
    assert all(b > a for (a, _), (b, _) in pairwise(events))


def uncertain_run(
    eng: AlarmEngine, steps: list[tuple[float, str]], *, fresh: bool = True
) -> list[Cause]:
    """Feed one alarm (value, quality) pairs, one per second; quality: good/uncertain/bad."""
    out = []
    for k, (v, q) in enumerate(steps):
        events = eng.tick(
            float(k + 1),
            k + 1,
            np.array([v]),
            np.array([q == "good"]),
            fresh=np.array([fresh]),
            uncertain=np.array([q == "uncertain"]),
        )
        out += [e.cause for e in events]
    return out


def test_an_uncertain_value_beyond_a_high_limit_alarms_but_never_returns() -> None:
    """A particle overflow is a lower bound: above the limit it is a certain excursion, so
    it raises; below the limit it proves nothing, so only a good sample returns the alarm."""
    eng = engine({"id": "p", "tag": "pc.p50", "kind": "high", "limit": 29.0})
    got = uncertain_run(eng, [(5000.0, "uncertain"), (1.0, "uncertain"), (1.0, "good")])
    assert got == [Cause.ALARM, Cause.RETURN]
    assert eng.snapshot("p")["value"] == 1.0
    eng = engine({"id": "p", "tag": "pc.p50", "kind": "high", "limit": 29.0})
    uncertain_run(eng, [(5000.0, "uncertain")])
    assert eng.snapshot("p")["value"] == 5000.0  # an UNCERTAIN value is still reported
    assert uncertain_run(eng, [(5000.0, "bad")]) == []  # BAD: held, no value
    assert eng.snapshot("p")["value"] is None


def test_an_uncertain_value_raises_a_low_limit_too_but_never_clears_it() -> None:
    """Low limits: an UNCERTAIN value below the limit alarms (more alarms, never fewer), one
    above it does not return the alarm; UNCERTAIN within limits raises nothing."""
    eng = engine({"id": "dp", "tag": "dp.pa", "kind": "low", "limit": 10.0})
    steps = [(15.0, "uncertain"), (5.0, "uncertain"), (15.0, "uncertain"), (15.0, "good")]
    assert uncertain_run(eng, steps) == [Cause.ALARM, Cause.RETURN]


NM23 = {"window_n": 2, "window_m": 3}


def test_uncertain_samples_in_n_of_m_and_rate_of_change() -> None:
    """N-of-M: an UNCERTAIN sample above the level is a count, one below it does not enter
    the window (it could displace a count). Rate of change: UNCERTAIN gives no rate."""
    eng = engine({"id": "n", "tag": "pc.p50", "kind": "n_of_m", "limit": 20.0} | NM23)
    steps = [(25.0, "good"), (25.0, "uncertain"), (1.0, "uncertain"), (1.0, "uncertain")]
    assert uncertain_run(eng, steps) == [Cause.ALARM]
    assert eng.conditions.measure[0] == 2
    eng = engine({"id": "r", "tag": "x.y", "kind": "roc", "rate_per_min": 5.0})
    assert uncertain_run(eng, [(0.0, "good"), (100.0, "uncertain"), (0.05, "good")]) == []


def test_quality_alarm_when_the_receive_time_stops() -> None:
    """A driver that re-publishes its last record as GOOD (receive time unchanged, so not
    fresh) is as blind as a BAD one: no new good sample for stale_after_s alarms."""
    eng = engine({"id": "q", "tag": "pc.p50", "kind": "quality", "stale_after_s": 120})
    causes = []
    for t in range(0, 400, 10):  # a new record every 60 s until t = 120, then the same one
        fresh = t % 60 == 0 and t <= 120
        events = eng.tick(float(t), t, np.array([3.0]), np.array([True]), fresh=np.array([fresh]))
        causes += [(t, e.cause) for e in events]
    assert causes == [(250, Cause.ALARM)]  # 120 s after the first tick with nothing new
    events = eng.tick(400.0, 400, np.array([3.0]), np.array([True]), fresh=np.array([True]))
    assert [e.cause for e in events] == [Cause.RETURN]
