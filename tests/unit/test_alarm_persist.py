"""Alarm states survive a restart: acks, latches, shelvings and out-of-service come back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from controller.alarms import AlarmConfig, AlarmEngine, Cause, State
from controller.alarms.persist import load, restore, save

HIGH, LOW = 50.0, 10.0  # around the limit of 40
NS = 1_000_000_000


def engine(**over: Any) -> AlarmEngine:
    base: dict[str, Any] = {"id": "t", "tag": "inc.t", "kind": "high", "limit": 40.0}
    return AlarmEngine([AlarmConfig.model_validate(base | over)])


def tick(eng: AlarmEngine, now_s: float, value: float) -> list[tuple[State, State, Cause]]:
    events = eng.tick(now_s, int(now_s * NS), np.array([value]), np.array([True]))
    return [(e.from_state, e.to_state, e.cause) for e in events]


def restarted(eng: AlarmEngine, path: Path, now_s: float, **over: Any) -> AlarmEngine:
    save(eng, path)
    fresh = engine(**over)
    restore(fresh, load(path), now_s, int(now_s * NS))
    return fresh


def test_an_acknowledged_active_alarm_stays_acknowledged_and_returns(tmp_path: Path) -> None:
    eng = engine()
    tick(eng, 1, HIGH)
    eng.ack("t", user="olga", t_ns=2 * NS)
    eng = restarted(eng, tmp_path / "alarms.json", 100.0)
    assert eng.state("t") == State.ACKED
    assert eng.snapshot("t")["acknowledged_by"] == "olga"
    assert tick(eng, 101, HIGH) == []  # still active: nothing to announce again
    assert tick(eng, 102, LOW) == [(State.ACKED, State.NORMAL, Cause.RETURN)]


def test_a_condition_that_returned_while_down_is_not_lost(tmp_path: Path) -> None:
    eng = engine()
    tick(eng, 1, HIGH)  # unacknowledged
    eng = restarted(eng, tmp_path / "alarms.json", 100.0)
    assert tick(eng, 101, LOW) == [(State.UNACK, State.RTN_UNACK, Cause.RETURN)]


def test_a_latched_alarm_still_needs_its_reset(tmp_path: Path) -> None:
    eng = engine(latch=True)
    tick(eng, 1, HIGH)
    tick(eng, 2, LOW)  # B → E
    eng.ack("t", user="olga", t_ns=3 * NS)  # E → F
    eng = restarted(eng, tmp_path / "alarms.json", 100.0, latch=True)
    assert eng.state("t") == State.LATCHED_ACKED
    assert tick(eng, 101, LOW) == []
    eng.reset("t", user="olga", t_ns=102 * NS)
    assert eng.state("t") == State.NORMAL


def test_shelving_keeps_its_expiry_and_out_of_service_stays(tmp_path: Path) -> None:
    eng = engine()
    eng.shelve("t", duration_s=60, reason="filter change", user="olga", now_s=10.0, t_ns=10 * NS)
    eng = restarted(eng, tmp_path / "alarms.json", 30.0)  # 40 s of shelving left
    assert eng.state("t") == State.SHELVED
    assert tick(eng, 69, HIGH) == []
    assert tick(eng, 71, HIGH)[0][:2] == (State.SHELVED, State.UNACK)  # expired on time
    eng.out_of_service("t", user="olga", reason="calibration", t_ns=72 * NS)
    eng = restarted(eng, tmp_path / "alarms.json", 80.0)
    assert eng.state("t") == State.OUT_OF_SERVICE
    assert tick(eng, 81, HIGH) == []


def test_a_shelving_that_expired_while_down_is_lifted(tmp_path: Path) -> None:
    eng = engine()
    eng.shelve("t", duration_s=60, reason="x", user="olga", now_s=0.0, t_ns=0)
    eng = restarted(eng, tmp_path / "alarms.json", 500.0)
    assert eng.state("t") == State.NORMAL
    assert tick(eng, 501, HIGH) == [(State.NORMAL, State.UNACK, Cause.ALARM)]
