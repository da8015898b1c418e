"""The durable spool: the Journal's contract, on disk, bounded, and honest about losses."""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller import spool_budget
from controller.journal import Journal
from controller.spool import Spool, SpoolLocked
from controller.spool_budget import (
    BUDGET_CAUSE,
    Budget,
    Gap,
    SpoolFull,
    budget_hours_to_bytes,
    mean_scan_bytes,
)
from controller.spool_codec import decode, encode, layout_of
from controller.spool_events import Event
from controller.spool_outages import OpenOutage
from drivers.sample import Quality, Sample, Scan

BIG = 1 << 30


def scan(i: int, device: str = "dev", tags: int = 1) -> Scan:
    return Scan(device, i, tuple(Sample.good(f"t{k}", float(i), "u", i) for k in range(tags)))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "spool.sqlite"


@pytest.fixture
def spool(path: Path) -> Iterator[Spool]:
    with Spool(path, budget_bytes=BIG) as s:
        yield s


def statements(s: Spool) -> list[str]:
    """Record every SQL statement the spool's connection runs from now on."""
    seen: list[str] = []
    s._db.set_trace_callback(seen.append)
    return seen


# --- the Journal's behaviours, for both -----------------------------------------------------


class JournalLike:
    """Journal and Spool behind one face: `commit` is a no-op for the Journal."""

    def __init__(self, store: Journal | Spool) -> None:
        self.store = store

    def append(self, *scans: Scan) -> None:
        for s in scans:
            self.store.append(s)
        if isinstance(self.store, Spool):
            self.store.commit()

    def record(self, *events: Event) -> None:
        for e in events:
            self.store.record_event(e)
        if isinstance(self.store, Spool):
            self.store.commit()


@pytest.fixture(params=["journal", "spool"])
def either(request: pytest.FixtureRequest, path: Path) -> Iterator[JournalLike]:
    if request.param == "journal":
        yield JournalLike(Journal(100))
        return
    with Spool(path, budget_bytes=BIG) as s:
        yield JournalLike(s)


def test_cursors_are_independent(either: JournalLike) -> None:
    """A sink that acked does not move another sink's position."""
    a, b = either.store.cursor("a"), either.store.cursor("b")
    either.append(*(scan(i) for i in range(5)))
    a.ack(a.peek(3)[-1][0])
    assert [s.t_scan_ns for _, s in a.peek(10)] == [3, 4]
    assert [s.t_scan_ns for _, s in b.peek(10)] == [0, 1, 2, 3, 4]
    assert (a.lag, b.lag) == (2, 5)


def test_peek_returns_the_same_until_acked(either: JournalLike) -> None:
    """A failed delivery retries exactly the same scans, in order."""
    cur = either.store.cursor("a")
    either.append(*(scan(i) for i in range(3)))
    assert cur.peek(2) == cur.peek(2)
    cur.ack(cur.peek(2)[-1][0])
    assert [s.t_scan_ns for _, s in cur.peek(2)] == [2]


def test_ack_trims_what_every_cursor_has(either: JournalLike) -> None:
    """Storage is released once all sinks acked a scan."""
    a, b = either.store.cursor("a"), either.store.cursor("b")
    either.append(*(scan(i) for i in range(4)))
    a.ack(4)
    either.append()
    assert len(either.store.items_after(0, 10)) == 4
    b.ack(2)
    either.append()
    assert len(either.store.items_after(0, 10)) == 2


async def test_wait_wakes_on_append_and_ends_on_close(either: JournalLike) -> None:
    """A sink waiting for data wakes when a scan is there, and learns the end after drain."""
    cur = either.store.cursor("a")
    waiter = asyncio.create_task(cur.wait())
    await asyncio.sleep(0)  # let the waiter block: this is ordering, not timing
    assert not waiter.done()
    either.append(scan(1))
    assert await waiter is True
    either.store.close()
    assert await cur.wait() is True  # still one pending
    cur.ack(1)
    assert await cur.wait() is False
    with pytest.raises(RuntimeError):
        either.store.append(scan(2))


def test_duplicate_cursor_name_is_an_error(either: JournalLike) -> None:
    """Two sinks cannot share a position by accident."""
    either.store.cursor("a")
    with pytest.raises(ValueError, match="exists"):
        either.store.cursor("a")


# --- write-ahead: committed before visible, one transaction per commit ------------------------


async def test_cursors_see_only_committed_scans(spool: Spool) -> None:
    """An appended scan is invisible (and does not wake a sink) until it is on disk."""
    cur = spool.cursor("a")
    waiter = asyncio.create_task(cur.wait())
    seq = spool.append(scan(1))
    await asyncio.sleep(0)
    assert (cur.lag, cur.peek(10), waiter.done()) == (0, [], False)
    assert spool.last_seq == seq and spool.committed_seq == 0
    spool.commit()
    assert await waiter is True
    assert cur.peek(10) == [(seq, scan(1))]


def test_one_transaction_per_commit(spool: Spool) -> None:
    """A tick of 200 scans, a gap and two acks are written by exactly one transaction."""
    a, b = spool.cursor("a"), spool.cursor("b")
    spool.append(scan(0))
    spool.commit()
    seen = statements(spool)
    for i in range(200):
        spool.append(scan(i, f"dev{i}", tags=20))
    spool.record_gap(Gap(1, 2, "device unreachable", ("x",)))
    a.ack(1)
    b.ack(1)
    assert spool.commit() == 200
    assert sum(s.startswith("BEGIN") for s in seen) == 1
    assert sum(s == "COMMIT" for s in seen) == 1
    assert sum(s.startswith("INSERT INTO scans_other") for s in seen) == 200  # executemany


def test_scans_round_trip_exactly(path: Path) -> None:
    """What a sink reads back from disk is the scan that was appended, field for field."""
    odd = Scan(
        "dev",
        5,
        (
            Sample.good("a", 1.5, "degC", 7),
            Sample.bad("b", "%", "timeout", 8),
            Sample("c", 2.0, "bar", Quality.UNCERTAIN, 7, "stale", 3, 4),
        ),
        backfill=True,
    )
    with Spool(path, budget_bytes=BIG) as s:
        s.cursor("a")
        s.append(odd)
        s.commit()
    with Spool(path, budget_bytes=BIG) as s:
        assert s.cursor("a").peek(5) == [(1, odd)]


samples = st.builds(
    Sample,
    tag=st.text(min_size=1, max_size=8),
    value=st.none() | st.floats(allow_nan=False),
    unit=st.text(max_size=4),
    quality=st.sampled_from(Quality),
    t_receive_ns=st.integers(0, 2**62),
    reason=st.none() | st.text(max_size=20),
    t_device_ns=st.none() | st.integers(0, 2**62),
    t_server_ns=st.none() | st.integers(0, 2**62),
)


@given(st.lists(samples, max_size=30), st.booleans())
def test_codec_round_trips_any_scan(items: list[Sample], backfill: bool) -> None:
    """Every sample field survives the packed blob, the plain and the general path."""
    original = Scan("d", 9, tuple(items), backfill)
    assert decode("d", 9, layout_of(original), encode(original)) == original


# --- durability across reopen and crash ------------------------------------------------------


def test_reopen_continues_sequence_and_cursor_positions(path: Path) -> None:
    """After a restart seq numbers continue and each sink resumes from its persisted ack."""
    with Spool(path, budget_bytes=BIG) as s:
        a, b = s.cursor("a"), s.cursor("b")
        for i in range(5):
            s.append(scan(i))
        s.commit()
        a.ack(3)
        s.commit()  # the ack is persisted with the next commit
    with Spool(path, budget_bytes=BIG) as s:
        assert s.previous_commit_ns is not None  # where a "daemon down" gap starts
        a, b = s.cursor("a"), s.cursor("b")
        assert (a.acked, b.acked) == (3, 0)
        assert s.append(scan(5)) == 6
        s.commit()
        assert [q for q, _ in a.peek(10)] == [4, 5, 6]


def test_crash_without_ack_redelivers_in_order(path: Path) -> None:
    """A connection dropped without persisting acks means the same scans come again."""
    s = Spool(path, budget_bytes=BIG)
    cur = s.cursor("a")
    for i in range(4):
        s.append(scan(i))
    s.commit()
    cur.ack(2)  # acked in memory only: the next commit never happens
    s._db.close()  # the process dies: no shutdown, no checkpoint
    s._lock.close()
    with Spool(path, budget_bytes=BIG) as again:
        assert [(q, x.t_scan_ns) for q, x in again.cursor("a").peek(10)] == [
            (1, 0),
            (2, 1),
            (3, 2),
            (4, 3),
        ]


def test_sequence_survives_retention_of_everything(path: Path) -> None:
    """Even with every scan acked and deleted, numbering never restarts."""
    with Spool(path, budget_bytes=BIG) as s:
        cur = s.cursor("a")
        s.append(scan(0))
        s.append(scan(1))
        s.commit()
        cur.ack(2)
        s.commit()
        assert s.items_after(0, 10) == []
    with Spool(path, budget_bytes=BIG) as s:
        assert s.append(scan(2)) == 3


def test_second_process_is_refused(path: Path, spool: Spool) -> None:
    """Two daemons on one spool would number scans twice; the second is refused."""
    with pytest.raises(SpoolLocked, match="in use"):
        Spool(path, budget_bytes=BIG)


def test_acks_after_close_persist_at_once(path: Path) -> None:
    """During the shutdown drain there is no flusher: an ack is written when it happens."""
    s = Spool(path, budget_bytes=BIG)
    cur = s.cursor("a")
    s.append(scan(0))
    s.close()
    cur.ack(1)
    s._db.close()
    s._lock.close()
    with Spool(path, budget_bytes=BIG) as again:
        assert again.cursor("a").acked == 1


def test_cleanup_is_chunked(path: Path) -> None:
    """A long acked backlog is deleted a chunk per commit, not in one stalling sweep."""
    with Spool(path, budget_bytes=BIG, cleanup_chunk=100) as s:
        cur = s.cursor("a")
        for i in range(350):
            s.append(scan(i))
        s.commit()
        cur.ack(350)
        held = []
        for _ in range(5):
            s.commit()
            held.append(len(s.items_after(0, 1000)))
        assert held == [250, 150, 50, 0, 0]


# --- the disk budget ---------------------------------------------------------------------


def test_budget_hours_to_bytes() -> None:
    """An hour at 200 scans/s of 200-byte scans is sized with the per-row overhead."""
    assert budget_hours_to_bytes(200, 200, 1) == 200 * 3600 * (200 + 48)
    assert mean_scan_bytes(20) == len(encode(scan(0, tags=20)))
    with pytest.raises(ValueError, match="negative"):
        budget_hours_to_bytes(-1, 200, 1)


def fill(s: Spool, device: str, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        s.append(scan(i, device, tags=20))
        s.commit()


def test_budget_drops_oldest_non_gmp_first_and_records_the_gap(path: Path) -> None:
    """At the limit the oldest non-GMP scans go, GMP scans stay, and the span is a gap."""
    alarms: list[tuple[bool, float]] = []
    with Spool(
        path,
        budget_bytes=300_000,
        gmp_devices={"bioreactor"},
        synchronous="NORMAL",
        on_alarm=lambda on, f: alarms.append((on, f)),
    ) as s:
        cur = s.cursor("influx")
        for i in range(1500):  # interleaved: GMP and non-GMP scans side by side
            s.append(scan(i, "bioreactor" if i % 2 else "fridge", tags=20))
            if i % 10 == 9:
                s.commit()
        assert s.dropped > 0
        assert s.usage_fraction <= 1.0
        kept = s.items_after(0, 10_000)
        gmp = [x for _, x in kept if x.device == "bioreactor"]
        assert len(gmp) == 750  # every GMP scan is still there
        fridge = [x.t_scan_ns for _, x in kept if x.device == "fridge"]
        assert fridge == list(range(1500 - 2 * len(fridge), 1500, 2))  # the newest survive
        gaps = s.gaps()
        assert gaps and all(g.cause == BUDGET_CAUSE and g.devices == ("fridge",) for g in gaps)
        assert gaps[0].start_ns == 0
        assert sum(g.scans for g in gaps) == s.dropped == 750 - len(fridge)
        assert [g for _, g in cur.peek_gaps(100)] == gaps  # delivered to the sinks too
        assert alarms[0][0] is True and alarms[0][1] >= 0.8
        assert next(x.t_scan_ns for _, x in cur.peek(3)) in (1, min(fridge))


def test_only_gmp_left_refuses_with_spool_full(path: Path) -> None:
    """With nothing but GMP data the spool refuses the append instead of dropping any."""
    with Spool(path, budget_bytes=200_000, gmp_devices={"bioreactor"}, synchronous="NORMAL") as s:
        s.cursor("influx")
        with pytest.raises(SpoolFull, match="GMP"):
            fill(s, "bioreactor", 10_000)
        held = s.items_after(0, 100_000)
        assert [x.t_scan_ns for _, x in held] == list(range(len(held)))  # none dropped
        assert s.dropped == 0 and s.gaps() == []
        refused = s.last_seq
        with pytest.raises(SpoolFull):
            s.append(scan(99_999, "fridge", tags=20))
        assert s.last_seq == refused  # a refused scan takes no sequence number


def test_gaps_merge_only_with_the_same_cause_devices_and_a_touching_span(spool: Spool) -> None:
    """A buffered gap absorbs another only when one span can stand for both: the same
    cause and devices, spans that overlap or touch. inc1 down 2 h and inc2 down 1 s with
    the same reason stay two gaps (they once became one 2 h gap for both)."""
    h = 3600 * 10**9
    t = 10 * h
    spool.record_gap(Gap(t - 2 * h, t, "device unreachable: timeout", ("inc1",)))
    spool.record_gap(Gap(t - 10**9, t, "device unreachable: timeout", ("inc2",)))
    spool.record_gap(Gap(10, 10, "spool full", ("a",), 1))
    spool.record_gap(Gap(10, 20, "spool full", ("a",), 1))  # touches: one span
    spool.record_gap(Gap(20, 30, "spool full", ("a",), 1))  # touches the merged one
    spool.record_gap(Gap(40, 40, "spool full", ("a",), 1))  # apart: a span of its own
    spool.record_gap(Gap(20, 20, "spool full", ("b",), 1))  # other device
    spool.record_gap(Gap(5, 30, "daemon down", ("a",)))  # other cause
    spool.commit()
    assert spool.gaps() == [
        Gap(t - 2 * h, t, "device unreachable: timeout", ("inc1",)),
        Gap(t - 10**9, t, "device unreachable: timeout", ("inc2",)),
        Gap(10, 30, "spool full", ("a",), 3),
        Gap(40, 40, "spool full", ("a",), 1),
        Gap(20, 20, "spool full", ("b",), 1),
        Gap(5, 30, "daemon down", ("a",)),
    ]
    assert spool.gaps(since_ns=35) == [
        Gap(t - 2 * h, t, "device unreachable: timeout", ("inc1",)),
        Gap(t - 10**9, t, "device unreachable: timeout", ("inc2",)),
        Gap(40, 40, "spool full", ("a",), 1),
    ]


def test_gap_positions_persist_and_redeliver(path: Path) -> None:
    """Gaps reach every cursor in order, are acked per cursor, and survive a restart."""
    with Spool(path, budget_bytes=BIG) as s:
        a, b = s.cursor("a"), s.cursor("b")
        s.record_gap(Gap(1, 2, "device unreachable", ("x",)))
        s.commit()
        s.record_gap(Gap(3, 4, "daemon down", ()))
        s.commit()
        assert (a.gap_lag, b.gap_lag) == (2, 2)
        a.ack_gap(a.peek_gaps(1)[0][0])
        assert [g.cause for _, g in a.peek_gaps(10)] == ["daemon down"]
        s.commit()
    with Spool(path, budget_bytes=BIG) as s:
        a, b = s.cursor("a"), s.cursor("b")
        assert (a.gap_lag, b.gap_lag) == (1, 2)
        assert [g.cause for _, g in b.peek_gaps(10)] == ["device unreachable", "daemon down"]


def test_usage_fraction_grows_and_shrinks(path: Path) -> None:
    """Usage counts buffered scans, and falls again once sinks acked and cleanup ran."""
    with Spool(path, budget_bytes=10_000_000) as s:
        cur = s.cursor("a")
        empty = s.usage_fraction
        for i in range(500):
            s.append(scan(i, tags=20))
        buffered = s.usage_fraction
        s.commit()
        full = s.usage_fraction
        cur.ack(500)
        s.commit()
        assert empty < buffered and empty < full
        assert s.usage_fraction < full


def test_alarm_raises_at_80_percent_and_clears_below_75() -> None:
    """One alarm per episode: raised at 80 %, held at 78 %, cleared at 70 %."""
    calls: list[bool] = []
    budget = Budget(1000, lambda on, _f: calls.append(on))
    for used in (500, 800, 780, 810, 700, 790):
        budget.used = used
        budget.check_alarm()
    assert calls == [True, False]


def test_gmp_set_change_applies_to_held_scans(path: Path) -> None:
    """A device made GMP-critical in the config is protected for what is already held."""
    with Spool(path, budget_bytes=BIG) as s:
        s.cursor("a")
        fill(s, "fridge", 5)
    with Spool(path, budget_bytes=BIG, gmp_devices={"fridge"}) as s:
        assert s.budget.droppable == 0
    with Spool(path, budget_bytes=BIG) as s:
        assert s.budget.droppable > 0


# --- a full disk ---------------------------------------------------------------------------


def cap_pages(s: Spool, extra: int) -> None:
    """Let the file grow only `extra` pages beyond its size: SQLite then says SQLITE_FULL."""
    (pages,) = s._db.execute("PRAGMA page_count").fetchone()
    s._db.execute(f"PRAGMA max_page_count = {pages + extra}")


def test_full_disk_keeps_scans_buffered_and_recovers(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLITE_FULL is logged once naming the file; nothing is lost; space returns, all lands."""
    with Spool(path, budget_bytes=BIG) as s:
        cur = s.cursor("a")
        fill(s, "dev", 3)
        cap_pages(s, 2)
        with caplog.at_level(logging.ERROR):
            for i in range(3, 300):
                s.append(scan(i, tags=20))
                s.commit()
        assert s.failing and s.buffered > 0
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and str(path) in errors[0].getMessage()
        assert "full" in errors[0].getMessage()
        visible = cur.lag
        assert visible < 300 and [x.t_scan_ns for _, x in cur.peek(1000)] == list(range(visible))
        s._db.execute("PRAGMA max_page_count = 1073741823")  # space returns
        s.commit()
        assert not s.failing and s.buffered == 0
        assert [x.t_scan_ns for _, x in cur.peek(1000)] == list(range(300))


def test_memory_buffer_is_bounded(path: Path) -> None:
    """While commits fail the buffer holds at most max_buffered_scans, then refuses loudly."""
    with Spool(path, budget_bytes=BIG, max_buffered_scans=50) as s:
        s.cursor("a")
        fill(s, "dev", 2)
        cap_pages(s, 0)
        with pytest.raises(SpoolFull, match="commits failing"):
            fill(s, "dev", 100, start=2)
        assert s.buffered == 50


async def test_flusher_commits_checkpoints_then_stops_at_close(path: Path) -> None:
    """The background task commits appended scans and ends once the spool is closed."""
    with Spool(path, budget_bytes=BIG) as s:
        cur = s.cursor("a")
        task = asyncio.create_task(s.run(flush_interval_s=0.01, checkpoint_interval_s=0.01))
        s.append(scan(1))
        assert await asyncio.wait_for(cur.wait(), 5) is True
        assert s.committed_seq == 1
        async with asyncio.timeout(5):  # the worker thread syncs and checkpoints the WAL
            while s.checkpoints == 0:  # noqa: ASYNC110 -- a counter, polled within a deadline
                await asyncio.sleep(0.01)
        s.close()
        await asyncio.wait_for(task, 5)


def test_batch_and_config_stamps_survive_the_disk(path: Path) -> None:
    """A scan the hub stamped comes back from the file with its batch and config hash."""
    stamped = scan(1)._replace(batch="LOT-1", config="0123456789ab")
    with Spool(path, budget_bytes=BIG) as s:
        s.cursor("influx")
        s.append(stamped)
        s.append(scan(2))
        s.commit()
    with Spool(path, budget_bytes=BIG, cache_scans=1) as s:
        (first, second) = [sc for _, sc in s.cursor("influx").peek(10)]
    assert (first.batch, first.config) == ("LOT-1", "0123456789ab")
    assert (second.batch, second.config) == (None, None)


# --- events: alarm transitions, audit records, ... beside scans and gaps ---------------------


def event(i: int, kind: str = "alarm") -> Event:
    body: dict[str, object] = {"state": "active", "value": i + 0.5, "tags": ["a", i], "n": None}
    return Event(i, kind, f"A{i}", {**body, "nested": {"ok": True}})  # type: ignore[dict-item]


def held_events(s: Spool) -> int:
    (n,) = s._db.execute("SELECT count(*) FROM events").fetchone()
    return int(n)


def test_events_come_in_order_and_again_until_acked(either: JournalLike) -> None:
    """Events reach each cursor oldest first, equal to what was recorded, until acked."""
    a, b = either.store.cursor("a"), either.store.cursor("b")
    either.record(*(event(i) for i in range(4)))
    assert [e for _, e in a.peek_events(10)] == [event(i) for i in range(4)]
    assert a.peek_events(2) == a.peek_events(2)
    a.ack_event(a.peek_events(2)[-1][0])
    assert [e.t_ns for _, e in a.peek_events(10)] == [2, 3]
    assert [e.t_ns for _, e in b.peek_events(10)] == [0, 1, 2, 3]
    assert (a.event_lag, b.event_lag, a.lag) == (2, 4, 0)


def test_events_are_released_once_every_cursor_acked(either: JournalLike) -> None:
    """Retention: an event stays until the slowest cursor acked it, then it is deleted."""
    a, b = either.store.cursor("a"), either.store.cursor("b")
    either.record(event(0), event(1))
    a.ack_event(2)
    either.record()
    assert len(either.store.events_after(0, 10)) == 2
    b.ack_event(1)
    either.record()
    assert [e.t_ns for _, e in either.store.events_after(0, 10)] == [1]
    assert [e.t_ns for _, e in either.store.cursor("late").peek_events(10)] == [1]


async def test_wait_wakes_on_an_event_alone(either: JournalLike) -> None:
    """A sink idle for lack of scans wakes for an event, and ends only once it is acked."""
    cur = either.store.cursor("a")
    waiter = asyncio.create_task(cur.wait())
    await asyncio.sleep(0)  # let the waiter block: this is ordering, not timing
    assert not waiter.done()
    either.record(event(1))
    assert await asyncio.wait_for(waiter, 5) is True
    assert (cur.lag, cur.event_lag) == (0, 1)
    either.store.close()
    assert await asyncio.wait_for(cur.wait(), 5) is True  # closed, but the event is still pending
    cur.ack_event(cur.peek_events(1)[0][0])
    assert await asyncio.wait_for(cur.wait(), 5) is False


async def test_wait_wakes_on_a_gap_alone(spool: Spool) -> None:
    """A gap recorded while no scan arrives is forwarded promptly too."""
    cur = spool.cursor("a")
    waiter = asyncio.create_task(cur.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    spool.record_gap(Gap(1, 2, "device unreachable", ("x",)))
    spool.commit()
    assert await asyncio.wait_for(waiter, 5) is True
    assert (cur.lag, cur.gap_lag, cur.event_lag) == (0, 1, 0)


async def test_events_are_invisible_until_committed(spool: Spool) -> None:
    """A recorded event, like a scan, reaches no sink before it is on disk."""
    cur = spool.cursor("a")
    waiter = asyncio.create_task(cur.wait())
    spool.record_event(event(1))
    await asyncio.sleep(0)
    assert (cur.event_lag, cur.peek_events(10), waiter.done()) == (0, [], False)
    spool.commit()
    assert await asyncio.wait_for(waiter, 5) is True
    assert cur.peek_events(10) == [(1, event(1))]


def test_events_commit_in_the_scans_transaction(spool: Spool) -> None:
    """A tick's scans, events, a gap and event acks are written by exactly one transaction."""
    a = spool.cursor("a")
    spool.record_event(event(0))
    spool.commit()
    seen = statements(spool)
    for i in range(200):
        spool.append(scan(i, f"dev{i}", tags=20))
    for i in range(1, 6):
        spool.record_event(event(i))
    spool.record_gap(Gap(1, 2, "device unreachable", ("x",)))
    a.ack_event(1)
    assert spool.commit() == 200
    assert sum(s.startswith("BEGIN") for s in seen) == 1
    assert sum(s == "COMMIT" for s in seen) == 1
    assert sum(s.startswith("INSERT INTO events") for s in seen) == 5  # executemany
    assert [i for i, _ in a.peek_events(10)] == [2, 3, 4, 5, 6]


def test_events_and_positions_survive_reopen(path: Path) -> None:
    """After a restart events are still there, each cursor resumes, and ids continue."""
    with Spool(path, budget_bytes=BIG) as s:
        a, b = s.cursor("a"), s.cursor("b")
        s.record_event(event(0))
        s.record_event(event(1, "audit"))
        s.commit()
        a.ack_event(1)
        s.commit()  # the ack is persisted with the next commit
    with Spool(path, budget_bytes=BIG) as s:
        a, b = s.cursor("a"), s.cursor("b")
        assert (a.event_acked, b.event_acked) == (1, 0)
        assert b.peek_events(10) == [(1, event(0)), (2, event(1, "audit"))]
        s.record_event(event(2))
        s.commit()
        assert [i for i, _ in a.peek_events(10)] == [2, 3]


def test_event_ack_lost_in_a_crash_redelivers(path: Path) -> None:
    """An event acked but not yet persisted when the process dies comes again."""
    s = Spool(path, budget_bytes=BIG)
    cur = s.cursor("a")
    s.record_event(event(0))
    s.commit()
    cur.ack_event(1)  # acked in memory only: the next commit never happens
    s._db.close()  # the process dies: no shutdown, no checkpoint
    s._lock.close()
    with Spool(path, budget_bytes=BIG) as again:
        assert again.cursor("a").peek_events(10) == [(1, event(0))]


def test_event_ids_never_restart_after_retention(path: Path) -> None:
    """With every event acked and deleted, a new cursor starts past them and ids continue."""
    with Spool(path, budget_bytes=BIG) as s:
        cur = s.cursor("a")
        s.record_event(event(0))
        s.record_event(event(1))
        s.commit()
        cur.ack_event(2)
        s.commit()
        assert held_events(s) == 0
    with Spool(path, budget_bytes=BIG) as s:
        assert s.cursor("new").event_lag == 0
        s.record_event(event(2))
        s.commit()
        assert s.cursor("a").peek_events(10) == [(3, event(2))]


def test_events_are_kept_without_any_cursor(spool: Spool) -> None:
    """Like scans, events wait for a sink configured later (the spool is the store)."""
    spool.record_event(event(0))
    spool.commit()
    spool.commit()
    assert spool.cursor("later").peek_events(10) == [(1, event(0))]


def test_budget_drops_scans_but_never_events(path: Path) -> None:
    """At the limit the budget deletes old non-GMP scans; every event recorded stays."""
    with Spool(path, budget_bytes=300_000, synchronous="NORMAL") as s:
        cur = s.cursor("influx")
        for i in range(1500):
            s.append(scan(i, "fridge", tags=20))
            if i % 10 == 9:
                s.record_event(event(i))
                s.commit()
        assert s.dropped > 0 and s.gaps()
        assert [e.t_ns for _, e in cur.peek_events(1000)] == list(range(9, 1500, 10))
        assert cur.event_lag == 150


def test_event_body_that_is_not_json_is_refused_at_once(spool: Spool) -> None:
    """A body JSON cannot hold fails at the caller, before it could block every commit."""
    cur = spool.cursor("a")
    with pytest.raises(TypeError):
        spool.record_event(Event(1, "audit", "x", {"when": object()}))  # type: ignore[dict-item]
    spool.record_event(event(2))
    spool.commit()
    assert cur.peek_events(10) == [(1, event(2))]


def test_buffered_events_count_in_the_budget(spool: Spool) -> None:
    """A buffered event adds its bytes to the usage the budget reports."""
    before = spool.usage_fraction
    spool.record_event(event(0))
    assert spool.usage_fraction > before


async def test_event_after_close_reaches_the_draining_sinks(path: Path) -> None:
    """An event recorded during the shutdown drain is committed at once and delivered."""
    s = Spool(path, budget_bytes=BIG)
    cur = s.cursor("a")
    s.close()
    s.record_event(event(7, "audit"))
    assert await asyncio.wait_for(cur.wait(), 5) is True
    assert cur.peek_events(10) == [(1, event(7, "audit"))]
    s.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        s.record_event(event(8))


def test_fast_pack_equals_the_general_encoder_and_round_trips() -> None:
    """Every scan shape: the packer's fast paths give the general encoder's bytes exactly."""
    from controller.spool_codec import _PLAIN, _encode_general, pack

    rng = random.Random(2)
    for _ in range(3000):
        n = rng.randrange(0, 25)
        base = rng.randrange(1 << 62)
        samples = []
        for k in range(n):
            kind, t = rng.random(), base + rng.choice([0, 0, 0, 1, 2, -5])
            q = rng.choice(list(Quality))
            if kind < 0.9:
                value = rng.choice([rng.random(), 3.0, -0.0, float("inf")])
                samples.append(Sample(f"t{k}", value, "u", q, t))
            elif kind < 0.95:
                samples.append(Sample(f"t{k}", None, "u", Quality.BAD, t, "why é"))
            else:
                extra = (rng.choice([None, 5]), rng.choice([None, 7]))
                samples.append(Sample(f"t{k}", 1.5, "u", q, t, None, *extra))
        scan = Scan("d", base, tuple(samples), rng.random() < 0.2)
        layout, blob = pack(scan)
        if n and not blob[1] & _PLAIN:
            assert blob == _encode_general(
                scan.samples, int(scan.backfill), samples[0].t_receive_ns
            )
        assert decode("d", base, layout, blob) == scan


def test_an_open_outage_survives_a_crash_and_closes_with_its_gap(path: Path) -> None:
    """Opened: on disk with the next commit. Closed: the row goes in the gap's transaction."""
    s = Spool(path, budget_bytes=BIG)
    s.cursor("mqtt")
    with pytest.raises(KeyError, match="no cursor 'influx'"):
        s.set_outage("influx", OpenOutage(100, "a sink that does not exist"))
    s.set_outage("mqtt", OpenOutage(100, "connection refused"))
    s.set_outage("mqtt", OpenOutage(100, "connection refused"))  # unchanged: nothing to do
    s.commit()
    s._db.close()  # the process dies during the outage
    s._lock.close()
    with Spool(path, budget_bytes=BIG) as again:
        again.cursor("mqtt")
        assert again.open_outage("mqtt") == OpenOutage(100, "connection refused")
        assert again.open_outage("influx") is None
        again.record_gap(Gap(100, 900, "MQTT broker unreachable, delivered late", ("d",), 0))
        again.set_outage("mqtt", None)
        assert again.open_outage("mqtt") is None
        again.commit()
        assert [g.cause for g in again.gaps()] == ["MQTT broker unreachable, delivered late"]
    with Spool(path, budget_bytes=BIG) as third:
        assert third.open_outage("mqtt") is None


# --- review fixes: line breaks, a failing file, retention, GMP streams ---------------------


def test_a_gap_cause_is_kept_on_one_bounded_line(spool: Spool) -> None:
    """A cause quoting an HTTP error page (line breaks, any length) is stored as one line:
    every gap becomes a line-protocol tag, where a line break cannot be written."""
    page = "HTTP 502: <html>\r\n<head><title>502 Bad Gateway</title></head>\r\n" + "x" * 500
    spool.record_gap(Gap(1, 2, page, ("inc1",)))
    spool.commit()
    (gap,) = spool.gaps()
    assert "\n" not in gap.cause and "\r" not in gap.cause
    assert gap.cause.startswith("HTTP 502: <html> <head><title>502 Bad Gateway</title></head> x")
    assert len(gap.cause) == spool_budget.CAUSE_MAX


class FailingDb:
    """The spool's connection, raising a DatabaseError (a corrupt page) on chosen SQL."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.failing: tuple[str, ...] = ()  # statements starting with one of these fail
        self.refused: list[str] = []  # the statements that failed

    def tried_all_reads(self) -> bool:
        """Whether a sink has tried to read scans, gaps and events while they failed."""
        reads = ("FROM scans_gmp WHERE seq >", "FROM gaps WHERE id >", "FROM events WHERE id >")
        return all(any(r in sql for sql in self.refused) for r in reads)

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        self._check(sql)
        return self.db.execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> sqlite3.Cursor:
        self._check(sql)
        return self.db.executemany(sql, *args)

    def _check(self, sql: str) -> None:
        if sql.lstrip().startswith(self.failing):
            self.refused.append(sql)
            raise sqlite3.DatabaseError("database disk image is malformed")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def failing_db(s: Spool) -> FailingDb:
    fake = FailingDb(s._db)
    s._db = fake  # type: ignore[assignment]
    return fake


def test_a_corrupt_file_fails_commits_and_keeps_the_scans(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLITE_CORRUPT is a DatabaseError, not an OperationalError: it is rolled back like a
    full disk, the scans stay buffered, `failing` says why, and nothing is raised."""
    with Spool(path, budget_bytes=BIG) as s:
        cur = s.cursor("a")
        s.append(scan(0))
        s.commit()
        fake = failing_db(s)
        fake.failing = ("INSERT INTO scans",)
        s.append(scan(1))
        with caplog.at_level(logging.ERROR):
            assert s.commit() == 0
            assert s.commit() == 0
        assert not fake.db.in_transaction  # rolled back, not left open
        assert s.failing and s.failure is not None and "malformed" in s.failure
        assert s.buffered == 1 and cur.lag == 1
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "malformed" in errors[0]
        fake.failing = ()
        assert s.commit() == 1
        assert not s.failing and s.failure is None
        assert [x.t_scan_ns for _, x in cur.peek(10)] == [0, 1]


def test_a_really_corrupt_freelist_does_not_stop_the_flusher(path: Path) -> None:
    """The reviewer's case: a damaged free-list page that the next insert allocates."""
    with Spool(path, budget_bytes=BIG) as s:
        cur = s.cursor("a")
        for i in range(3000):
            s.append(scan(i, tags=20))
        s.commit()
        cur.ack(s.committed_seq)
        while s.commit() or s.cleanup_pending:
            pass
    raw = bytearray(path.read_bytes())
    page = int.from_bytes(raw[16:18], "big") or 65536
    trunk = int.from_bytes(raw[32:36], "big")
    assert trunk > 0
    raw[(trunk - 1) * page : (trunk - 1) * page + 8] = (0).to_bytes(4, "big") + (
        0xFFFFFFF0
    ).to_bytes(4, "big")  # the trunk claims four billion leaves
    path.write_bytes(raw)
    with Spool(path, budget_bytes=BIG) as s:
        s.cursor("a")
        for i in range(2000):
            s.append(scan(i, tags=20))
        assert s.commit() == 0  # raised sqlite3.DatabaseError out of commit before
        assert s.failing and not s._db.in_transaction and s.buffered == 2000


def test_a_failed_read_gives_the_sinks_nothing_and_flags_failing(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Sinks read backlogs, gaps and events from disk: a failed read is an empty answer (the
    sink retries), logged once and flagged as `failing`, never an exception in the sink."""
    with Spool(path, budget_bytes=BIG, cache_scans=1) as s:
        cur = s.cursor("a")
        for i in range(3):
            s.append(scan(i))
        s.record_gap(Gap(1, 2, "daemon down", ("dev",)))
        s.record_event(event(5))
        s.commit()
        fake = failing_db(s)
        fake.failing = ("SELECT",)
        with caplog.at_level(logging.ERROR):
            assert cur.peek(10) == []
            assert cur.peek_gaps(10) == []
            assert cur.peek_events(10) == []
        assert (cur.lag, cur.gap_lag, cur.event_lag) == (3, 1, 1)
        assert s.failing and s.failure is not None and "malformed" in s.failure
        assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
        fake.failing = ()
        assert [x.t_scan_ns for _, x in cur.peek(10)] == [0, 1, 2]
        assert not s.failing


def test_a_failed_measure_after_commit_keeps_the_commit_whole(path: Path) -> None:
    """The commit happened even if reading the page counts after it fails: the in-memory
    state is complete (nothing still buffered, cursors see it) and the next commit works."""
    with Spool(path, budget_bytes=BIG) as s:
        cur = s.cursor("a")
        fake = failing_db(s)
        fake.failing = ("PRAGMA freelist_count",)
        s.append(scan(0, tags=20))
        assert s.commit() == 1
        assert s.buffered == 0 and cur.lag == 1 and s.budget.pending == 0
        assert s.budget.used > 0  # the estimate until it can be measured again
        fake.failing = ()
        s.append(scan(1))
        assert s.commit() == 1 and not s.failing


def test_only_configured_sinks_hold_data_back(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A cursor stored by a sink that is no longer configured holds nothing back: the
    configured sink's acks release GMP scans, so live GMP scans are never refused. The
    stale cursor is named at start and kept, so adding the sink again resumes there."""
    with Spool(path, budget_bytes=2_000_000, gmp_devices=["br1"]) as s:
        s.cursor("influx")
        s.cursor("mqtt")
        s.commit()
    with (
        caplog.at_level(logging.WARNING),
        Spool(path, budget_bytes=2_000_000, gmp_devices=["br1"]) as s,
    ):
        influx = s.cursor("influx")  # [mqtt] was removed from the site file
        for i in range(20_000):
            s.append(scan(i, "br1", tags=20))  # raised SpoolFull before: mqtt held it all
            if i % 100 == 99:
                s.commit()
                influx.ack(s.committed_seq)
        s.commit()
        assert s.usage_fraction < 0.5
        assert s.cursor_names() == ["influx", "mqtt"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "not configured: mqtt" in warnings[0]
    with Spool(path, budget_bytes=2_000_000) as s:
        assert s.cursor("mqtt").acked == 0  # resumes where it was (what is left of it)


def test_without_an_opened_cursor_every_stored_one_holds_data(path: Path) -> None:
    """A tool that opens the file without opening a sink's cursor deletes nothing; a run
    that configures only `a` lets `a`'s acks release the scans."""
    with Spool(path, budget_bytes=BIG) as s:
        a = s.cursor("a")
        s.cursor("b")
        for i in range(5):
            s.append(scan(i))
        s.commit()
        a.ack(5)
        s.commit()
        assert len(s.items_after(0, 10)) == 5  # b has not had them
    with Spool(path, budget_bytes=BIG) as s:
        s.record_gap(Gap(1, 2, "daemon down", ()))
        s.commit()
        assert len(s.items_after(0, 10)) == 5
    with Spool(path, budget_bytes=BIG) as s:
        s.cursor("a")
        s.record_gap(Gap(3, 4, "daemon down", ()))
        s.commit()
        assert s.items_after(0, 10) == []


def test_a_gmp_devices_loop_streams_are_gmp_too(path: Path) -> None:
    """`br-1.temp` (a loop of br-1) is kept like br-1; `br-10` is another device."""
    with Spool(path, budget_bytes=BIG) as s:
        s.cursor("a")
        for i, name in enumerate(("br-1", "br-1.temp", "br-10", "room.A")):
            s.append(scan(i, name))
        s.commit()
    with Spool(path, budget_bytes=BIG, gmp_devices={"br-1", "room.A"}) as s:
        kept = [d for (d,) in s._db.execute("SELECT device FROM scans_gmp ORDER BY seq")]
        assert kept == ["br-1", "br-1.temp", "room.A"]  # re-applied to the held scans
        s.append(scan(9, "br-1.pressure"))
        s.append(scan(10, "br-10.temp"))
        s.commit()
        kept = [d for (d,) in s._db.execute("SELECT device FROM scans_gmp ORDER BY seq")]
        assert kept == ["br-1", "br-1.temp", "room.A", "br-1.pressure"]
