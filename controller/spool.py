"""The durable write-ahead spool between the pollers and the sinks (replaces the Journal).

Same interface as `controller.journal.Journal` (append / cursor / peek / ack / wait /
changed / close), backed by SQLite in WAL mode so that a reading is on disk before any
sink can see it: `append` only buffers, `commit` writes everything buffered in ONE
transaction (one row per scan, see spool_codec), and cursors only ever see committed
sequence numbers. Cursor positions are persisted in the same transactions (batched, not one
fsync per ack), so after a crash every sink resumes where it last acked: delivery is
at-least-once. Scans every configured sink acked are deleted a chunk per commit; a database
error (full disk, I/O, a corrupt file) is rolled back and reported as `failing`, never
raised into the flusher or a sink. The disk budget and its drop policy live in
spool_budget. Gaps and events (spool_events) are two more streams with their own
per-cursor positions, written in the same transactions and never dropped by the budget.
docs/spool.md has the guarantees and the numbers.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import sqlite3
import threading
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Literal, NamedTuple

from controller import spool_outages
from controller.cancel import wait_at_most
from controller.errors import RefusedToStart
from controller.spool_budget import (
    ROW_OVERHEAD,
    Budget,
    Gap,
    SpoolFull,
    delete_acked,
    drop_oldest,
    is_gmp,
    mark_gmp,
    seq_edge,
)
from controller.spool_codec import READ, SCHEMA, Layout, decode, pack
from controller.spool_cursor import SpoolCursor
from controller.spool_events import (
    Event,
    add_event_column,
    delete_acked_events,
    event_size,
    events_after,
    last_event_id,
    oldest_event_id,
)
from controller.spool_health import SpoolHealth
from controller.spool_outages import OpenOutage
from drivers.sample import Scan, utc_now_ns

__all__ = ["Event", "Gap", "Spool", "SpoolCursor", "SpoolFull", "SpoolLocked"]

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 200  # the only other user is our checkpointer (and a backup tool)
WAL_LIMIT_BYTES = 8 << 20  # the WAL is truncated back to this after a checkpoint


class _Outcome(NamedTuple):
    """What a commit's transaction did: newest gap id, non-GMP bytes deleted, budget gap."""

    gap_id: int
    freed: int
    gap: Gap | None
    retired_upto: int  # scans up to here were deleted: every cursor had them
    cleanup_left: bool  # more acked scans to delete than one chunk


class SpoolLocked(RefusedToStart):
    """Another process has this spool open: two writers would number scans twice."""


class Spool:
    """Append-only, durable, ordered scans with one persistent cursor per sink."""

    def __init__(
        self,
        path: Path,
        *,
        budget_bytes: int,
        gmp_devices: Iterable[str] = (),
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        max_buffered_scans: int = 100_000,
        cache_scans: int = 4096,
        cleanup_chunk: int = 2000,
        on_alarm: Callable[[bool, float], None] | None = None,
    ) -> None:
        self.path = path
        self._lock = _lock(path)
        self._gmp = frozenset(gmp_devices)
        self._gmp_of: dict[str, bool] = {}  # stream -> GMP (a device's or one of its loops)
        self._max_buffered = max_buffered_scans
        self._cleanup_chunk = cleanup_chunk
        self.budget = Budget(budget_bytes, on_alarm)
        self._db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        self._checkpointer: sqlite3.Connection | None = None
        self._configure(self._db, synchronous)
        self._db.executescript(SCHEMA)
        add_event_column(self._db)
        spool_outages.add_columns(self._db)
        self._pending: list[tuple[int, int, str, int, int, bytes, str | None, str | None]] = []
        self._pending_scans: list[Scan] = []
        self._pending_gaps: list[Gap] = []
        self._pending_events: list[tuple[int, int, str, str, str]] = []  # id + Event.row()
        self._pending_outages: dict[str, OpenOutage | None] = {}  # sink -> span, None: closed
        self._new_layouts: list[tuple[int, str, str]] = []
        self._cache: deque[tuple[int, Scan]] = deque(maxlen=cache_scans)
        self._cursors: dict[str, SpoolCursor] = {}
        self._changed = asyncio.Event()
        self._dirty = asyncio.Event()
        self._closed = False
        self.health = SpoolHealth(path)  # what fails now: commits, reads, checkpoints
        self._orphans_checked: frozenset[str] = frozenset()
        self._orphans_named: set[str] = set()
        self._db_open = True
        self._closing = asyncio.Event()
        self._checkpoint_lock = threading.Lock()
        self._cleanup_left = False
        self.dropped = 0  # scans deleted by the budget policy (each span is a gap)
        self.commits = 0
        self.checkpoints = 0  # completed by the worker thread: each one synced the WAL
        self._load()

    # --- the Journal interface -------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once no more scans will be appended (shutdown)."""
        return self._closed

    @property
    def last_seq(self) -> int:
        """Sequence number of the newest scan appended (committed or still buffered)."""
        return self._next_seq - 1

    @property
    def committed_seq(self) -> int:
        """Sequence number of the newest scan on disk: what cursors can see."""
        return self._committed

    def cursor(self, name: str) -> SpoolCursor:
        """This consumer's cursor: where it last acked, or the oldest scan held if new."""
        if name in self._cursors:
            raise ValueError(f"spool cursor {name!r} exists already")
        row = self._db.execute(
            "SELECT acked, gap_acked, event_acked FROM cursors WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            oldest = seq_edge(self._db, "min")
            first_event = oldest_event_id(self._db)
            row = (
                self._committed if oldest is None else oldest - 1,
                0,
                self._last_event if first_event is None else first_event - 1,
            )
            self._db.execute(
                "INSERT INTO cursors (name, acked, gap_acked, event_acked) VALUES (?, ?, ?, ?)",
                (name, *row),
            )
        cur = SpoolCursor(self, name, *row)
        self._cursors[name] = cur
        return cur

    def forget_cursor(self, name: str) -> None:
        """Stop keeping scans for a sink that is no longer configured."""
        self._cursors.pop(name, None)
        self._db.execute("DELETE FROM cursors WHERE name = ?", (name,))

    def cursor_names(self) -> list[str]:
        """Every persisted cursor, opened in this run or not.

        Only the cursors opened in this run (the configured sinks) hold scans and events
        back; with none opened, every stored one does (a tool reading the file deletes
        nothing).
        """
        return [n for (n,) in self._db.execute("SELECT name FROM cursors ORDER BY name")]

    def append(self, scan: Scan) -> int:
        """Buffer a scan for the next commit; returns its sequence number.

        Raises SpoolFull (and takes nothing) when the budget holds only GMP data or the
        memory buffer is full because commits keep failing.
        """
        if self._closed:
            raise RuntimeError("spool is closed")
        if len(self._pending) >= self._max_buffered:
            raise SpoolFull(
                f"spool {self.path}: {len(self._pending)} scans buffered and commits failing"
            )
        layout, blob = pack(scan)
        size = len(blob) + ROW_OVERHEAD
        if not self.budget.admit(size):
            self.budget.check_alarm()
            raise SpoolFull(f"spool {self.path}: budget full of GMP-critical data")
        seq = self._next_seq
        self._next_seq += 1
        keep = self._gmp_of.get(scan.device)
        if keep is None:
            keep = self._gmp_of[scan.device] = is_gmp(scan.device, self._gmp)
        self._pending.append(
            (
                seq,
                scan.t_scan_ns,
                scan.device,
                self._layout_id(layout),
                int(keep),
                blob,
                scan.batch,
                scan.config,
            )
        )
        self._pending_scans.append(scan)
        self.budget.pending += size
        self._dirty.set()
        return seq

    def record_gap(self, gap: Gap) -> None:
        """Record missing data; merged with a buffered gap it `joins` (same cause, same
        devices, overlapping or touching spans), so a merge never claims more missing.

        The cause is made one bounded line here: every gap reaches line protocol as a tag.
        """
        gap = gap.single_line()
        for i, old in enumerate(self._pending_gaps):
            if old.joins(gap):
                self._pending_gaps[i] = old.merged(gap)
                break
        else:
            self._pending_gaps.append(gap)
        self._dirty.set()

    def record_event(self, event: Event) -> None:
        """Buffer an event for the next commit; never refused or dropped by the budget.

        The body is encoded here, so a body that is not JSON raises TypeError at the caller.
        Taken after `close` too (an audit record of the shutdown): committed at once then,
        as there is no flusher, so the draining sinks still get it.
        """
        if not self._db_open:
            raise RuntimeError(f"spool {self.path} is shut down")
        row = event.row()
        self._pending_events.append((self._next_event, *row))
        self._next_event += 1
        self.budget.pending += event_size(row)
        if self._closed:
            self.commit()
        else:
            self._dirty.set()

    @property
    def last_event_id(self) -> int:
        """Id of the newest committed event (0 before the first)."""
        return self._last_event

    def events_after(self, event_id: int, limit: int) -> list[tuple[int, Event]]:
        """Up to `limit` committed events with an id above `event_id`, oldest first.

        [] when the file cannot be read (logged, `failing`): the sink retries later.
        """
        try:
            out = events_after(self._db, event_id, limit)
        except sqlite3.DatabaseError as exc:
            self.health.read_failed("events", exc)
            return []
        self.health.read_ok()
        return out

    def gaps(self, since_ns: int = 0) -> list[Gap]:
        """Committed gaps that end at or after `since_ns`, oldest first."""
        rows = self._db.execute(
            "SELECT start_ns, end_ns, cause, devices, scans FROM gaps WHERE end_ns >= ?"
            " ORDER BY id",
            (since_ns,),
        )
        return [Gap.from_row(r) for r in rows]

    def close(self) -> None:
        """No more appends: commit what is buffered; cursors drain, then see the end."""
        if not self._closed:
            self.commit()
            self._closed = True
        self._closing.set()
        self._dirty.set()
        self._wake()

    async def changed(self) -> None:
        """Wait for the next commit or the close."""
        await self._changed.wait()

    def items_after(self, seq: int, limit: int) -> list[tuple[int, Scan]]:
        """Up to `limit` committed scans above `seq`, oldest first (the cache, else disk).

        [] when the file cannot be read (logged, `failing`): the sink retries later.
        """
        if seq >= self._committed or limit <= 0:
            return []
        if self._cache and self._cache[0][0] <= seq + 1:
            start = seq + 1 - self._cache[0][0]
            return [self._cache[i] for i in range(start, min(len(self._cache), start + limit))]
        try:
            rows = self._db.execute(READ, (seq, self._committed, limit)).fetchall()
        except sqlite3.DatabaseError as exc:
            self.health.read_failed("scans", exc)
            return []
        self.health.read_ok()
        out = []
        for s, d, t, lay, b, batch, config in rows:
            scan = decode(d, t, self._layouts[lay], b)
            if batch is not None or config is not None:
                scan = scan._replace(batch=batch, config=config)
            out.append((s, scan))
        return out

    @property
    def last_gap_id(self) -> int:
        """Id of the newest committed gap (0 before the first)."""
        return self._last_gap

    def gaps_after(self, gap_id: int, limit: int) -> list[tuple[int, Gap]]:
        """Up to `limit` committed gaps with an id above `gap_id`, oldest first.

        [] when the file cannot be read (logged, `failing`): the sink retries later.
        """
        try:
            rows = self._db.execute(
                "SELECT id, start_ns, end_ns, cause, devices, scans FROM gaps WHERE id > ?"
                " ORDER BY id LIMIT ?",
                (gap_id, limit),
            ).fetchall()
        except sqlite3.DatabaseError as exc:
            self.health.read_failed("gaps", exc)
            return []
        self.health.read_ok()
        return [(r[0], Gap.from_row(r[1:])) for r in rows]

    def position_moved(self) -> None:
        """A cursor acked: persist with the next commit (at once after close: no flusher)."""
        if self._closed and self._db_open:
            self.commit()
        else:
            self._dirty.set()

    # --- durability ----------------------------------------------------------------------

    @property
    def usage_fraction(self) -> float:
        """Share of the disk budget in use, counting what is buffered (≥ 0.8: alarm)."""
        return self.budget.fraction

    @property
    def buffered(self) -> int:
        """Scans appended but not yet on disk."""
        return len(self._pending)

    @property
    def cleanup_pending(self) -> bool:
        """True while acked scans remain to be deleted (a chunk goes with each commit)."""
        return self._cleanup_left

    def open_outage(self, sink: str) -> OpenOutage | None:
        """The span `sink` had open at the last commit (or set since), if any."""
        return self._outages.get(sink)

    def set_outage(self, sink: str, span: OpenOutage | None) -> None:
        """Open or update (`span`) or close (None) `sink`'s outage with the next commit."""
        if sink not in self._cursors:
            raise KeyError(f"spool {self.path}: no cursor {sink!r} to keep an outage with")
        if self.open_outage(sink) == span:
            return
        if not self._db_open:
            log.error("spool %s is shut down: %s outage %s not recorded", self.path, sink, span)
            return
        self._pending_outages[sink] = span
        if span is None:
            self._outages.pop(sink, None)
        else:
            self._outages[sink] = span
        if self._closed:
            self.commit()
        else:
            self._dirty.set()

    @property
    def failing(self) -> bool:
        """True while commits or the sinks' reads fail (disk full, I/O error, a corrupt
        file): scans stay buffered, sinks wait. What a built-in alarm should watch."""
        return self.health.failing

    @property
    def failure(self) -> str | None:
        """Why the spool is `failing` (the latest error, for the alarm and health); None if not."""
        return self.health.failure

    def commit(self) -> int:
        """Write buffered scans, gaps, events and cursor positions in one transaction.

        Returns the number of scans committed. Any database error (a full disk, an I/O
        error, a corrupt file) is rolled back and logged on the transition, the data stay
        buffered for the next attempt and `failing` is set: it never reaches the caller.
        """
        dirty = [c for c in self._cursors.values() if c.dirty]
        pending = self._pending or self._pending_gaps or self._pending_events
        if not (pending or dirty or self._cleanup_left or self._pending_outages):
            return 0
        if not self._db_open:
            raise RuntimeError(f"spool {self.path} is shut down")
        self._warn_orphans()
        try:
            outcome = self._write(dirty)
        except sqlite3.DatabaseError as exc:
            self._rollback()
            self._cache.clear()  # a failed budget drop may have changed nothing: disk is the truth
            self.health.commit_failed(exc, len(self._pending), self._max_buffered)
            return 0
        return self._committed_ok(dirty, outcome)

    async def run(self, flush_interval_s: float = 0.2, checkpoint_interval_s: float = 1.0) -> None:
        """Commit what arrives at most every `flush_interval_s`; checkpoint off the loop.

        One commit gathers every scan of a tick (pollers are staggered, so a tick is a time
        window, not a call). The checkpoint, which in WAL mode with synchronous=NORMAL is
        where the fsyncs happen, runs every `checkpoint_interval_s` in a worker thread:
        that interval bounds what a power cut can take back (docs/spool.md).
        """
        self._db.execute("PRAGMA wal_autocheckpoint = 0")
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._checkpoints(checkpoint_interval_s), name="spool-checkpoint")
                while not self._closed:
                    await self._dirty.wait()
                    await asyncio.sleep(flush_interval_s)  # cadence: let the tick's scans gather
                    self.commit()
        finally:
            if self._db_open:
                with contextlib.suppress(sqlite3.DatabaseError):
                    self._db.execute("PRAGMA wal_autocheckpoint = 1000")

    async def _checkpoints(self, interval_s: float) -> None:
        done = self.commits
        while not self._closed:
            await wait_at_most(self._closing.wait(), interval_s)
            if self.commits != done:
                done = self.commits
                await self.checkpoint()

    async def checkpoint(self) -> None:
        """Sync the WAL and copy it into the database, in a worker thread; never raises.

        PASSIVE: it never blocks the writer, which keeps committing on the event loop.
        """
        try:
            await asyncio.to_thread(self._checkpoint_in_thread)
        except sqlite3.DatabaseError as exc:
            self.health.checkpoint_failed(exc)
        else:
            self.checkpoints += 1
            self.health.checkpoint_ok()

    def shutdown(self) -> None:
        """Persist the cursors, fold the WAL into the database and close the file."""
        if not self._db_open:
            return
        self._closed = True
        self.commit()
        if self.buffered:
            log.error(
                "spool %s: %d scans could not be written at shutdown", self.path, self.buffered
            )
        with contextlib.suppress(sqlite3.DatabaseError):
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with self._checkpoint_lock:  # a cancelled run() may have left one in its thread
            self._db_open = False
            if self._checkpointer is not None:
                self._checkpointer.close()
        self._db.close()
        self._lock.close()
        self._wake()

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # --- internals -------------------------------------------------------------------------

    @staticmethod
    def _configure(db: sqlite3.Connection, synchronous: str) -> None:
        (mode,) = db.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode.lower() != "wal":
            raise RuntimeError(f"SQLite refused WAL mode (got {mode!r})")
        db.execute(f"PRAGMA synchronous = {synchronous}")
        db.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}")

    def _load(self) -> None:
        """Read back where the last run stopped: sequence, layouts, budget use."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
        top = seq_edge(self._db, "max")
        stamp = self._db.execute("SELECT value FROM meta WHERE key = 'last_commit_ns'").fetchone()
        self.previous_commit_ns: int | None = stamp[0] if stamp else None  # a "daemon down" gap
        self._committed = max(row[0] if row else 0, top or 0)
        self._next_seq = self._committed + 1
        self._layouts: dict[int, Layout] = {}
        self._layout_ids: dict[Layout, int] = {}
        for lid, tags, units in self._db.execute("SELECT id, tags, units FROM layouts"):
            layout = Layout(tuple(json.loads(tags)), tuple(json.loads(units)))
            self._layouts[lid] = layout
            self._layout_ids[layout] = lid
        (last_gap,) = self._db.execute("SELECT coalesce(max(id), 0) FROM gaps").fetchone()
        self._last_gap = int(last_gap)
        self._last_event = last_event_id(self._db)
        self._next_event = self._last_event + 1
        self._outages = spool_outages.load(self._db)
        self.budget.droppable = mark_gmp(self._db, self._gmp)
        self.budget.measure(self._db)

    def _layout_id(self, layout: Layout) -> int:
        lid = self._layout_ids.get(layout)
        if lid is None:
            lid = len(self._layouts) + 1
            self._layouts[lid] = layout
            self._layout_ids[layout] = lid
            self._new_layouts.append((lid, json.dumps(layout.tags), json.dumps(layout.units)))
        return lid

    def _write(self, dirty: list[SpoolCursor]) -> _Outcome:
        """The one transaction of a commit; changes nothing in memory (it may fail)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO layouts VALUES (?, ?, ?)", self._new_layouts)
        excess = self.budget.excess() if self._pending else 0
        dropped, gap = drop_oldest(db, excess + self.budget.headroom()) if excess else (0, None)
        for keep, table in ((1, "scans_gmp"), (0, "scans_other")):
            rows = [r[:4] + r[5:] for r in self._pending if r[4] == keep]
            db.executemany(f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?, ?, ?)", rows)  # noqa: S608
        db.executemany(
            "INSERT INTO gaps (start_ns, end_ns, cause, devices, scans) VALUES (?, ?, ?, ?, ?)",
            [g.row() for g in self._pending_gaps],
        )
        db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?)", self._pending_events)
        spool_outages.write(db, self._pending_outages)
        db.executemany(
            "UPDATE cursors SET acked = ?, gap_acked = ?, event_acked = ? WHERE name = ?",
            [(c.acked, c.gap_acked, c.event_acked, c.name) for c in dirty],
        )
        meta = [("last_commit_ns", utc_now_ns())]
        if self._pending:
            meta.append(("last_seq", self._pending[-1][0]))
        if self._pending_events:
            meta.append(("last_event_id", self._pending_events[-1][0]))
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", meta)
        sinks = list(self._cursors) or None  # the configured sinks hold data back (docs)
        retired, retired_upto, more = delete_acked(db, self._cleanup_chunk, sinks)
        delete_acked_events(db, sinks)
        (gap_id,) = db.execute("SELECT coalesce(max(id), 0) FROM gaps").fetchone()
        db.execute("COMMIT")
        return _Outcome(int(gap_id), dropped + retired, gap, retired_upto, more)

    def _dropped(self, gap: Gap) -> None:
        self.dropped += gap.scans
        self._cache.clear()  # it may hold dropped scans; disk is the truth
        log.error(
            "spool %s over budget: dropped the oldest %d scans of %s to keep GMP data; "
            "recorded as a gap",
            self.path,
            gap.scans,
            ", ".join(gap.devices),
        )

    def _committed_ok(self, dirty: list[SpoolCursor], outcome: _Outcome) -> int:
        count = len(self._pending)
        self.commits += 1
        self.budget.droppable += sum(len(r[5]) + ROW_OVERHEAD for r in self._pending if not r[4])
        self.budget.droppable -= outcome.freed
        if outcome.gap is not None:
            self._dropped(outcome.gap)
        if count:
            self._committed = self._pending[-1][0]
            if self._cursors:
                seqs = (r[0] for r in self._pending)
                self._cache.extend(zip(seqs, self._pending_scans, strict=True))
            else:  # nobody reads it; full, its ~100k objects cost the GC ~20 µs a scan
                self._cache.clear()
        self._pending, self._pending_scans, self._pending_gaps = [], [], []
        if self._pending_events:
            self._last_event = self._pending_events[-1][0]
            self._pending_events = []
        self._pending_outages = {}
        self._new_layouts = []
        self.budget.used += self.budget.pending  # until measured: what was just written
        self.budget.pending = 0
        self._measure()
        for c in dirty:
            c.dirty = False
        self._last_gap = outcome.gap_id
        self._cleanup_left = outcome.cleanup_left
        while self._cache and self._cache[0][0] <= outcome.retired_upto:
            self._cache.popleft()
        self.health.commit_ok()
        self._dirty.clear()
        self._wake()
        return count

    def _measure(self) -> None:
        """Re-read the file's size after a commit; a failure keeps the estimate (logged on
        the transition): the commit happened, and its in-memory bookkeeping is complete."""
        try:
            self.budget.measure(self._db)
        except sqlite3.DatabaseError as exc:
            self.health.measure_failed(exc)
        else:
            self.health.measure_ok()

    def _rollback(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.DatabaseError):
                self._db.execute("ROLLBACK")

    def _checkpoint_in_thread(self) -> None:
        """Runs in the worker thread; the lock keeps `shutdown` from closing it mid-way."""
        with self._checkpoint_lock:
            if not self._db_open:
                return
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(
                    self.path, isolation_level=None, timeout=1.0, check_same_thread=False
                )
                self._checkpointer.execute("PRAGMA synchronous = NORMAL")
            self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _warn_orphans(self) -> None:
        """Name, once, the stored cursors of sinks this run does not configure: they no
        longer hold data back, and are kept so that adding the sink again resumes there."""
        opened = frozenset(self._cursors)
        if not opened or opened == self._orphans_checked:
            return
        self._orphans_checked = opened
        try:
            stored = self.cursor_names()
        except sqlite3.DatabaseError:
            return
        orphans = [n for n in stored if n not in opened and n not in self._orphans_named]
        if orphans:
            self._orphans_named.update(orphans)
            log.warning(
                "spool %s: stored cursors of sinks that are not configured: %s; they no longer "
                "hold data back (kept: a sink added again resumes there)",
                self.path,
                ", ".join(orphans),
            )

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


def _lock(path: Path) -> IO[bytes]:
    """An exclusive advisory lock next to the file; the kernel releases it if we die."""
    handle = Path(f"{path}.lock").open("wb")  # noqa: SIM115 -- held open for the spool's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SpoolLocked(f"spool {path} is in use by another process") from None
    return handle
