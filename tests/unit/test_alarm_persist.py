"""Alarm states survive a restart: acks, latches, shelvings and out-of-service come back."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from controller.alarms import AlarmConfig, AlarmEngine, Cause, State
from controller.alarms.persist import load, read, restore, save

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


def test_a_restored_n_of_m_alarm_holds_until_its_window_proves_a_return(tmp_path: Path) -> None:
    """After a restart the window is empty: no sample, or too few below the level to outvote
    the counts lost with the restart, must hold the alarm; a full window returns it."""
    nm = {"kind": "n_of_m", "limit": 20.0, "window_n": 2, "window_m": 3}
    eng = engine(**nm)
    tick(eng, 1, 25.0)
    tick(eng, 2, 25.0)
    eng.ack("t", user="olga", t_ns=3 * NS)
    eng = restarted(eng, tmp_path / "alarms.json", 100.0, **nm)
    assert eng.state("t") == State.ACKED
    not_read = eng.tick(101, 101 * NS, np.array([np.nan]), np.array([False]))
    assert not_read == []  # no reading yet: holds
    assert tick(eng, 102, 1.0) == []  # 1 of 3 below: the 2 unseen could be counts
    assert tick(eng, 103, 1.0) == [(State.ACKED, State.NORMAL, Cause.RETURN)]


def test_a_restored_shelving_never_outlives_shelve_max_s(tmp_path: Path) -> None:
    """A wall clock behind at start (no RTC, NTP not yet synced) must not stretch a
    shelving beyond the alarm's maximum: what is left is capped at shelve_max_s."""
    eng = engine(shelve_max_s=3600)
    t0 = 1_800_000_000 * NS
    eng.shelve("t", duration_s=3600, reason="x", user="olga", now_s=0.0, t_ns=t0)
    save(eng, tmp_path / "alarms.json")
    eng = engine(shelve_max_s=3600)
    restore(eng, load(tmp_path / "alarms.json"), 0.0, t0 - 2 * 86400 * NS)  # 2 days behind
    assert eng.records[0].shelved_until_s == 3600.0
    assert tick(eng, 3599.0, HIGH) == []
    assert tick(eng, 3600.0, HIGH)[0][:2] == (State.SHELVED, State.UNACK)


def test_a_latched_alarm_under_a_mask_comes_back_latched(tmp_path: Path) -> None:
    """The state under a mask survives the restart: a suppressed or expired-shelved latched
    alarm still needs its ack and reset."""
    eng = engine(latch=True)
    tick(eng, 1, HIGH)
    tick(eng, 2, LOW)  # E
    eng.shelve("t", duration_s=10, reason="x", user="olga", now_s=3.0, t_ns=3 * NS)
    eng = restarted(eng, tmp_path / "alarms.json", 500.0, latch=True)  # expired while down
    assert eng.state("t") == State.LATCHED_UNACK


BAD_FILES = {
    "unknown state": '{"t": {"state": "latched"}, "u": {"state": "acknowledged"}}',
    "missing state": '{"t": {}, "u": {"state": "acknowledged"}}',
    "wrong type": '{"t": {"state": "normal", "t_state_ns": "x"}, "u": {"state": "acknowledged"}}',
    "null": "null",
    "array": "[]",
    "truncated": '{"t"',
    "empty": "",
    "not utf-8": b'{"t": "\xff"}',
}


def test_read_says_what_is_wrong_and_keeps_the_rest(tmp_path: Path) -> None:
    """Each bad entry is named; the good ones are still restorable."""
    for name, text in BAD_FILES.items():
        path = tmp_path / "alarms.json"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        good, wrong = read(path)
        assert wrong, name
        per_entry = isinstance(text, str) and '"u"' in text
        assert set(good) == ({"u"} if per_entry else set()), name
        assert wrong[0].startswith("t: ") == per_entry, name


def test_save_syncs_the_directory_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rename is durable only once its directory is synced: file, rename, then directory."""
    steps: list[str] = []
    real_fsync, real_replace = os.fsync, Path.replace

    def fsync(fd: int) -> None:
        steps.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(self: Path, target: Path) -> Path:
        steps.append("rename")
        return real_replace(self, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Path, "replace", replace)
    save(engine(), tmp_path / "alarms.json")
    assert steps == ["fsync file", "rename", "fsync dir"]
