"""Incubator physics: reproducible, held at set point, disturbed by the door, probe warm-up."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulators.config import IncubatorSimConfig
from simulators.incubator import (
    ALARM_BITS,
    CO2_STATUS_NOT_READY,
    CO2_STATUS_OK,
    IncubatorModel,
    pi_step,
)

REMOTE_LOST = 1 << ALARM_BITS["remote_lost"]


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
        ("temp_local_auto", 0.5),
        ("co2_local_auto", 2.0),
        ("heater_demand", 100.1),
        ("co2_valve_demand", -0.1),
        ("heater_demand", math.nan),
    ],
)
def test_invalid_set_point_is_refused(tag: str, value: float) -> None:
    """A set point outside its limits, NaN, or a tag that is no set point raises, unchanged."""
    m = model()
    with pytest.raises(ValueError, match=tag):
        m.set_setpoint(tag, value)
    assert (m.temp_setpoint_degC, m.co2_setpoint_pct) == (37.0, 5.0)
    assert (m.heater_local_auto, m.co2_local_auto) == (True, True)
    assert (m.heater_demand_pct, m.valve_demand_pct) == (0.0, 0.0)


def test_power_up_is_local_auto_and_reports_the_remote_tags() -> None:
    """At power-up both outputs are in local auto, demands 0 %, no remote alarm."""
    state = model().state
    assert state["temp_local_auto"] == 1.0 and state["co2_local_auto"] == 1.0
    assert state["heater_demand"] == 0.0 and state["co2_valve_demand"] == 0.0
    assert not int(state["alarm_word"]) & REMOTE_LOST


def test_remote_heater_output_follows_the_demand_and_heats() -> None:
    """temp_local_auto=0: the heater runs at heater_demand whatever the temperature error."""
    m = model(door_open_s=0.0, remote_timeout_s=1e4)
    m.set_setpoint("heater_demand", 100.0)
    m.set_setpoint("temp_local_auto", 0)
    m.run(600)  # 300 s
    assert m.heater_pct == 100.0 and m.state["heater_output"] == 100.0
    assert m.state["temp_local_auto"] == 0.0 and m.state["heater_demand"] == 100.0
    assert m.temp_degC > 37.0 + 5.0  # far above its set point: no local PI pulling back
    m.set_setpoint("heater_demand", 0.0)
    m.step()
    assert m.heater_pct == 0.0


def test_remote_valve_follows_the_demand_but_the_door_still_closes_it() -> None:
    """co2_local_auto=0: the valve runs at co2_valve_demand, except while the door is open."""
    m = model(door_period_s=100.0, door_open_s=20.0, remote_timeout_s=1e4)
    m.set_setpoint("co2_valve_demand", 40.0)
    m.set_setpoint("co2_local_auto", 0)
    seen = set()
    for _ in range(400):  # 200 s: at least one opening
        m.step()
        assert m.valve_pct == (0.0 if m.door_open else 40.0)
        seen.add(m.door_open)
    assert seen == {True, False}
    assert m.heater_local_auto  # the other output stays local


@pytest.mark.parametrize(
    ("switch", "demand", "output"),
    [
        ("temp_local_auto", "heater_demand", "heater_pct"),
        ("co2_local_auto", "co2_valve_demand", "valve_pct"),
    ],
)
def test_switch_back_to_local_is_bumpless(switch: str, demand: str, output: str) -> None:
    """The on-board PI's integral tracks the remote output: back in local auto, the first
    output equals the last remote one (up to one integration step)."""
    m = model(door_open_s=0.0, remote_timeout_s=1e4)
    m.set_setpoint(demand, 70.0)
    m.set_setpoint(switch, 0)
    m.run(20)
    assert getattr(m, output) == 70.0
    m.set_setpoint(switch, 1)
    m.step()
    assert getattr(m, output) == pytest.approx(70.0, abs=0.5)


def test_watchdog_hands_back_after_remote_timeout_of_sim_time() -> None:
    """Without a demand write for remote_timeout_s, the output goes local and bit 5 is set;
    each demand write restarts the timeout; writing local_auto clears the alarm."""
    m = model(door_open_s=0.0, step_s=0.5, remote_timeout_s=30.0)
    m.set_setpoint("temp_local_auto", 0)
    m.set_setpoint("heater_demand", 50.0)
    m.run(40)  # 20 s
    m.set_setpoint("heater_demand", 50.0)  # fed: the timeout starts again
    m.run(60)  # 30 s since the last write, at the end of the last step
    assert not m.heater_local_auto and m.heater_pct == 50.0
    m.step()  # the next step's watchdog sees 30 s and acts before the controller runs
    assert m.heater_local_auto and m.heater_pct != 50.0
    assert m.state["temp_local_auto"] == 1.0
    assert int(m.state["alarm_word"]) & REMOTE_LOST
    m.run(100)
    assert int(m.state["alarm_word"]) & REMOTE_LOST  # latched until acknowledged
    m.set_setpoint("temp_local_auto", 1)
    assert not int(m.state["alarm_word"]) & REMOTE_LOST


def test_co2_watchdog_is_independent_of_the_heaters() -> None:
    """Feeding heater_demand does not keep the CO2 valve in remote, and vice versa."""
    m = model(door_open_s=0.0, step_s=1.0, remote_timeout_s=10.0)
    m.set_setpoint("co2_local_auto", 0)
    m.set_setpoint("temp_local_auto", 0)
    for _ in range(30):
        m.set_setpoint("heater_demand", 30.0)
        m.step()
    assert m.co2_local_auto and m.co2_remote_lost
    assert not m.heater_local_auto and not m.heater_remote_lost


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
    remote=st.booleans(),
    demand=st.floats(0.0, 100.0),
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
    remote: bool,
    demand: float,
) -> None:
    """Heater and valve stay in 0..100 %, RH in 0..100 %, and only CO2 in warm-up is NaN,
    in local auto and under remote demands with a watchdog that may expire mid-run."""
    m = model(
        seed=seed,
        ambient_degC=ambient,
        setpoint_degC=setpoint,
        co2_setpoint_pct=co2,
        step_s=step_s,
        door_period_s=300.0,
        door_open_s=door_open_s,
        probe_warmup_s=warmup_s,
        remote_timeout_s=50.0,
    )
    if remote:
        for tag in ("heater_demand", "co2_valve_demand"):
            m.set_setpoint(tag, demand)
        for tag in ("temp_local_auto", "co2_local_auto"):
            m.set_setpoint(tag, 0)
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
