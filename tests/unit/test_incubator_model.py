"""Incubator physics: reproducible, held at set point, disturbed by the door, probe warm-up."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators.config import IncubatorSimConfig
from simulators.incubator import (
    CO2_STATUS_NOT_READY,
    CO2_STATUS_OK,
    IncubatorModel,
    pi_step,
)


def model(**kw: object) -> IncubatorModel:
    """A model with a ready probe unless the test says otherwise."""
    base: dict[str, object] = {"probe_warmup_s": 0.0}
    base.update(kw)
    return IncubatorModel(IncubatorSimConfig.model_validate(base))


def trajectory(m: IncubatorModel, n: int) -> list[dict[str, float]]:
    out = []
    for _ in range(n):
        m.step()
        out.append(m.state)
    return out


def run_until(m: IncubatorModel, done: Callable[[], bool], max_steps: int = 100_000) -> None:
    for _ in range(max_steps):
        if done():
            return
        m.step()
    raise AssertionError("condition not reached in simulated time")


def test_same_seed_gives_identical_trajectory() -> None:
    """Two models with one seed report bit-identical values step after step, door included."""
    a = model(seed=7, door_period_s=300.0, door_open_s=30.0)
    b = model(seed=7, door_period_s=300.0, door_open_s=30.0)
    assert trajectory(a, 3000) == trajectory(b, 3000)
    assert a.door_open_count > 0


def test_other_seed_gives_other_noise() -> None:
    """The seed drives the measurement noise, so another seed gives other readings."""
    assert trajectory(model(seed=1), 10) != trajectory(model(seed=2), 10)


def test_thermostat_settles_at_set_point_from_cold_start() -> None:
    """From 25 °C with the door shut, the on-board PI brings the chamber to 37 °C and holds it."""
    m = model(initial_degC=25.0, door_open_s=0.0, step_s=2.0)
    m.run(3 * 3600 // 2)
    assert m.temp_degC == pytest.approx(37.0, abs=0.02)
    # steady state: heater power balances the loss to a 22 °C room (15 K of a 40 K span)
    assert m.heater_pct == pytest.approx(37.5, abs=0.5)
    assert m.door_open_count == 0


def test_door_opening_drops_co2_and_temperature_which_then_recover() -> None:
    """A one-minute door opening drops CO2, temperature and RH; CO2 and temperature recover."""
    m = model(door_period_s=3600.0, door_open_s=60.0, step_s=1.0)
    before = (m.temp_degC, m.co2_pct, m.rh_pct)
    run_until(m, lambda: m.door_open)
    assert m.door_open_count == 1
    assert m.valve_pct == 0.0  # the door switch inhibits CO2 injection
    run_until(m, lambda: not m.door_open)
    closed_at = (m.temp_degC, m.co2_pct, m.rh_pct)
    assert closed_at[0] < before[0] - 0.2
    assert closed_at[1] < 2.0
    assert closed_at[2] < before[2] - 10.0
    m.run(2400)  # the next opening is at least 0.9 × 3540 s away
    assert not m.door_open
    assert m.temp_degC == pytest.approx(37.0, abs=0.1)
    assert m.co2_pct == pytest.approx(5.0, abs=0.2)
    assert m.rh_pct > closed_at[2] + 10.0


def test_door_schedule_has_seeded_jitter() -> None:
    """Openings come about once a period, for durations that vary around `door_open_s`."""
    m = model(door_period_s=600.0, door_open_s=20.0, step_s=0.5)
    durations: list[float] = []
    for _ in range(8):
        run_until(m, lambda: m.door_open)
        opened = m.t_s
        run_until(m, lambda: not m.door_open)
        durations.append(m.t_s - opened)
    assert m.door_open_count == 8
    assert all(18.0 - 0.5 <= d <= 22.0 + 0.5 for d in durations)
    assert len(set(durations)) > 1
    assert 8 * 600.0 * 0.9 <= m.t_s <= 8 * 600.0 * 1.1


def test_probe_reports_nan_and_not_ready_during_warmup() -> None:
    """The GMP251 answers NaN with status 256 until `probe_warmup_s`, then valid CO2 with 0."""
    m = model(probe_warmup_s=10.0, step_s=0.5)
    while m.t_s < 10.0:
        assert math.isnan(m.state["co2"])
        assert m.state["probe_co2_status"] == CO2_STATUS_NOT_READY
        m.step()
    assert m.t_s == 10.0
    assert m.state["co2"] == pytest.approx(5.0, abs=0.1)
    assert m.state["probe_co2_status"] == CO2_STATUS_OK


def test_written_set_points_are_followed() -> None:
    """New temperature and CO2 set points are reached by the on-board controllers."""
    m = model(door_open_s=0.0, step_s=2.0)
    m.set_setpoint("temp_setpoint", 38.5)
    m.set_setpoint("co2_setpoint", 6.5)
    m.run(2 * 3600 // 2)
    assert m.state["temp_setpoint"] == 38.5
    assert m.state["co2_setpoint"] == 6.5
    assert m.temp_degC == pytest.approx(38.5, abs=0.02)
    assert m.co2_pct == pytest.approx(6.5, abs=0.02)


@pytest.mark.parametrize(
    ("tag", "value"),
    [
        ("temp_setpoint", 80.0),
        ("temp_setpoint", math.nan),
        ("co2_setpoint", -1.0),
        ("door_open", 1.0),
    ],
)
def test_invalid_set_point_is_refused(tag: str, value: float) -> None:
    """A set point outside its limits, NaN, or a tag that is no set point raises, unchanged."""
    m = model()
    with pytest.raises(ValueError, match=tag):
        m.set_setpoint(tag, value)
    assert (m.temp_setpoint_degC, m.co2_setpoint_pct) == (37.0, 5.0)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    ambient=st.floats(-10.0, 45.0),
    setpoint=st.floats(20.0, 50.0),
    co2=st.floats(0.0, 20.0),
    step_s=st.floats(0.1, 60.0),
    door_open_s=st.floats(0.0, 200.0),
    warmup_s=st.floats(0.0, 2000.0),
    steps=st.integers(1, 300),
)
def test_outputs_stay_in_range_and_no_nan_leaks(
    *,
    seed: int,
    ambient: float,
    setpoint: float,
    co2: float,
    step_s: float,
    door_open_s: float,
    warmup_s: float,
    steps: int,
) -> None:
    """Heater and valve stay in 0..100 %, RH in 0..100 %, and only CO2 in warm-up is NaN."""
    m = model(
        seed=seed,
        ambient_degC=ambient,
        setpoint_degC=setpoint,
        co2_setpoint_pct=co2,
        step_s=step_s,
        door_period_s=300.0,
        door_open_s=door_open_s,
        probe_warmup_s=warmup_s,
    )
    for _ in range(steps):
        m.step()
        state = m.state
        assert 0.0 <= state["heater_output"] <= 100.0
        assert 0.0 <= state["co2_valve_output"] <= 100.0
        assert 0.0 <= state["chamber_rh"] <= 100.0
        assert all(math.isfinite(v) for tag, v in state.items() if tag != "co2")
        assert math.isnan(state["co2"]) == (not m.probe_ready)


@given(
    error=st.floats(-1e6, 1e6),
    integral=st.floats(0.0, 100.0),
    dt=st.floats(0.0, 3600.0),
)
def test_pi_output_and_integral_stay_within_limits(
    error: float, integral: float, dt: float
) -> None:
    """Whatever the error and step, the PI's output and integral stay within 0..100 %."""
    out, new_integral = pi_step(error, integral, kp=7.5, ti_s=900.0, dt=dt)
    assert 0.0 <= out <= 100.0
    assert 0.0 <= new_integral <= 100.0
