"""The spool's disk budget: how full it is, and what to drop when it is full.

The policy is explicit and never silent: when a commit would pass the budget, the oldest
scans of devices that are not GMP-critical are deleted first and the span is recorded as a
gap; GMP-critical scans are never deleted by the budget. When only GMP data would remain,
`SpoolFull` is raised at `append`, before the scan is taken, so the caller records the
refusal as a gap and an alarm.

Accounting: `used` is what SQLite's pages hold (page count minus free pages, measured after
every commit); a pending scan counts its blob plus `ROW_OVERHEAD`. The two differ by the
page fill factor, so the budget is kept to within a few per cent, plus the WAL (bounded by
the checkpoint cadence and `journal_size_limit`).
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Callable, Collection
from typing import Literal, NamedTuple

ROW_OVERHEAD = 48  # bytes per scan row beyond its blob: key, columns, cell header, index entry
ALARM_ON = 0.8
DROP_HEADROOM = 0.05  # a drop frees 5 % more than needed: one gap per episode, not per commit
ALARM_OFF = 0.75  # hysteresis: a spool hovering at 80 % raises one alarm, not one per commit
BUDGET_CAUSE = "spool budget"
CAUSE_MAX = 200  # characters of a gap's cause: a reason is a line, not an HTML error page


def one_line(text: str, limit: int = CAUSE_MAX) -> str:
    """`text` on one line (every run of whitespace, line breaks included, becomes one space)
    and at most `limit` characters: a line break in a cause cannot be written as a tag."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class SpoolFull(Exception):
    """The scan was not taken: the budget holds only GMP-critical data, or commits fail."""


class Gap(NamedTuple):
    """A span of time for which some devices' data are missing, and why."""

    start_ns: int
    end_ns: int
    cause: str
    devices: tuple[str, ...]
    scans: int = 0  # scans known to be missing (0 when unknown, e.g. daemon down)

    def single_line(self) -> Gap:
        """This gap with its cause on one bounded line (see `one_line`)."""
        cause = one_line(self.cause)
        return self if cause == self.cause else self._replace(cause=cause)

    def joins(self, other: Gap) -> bool:
        """Whether one gap can stand for both without claiming data missing that were not:
        the same cause, the same devices, and spans that overlap or touch."""
        return (
            self.cause == other.cause
            and sorted(self.devices) == sorted(other.devices)
            and self.start_ns <= other.end_ns
            and other.start_ns <= self.end_ns
        )

    def merged(self, other: Gap) -> Gap:
        """One gap covering both (they `join`)."""
        return Gap(
            min(self.start_ns, other.start_ns),
            max(self.end_ns, other.end_ns),
            self.cause,
            tuple(sorted({*self.devices, *other.devices})),
            self.scans + other.scans,
        )

    def row(self) -> tuple[int, int, str, str, int]:
        """The columns of the `gaps` table (devices as a JSON list)."""
        return (self.start_ns, self.end_ns, self.cause, json.dumps(self.devices), self.scans)

    @classmethod
    def from_row(cls, row: tuple[int, int, str, str, int]) -> Gap:
        """Inverse of `row`."""
        start, end, cause, devices, scans = row
        return cls(start, end, cause, tuple(json.loads(devices)), scans)


def budget_hours_to_bytes(rate_scans_per_s: float, mean_scan_bytes: float, hours: float) -> int:
    """Disk bytes that hold `hours` of spool at a scan rate (blob + row overhead per scan)."""
    if min(rate_scans_per_s, mean_scan_bytes, hours) < 0:
        raise ValueError("rate, scan size and hours must not be negative")
    return math.ceil(rate_scans_per_s * 3600 * hours * (mean_scan_bytes + ROW_OVERHEAD))


class Budget:
    """Bytes used, pending and droppable against a limit; raises the 80 % alarm on change."""

    def __init__(
        self, limit_bytes: int, on_alarm: Callable[[bool, float], None] | None = None
    ) -> None:
        if limit_bytes <= 0:
            raise ValueError("spool budget must be positive")
        self.limit = limit_bytes
        self.used = 0  # bytes in SQLite pages that hold data
        self.pending = 0  # bytes buffered for the next commit
        self.droppable = 0  # bytes of non-GMP scans on disk (what the policy may delete)
        self.alarm = False
        self._on_alarm = on_alarm

    @property
    def fraction(self) -> float:
        """Share of the budget used, counting what is buffered."""
        return (self.used + self.pending) / self.limit

    def admit(self, size: int) -> bool:
        """Whether a scan of `size` bytes fits, possibly after dropping non-GMP scans."""
        excess = self.used + self.pending + size - self.limit
        return excess <= 0 or excess <= self.droppable

    def excess(self) -> int:
        """Bytes to drop before the pending scans can be committed (0: none)."""
        return max(0, self.used + self.pending - self.limit)

    def headroom(self) -> int:
        """Extra bytes a budget drop frees beyond the excess."""
        return int(self.limit * DROP_HEADROOM)

    def measure(self, db: sqlite3.Connection) -> None:
        """Re-read the page counts after a commit and raise or clear the alarm.

        All three are read before anything changes: a read that fails (sqlite3.Error) leaves
        the budget as it was, never half updated.
        """
        (pages,) = db.execute("PRAGMA page_count").fetchone()
        (free,) = db.execute("PRAGMA freelist_count").fetchone()
        (size,) = db.execute("PRAGMA page_size").fetchone()
        self.used = (pages - free) * size
        self.check_alarm()

    def check_alarm(self) -> None:
        """Call `on_alarm(active, fraction)` when the alarm state changes."""
        fraction = self.fraction
        active = fraction >= ALARM_ON or (self.alarm and fraction >= ALARM_OFF)
        if active != self.alarm:
            self.alarm = active
            if self._on_alarm is not None:
                self._on_alarm(active, fraction)


def drop_oldest(db: sqlite3.Connection, need: int, chunk: int = 512) -> tuple[int, Gap | None]:
    """Delete the oldest non-GMP scans until `need` bytes are freed; the bytes and the gap.

    Runs inside the caller's transaction, so the deletion and its gap row commit together.
    """
    freed = 0
    count = 0
    last = 0
    t_min, t_max = math.inf, -math.inf
    devices: set[str] = set()
    while freed < need:
        rows = db.execute(
            "SELECT seq, t_ns, device, length(blob) FROM scans_other WHERE seq > ?"
            " ORDER BY seq LIMIT ?",
            (last, chunk),
        ).fetchall()
        if not rows:
            break
        for seq, t_ns, device, size in rows:
            freed += size + ROW_OVERHEAD
            count += 1
            last = seq
            t_min, t_max = min(t_min, t_ns), max(t_max, t_ns)
            devices.add(device)
            if freed >= need:
                break
    if count == 0:
        return 0, None
    db.execute("DELETE FROM scans_other WHERE seq <= ?", (last,))
    gap = Gap(int(t_min), int(t_max), BUDGET_CAUSE, tuple(sorted(devices)), count)
    db.execute(
        "INSERT INTO gaps (start_ns, end_ns, cause, devices, scans) VALUES (?, ?, ?, ?, ?)",
        gap.row(),
    )
    return freed, gap


def delete_acked(
    db: sqlite3.Connection, chunk: int, sinks: Collection[str] | None = None
) -> tuple[int, int, bool]:
    """Delete up to `chunk` scans every cursor of `sinks` acked: non-GMP bytes freed, up to
    which seq, and whether more are left.

    Retention is "until every configured sink has it" (`sinks`: their cursor names; None:
    every stored cursor). A cursor of a sink removed from the config must not hold GMP scans
    until the budget refuses live ones. A chunk per commit keeps a long backlog's cleanup
    from stalling a tick. With no cursor at all the spool is the store.
    """
    (low,) = db.execute(
        "SELECT min(acked) FROM cursors"
        " WHERE ? IS NULL OR name IN (SELECT value FROM json_each(?))",
        _names(sinks),
    ).fetchone()
    if low is None:
        return 0, 0, False
    first = seq_edge(db, "min")
    if first is None or first > low:
        return 0, 0, False
    upto = min(low, first + chunk - 1)
    (freed,) = db.execute(
        "SELECT coalesce(sum(length(blob)), 0) + count(*) * ? FROM scans_other WHERE seq <= ?",
        (ROW_OVERHEAD, upto),
    ).fetchone()
    db.execute("DELETE FROM scans_gmp WHERE seq <= ?", (upto,))
    db.execute("DELETE FROM scans_other WHERE seq <= ?", (upto,))
    return int(freed), upto, upto < low


def _names(sinks: Collection[str] | None) -> tuple[str | None, str | None]:
    """The two parameters of a "every cursor, or only these" filter."""
    names = None if sinks is None else json.dumps(sorted(sinks))
    return names, names


def is_gmp(stream: str, gmp: Collection[str]) -> bool:
    """A GMP device's stream, or a stream of one (`br-1.temp`, a loop of `br-1`)."""
    return stream in gmp or any(stream.startswith(f"{name}.") for name in gmp)


# A stream named in the GMP set, or `<name>.<anything>`: the SQL twin of `is_gmp`.
_GMP_SQL = (
    "EXISTS (SELECT 1 FROM json_each(?) WHERE device = value"
    " OR substr(device, 1, length(value) + 1) = value || '.')"
)


def mark_gmp(db: sqlite3.Connection, gmp: frozenset[str]) -> int:
    """Apply today's GMP set to the scans held (the config may have changed); droppable bytes."""
    names = json.dumps(sorted(gmp))
    db.execute("BEGIN IMMEDIATE")
    moves = (  # (copy, delete) per direction; table names are constants, not input
        (
            f"INSERT INTO scans_other SELECT * FROM scans_gmp WHERE NOT {_GMP_SQL}",  # noqa: S608
            f"DELETE FROM scans_gmp WHERE NOT {_GMP_SQL}",  # noqa: S608
        ),
        (
            f"INSERT INTO scans_gmp SELECT * FROM scans_other WHERE {_GMP_SQL}",  # noqa: S608
            f"DELETE FROM scans_other WHERE {_GMP_SQL}",  # noqa: S608
        ),
    )
    for copy, delete in moves:
        db.execute(copy, (names,))
        db.execute(delete, (names,))
    db.execute("COMMIT")
    (droppable,) = db.execute(
        "SELECT coalesce(sum(length(blob)), 0) + count(*) * ? FROM scans_other",
        (ROW_OVERHEAD,),
    ).fetchone()
    return int(droppable)


def seq_edge(db: sqlite3.Connection, fn: Literal["min", "max"]) -> int | None:
    """The lowest or highest seq held in either scan table (None when both are empty)."""
    (gmp,) = db.execute(f"SELECT {fn}(seq) FROM scans_gmp").fetchone()  # noqa: S608
    (other,) = db.execute(f"SELECT {fn}(seq) FROM scans_other").fetchone()  # noqa: S608
    found = [int(x) for x in (gmp, other) if x is not None]
    if not found:
        return None
    return min(found) if fn == "min" else max(found)


def mean_scan_bytes(n_tags: int) -> int:
    """Packed size of a scan of `n_tags` good samples (spool_codec: 12-byte header, 9 a tag)."""
    return 12 + 9 * n_tags
