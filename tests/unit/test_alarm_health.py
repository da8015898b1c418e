"""Alarm-system health: rates, floods, chattering, standing alarms, masked lists."""

from __future__ import annotations

import numpy as np

from controller.alarms import (
    AlarmConfig,
    AlarmEngine,
    AlarmEvent,
    Cause,
    HealthTracker,
    State,
)

S = 1_000_000_000
T0 = 1_700_000_000 * S


def ev(alarm: str, frm: State, to: State, cause: Cause, t_s: float) -> AlarmEvent:
    return AlarmEvent(alarm, frm, to, cause, T0 + int(t_s * S), 1.0, 0.0, "low", "")


def alarm(name: str, t_s: float) -> AlarmEvent:
    return ev(name, State.NORMAL, State.UNACK, Cause.ALARM, t_s)


def test_annunciation_rate_and_flood() -> None:
    """11 annunciations within 10 min is a flood; they leave the windows as time passes."""
    h = HealthTracker()
    h.observe(alarm(f"a{k}", 30.0 * k) for k in range(11))  # t = 0 … 300 s
    m = h.metrics(T0 + 301 * S)
    assert (m.annunciated_last_hour, m.annunciated_last_10min, m.flood) == (11, 11, True)
    m = h.metrics(T0 + 601 * S)  # the first one (t=0) left the 10-min window
    assert (m.annunciated_last_10min, m.flood) == (10, False)
    m = h.metrics(T0 + 3601 * S)
    assert m.annunciated_last_hour == 10
    assert h.metrics(T0 + 4000 * S).annunciated_last_hour == 0


def test_acks_and_returns_are_not_annunciations() -> None:
    """Only entries into "unacknowledged" count, re-alarms included."""
    h = HealthTracker()
    h.observe(
        [
            alarm("a", 0),
            ev("a", State.UNACK, State.ACKED, Cause.ACK, 1),
            ev("a", State.ACKED, State.NORMAL, Cause.RETURN, 2),
            alarm("a", 100),
            ev("a", State.UNACK, State.RTN_UNACK, Cause.RETURN, 200),
            ev("a", State.RTN_UNACK, State.UNACK, Cause.ALARM, 300),
        ]
    )
    m = h.metrics(T0 + 400 * S)
    assert m.annunciated_last_hour == 3
    assert m.unacknowledged == 1
    assert m.chattering == ()


def test_chattering_three_transitions_in_sixty_seconds() -> None:
    """≥ 3 process transitions within 60 s marks an alarm chattering, for an hour."""
    h = HealthTracker()
    h.observe(
        [
            alarm("slow", 0),
            ev("slow", State.UNACK, State.RTN_UNACK, Cause.RETURN, 40),
            ev("slow", State.RTN_UNACK, State.UNACK, Cause.ALARM, 61),
            alarm("fast", 0),
            ev("fast", State.UNACK, State.RTN_UNACK, Cause.RETURN, 20),
            ev("fast", State.RTN_UNACK, State.UNACK, Cause.ALARM, 59),
        ]
    )
    assert h.metrics(T0 + 100 * S).chattering == ("fast",)
    assert h.metrics(T0 + 3700 * S).chattering == ()


def test_standing_alarm_after_24_hours() -> None:
    """An alarm active (acked or not) for more than 24 h stands; a return clears that."""
    h = HealthTracker()
    h.observe([alarm("a", 0), ev("a", State.UNACK, State.ACKED, Cause.ACK, 10), alarm("b", 0)])
    h.observe([ev("b", State.UNACK, State.RTN_UNACK, Cause.RETURN, 3600)])
    assert h.metrics(T0 + 86400 * S).standing == ()
    assert h.metrics(T0 + 86401 * S).standing == ("a",)


def test_masked_alarms_are_listed_from_the_engine_events() -> None:
    """Shelved, suppressed and out-of-service alarms are listed by the engine's own events."""
    cfg = [
        AlarmConfig.model_validate({"id": i, "tag": "d.t", "kind": "high", "limit": 1.0})
        for i in ("x", "y", "z")
    ]
    eng = AlarmEngine(cfg)
    h = HealthTracker()
    h.observe(eng.tick(1.0, T0, np.full(3, 5.0), np.ones(3, bool)))
    h.observe(eng.shelve("x", duration_s=60, reason="r", user="u", now_s=1.0, t_ns=T0))
    h.observe(eng.out_of_service("y", reason="r", user="u", t_ns=T0))
    supp = np.array([False, False, True])
    h.observe(eng.tick(2.0, T0 + S, np.full(3, 5.0), np.ones(3, bool), suppress=supp))
    m = h.metrics(T0 + 2 * S)
    assert (m.shelved, m.out_of_service, m.suppressed) == (("x",), ("y",), ("z",))
    assert m.annunciated_last_hour == 3
    assert m.unacknowledged == 0
    assert m.as_dict()["shelved"] == ["x"]


def test_seed_takes_the_restored_states() -> None:
    """After a restart the states come back without events: seeded, the lists, the
    unacknowledged count and standing alarms are right at once."""
    h = HealthTracker()
    h.seed(
        [
            ("a", State.UNACK, T0 - 25 * 3600 * S),  # active for 25 h before the restart
            ("b", State.LATCHED_UNACK, T0 - S),
            ("c", State.OUT_OF_SERVICE, None),
            ("d", State.SHELVED, None),
            ("e", State.ACKED, None),  # activation time unknown: from now
            ("f", State.NORMAL, None),
        ],
        T0,
    )
    m = h.metrics(T0 + S)
    assert m.unacknowledged == 2
    assert (m.out_of_service, m.shelved, m.standing) == (("c",), ("d",), ("a",))
    assert m.annunciated_last_hour == 0
    h.observe([ev("a", State.UNACK, State.ACKED, Cause.ACK, 2)])
    assert h.metrics(T0 + 3 * S).unacknowledged == 1
