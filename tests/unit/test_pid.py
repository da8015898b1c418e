"""The vectorised PID core: invariants, equivalence with the scalar reference, behaviours."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from controller import pid
from controller.pid_settings import LoopSettings, build
from tests.unit.pid_reference import RefLoop

DT_MIN, DT_MAX = 0.01, 2.0
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def loop(**over: Any) -> LoopSettings:
    base: dict[str, Any] = {
        "kp": 2.0,
        "ki_per_s": 0.1,
        "kd_s": 0.5,
        "d_filter_s": 0.2,
        "out_min": 0.0,
        "out_max": 100.0,
        "safe_output": 0.0,
        "setpoint": 30.0,
        "initial_output": 10.0,
    }
    return LoopSettings.model_validate(base | over)


def arr(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)


def tick(
    state: pid.PidState,
    params: pid.PidParams,
    pv: float | np.ndarray,
    sp: float | np.ndarray,
    *,
    dt: float = 0.1,
    ok: bool | np.ndarray = True,
) -> pid.PidTerms:
    n = params.n
    pv_a = np.broadcast_to(np.asarray(pv, dtype=np.float64), (n,)).copy()
    sp_a = np.broadcast_to(np.asarray(sp, dtype=np.float64), (n,)).copy()
    ok_a = np.broadcast_to(np.asarray(ok, dtype=bool), (n,)).copy()
    return pid.update(state, params, pv_a, sp_a, dt, ok_a)


# --- strategies ---------------------------------------------------------------------------

gain = st.floats(0.0, 1e6)
finite_pv = st.floats(-1e9, 1e9)
any_pv = st.one_of(finite_pv, st.sampled_from([math.nan, math.inf, -math.inf]))
any_dt = st.one_of(
    st.floats(-1e9, 1e9), st.sampled_from([0.0, 1e-300, math.nan, math.inf, -math.inf])
)


@st.composite
def loop_settings(draw: st.DrawFn, huge: bool = False) -> LoopSettings:
    lo = draw(st.floats(-1e3, 1e3))
    hi = lo + draw(st.floats(1e-3, 1e3))
    g = st.floats(0.0, 1e300) if huge else gain
    rate = st.one_of(st.just(math.inf), st.floats(1e-3, 1e4))
    return LoopSettings(
        kp=draw(g),
        ki_per_s=draw(g),
        kd_s=draw(g),
        action=draw(st.sampled_from(["reverse", "direct"])),
        sp_weight_p=draw(st.floats(0.0, 1.0)),
        d_filter_s=draw(st.floats(0.0, 100.0)),
        out_min=lo,
        out_max=hi,
        out_rate_per_s=draw(rate),
        sp_rate_per_s=draw(rate),
        safe_after_s=draw(st.one_of(st.just(math.inf), st.floats(0.0, 10.0))),
        safe_output=draw(st.floats(lo, hi)),
        setpoint=draw(st.floats(-1e3, 1e3)),
        auto=draw(st.booleans()),
        initial_output=draw(st.floats(lo, hi)),
    )


def tick_inputs(pv: st.SearchStrategy[float], dt: st.SearchStrategy[float], n: int) -> Any:
    one = st.tuples(
        st.lists(pv, min_size=n, max_size=n),
        st.lists(st.floats(-1e3, 1e3), min_size=n, max_size=n),
        dt,
        st.lists(st.booleans(), min_size=n, max_size=n),
    )
    return st.lists(one, min_size=1, max_size=30)


def assert_no_nan(state: pid.PidState) -> None:
    for name in ("u", "spw", "p", "d", "i", "pv_last", "bad_s", "manual_output"):
        assert not np.isnan(getattr(state, name)).any(), name


# --- invariants ---------------------------------------------------------------------------


@FAST
@given(
    st.lists(loop_settings(), min_size=1, max_size=4).flatmap(
        lambda ls: st.tuples(st.just(ls), tick_inputs(any_pv, any_dt, len(ls)))
    )
)
def test_output_within_limits_and_no_nan_for_any_input(case: Any) -> None:
    """Whatever pv (NaN, inf), ok and dt (NaN, negative, huge) do, outputs stay in limits."""
    loops, ticks = case
    params, state = build(loops, DT_MIN, DT_MAX)
    for pv, sp, dt, ok in ticks:
        terms = pid.update(state, params, arr(*pv), arr(*sp), dt, np.array(ok))
        assert np.all(terms.output >= params.out_min)
        assert np.all(terms.output <= params.out_max)
        for name in ("output", "p", "i", "d", "sp"):
            assert not np.isnan(getattr(terms, name)).any(), name
        assert_no_nan(state)


@FAST
@given(
    st.lists(loop_settings(huge=True), min_size=1, max_size=4).flatmap(
        lambda ls: st.tuples(
            st.just(ls), tick_inputs(st.one_of(st.floats(-1e300, 1e300), any_pv), any_dt, len(ls))
        )
    )
)
def test_output_within_limits_even_when_the_arithmetic_overflows(case: Any) -> None:
    """Gains and measurements near 1e300 overflow to inf; the last clamp still holds."""
    loops, ticks = case
    params, state = build(loops, DT_MIN, DT_MAX)
    with np.errstate(all="ignore"):
        for pv, sp, dt, ok in ticks:
            out = pid.update(state, params, arr(*pv), arr(*sp), dt, np.array(ok)).output
            assert np.all((out >= params.out_min) & (out <= params.out_max))


@FAST
@given(
    st.lists(loop_settings(), min_size=1, max_size=4).flatmap(
        lambda ls: st.tuples(st.just(ls), tick_inputs(any_pv, any_dt, len(ls)))
    )
)
def test_integrator_never_winds_past_the_saturating_value(case: Any) -> None:
    """When the demand saturates, the integrator stops at the value that puts the output on
    the bound, and does not grow at all if it was already there."""
    loops, ticks = case
    params, state = build(loops, DT_MIN, DT_MAX)
    for pv, sp, dt, ok in ticks:
        i_old = state.i.copy()
        terms = pid.update(state, params, arr(*pv), arr(*sp), dt, np.array(ok))
        auto = terms.mode == pid.AUTO
        pd = terms.p + terms.d
        tol = 1e-9 * (1.0 + np.abs(state.hi) + np.abs(pd) + np.abs(i_old))
        high = auto & terms.sat_high
        # on the bound to float precision: i = hi - pd, then pd + i can round 1 ulp below hi
        assert np.all(np.abs(terms.output[high] - state.hi[high]) <= tol[high])
        bound_high = np.maximum(i_old, state.hi - pd)
        assert np.all(terms.i[high] <= bound_high[high] + tol[high])
        already = high & (i_old + pd >= state.hi)
        assert np.all(terms.i[already] <= i_old[already])
        low = auto & terms.sat_low
        bound_low = np.minimum(i_old, state.lo - pd)
        assert np.all(terms.i[low] >= bound_low[low] - tol[low])
        already = low & (i_old + pd <= state.lo)
        assert np.all(terms.i[already] >= i_old[already])


@FAST
@given(
    st.lists(loop_settings(), min_size=1, max_size=4).flatmap(
        lambda ls: st.tuples(st.just(ls), tick_inputs(any_pv, st.floats(0.0, 5.0), len(ls)))
    )
)
def test_rate_limit_respected(case: Any) -> None:
    """Between ticks the output moves at most out_rate_per_s * dt (safe jumps excepted)."""
    loops, ticks = case
    loops = [c.model_copy(update={"safe_after_s": math.inf}) for c in loops]
    params, state = build(loops, DT_MIN, DT_MAX)
    rate = params.rate_out
    for pv, sp, dt, ok in ticks:
        before = state.u.copy()
        out = pid.update(state, params, arr(*pv), arr(*sp), dt, np.array(ok)).output
        h = min(max(dt, DT_MIN), DT_MAX)
        allowed = np.where(np.isinf(rate), np.inf, rate * h * (1 + 1e-12) + 1e-12)
        assert np.all(np.abs(out - before) <= allowed)


@FAST
@given(
    kp=st.floats(0.0, 100.0),
    ki=st.floats(0.0, 10.0),
    kd=st.floats(0.0, 10.0),
    pv=st.floats(0.0, 50.0),
    sp=st.floats(0.0, 50.0),
    manual=st.floats(0.0, 100.0),
    action=st.sampled_from(["reverse", "direct"]),
)
def test_manual_to_auto_is_bumpless(
    *, kp: float, ki: float, kd: float, pv: float, sp: float, manual: float, action: str
) -> None:
    """After manual, the first auto output differs from the manual one by one I step only."""
    cfg = loop(kp=kp, ki_per_s=ki, kd_s=kd, setpoint=sp, action=action, auto=False)
    params, state = build([cfg], DT_MIN, DT_MAX)
    pid.set_mode(state, params, [0], auto=False, manual_output=manual)
    for _ in range(5):
        out = tick(state, params, pv, sp).output[0]
    assert out == pytest.approx(manual, abs=1e-9 * (1 + abs(manual)))
    pid.set_mode(state, params, [0], auto=True)
    first_auto = tick(state, params, pv, sp).output[0]
    one_step = abs(ki * (sp - pv) * 0.1)
    scale = 1e-9 * (1 + abs(kp * (sp - pv)) + abs(manual))
    assert abs(first_auto - manual) <= one_step + scale


def test_auto_to_manual_keeps_the_output() -> None:
    """Switching to manual without a value keeps the current output."""
    params, state = build([loop()], DT_MIN, DT_MAX)
    for _ in range(10):
        auto_out = tick(state, params, 25.0, 30.0).output[0]
    pid.set_mode(state, params, [0], auto=False)
    assert tick(state, params, 25.0, 30.0).output[0] == pytest.approx(auto_out)
    with pytest.raises(ValueError, match="outside the output limits"):
        pid.set_mode(state, params, [0], auto=False, manual_output=101.0)


# --- equivalence with the scalar reference -----------------------------------------------


def random_loops(rng: np.random.Generator, n: int) -> list[LoopSettings]:
    out = []
    for _ in range(n):
        lo = float(rng.uniform(-50, 50))
        hi = lo + float(rng.uniform(1, 100))
        out.append(
            LoopSettings(
                kp=float(rng.uniform(0, 10)),
                ki_per_s=float(rng.uniform(0, 1)),
                kd_s=float(rng.uniform(0, 5)),
                action="reverse" if rng.random() < 0.5 else "direct",
                sp_weight_p=float(rng.uniform(0, 1)),
                d_filter_s=float(rng.choice([0.0, rng.uniform(0, 2)])),
                out_min=lo,
                out_max=hi,
                out_rate_per_s=float(rng.choice([math.inf, rng.uniform(0.1, 50)])),
                sp_rate_per_s=float(rng.choice([math.inf, rng.uniform(0.01, 5)])),
                safe_after_s=float(rng.choice([math.inf, rng.uniform(0, 3)])),
                safe_output=float(rng.uniform(lo, hi)),
                setpoint=float(rng.uniform(-10, 10)),
                auto=bool(rng.random() < 0.8),
                initial_output=float(rng.uniform(lo, hi)),
            )
        )
    return out


def run_both(
    cfgs: list[LoopSettings],
    ticks: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    switch: Any = None,
) -> list[pid.PidTerms]:
    """Tick the core and the reference side by side and assert they agree at every tick.

    `ticks` is (pv, sp, ok, dt), each shaped (ticks, n) except dt: (ticks,) for a scalar dt
    per tick or (ticks, n) for one per loop. `switch(k, state, params, refs)` may change
    modes before tick k. Returns a copy of the core's terms at every tick.
    """
    pv, sp, ok, dts = ticks
    n = len(cfgs)
    params, state = build(cfgs, DT_MIN, DT_MAX)
    refs = [RefLoop(c, DT_MIN, DT_MAX) for c in cfgs]
    history = []
    for k in range(pv.shape[0]):
        if switch is not None:
            switch(k, state, params, refs)
        dt_k = dts[k] if dts.ndim == 2 else float(dts[k])
        got = pid.update(state, params, pv[k], sp[k], dt_k, ok[k], out=pid.PidTerms.empty(n))
        dt_j = np.broadcast_to(dts[k], (n,))
        want = [
            r.step(float(pv[k, j]), float(sp[k, j]), float(dt_j[j]), bool(ok[k, j]))
            for j, r in enumerate(refs)
        ]
        for name in ("output", "p", "i", "d", "sp"):
            np.testing.assert_allclose(
                getattr(got, name),
                [getattr(w, name) for w in want],
                rtol=1e-9,
                atol=1e-9,
                err_msg=f"{name} tick {k}",
            )
        for name in ("sat_high", "sat_low", "mode"):
            np.testing.assert_array_equal(
                getattr(got, name), [getattr(w, name) for w in want], err_msg=f"{name} tick {k}"
            )
        history.append(got)
    return history


def flipper(rng: np.random.Generator, cfgs: list[LoopSettings], at: tuple[int, ...]) -> Any:
    """A `switch` for run_both: at the ticks `at`, operators flip ~30 % of the loops."""

    def switch(k: int, state: pid.PidState, params: pid.PidParams, refs: list[RefLoop]) -> None:
        if k not in at:
            return
        for j in np.flatnonzero(rng.random(len(cfgs)) < 0.3):
            value = float(rng.uniform(cfgs[j].out_min, cfgs[j].out_max))
            to_auto = not state.auto[j]
            manual = None if to_auto else value
            pid.set_mode(state, params, [j], auto=to_auto, manual_output=manual)
            refs[j].set_mode(to_auto, manual)

    return switch


@pytest.mark.parametrize("seed", range(8))
def test_matches_scalar_reference(seed: int) -> None:
    """The vectorised core and the loop-by-loop reference agree over many ticks."""
    rng = np.random.default_rng(seed)
    n, ticks = 40, 400
    cfgs = random_loops(rng, n)
    pv = np.cumsum(rng.normal(0, 1, (ticks, n)), axis=0)
    sp = np.repeat(rng.uniform(-10, 10, (1, n)), ticks, axis=0)
    sp[ticks // 3 :] += rng.uniform(-5, 5, n)
    ok = rng.random((ticks, n)) > 0.1
    ok[100:160, : n // 4] = False  # stale long enough to reach the safe state
    pv[rng.random((ticks, n)) < 0.05] = np.nan
    dts = rng.choice(
        [0.05, 0.1, 0.2, 5.0, 0.0, -1.0, math.nan], ticks, p=[0.3, 0.4, 0.2] + [0.025] * 4
    )
    history = run_both(cfgs, (pv, sp, ok, dts), flipper(rng, cfgs, (150, 300)))
    seen = set(np.concatenate([t.mode for t in history]).tolist())
    assert seen == {pid.MANUAL, pid.AUTO, pid.HOLD, pid.SAFE}


@pytest.mark.parametrize("seed", range(4))
def test_matches_reference_on_every_path_of_a_tick(seed: int) -> None:
    """Ticks that mix held, safe, manual, ramping and rate-limited loops with normal ones, ticks
    where every loop is bad, and the first good ticks after an outage, agree with the
    reference; every one of these kinds of tick occurs."""
    rng = np.random.default_rng(100 + seed)
    n, ticks = 30, 300
    cfgs = [
        c.model_copy(update={"out_rate_per_s": float(rng.uniform(0.5, 5)), "sp_rate_per_s": 0.5})
        for c in random_loops(rng, n)
    ]
    pv = np.cumsum(rng.normal(0, 1, (ticks, n)), axis=0)
    sp = np.repeat(rng.uniform(-10, 10, (1, n)), ticks, axis=0)
    for k0 in range(0, ticks, 60):  # set-point steps: ramps in progress most of the time
        sp[k0:] += rng.uniform(-5, 5, n)
    ok = rng.random((ticks, n)) > 0.05
    ok[40:50] = False  # every loop bad, then all good again at once
    ok[50:60] = True
    ok[200:260, : n // 3] = False  # a stale third: hold, then safe
    ok[130, 7] = False  # exactly one bad loop, then none
    ok[131] = True
    dts = rng.choice([0.05, 0.1, 0.2, 1.0], ticks)
    history = run_both(cfgs, (pv, sp, ok, dts), flipper(rng, cfgs, (20, 120, 220)))
    lim_lo = np.array([c.out_min for c in cfgs])
    lim_hi = np.array([c.out_max for c in cfgs])
    mixed = 0
    for k, t in enumerate(history):
        rate_limited = (t.sat_high & (t.output < lim_hi)) | (t.sat_low & (t.output > lim_lo))
        kinds = (t.mode == pid.HOLD, t.mode == pid.MANUAL, t.sp != sp[k], rate_limited)
        mixed += all(kind.any() for kind in kinds) and bool((t.mode == pid.AUTO).any())
    assert mixed > 10
    assert {int(m) for m in history[45].mode} <= {pid.MANUAL, pid.HOLD, pid.SAFE}
    assert not (history[50].mode >= pid.HOLD).any()  # all good right after all bad
    assert not (history[131].mode >= pid.HOLD).any()
    assert (np.concatenate([t.mode for t in history]) == pid.SAFE).any()


def test_per_loop_dt_matches_reference() -> None:
    """With one measured dt per loop (loops that carry their own timestamps), including NaN,
    negative and huge ones, the core agrees with the reference given each loop's dt."""
    rng = np.random.default_rng(7)
    n, ticks = 20, 200
    cfgs = random_loops(rng, n)
    pv = np.cumsum(rng.normal(0, 1, (ticks, n)), axis=0)
    sp = np.repeat(rng.uniform(-10, 10, (1, n)), ticks, axis=0)
    sp[ticks // 2 :] += 3.0
    ok = rng.random((ticks, n)) > 0.1
    dts = rng.choice(
        [0.05, 0.1, 0.3, 5.0, -1.0, math.nan], (ticks, n), p=[0.3, 0.3, 0.3] + [1 / 30] * 3
    )
    run_both(cfgs, (pv, sp, ok, dts), flipper(rng, cfgs, (60, 140)))


def test_array_dt_equals_scalar_dt() -> None:
    """A per-loop dt array gives the same result as the same scalar dt."""
    cfgs = random_loops(np.random.default_rng(3), 5)
    p1, s1 = build(cfgs, DT_MIN, DT_MAX)
    p2, s2 = build(cfgs, DT_MIN, DT_MAX)
    for k in range(50):
        pv = np.full(5, float(k % 7))
        a = pid.update(s1, p1, pv, np.zeros(5), 0.1, np.ones(5, bool))
        b = pid.update(s2, p2, pv, np.zeros(5), np.full(5, 0.1), np.ones(5, bool))
        np.testing.assert_array_equal(a.output, b.output)


def test_out_receives_a_copy() -> None:
    """With out=, the terms are copied into the caller's buffers."""
    params, state = build([loop(), loop(kp=1.0)], DT_MIN, DT_MAX)
    out = pid.PidTerms.empty(2)
    got = pid.update(
        state, params, arr(25.0, 26.0), arr(30.0, 30.0), 0.1, np.ones(2, bool), out=out
    )
    assert got is out and out.output is not state.u
    np.testing.assert_array_equal(out.output, state.u)
    np.testing.assert_array_equal(out.mode, state.mode)


# --- behaviours ---------------------------------------------------------------------------


def test_stale_measurement_freezes_holds_then_goes_safe() -> None:
    """Bad samples freeze the integrator and hold the output; after safe_after_s, safe value."""
    cfg = loop(safe_after_s=1.0, safe_output=5.0, out_rate_per_s=1.0)
    params, state = build([cfg], DT_MIN, DT_MAX)
    for _ in range(50):
        good = tick(state, params, 25.0, 30.0)
    held_out, held_i = float(good.output[0]), float(good.i[0])
    assert held_out != 5.0
    for k in range(3):  # 0.75 s of bad samples (NaN flagged ok, or flagged not ok): HOLD
        pv, ok = (math.nan, True) if k % 2 else (0.0, False)
        terms = tick(state, params, pv, 30.0, dt=0.25, ok=ok)
        assert terms.mode[0] == pid.HOLD
        assert terms.output[0] == held_out
        assert terms.i[0] == held_i
        assert not terms.sat_high[0] and not terms.sat_low[0]
    terms = tick(state, params, 0.0, 30.0, dt=0.25, ok=False)  # 1.0 s: SAFE, at once
    assert terms.mode[0] == pid.SAFE
    assert terms.output[0] == 5.0
    assert terms.i[0] == held_i
    terms = tick(state, params, 25.0, 30.0)  # back to good: auto, rate-limited from 5.0
    assert terms.mode[0] == pid.AUTO
    assert 5.0 < terms.output[0] <= 5.0 + 1.0 * 0.1 + 1e-12


def test_nan_with_ok_true_counts_as_bad() -> None:
    """A NaN measurement flagged ok is treated as bad, and never reaches the state."""
    params, state = build([loop()], DT_MIN, DT_MAX)
    before = tick(state, params, 25.0, 30.0).output[0]
    terms = tick(state, params, math.nan, 30.0, ok=True)
    assert terms.mode[0] == pid.HOLD
    assert terms.output[0] == before
    assert_no_nan(state)


def test_manual_ignores_bad_measurements() -> None:
    """In manual the operator's output stands whatever the measurement does."""
    params, state = build([loop(auto=False, initial_output=42.0)], DT_MIN, DT_MAX)
    terms = tick(state, params, math.inf, 30.0, ok=False)
    assert terms.mode[0] == pid.MANUAL
    assert terms.output[0] == 42.0


def test_setpoint_ramp_reaches_target_at_rate() -> None:
    """The working set point moves toward the target at sp_rate_per_s and stops on it."""
    params, state = build([loop(sp_rate_per_s=0.5, setpoint=20.0)], DT_MIN, DT_MAX)
    seen = [tick(state, params, 20.0, 25.0, dt=0.1).sp[0] for _ in range(120)]
    np.testing.assert_allclose(np.diff([20.0, *seen[:99]]), 0.05, rtol=1e-9)
    assert seen[99] == pytest.approx(25.0)  # 5 degrees at 0.5/s: 10 s = 100 ticks
    assert seen[100:] == [25.0] * 20


def test_measured_dt_is_clipped() -> None:
    """A dt outside [dt_min_s, dt_max_s] (or NaN) is clipped before use."""
    params, state = build([loop(sp_rate_per_s=1.0, setpoint=0.0)], DT_MIN, DT_MAX)
    assert tick(state, params, 0.0, 100.0, dt=60.0).sp[0] == pytest.approx(DT_MAX)
    assert tick(state, params, 0.0, 100.0, dt=math.nan).sp[0] == pytest.approx(DT_MAX + DT_MIN)


@pytest.mark.parametrize(("action", "sign"), [("reverse", 1.0), ("direct", -1.0)])
def test_action_sign(action: str, sign: float) -> None:
    """Reverse action raises the output when pv is below sp; direct action lowers it."""
    cfg = loop(action=action, ki_per_s=0.0, kd_s=0.0, kp=1.0, initial_output=50.0)
    params, state = build([cfg], DT_MIN, DT_MAX)
    terms = tick(state, params, 25.0, 30.0)
    assert terms.p[0] == pytest.approx(sign * 5.0)
    assert np.sign(terms.output[0] - 50.0) == sign


def test_setpoint_weight_and_derivative_on_measurement() -> None:
    """A set-point step moves P by b times the step and leaves D untouched."""
    params, state = build([loop(sp_weight_p=0.25, kd_s=3.0)], DT_MIN, DT_MAX)
    tick(state, params, 30.0, 30.0)
    before = tick(state, params, 30.0, 30.0)
    p0, d0 = float(before.p[0]), float(before.d[0])
    after = tick(state, params, 30.0, 34.0)
    assert after.p[0] - p0 == pytest.approx(2.0 * 0.25 * 4.0)
    assert after.d[0] == pytest.approx(d0 * 0.2 / 0.3)  # only the filter's decay


def test_settings_are_validated() -> None:
    """Inverted limits or a safe output outside them are errors, not repaired."""
    with pytest.raises(ValidationError, match="out_min"):
        loop(out_min=10.0, out_max=5.0, safe_output=7.0, initial_output=7.0)
    with pytest.raises(ValidationError, match="safe_output"):
        loop(safe_output=150.0)
    with pytest.raises(ValidationError):
        loop(kp=math.nan)
    with pytest.raises(ValueError, match="dt_min_s"):
        build([loop()], 0.0, 1.0)


# --- closed loop ---------------------------------------------------------------------------


def test_closed_loop_on_first_order_plus_dead_time() -> None:
    """A SIMC-tuned loop on a simulated FOPDT plant settles on a step without oscillating."""
    gain, tau, dead, h = 0.5, 60.0, 5.0, 0.1  # degC per %, s, s, s
    kp = tau / (gain * 2 * dead)  # SIMC with tau_c = dead time
    ki = kp / min(tau, 8 * dead)
    cfg = loop(
        kp=kp,
        ki_per_s=ki,
        kd_s=0.0,
        out_min=0.0,
        out_max=100.0,
        setpoint=20.0,
        sp_rate_per_s=0.2,
        out_rate_per_s=20.0,
        initial_output=0.0,
        sp_weight_p=0.5,
    )
    params, state = build([cfg], DT_MIN, DT_MAX)
    delay = [0.0] * int(dead / h)
    y, trace = 20.0, []
    for k in range(int(900 / h)):
        sp = 20.0 if k * h < 10 else 30.0
        u = float(tick(state, params, y + 0.0, sp, dt=h).output[0])
        delay.append(u)
        y += h / tau * (-(y - 20.0) + gain * delay.pop(0))
        trace.append(y)
    tail = np.array(trace[-int(300 / h) :])
    assert abs(tail[-1] - 30.0) < 0.05
    assert max(trace) < 30.0 + 0.5  # modest overshoot
    assert tail.max() - tail.min() < 0.1  # no sustained oscillation
