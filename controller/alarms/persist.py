"""An engine's alarm states across a restart: what an operator did must not be forgotten.

A latched alarm waiting for its reset, an acknowledgement, a shelving with its expiry, an
alarm taken out of service for maintenance: after a restart each is as it was, and the
process conditions are re-evaluated from there. An alarm saved as active (unacknowledged or
acknowledged) starts with its condition active, so a condition that returned while the
daemon was down produces the return transition at the first tick instead of being lost.
Suppression by design is not saved: it is derived from the plant every tick.

A file that is not what `save` writes (hand-edited, from another version, damaged) must not
stop the daemon: `read` returns what can be restored and says what cannot; the caller logs
it and keeps the file aside (`set_aside`). The alarms that could not be read start from
normal: more alarms after the restart, never fewer.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from controller.alarms import states
from controller.alarms.engine import AlarmEngine, AlarmRefused, Record
from controller.alarms.states import State

SAVED = ("state", "t_state_ns", "t_active_ns", "t_ack_ns", "ack_user", "t_return_ns")
SHELF = ("shelved", "shelved_until_ns", "shelved_by", "shelve_reason")
OOS = ("out_of_service", "oos_by", "oos_reason")
ACTIVE = (State.UNACK, State.ACKED)
STATE_NAMES = frozenset(s.value for s in State)
PROCESS_NAMES = STATE_NAMES - {s.value for s in states.MASKS}
# what each saved key may hold: the types `export` writes (bool is not an int here)
TIMES = ("t_state_ns", "t_active_ns", "t_ack_ns", "t_return_ns", "shelved_until_ns")
TEXTS = ("ack_user", "shelved_by", "shelve_reason", "oos_by", "oos_reason")
FLAGS = ("shelved", "out_of_service")


def export(engine: AlarmEngine) -> dict[str, dict[str, Any]]:
    """Every alarm that is not plainly normal, by id, as JSON-able facts."""
    out = {}
    for alarm, rec in zip(engine.ids, engine.records, strict=True):
        if rec.state == State.NORMAL and not rec.shelved and not rec.out_of_service:
            continue
        out[alarm] = {k: getattr(rec, k) for k in (*SAVED, *SHELF, *OOS)}
        out[alarm]["state"] = str(rec.state)
        out[alarm]["under"] = str(rec.under)
    return out


def problem(facts: object) -> str | None:
    """What makes one saved entry unrestorable, or None when it is fine."""
    if not isinstance(facts, dict):
        return f"not an object but {json.dumps(facts)[:40]}"
    state = facts.get("state")
    if state not in STATE_NAMES:
        return "no state" if state is None else f"unknown state {json.dumps(state)[:40]}"
    if facts.get("under", "normal") not in PROCESS_NAMES:
        return f"unknown state under the masks {json.dumps(facts['under'])[:40]}"
    return _type_problem(facts)


def _type_problem(facts: dict[str, Any]) -> str | None:
    for key in TIMES:
        value = facts.get(key)
        if value is not None and (type(value) is not int or value < 0):
            return f"{key} is not a time in ns: {json.dumps(value)[:40]}"
    for key in TEXTS:
        if not isinstance(facts.get(key, ""), str | None):
            return f"{key} is not text"
    for key in FLAGS:
        if not isinstance(facts.get(key, False), bool):
            return f"{key} is not true or false"
    return None


def read(path: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """(the restorable entries by id, what is wrong with the rest of the file).

    No file yet is nothing to restore and nothing wrong. Raises OSError only when the file
    exists but cannot be read.
    """
    if not path.exists():
        return {}, []
    raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError as exc:  # truncated, empty, not JSON, not UTF-8 text
        return {}, [f"not JSON ({exc})"]
    if not isinstance(data, dict):
        return {}, [f"not an object of alarms but {json.dumps(data)[:40]}"]
    good: dict[str, dict[str, Any]] = {}
    wrong: list[str] = []
    for alarm, facts in data.items():
        why = problem(facts)
        if why is None:
            good[alarm] = facts
        else:
            wrong.append(f"{alarm}: {why}")
    return good, wrong


def load(path: Path) -> dict[str, dict[str, Any]]:
    """The saved states, or nothing when there is no file yet; ValueError if any is wrong."""
    good, wrong = read(path)
    if wrong:
        raise ValueError("; ".join(wrong))
    return good


def set_aside(path: Path, now_ns: int) -> Path:
    """Rename a file that could not be (fully) restored to `<name>.bad-<UTC>`: the evidence
    is kept and the next save starts a clean file. Returns the new path."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now_ns // 1_000_000_000))
    aside = path.with_name(f"{path.name}.bad-{stamp}")
    k = 1
    while aside.exists():  # two bad starts within a second: keep both
        k += 1
        aside = path.with_name(f"{path.name}.bad-{stamp}-{k}")
    path.replace(aside)
    fsync_dir(path.parent)
    return aside


def restore(
    engine: AlarmEngine, saved: dict[str, dict[str, Any]], now_s: float, now_ns: int
) -> int:
    """Put saved facts back into a fresh engine; returns how many.

    Unknown ids (alarms no longer configured) and entries `problem` refuses are skipped.
    """
    restored = 0
    for alarm, facts in saved.items():
        try:
            i = engine.index(alarm)
        except AlarmRefused:  # an alarm no longer configured
            continue
        if problem(facts) is not None:
            continue
        engine.records[i] = rec = _record(facts)
        cfg = engine.table.configs[i]
        until = rec.shelved_until_ns
        if rec.shelved and until is not None and until > now_ns:
            # a wall clock behind at start must not stretch a shelving past its maximum
            left_s = min((until - now_ns) / 1e9, cfg.shelve_max_s)
            rec.shelved_until_s = now_s + left_s
            rec.shelved_until_ns = now_ns + round(left_s * 1e9)
        elif rec.shelved:  # expired while the daemon was down: re-evaluated now
            rec.shelved, rec.shelved_until_ns, rec.shelved_by, rec.shelve_reason = (
                False,
                None,
                None,
                None,
            )
            rec.shelved_until_s = math.inf
        rec.state = _shown(rec, cfg.latch)
        if rec.state in ACTIVE:
            engine.conditions.active[i] = engine.conditions.raw[i] = True
            engine.conditions.since_s[i] = now_s
        restored += 1
    engine.reschedule_expiry()
    return restored


def _record(facts: dict[str, Any]) -> Record:
    rec = Record()
    for key in (*SAVED, *SHELF, *OOS):
        setattr(rec, key, facts.get(key))
    rec.state = State(facts["state"])
    rec.under = State(facts.get("under", "normal"))
    rec.shelved, rec.out_of_service = bool(rec.shelved), bool(rec.out_of_service)
    rec.suppressed = False
    return rec


def _shown(rec: Record, latch: bool) -> State:
    """The state to start in, from the saved state and masks.

    Suppression is derived again at the first tick, so a suppressed alarm starts in the
    state under it. A shelving that expired while the daemon was down is lifted as
    `states.settle` would, the condition taken as it was under the mask (active → B).
    """
    if rec.state not in states.MASKS and (rec.out_of_service or rec.shelved):
        rec.under = rec.state  # a mask flag without its state: keep what it lies over
    if rec.out_of_service:
        return State.OUT_OF_SERVICE
    if rec.shelved:
        return State.SHELVED
    if rec.state == State.SUPPRESSED:
        return rec.under
    if rec.state in states.MASKS:
        return states.settle(False, False, False, rec.under in ACTIVE, rec.under, latch)
    return rec.state


def save(engine: AlarmEngine, path: Path) -> None:
    """Write the states atomically (temp file, fsync, rename, fsync of the directory)."""
    write_atomic(path, export(engine))


def write_atomic(path: Path, doc: object) -> None:
    """`doc` as JSON in `path`, whole or not at all, and still there after a power cut."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(doc, fh, separators=(",", ":"))
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (the rename lives in the directory's data)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # some file systems refuse fsync on a directory
            os.fsync(fd)
    finally:
        os.close(fd)
