"""The ordered record of scans between the pollers and the sinks, one cursor per sink.

Every scan is appended once, in order, and each sink forwards from its own cursor and acks
what the far side accepted, so a slow or unreachable sink never blocks polling or another
sink. This in-memory journal keeps `max_scans`; the daemon runs the durable disk spool
(`controller/spool.py`) with the same interface, events included; this one serves tools
and tests.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from controller.spool_budget import Gap
from controller.spool_events import Event
from drivers.sample import Scan

log = logging.getLogger(__name__)


class Journal:
    """Append-only sequence of scans; trimmed once every cursor has acked past them."""

    def __init__(self, max_scans: int) -> None:
        self._max = max_scans
        self._items: deque[tuple[int, Scan]] = deque()
        self._events: deque[tuple[int, Event]] = deque()
        self._last_event = 0
        self._next_seq = 1
        self._cursors: dict[str, Cursor] = {}
        self._changed = asyncio.Event()
        self._closed = False
        self.dropped = 0

    @property
    def closed(self) -> bool:
        """True once no more scans will be appended (shutdown)."""
        return self._closed

    @property
    def last_seq(self) -> int:
        """Sequence number of the newest scan (0 before the first)."""
        return self._next_seq - 1

    def cursor(self, name: str) -> Cursor:
        """A new cursor for one consumer, starting at the oldest scan still held."""
        if name in self._cursors:
            raise ValueError(f"journal cursor {name!r} exists already")
        start = self._items[0][0] - 1 if self._items else self.last_seq
        event_start = self._events[0][0] - 1 if self._events else self._last_event
        cur = Cursor(self, name, start, event_start)
        self._cursors[name] = cur
        return cur

    def append(self, scan: Scan) -> int:
        """Add a scan; returns its sequence number."""
        if self._closed:
            raise RuntimeError("journal is closed")
        seq = self._next_seq
        self._next_seq += 1
        if self._cursors:  # with no consumer there is nobody to keep it for
            self._items.append((seq, scan))
            if len(self._items) > self._max:
                self._drop_oldest()
        self._wake()
        return seq

    def record_event(self, event: Event) -> None:
        """Add an event (kept until every cursor acked it; never dropped for room)."""
        self._last_event += 1
        if self._cursors:  # as for scans: with no consumer there is nobody to keep it for
            self._events.append((self._last_event, event))
        self._wake()

    @property
    def last_event_id(self) -> int:
        """Id of the newest event (0 before the first)."""
        return self._last_event

    def events_after(self, event_id: int, limit: int) -> list[tuple[int, Event]]:
        """Up to `limit` events with an id above `event_id`, oldest first."""
        if not self._events or limit <= 0:
            return []
        start = max(0, event_id + 1 - self._events[0][0])
        return [self._events[i] for i in range(start, min(len(self._events), start + limit))]

    def close(self) -> None:
        """No more appends: cursors drain what is left, then report the end."""
        self._closed = True
        self._wake()

    def items_after(self, seq: int, limit: int) -> list[tuple[int, Scan]]:
        """Up to `limit` scans with a sequence number above `seq`, oldest first."""
        if not self._items:
            return []
        first = self._items[0][0]
        start = max(0, seq + 1 - first)
        return [self._items[i] for i in range(start, min(len(self._items), start + limit))]

    def trim(self) -> None:
        """Forget scans and events every cursor has acked."""
        if not self._cursors:
            return
        low = min(c.acked for c in self._cursors.values())
        while self._items and self._items[0][0] <= low:
            self._items.popleft()
        low_event = min(c.event_acked for c in self._cursors.values())
        while self._events and self._events[0][0] <= low_event:
            self._events.popleft()

    async def changed(self) -> None:
        """Wait for the next append or the close."""
        await self._changed.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _drop_oldest(self) -> None:
        seq, scan = self._items.popleft()
        if min(c.acked for c in self._cursors.values()) >= seq:
            return  # every consumer has it: plain retention, not a loss
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.error(
                "journal full (%d scans): dropped scan %d of %s; %d dropped so far "
                "(a sink is down for longer than the journal holds)",
                self._max,
                seq,
                scan.device,
                self.dropped,
            )


class Cursor:
    """One consumer's position: `peek` what is pending, `ack` what the far side accepted."""

    def __init__(self, journal: Journal, name: str, acked: int, event_acked: int = 0) -> None:
        self._journal = journal
        self.name = name
        self.acked = acked
        self.event_acked = event_acked

    @property
    def closed(self) -> bool:
        """True once the journal takes no more scans (shutdown has begun)."""
        return self._journal.closed

    async def changed(self) -> None:
        """Wait for the next append or the close."""
        await self._journal.changed()

    @property
    def lag(self) -> int:
        """Scans appended but not yet acked by this consumer."""
        return self._journal.last_seq - self.acked

    async def wait(self) -> bool:
        """Wait until a scan or event is pending; False when closed and all drained.

        True does not mean `peek` has scans: it may be only events (check the lags).
        """
        while self.lag == 0 and self.event_lag == 0:
            if self._journal.closed:
                return False
            await self._journal.changed()
        return True

    def peek(self, limit: int) -> list[tuple[int, Scan]]:
        """Up to `limit` pending scans, oldest first (the same ones until acked)."""
        return self._journal.items_after(self.acked, limit)

    def peek_after(self, seq: int, limit: int) -> list[tuple[int, Scan]]:
        """Up to `limit` pending scans after `seq` (the live end during a backlog); no ack."""
        return self._journal.items_after(max(seq, self.acked), limit)

    def ack(self, seq: int) -> None:
        """Everything up to and including `seq` is delivered."""
        if seq > self.acked:
            self.acked = seq
            self._journal.trim()

    @property
    def gap_lag(self) -> int:
        """The in-memory journal records no gaps (it loses them with everything else)."""
        return 0

    def peek_gaps(self, limit: int) -> list[tuple[int, Gap]]:
        """None: see `gap_lag`."""
        return []

    def ack_gap(self, gap_id: int) -> None:
        """Nothing to acknowledge."""

    @property
    def event_lag(self) -> int:
        """Events recorded but not yet acked by this consumer."""
        return self._journal.last_event_id - self.event_acked

    def peek_events(self, limit: int) -> list[tuple[int, Event]]:
        """Up to `limit` pending events, oldest first (the same ones until acked)."""
        return self._journal.events_after(self.event_acked, limit)

    def ack_event(self, event_id: int) -> None:
        """Events up to and including `event_id` are delivered."""
        if event_id > self.event_acked:
            self.event_acked = min(event_id, self._journal.last_event_id)
            self._journal.trim()
