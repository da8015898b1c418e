"""The journal between pollers and sinks: ordered, per-sink cursors, drained on close."""

from __future__ import annotations

import asyncio

import pytest

from controller.journal import Journal
from controller.spool_events import Event
from drivers.sample import Sample, Scan


def scan(i: int) -> Scan:
    return Scan("dev", i, (Sample.good("t", float(i), "u", i),))


def test_cursors_are_independent() -> None:
    """A sink that acked does not move another sink's position."""
    journal = Journal(100)
    a, b = journal.cursor("a"), journal.cursor("b")
    for i in range(5):
        journal.append(scan(i))
    a.ack(a.peek(3)[-1][0])
    assert [s.t_scan_ns for _, s in a.peek(10)] == [3, 4]
    assert [s.t_scan_ns for _, s in b.peek(10)] == [0, 1, 2, 3, 4]
    assert (a.lag, b.lag) == (2, 5)


def test_peek_returns_the_same_until_acked() -> None:
    """A failed delivery retries exactly the same scans, in order."""
    journal = Journal(100)
    cur = journal.cursor("a")
    for i in range(3):
        journal.append(scan(i))
    assert cur.peek(2) == cur.peek(2)
    cur.ack(cur.peek(2)[-1][0])
    assert [s.t_scan_ns for _, s in cur.peek(2)] == [2]


def test_overflow_counts_only_scans_a_sink_never_got() -> None:
    """Past max_scans the oldest unacked scan is dropped and counted as lost."""
    journal = Journal(100)
    cur = journal.cursor("slow")
    for i in range(150):
        journal.append(scan(i))
    assert journal.dropped == 50
    assert cur.peek(1)[0][1].t_scan_ns == 50


def test_nothing_is_held_without_consumers() -> None:
    """With no sink configured (the demo) scans are numbered but not held, and not 'lost'."""
    journal = Journal(100)
    for i in range(150):
        journal.append(scan(i))
    assert journal.dropped == 0
    assert journal.last_seq == 150
    assert journal.items_after(0, 10) == []


def test_ack_trims_what_every_cursor_has() -> None:
    """Memory is released once all sinks acked a scan."""
    journal = Journal(100)
    a, b = journal.cursor("a"), journal.cursor("b")
    for i in range(4):
        journal.append(scan(i))
    a.ack(4)
    assert len(journal.items_after(0, 10)) == 4
    b.ack(2)
    assert len(journal.items_after(0, 10)) == 2


async def test_wait_wakes_on_append_and_ends_on_close() -> None:
    """A sink waiting for data wakes on append and learns the end after close + drain."""
    journal = Journal(100)
    cur = journal.cursor("a")
    waiter = asyncio.create_task(cur.wait())
    await asyncio.sleep(0)  # let the waiter block: this is ordering, not timing
    assert not waiter.done()
    journal.append(scan(1))
    assert await waiter is True
    journal.close()
    assert await cur.wait() is True  # still one pending
    cur.ack(1)
    assert await cur.wait() is False
    with pytest.raises(RuntimeError):
        journal.append(scan(2))


def test_duplicate_cursor_name_is_an_error() -> None:
    """Two sinks cannot share a position by accident."""
    journal = Journal(100)
    journal.cursor("a")
    with pytest.raises(ValueError, match="exists"):
        journal.cursor("a")


def test_events_have_their_own_positions_and_wake_a_waiting_sink() -> None:
    """Events are kept per cursor until acked, apart from scans, and count for `wait`."""
    journal = Journal(100)
    journal.record_event(Event(1, "audit", "nobody", {}))  # no consumer: nobody keeps it
    a = journal.cursor("a")
    assert (a.event_lag, a.peek_events(10)) == (0, [])
    journal.record_event(Event(2, "alarm", "A1", {"state": "active"}))
    journal.append(scan(0))
    assert a.peek_events(10) == [(2, Event(2, "alarm", "A1", {"state": "active"}))]
    a.ack(1)
    assert (a.lag, a.event_lag) == (0, 1)
    a.ack_event(2)
    assert (a.event_lag, journal.events_after(0, 10)) == (0, [])
