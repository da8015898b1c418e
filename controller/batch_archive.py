"""The batch archive: a local copy of every reading and event recorded under a batch.

The spool deletes what every sink acknowledged, but a batch record must be rebuildable
from local data for as long as the batch is kept, so every sample of a scan stamped with a
batch is also kept here (`<state>/batch_archive.sqlite3`, SQLite in WAL mode). `record`
and `record_event` only buffer; `commit` writes everything buffered in ONE transaction. A
failed commit (disk full) keeps every buffered row for the next commit and raises
`ArchiveWriteError` naming the file. Rows are normalised: a `series` row per (batch,
stream, tag, unit, config) and a narrow `samples` row per reading, keyed (series, t_ns)
without a rowid, so a repeated scan (a replay after a crash) is stored once.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal, NamedTuple

from drivers.sample import Scan

ARCHIVE_NAME = "batch_archive.sqlite3"
BUSY_TIMEOUT_S = 5.0  # a report reading while the daemon commits waits at most this

SCHEMA = """
CREATE TABLE IF NOT EXISTS series(
    id INTEGER PRIMARY KEY, batch TEXT NOT NULL, stream TEXT NOT NULL, tag TEXT NOT NULL,
    unit TEXT NOT NULL, config TEXT, UNIQUE(batch, stream, tag, unit, config));
CREATE TABLE IF NOT EXISTS samples(
    series INTEGER NOT NULL, t_ns INTEGER NOT NULL, value REAL, quality INTEGER NOT NULL,
    reason TEXT, PRIMARY KEY(series, t_ns)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events(
    id INTEGER PRIMARY KEY, batch TEXT NOT NULL, t_ns INTEGER NOT NULL, kind TEXT NOT NULL,
    stream TEXT NOT NULL, payload TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_batch ON events(batch, t_ns);
"""

SeriesKey = tuple[str, str, str, str, str | None]  # batch, stream, tag, unit, config
_Row = tuple[SeriesKey, int, float | None, int, str | None]
_Event = tuple[str, int, str, str, str]


class ArchiveWriteError(RuntimeError):
    """A commit failed; the rows stay buffered and the next commit retries them."""


class Series(NamedTuple):
    """One parameter of a batch: a stream's tag (a config change starts a new series)."""

    stream: str
    tag: str
    unit: str


class Event(NamedTuple):
    """An alarm transition or a data gap recorded under a batch."""

    t_ns: int
    kind: str
    stream: str
    payload: dict[str, object]


class BatchArchive:
    """One archive file: the daemon writes it, `cellfab report` reads it (WAL: both at once)."""

    def __init__(
        self,
        path: Path,
        *,
        readonly: bool = False,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ) -> None:
        self.path = path
        if readonly:
            uri = f"{path.resolve().as_uri()}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        else:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # commit may run in a worker thread (asyncio.to_thread); _commit_lock serialises
            self._db = sqlite3.connect(
                path, isolation_level=None, timeout=BUSY_TIMEOUT_S, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute(f"PRAGMA synchronous = {synchronous}")
            self._db.executescript(SCHEMA)
        self._ids: dict[SeriesKey, int] = {}
        self._rows: list[_Row] = []
        self._events: list[_Event] = []
        self._buffer_lock = threading.Lock()  # record() on the loop, commit() in a thread
        self._commit_lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Rows and events buffered and not yet committed (grows while commits fail)."""
        return len(self._rows) + len(self._events)

    def record(self, scan: Scan) -> None:
        """Buffer every sample of `scan` if it was taken under a batch; else nothing."""
        batch = scan.batch
        if batch is None:
            return
        t, stream, config = scan.t_scan_ns, scan.device, scan.config
        rows = [
            ((batch, stream, s.tag, s.unit, config), t, s.value, int(s.quality), s.reason)
            for s in scan.samples
        ]
        with self._buffer_lock:
            self._rows.extend(rows)

    def record_event(
        self, batch: str, t_ns: int, kind: str, stream: str, payload: Mapping[str, object]
    ) -> None:
        """Buffer an event ("alarm": a transition as the engine gives it, "gap": a data gap)."""
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
        with self._buffer_lock:
            self._events.append((batch, t_ns, kind, stream, text))

    def commit(self) -> int:
        """Write everything buffered in one transaction; returns the rows + events written.

        On failure the buffered rows are kept (ahead of anything buffered meanwhile) and
        ArchiveWriteError names the file and the cause. Safe to call from a worker thread
        while the event loop keeps recording.
        """
        with self._commit_lock:
            return self._commit()

    def _commit(self) -> int:
        with self._buffer_lock:
            rows, events = self._rows, self._events
            self._rows, self._events = [], []
        if not rows and not events:
            return 0
        try:
            new_ids = self._write(rows, events)
        except sqlite3.Error as exc:
            with self._buffer_lock:
                self._rows, self._events = rows + self._rows, events + self._events
            raise ArchiveWriteError(
                f"batch archive {self.path}: commit of {len(rows)} samples and "
                f"{len(events)} events failed ({exc}); they stay buffered for the next commit"
            ) from exc
        self._ids.update(new_ids)
        return len(rows) + len(events)

    def _write(self, rows: list[_Row], events: list[_Event]) -> dict[SeriesKey, int]:
        db = self._db
        new_ids: dict[SeriesKey, int] = {}
        db.execute("BEGIN IMMEDIATE")
        try:
            for key in {r[0] for r in rows} - self._ids.keys():
                new_ids[key] = self._series_id(key)
            ids = self._ids | new_ids
            db.executemany(
                "INSERT OR IGNORE INTO samples VALUES (?, ?, ?, ?, ?)",
                ((ids[k], t, v, q, why) for k, t, v, q, why in rows),
            )
            db.executemany(
                "INSERT INTO events(batch, t_ns, kind, stream, payload) VALUES (?, ?, ?, ?, ?)",
                events,
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return new_ids

    def _series_id(self, key: SeriesKey) -> int:
        batch, stream, tag, unit, config = key
        found = self._db.execute(
            "SELECT id FROM series WHERE batch = ? AND stream = ? AND tag = ? AND unit = ? "
            "AND config IS ?",
            key,
        ).fetchone()
        if found is not None:
            return int(found[0])
        cur = self._db.execute(
            "INSERT INTO series(batch, stream, tag, unit, config) VALUES (?, ?, ?, ?, ?)",
            (batch, stream, tag, unit, config),
        )
        if cur.lastrowid is None:  # pragma: no cover - an INSERT always sets it
            raise sqlite3.OperationalError("no rowid for a new series")
        return cur.lastrowid

    # --- queries the report uses -----------------------------------------------------

    def batches(self) -> list[str]:
        """Every batch with at least one committed reading or event."""
        rows = self._db.execute(
            "SELECT batch FROM series UNION SELECT batch FROM events ORDER BY 1"
        ).fetchall()
        return [r[0] for r in rows]

    def parameters(self, batch: str) -> list[Series]:
        """Every (stream, tag) recorded under `batch`, sorted, with its (last-sorting) unit."""
        rows = self._db.execute(
            "SELECT stream, tag, max(unit) FROM series WHERE batch = ? GROUP BY 1, 2 ORDER BY 1, 2",
            (batch,),
        ).fetchall()
        return [Series(*r) for r in rows]

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every query inside reads one committed state (one WAL read transaction): a
        report of a running batch is consistent with itself while the daemon writes on."""
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    def span(self, batch: str) -> tuple[int, int] | None:
        """First and last time of anything recorded under `batch` (None: nothing)."""
        row = self._db.execute(
            "SELECT min(t), max(t) FROM (SELECT min(s.t_ns) AS t FROM samples s JOIN series r "
            "ON r.id = s.series WHERE r.batch = ?1 UNION ALL SELECT max(s.t_ns) FROM samples s "
            "JOIN series r ON r.id = s.series WHERE r.batch = ?1 UNION ALL "
            "SELECT t_ns FROM events WHERE batch = ?1)",
            (batch,),
        ).fetchone()
        return None if row[0] is None else (int(row[0]), int(row[1]))

    def configs(self, batch: str) -> list[str]:
        """The config hashes stamped on the batch's readings, sorted."""
        rows = self._db.execute(
            "SELECT DISTINCT config FROM series WHERE batch = ? AND config IS NOT NULL ORDER BY 1",
            (batch,),
        ).fetchall()
        return [r[0] for r in rows]

    def samples(
        self, batch: str, stream: str, tag: str
    ) -> Iterator[tuple[int, float | None, int, str | None]]:
        """(t_ns, value, quality, reason) of one parameter, oldest first."""
        return iter(
            self._db.execute(
                "SELECT s.t_ns, s.value, s.quality, s.reason FROM samples s "
                "JOIN series r ON r.id = s.series "
                "WHERE r.batch = ? AND r.stream = ? AND r.tag = ? ORDER BY s.t_ns",
                (batch, stream, tag),
            )
        )

    def events(self, batch: str, kind: str | None = None) -> list[Event]:
        """The batch's events (of one kind), oldest first, in recording order at equal times."""
        sql = "SELECT t_ns, kind, stream, payload FROM events WHERE batch = ?"
        args: tuple[str, ...] = (batch,)
        if kind is not None:
            sql += " AND kind = ?"
            args = (batch, kind)
        rows = self._db.execute(sql + " ORDER BY t_ns, id", args).fetchall()
        return [Event(t, k, s, json.loads(p)) for t, k, s, p in rows]

    def close(self) -> None:
        """Close the file; what is still buffered is NOT written (call commit first)."""
        self._db.close()


def archive_path(state_dir: Path) -> Path:
    """Where the daemon keeps the archive: `<state.dir>/batch_archive.sqlite3`."""
    return state_dir / ARCHIVE_NAME
