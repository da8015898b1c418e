"""A sink's open outage, kept in the spool so that a restart does not forget it.

A sink that cannot reach its server opens an outage span; when it delivers again the
span goes on the record as a gap "delivered late". Held only in memory, a span open when
the daemon died was never recorded: the dashboards had seen nothing for that time and
the record did not say why. The open span lives in two columns of the sink's cursor row,
written with the next commit; closing it clears them in the same transaction that records
its gap. Columns, not a table of its own: a table costs two pages of the disk budget.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OpenOutage:
    """Since when a sink has not reached its server, and the latest reason."""

    since_ns: int
    reason: str


def add_columns(db: sqlite3.Connection) -> None:
    """Give a cursors table from before outages were kept its two columns."""
    columns = {r[1] for r in db.execute("PRAGMA table_info(cursors)")}
    if "outage_since_ns" not in columns:
        db.execute("ALTER TABLE cursors ADD COLUMN outage_since_ns INTEGER")
        db.execute("ALTER TABLE cursors ADD COLUMN outage_reason TEXT")


def load(db: sqlite3.Connection) -> dict[str, OpenOutage]:
    """The spans open when the spool was last committed, by sink (cursor name)."""
    rows = db.execute(
        "SELECT name, outage_since_ns, outage_reason FROM cursors WHERE outage_since_ns IS NOT NULL"
    ).fetchall()
    return {name: OpenOutage(int(since), str(reason)) for name, since, reason in rows}


def write(db: sqlite3.Connection, pending: dict[str, OpenOutage | None]) -> None:
    """Inside the commit's transaction: open, update or close (None) each pending span."""
    db.executemany(
        "UPDATE cursors SET outage_since_ns = ?, outage_reason = ? WHERE name = ?",
        [
            (None, None, name) if o is None else (o.since_ns, o.reason, name)
            for name, o in pending.items()
        ],
    )
