"""Events (alarm transitions, audit records, ...) as a durable stream beside scans and gaps.

An event is small, rare and GMP-relevant, so the spool never drops one for its budget: it
is committed in the same transaction as the scans of its tick, delivered to every cursor
at least once like a scan, and deleted only once every cursor acked it. The body is stored
as JSON text, so whatever a sink forwards is what `json.loads` gives back.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection
from typing import NamedTuple, TypeAlias

JSON: TypeAlias = "str | int | float | bool | list[JSON] | dict[str, JSON] | None"

EVENTS_AFTER = "SELECT id, t_ns, kind, key, body FROM events WHERE id > ? ORDER BY id LIMIT ?"


class Event(NamedTuple):
    """Something that happened at `t_ns` (UTC): `kind` e.g. "alarm", `key` e.g. the alarm id."""

    t_ns: int
    kind: str
    key: str
    body: dict[str, JSON]

    def row(self) -> tuple[int, str, str, str]:
        """The columns of the `events` table after the id; raises TypeError if not JSON."""
        return (self.t_ns, self.kind, self.key, json.dumps(self.body, separators=(",", ":")))

    @classmethod
    def from_row(cls, row: tuple[int, str, str, str]) -> Event:
        """Inverse of `row`."""
        t_ns, kind, key, body = row
        return cls(t_ns, kind, key, json.loads(body))


def event_size(row: tuple[int, str, str, str]) -> int:
    """Bytes an event row adds to the spool (its text columns plus a fixed row overhead)."""
    return 48 + len(row[1]) + len(row[2]) + len(row[3])


def events_after(db: sqlite3.Connection, event_id: int, limit: int) -> list[tuple[int, Event]]:
    """Up to `limit` committed events with an id above `event_id`, oldest first."""
    if limit <= 0:
        return []
    return [(r[0], Event.from_row(r[1:])) for r in db.execute(EVENTS_AFTER, (event_id, limit))]


def delete_acked_events(db: sqlite3.Connection, sinks: Collection[str] | None = None) -> None:
    """Delete the events every cursor of `sinks` acked (None: every stored cursor; none
    without a cursor: the spool is the store)."""
    names = None if sinks is None else json.dumps(sorted(sinks))
    db.execute(
        "DELETE FROM events WHERE id <= (SELECT min(event_acked) FROM cursors"
        " WHERE ? IS NULL OR name IN (SELECT value FROM json_each(?)))",
        (names, names),
    )


def last_event_id(db: sqlite3.Connection) -> int:
    """The newest event id ever committed (kept in meta: ids never restart after cleanup)."""
    (held,) = db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()
    row = db.execute("SELECT value FROM meta WHERE key = 'last_event_id'").fetchone()
    return max(int(held), int(row[0]) if row else 0)


def oldest_event_id(db: sqlite3.Connection) -> int | None:
    """The oldest event still held (None when there is none)."""
    (low,) = db.execute("SELECT min(id) FROM events").fetchone()
    return None if low is None else int(low)


def add_event_column(db: sqlite3.Connection) -> None:
    """Give a cursors table from before events its `event_acked` column (dev databases)."""
    columns = {r[1] for r in db.execute("PRAGMA table_info(cursors)")}
    if "event_acked" not in columns:
        db.execute("ALTER TABLE cursors ADD COLUMN event_acked INTEGER NOT NULL DEFAULT 0")
