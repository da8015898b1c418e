"""An engine's alarm states across a restart: what an operator did must not be forgotten.

A latched alarm waiting for its reset, an acknowledgement, a shelving with its expiry, an
alarm taken out of service for maintenance: after a restart each is as it was, and the
process conditions are re-evaluated from there. An alarm saved as active (unacknowledged or
acknowledged) starts with its condition active, so a condition that returned while the
daemon was down produces the return transition at the first tick instead of being lost.
Suppression by design is not saved: it is derived from the plant every tick.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from controller.alarms.engine import AlarmEngine, AlarmRefused, Record
from controller.alarms.states import State

SAVED = ("state", "t_state_ns", "t_active_ns", "t_ack_ns", "ack_user", "t_return_ns")
SHELF = ("shelved", "shelved_until_ns", "shelved_by", "shelve_reason")
OOS = ("out_of_service", "oos_by", "oos_reason")
ACTIVE = (State.UNACK, State.ACKED)


def export(engine: AlarmEngine) -> dict[str, dict[str, Any]]:
    """Every alarm that is not plainly normal, by id, as JSON-able facts."""
    out = {}
    for alarm, rec in zip(engine.ids, engine.records, strict=True):
        if rec.state == State.NORMAL and not rec.shelved and not rec.out_of_service:
            continue
        out[alarm] = {k: getattr(rec, k) for k in (*SAVED, *SHELF, *OOS)}
        out[alarm]["state"] = str(rec.state)
    return out


def restore(
    engine: AlarmEngine, saved: dict[str, dict[str, Any]], now_s: float, now_ns: int
) -> int:
    """Put saved facts back into a fresh engine (unknown ids are ignored); returns how many."""
    restored = 0
    for alarm, facts in saved.items():
        try:
            i = engine.index(alarm)
        except AlarmRefused:  # an alarm no longer configured
            continue
        rec = Record()
        for key in (*SAVED, *SHELF, *OOS):
            setattr(rec, key, facts.get(key))
        rec.state = State(facts["state"])
        rec.shelved, rec.out_of_service = bool(rec.shelved), bool(rec.out_of_service)
        rec.suppressed = False
        until = rec.shelved_until_ns
        if rec.shelved and until is not None and until > now_ns:
            rec.shelved_until_s = now_s + (until - now_ns) / 1e9
        elif rec.shelved:  # expired while the daemon was down: re-evaluated now
            rec.shelved, rec.shelved_until_ns, rec.shelved_by, rec.shelve_reason = (
                False,
                None,
                None,
                None,
            )
            rec.shelved_until_s = math.inf
            if rec.state == State.SHELVED:
                rec.state = State.NORMAL
        if rec.state == State.SUPPRESSED:
            rec.state = State.NORMAL  # derived again at the first tick
        engine.records[i] = rec
        if rec.state in ACTIVE:
            engine.conditions.active[i] = engine.conditions.raw[i] = True
            engine.conditions.since_s[i] = now_s
        restored += 1
    engine.reschedule_expiry()
    return restored


def save(engine: AlarmEngine, path: Path) -> None:
    """Write the states atomically (temp file, fsync, rename)."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(export(engine), fh, separators=(",", ":"))
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def load(path: Path) -> dict[str, dict[str, Any]]:
    """The saved states, or nothing when there is no file yet."""
    if not path.exists():
        return {}
    data: dict[str, dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    return data
