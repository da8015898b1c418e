"""Every ISA-18.2 transition of the engine, the operator actions and their refusals."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from controller.alarms import AlarmConfig, AlarmEngine, AlarmRefused, Cause, State

A, B, C, D = State.NORMAL, State.UNACK, State.ACKED, State.RTN_UNACK
E, F, G, H, I = (  # noqa: E741 - ISA-18.2's letters
    State.LATCHED_UNACK,
    State.LATCHED_ACKED,
    State.SHELVED,
    State.SUPPRESSED,
    State.OUT_OF_SERVICE,
)
HIGH, LOW = 50.0, 10.0  # above / below the limit of 40


class One:
    """One high alarm (limit 40) driven tick by tick; time advances 1 s per tick."""

    def __init__(self, **over: Any) -> None:
        base: dict[str, Any] = {"id": "t", "tag": "inc.t", "kind": "high", "limit": 40.0}
        self.eng = AlarmEngine([AlarmConfig.model_validate(base | over)])
        self.now = 0.0
        self.suppress = False

    @property
    def state(self) -> State:
        return self.eng.state("t")

    def tick(self, value: float, good: bool = True) -> list[tuple[State, State, Cause]]:
        self.now += 1.0
        events = self.eng.tick(
            self.now,
            self.ns,
            np.array([value]),
            np.array([good]),
            suppress=np.array([self.suppress]),
        )
        return [(e.from_state, e.to_state, e.cause) for e in events]

    @property
    def ns(self) -> int:
        return 1_700_000_000_000_000_000 + int(self.now * 1e9)

    def act(self, verb: str, **kw: Any) -> list[tuple[State, State, Cause]]:
        if verb == "shelve":
            kw.setdefault("reason", "nuisance")
            kw["now_s"] = self.now
        if verb == "out_of_service":
            kw.setdefault("reason", "probe swap")
        events = getattr(self.eng, verb)("t", user="ana", t_ns=self.ns, **kw)
        assert all(e.user == "ana" for e in events)
        return [(e.from_state, e.to_state, e.cause) for e in events]


def test_a_to_b_to_c_to_a() -> None:
    """Alarm, ack, return: A → B → C → A, and nothing happens while the state holds."""
    a = One()
    assert a.tick(LOW) == []
    assert a.tick(HIGH) == [(A, B, Cause.ALARM)]
    assert a.tick(HIGH) == []
    assert a.act("ack") == [(B, C, Cause.ACK)]
    assert a.tick(HIGH) == []
    assert a.tick(LOW) == [(C, A, Cause.RETURN)]


def test_unacked_return_then_ack_b_d_a() -> None:
    """An unacknowledged alarm that returns is RTN-unack (D) until acked, then normal."""
    a = One()
    a.tick(HIGH)
    assert a.tick(LOW) == [(B, D, Cause.RETURN)]
    assert a.act("ack") == [(D, A, Cause.ACK)]


def test_rtn_unack_re_alarms_d_to_b() -> None:
    """A returned, unacknowledged alarm that comes back is unacknowledged again."""
    a = One()
    a.tick(HIGH)
    a.tick(LOW)
    assert a.tick(HIGH) == [(D, B, Cause.ALARM)]


def test_latched_needs_ack_and_reset_after_return() -> None:
    """Latched: B → E on return, E → F on ack, F → A on reset; a reset needs the ack first."""
    a = One(latch=True)
    a.tick(HIGH)
    assert a.tick(LOW) == [(B, E, Cause.RETURN)]
    assert a.tick(LOW) == []
    with pytest.raises(AlarmRefused, match="acknowledge it first"):
        a.act("reset")
    assert a.act("ack") == [(E, F, Cause.ACK)]
    with pytest.raises(AlarmRefused, match="needs a reset"):
        a.act("ack")
    assert a.act("reset") == [(F, A, Cause.RESET)]


def test_latched_acked_alarm_returns_to_latched_acked() -> None:
    """Latched and acknowledged while active: C → F on return, and F → B if it comes back."""
    a = One(latch=True)
    a.tick(HIGH)
    a.act("ack")
    assert a.tick(LOW) == [(C, F, Cause.RETURN)]
    assert a.tick(HIGH) == [(F, B, Cause.ALARM)]
    a.tick(LOW)
    assert a.state == E
    assert a.tick(HIGH) == [(E, B, Cause.ALARM)]


@pytest.mark.parametrize(("start", "returned"), [("A", A), ("B", D), ("C", A), ("D", D)])
def test_shelve_and_unshelve_re_evaluates(start: str, returned: State) -> None:
    """From A/B/C/D shelving gives G; unshelving re-evaluates: active → B; returned → the
    state under the shelving after a return (B → D, C → A: an unacknowledged alarm is
    still to be acknowledged)."""
    a = One()
    setup = {"A": [LOW], "B": [HIGH], "C": [HIGH], "D": [HIGH, LOW]}[start]
    for v in setup:
        a.tick(v)
    if start == "C":
        a.act("ack")
    before = a.state
    assert before.name[0] == {"A": "N", "B": "U", "C": "A", "D": "R"}[start]
    assert a.act("shelve", duration_s=60.0) == [(before, G, Cause.SHELVE)]
    assert a.tick(HIGH) == []  # shelved: the condition changes, nothing is annunciated
    a.tick(LOW)
    assert a.act("unshelve") == [(G, returned, Cause.UNSHELVE)]
    a.act("shelve", duration_s=60.0)
    a.tick(HIGH)
    assert a.act("unshelve") == [(G, B, Cause.UNSHELVE)]


def test_shelve_expires_and_returns_to_evaluation() -> None:
    """A shelving ends by itself at its time; the alarm is then re-evaluated (active → B)."""
    a = One()
    a.tick(HIGH)
    a.act("shelve", duration_s=3.0)  # shelved at t=1 until t=4
    assert a.tick(HIGH) == []
    assert a.tick(HIGH) == []
    assert a.tick(HIGH) == [(G, B, Cause.SHELVE_EXPIRED)]
    snap = a.eng.snapshot("t")
    assert snap["shelved_until"] is None
    assert snap["shelved_by"] is None


def test_shelve_expiry_to_normal() -> None:
    """A shelving that expires while the condition is normal returns the alarm to A."""
    a = One()
    a.act("shelve", duration_s=1.0)
    assert a.tick(LOW) == [(G, A, Cause.SHELVE_EXPIRED)]


def test_shelve_refusals() -> None:
    """Shelving longer than the maximum, for nothing, without a reason, or twice is refused."""
    a = One(shelve_max_s=600.0)
    for kw, code in [
        ({"duration_s": 601.0}, "bad_duration"),
        ({"duration_s": 0.0}, "bad_duration"),
        ({"duration_s": float("nan")}, "bad_duration"),
        ({"duration_s": 60.0, "reason": "  "}, "reason_required"),
    ]:
        with pytest.raises(AlarmRefused) as err:
            a.act("shelve", **kw)
        assert err.value.code == code
    a.act("shelve", duration_s=600.0)
    with pytest.raises(AlarmRefused, match="already_shelved"):
        a.act("shelve", duration_s=60.0)
    a.act("out_of_service")
    with pytest.raises(AlarmRefused, match="out_of_service"):
        a.act("shelve", duration_s=60.0)
    with pytest.raises(AlarmRefused, match="not_shelved"):
        a.act("unshelve")  # going out of service ended the shelving


def test_out_of_service_and_return_re_evaluates() -> None:
    """I from any state; in_service re-evaluates: still active → B, returned → A from an
    acknowledged alarm, D from an unacknowledged one."""
    a = One()
    a.tick(HIGH)
    a.act("ack")
    assert a.act("out_of_service") == [(C, I, Cause.OUT_OF_SERVICE)]
    assert a.tick(LOW) == []
    assert a.tick(HIGH) == []
    assert a.act("in_service") == [(I, B, Cause.IN_SERVICE)]
    a.act("out_of_service")
    a.tick(LOW)
    assert a.act("in_service") == [(I, D, Cause.IN_SERVICE)]
    a.act("ack")
    a.act("out_of_service")
    assert a.act("in_service") == [(I, A, Cause.IN_SERVICE)]
    with pytest.raises(AlarmRefused, match="not_out_of_service"):
        a.act("in_service")
    a.act("out_of_service")
    with pytest.raises(AlarmRefused, match="already_out_of_service"):
        a.act("out_of_service")


def test_suppression_by_design() -> None:
    """Suppressed while the flag is set (H); the end of it re-evaluates the condition."""
    a = One()
    a.tick(HIGH)
    a.suppress = True
    assert a.tick(HIGH) == [(B, H, Cause.SUPPRESS)]
    assert a.tick(LOW) == []
    assert a.tick(HIGH) == []
    a.suppress = False
    assert a.tick(HIGH) == [(H, B, Cause.UNSUPPRESS)]
    a.act("ack")
    a.suppress = True
    a.tick(HIGH)
    a.suppress = False
    assert a.tick(LOW) == [(H, A, Cause.UNSUPPRESS)]


@pytest.mark.parametrize("mask", ["shelve", "suppress", "out_of_service"])
@pytest.mark.parametrize(
    ("latch", "setup", "needs"),
    [
        (True, [HIGH, LOW], E),  # latched, returned: ack and reset
        (True, [HIGH, "ack", LOW], F),  # latched, acknowledged: reset
        (False, [HIGH, LOW], D),  # returned, unacknowledged: ack
    ],
)
def test_lifting_a_mask_keeps_what_still_needs_an_ack_or_reset(
    mask: str, latch: bool, setup: list[float | str], needs: State
) -> None:
    """A mask hides an alarm; it never acknowledges or resets one: E, F and D come back."""
    a = One(latch=latch)
    for step in setup:
        if step == "ack":
            a.act("ack")
        else:
            assert isinstance(step, float)
            a.tick(step)
    assert a.state == needs
    if mask == "suppress":
        a.suppress = True
        a.tick(LOW)
        a.suppress = False
        lifted = a.tick(LOW)
    else:
        a.act(mask, **({"duration_s": 60.0} if mask == "shelve" else {}))
        a.tick(LOW)
        lifted = a.act("unshelve" if mask == "shelve" else "in_service")
    assert [to for _, to, _ in lifted] == [needs]
    if needs in (D, E):
        a.act("ack")
    if latch:
        a.act("reset")
    assert a.state == A


def test_masks_have_an_order() -> None:
    """Out of service beats shelved beats suppressed; lifting one shows the next."""
    a = One()
    a.suppress = True
    a.tick(HIGH)
    assert a.state == H
    assert a.act("shelve", duration_s=60.0) == [(H, G, Cause.SHELVE)]
    assert a.act("out_of_service") == [(G, I, Cause.OUT_OF_SERVICE)]
    a.suppress = False
    assert a.tick(HIGH) == []  # still out of service
    a.suppress = True
    a.tick(HIGH)
    assert a.act("in_service") == [(I, H, Cause.IN_SERVICE)]
    a.act("shelve", duration_s=60.0)
    assert a.act("unshelve") == [(G, H, Cause.UNSHELVE)]


@pytest.mark.parametrize("state", ["normal", "acknowledged", "shelved", "out_of_service"])
def test_ack_refused_where_there_is_nothing_to_ack(state: str) -> None:
    """Ack of a normal, acknowledged, shelved or out-of-service alarm is refused, with why."""
    a = One()
    if state != "normal":
        a.tick(HIGH)
    if state == "acknowledged":
        a.act("ack")
    if state == "shelved":
        a.act("shelve", duration_s=60.0)
    if state == "out_of_service":
        a.act("out_of_service")
    with pytest.raises(AlarmRefused) as err:
        a.act("ack")
    assert err.value.code == "not_acknowledgeable"
    assert state in err.value.message
    assert a.state.value == state


def test_unknown_alarm_is_refused() -> None:
    """An operator action on an alarm that does not exist names it."""
    with pytest.raises(AlarmRefused, match="'nope'"):
        One().eng.ack("nope", user="ana", t_ns=0)


def test_snapshot_carries_the_retained_message() -> None:
    """The snapshot has state, priority, value, limit, times and who acknowledged."""
    a = One(priority="critical", message="incubator too hot")
    a.tick(HIGH)
    t_alarm = a.ns
    a.tick(HIGH + 1)
    a.act("ack")
    a.tick(LOW)
    snap = a.eng.snapshot("t")
    assert snap["state"] == "normal"
    assert snap["priority"] == "critical"
    assert snap["message"] == "incubator too hot"
    assert snap["value"] == LOW
    assert snap["limit"] == 40.0
    assert snap["acknowledged_by"] == "ana"
    assert snap["activated"] == "2023-11-14T22:13:21.000000000Z"
    assert t_alarm == 1_700_000_001_000_000_000
    assert snap["acknowledged"] == "2023-11-14T22:13:22.000000000Z"
    assert snap["returned"] == "2023-11-14T22:13:23.000000000Z"
    assert snap["active"] is False
    a.act("shelve", duration_s=90.0)
    assert a.eng.snapshot("t")["shelved_until"] == "2023-11-14T22:14:53.000000000Z"


def test_event_carries_value_limit_priority_message() -> None:
    """An event records the value at the transition and the alarm's constants."""
    a = One(priority="high", message="hot")
    a.now = 9.0
    ev = a.eng.tick(10.0, 123, np.array([41.5]), np.array([True]))[0]
    assert ev.as_dict() == {
        "alarm": "t",
        "from": "normal",
        "to": "unacknowledged",
        "cause": "alarm",
        "ts": "1970-01-01T00:00:00.000000123Z",
        "ts_ns": 123,
        "value": 41.5,
        "limit": 40.0,
        "priority": "high",
        "message": "hot",
        "user": None,
        "reason": None,
    }


def test_bad_input_holds_a_process_alarm() -> None:
    """A bad or NaN sample neither raises nor clears a limit alarm."""
    a = One()
    assert a.tick(HIGH, good=False) == []
    assert a.tick(float("nan")) == []
    a.tick(HIGH)
    assert a.tick(LOW, good=False) == []
    assert a.state == B
    assert a.eng.snapshot("t")["value"] is None  # a bad sample has no value to show
