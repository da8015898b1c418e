"""Bioreactor physics: reproducible, growth with death, O2 limited by kLa, pH from CO2, writes."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from simulators.bioreactor import (
    WRITE_LIMITS,
    BioreactorModel,
    BioreactorSimConfig,
    WriteRejected,
    kla_per_h,
    ph_of,
)

STEP_S = 60.0
DAY_STEPS = 1440  # steps of 60 s in a day
HOUR_STEPS = 60


def model(**kw: object) -> BioreactorModel:
    """A model on 60 s steps (the physics is integrated stably at any step)."""
    return BioreactorModel(BioreactorSimConfig.model_validate({"step_s": STEP_S, **kw}))


def test_same_seed_gives_identical_trajectory() -> None:
    """Two models with one seed report bit-identical values, noise included."""
    a, b = model(seed=3), model(seed=3)
    for _ in range(500):
        a.step()
        b.step()
        assert a.state == b.state
    assert model(seed=4).state != model(seed=3).state


def test_batch_culture_grows_then_dies_of_acidification() -> None:
    """Without perfusion T cells expand on a ~2-day doubling until lactate has used up the
    bicarbonate; then pH falls out of range and viability collapses."""
    m = model()
    m.run(5 * DAY_STEPS)
    assert 3.0 < m.xv / 0.5 < 6.0
    assert m.viability_pct > 90.0
    m.run(10 * DAY_STEPS)
    assert m.ph < 6.8
    assert m.viability_pct < 50.0


def test_perfusion_and_faster_rocking_reach_harvest_density() -> None:
    """1 L/day perfusion at 30 rpm keeps pH and DO in range: >1e7 cells/mL, >85 % viable."""
    m = model(perfusion_L_day=1.0, rock_rate_rpm=30.0)
    m.run(15 * DAY_STEPS)
    assert m.xv > 10.0
    assert m.viability_pct > 85.0
    assert abs(m.ph - 7.2) < 0.05


def test_faster_rocking_transfers_more_oxygen() -> None:
    """With the O2 loop off (air only), 35 rpm at 12 degrees holds DO higher than 10 rpm."""
    slow, fast = model(), model(rock_rate_rpm=35.0, rock_angle_deg=12.0)
    for m in (slow, fast):
        m.write("do_auto", 0.0)
        m.write("o2_flow", 0.0)
        m.run(6 * DAY_STEPS)
    assert fast.do_pct > slow.do_pct + 10.0


def test_ph_is_held_by_co2_and_pulled_down_by_lactate_without_perfusion() -> None:
    """The device's CO2 loop holds pH at set point early; lactate uses the buffer up later,
    while perfusion washes lactate out."""
    m, p = model(), model(perfusion_L_day=1.0)
    m.run(DAY_STEPS)
    assert abs(m.ph - 7.2) < 0.02
    m.run(9 * DAY_STEPS)
    p.run(10 * DAY_STEPS)
    assert m.lactate_mM > p.lactate_mM
    assert m.hco3_mM < p.hco3_mM


def test_temperature_follows_set_point_with_first_order_lag() -> None:
    """A step of the set point is followed monotonically-ish with no large overshoot."""
    m = model(initial_degC=30.0)
    m.run(HOUR_STEPS)
    assert 35.0 < m.temp_degC < 37.6
    m.write("temperature_sp", 33.0)
    m.run(3 * HOUR_STEPS)
    assert abs(m.temp_degC - 33.0) < 0.3


def test_writes_are_checked_not_clamped() -> None:
    """Out-of-range and NaN writes raise BadOutOfRange; manual outputs need auto off."""
    m = model()
    with pytest.raises(WriteRejected) as exc:
        m.write("rock_rate_sp", 41.0)
    assert exc.value.status == "BadOutOfRange"
    with pytest.raises(WriteRejected):
        m.write("ph_sp", math.nan)
    with pytest.raises(WriteRejected) as exc:
        m.write("heater_output", 50.0)
    assert exc.value.status == "BadInvalidState"
    with pytest.raises(WriteRejected) as exc:
        m.write("vcd", 1.0)
    assert exc.value.status == "BadNotWritable"
    m.write("temperature_auto", 0.0)
    m.write("heater_output", 0.0)
    m.run(HOUR_STEPS)
    assert m.state["heater_output"] == 0.0
    assert m.temp_degC < 36.0


def test_manual_co2_flow_sets_ph() -> None:
    """With the pH loop off, more CO2 in the gas gives a lower pH (Henderson-Hasselbalch)."""
    lo, hi = model(), model()
    for m, flow in ((lo, 0.005), (hi, 0.04)):
        m.write("ph_auto", 0.0)
        m.write("co2_flow", flow)
        m.run(HOUR_STEPS)
    assert hi.ph < lo.ph


@given(
    rate=st.floats(0.0, 40.0),
    d_rate=st.floats(0.0, 40.0),
    angle=st.floats(0.0, 12.0),
)
def test_kla_never_falls_with_rocking_rate(rate: float, d_rate: float, angle: float) -> None:
    """kLa is non-decreasing in the rocking rate at any angle, and positive."""
    faster = min(40.0, rate + d_rate)
    assert kla_per_h(faster, angle) >= kla_per_h(rate, angle) > 0.0


@given(hco3=st.floats(1.0, 50.0), pco2=st.floats(5.0, 150.0), more=st.floats(1.0, 50.0))
def test_more_co2_means_lower_ph(hco3: float, pco2: float, more: float) -> None:
    """pH falls as pCO2 rises at fixed bicarbonate."""
    assert ph_of(hco3, pco2 + more) < ph_of(hco3, pco2)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    rate=st.floats(0.0, 40.0),
    perfusion=st.floats(0.0, 10.0),
    density=st.floats(0.05, 20.0),
    days=st.integers(1, 10),
)
def test_state_stays_physical(
    seed: int, rate: float, perfusion: float, density: float, days: int
) -> None:
    """Whatever the settings, cells stay within 0..Xmax, viability 0..100 %, DO >= 0,
    and no reported value is NaN or infinite."""
    m = model(seed=seed, rock_rate_rpm=rate, perfusion_L_day=perfusion, seed_density_e6_mL=density)
    m.run(days * DAY_STEPS)
    assert 0.0 <= m.xv <= m.physics.x_max_e6_mL
    assert 0.0 <= m.viability_pct <= 100.0
    assert m.do_mM >= 0.0
    assert all(math.isfinite(v) for v in m.state.values())
    for name, (low, high) in WRITE_LIMITS.items():
        if name in m.state:
            assert low <= m.state[name] <= high


def test_config_refuses_faults_without_opcua_meaning() -> None:
    """no_response/exception are Modbus faults; a bioreactor config naming them is an error."""
    window = {"start_s": 1.0, "duration_s": 2.0}
    BioreactorSimConfig.model_validate({"faults": [{"kind": "disconnect", **window}]})
    with pytest.raises(ValidationError, match="no OPC UA meaning"):
        BioreactorSimConfig.model_validate({"faults": [{"kind": "no_response", **window}]})
    with pytest.raises(ValidationError, match="status"):
        BioreactorSimConfig.model_validate(
            {"bad_status": [{"tag": "do", "status": "GoodEnough", **window}]}
        )


def test_fault_windows_are_half_open() -> None:
    """A scheduled fault is in force from start_s up to, not including, start_s + duration_s."""
    from simulators.bioreactor_server import active_windows

    cfg = BioreactorSimConfig.model_validate(
        {"bad_status": [{"tag": "do", "start_s": 1.0, "duration_s": 2.0}]}
    )
    assert [len(active_windows(cfg.bad_status, t)) for t in (0.99, 1.0, 2.99, 3.0)] == [0, 1, 1, 0]
