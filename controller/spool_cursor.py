"""A sink's durable position in the spool: what it has delivered, and what is pending.

Scans, gaps and events each have their own position; an ack is persisted with the
spool's next commit, so after a crash a sink gets again what it had not acked (at least
once, in order). Split from `controller/spool.py`, which owns the file.
"""

from __future__ import annotations

from typing import Protocol

from controller.spool_budget import Gap
from controller.spool_events import Event
from drivers.sample import Scan


class CursorHost(Protocol):
    """What a cursor reads from its spool (`controller.spool.Spool`)."""

    @property
    def closed(self) -> bool: ...
    @property
    def committed_seq(self) -> int: ...
    @property
    def last_gap_id(self) -> int: ...
    @property
    def last_event_id(self) -> int: ...
    async def changed(self) -> None: ...
    def items_after(self, seq: int, limit: int) -> list[tuple[int, Scan]]: ...
    def gaps_after(self, gap_id: int, limit: int) -> list[tuple[int, Gap]]: ...
    def events_after(self, event_id: int, limit: int) -> list[tuple[int, Event]]: ...
    def position_moved(self) -> None: ...


class SpoolCursor:
    """One consumer's durable position: `peek` what is pending, `ack` what was delivered."""

    def __init__(
        self, spool: CursorHost, name: str, acked: int, gap_acked: int, event_acked: int = 0
    ) -> None:
        self._spool = spool
        self.name = name
        self.acked = acked
        self.gap_acked = gap_acked
        self.event_acked = event_acked
        self.dirty = False  # an ack not yet persisted (it is, with the next commit)

    @property
    def closed(self) -> bool:
        """True once the spool takes no more scans (shutdown has begun)."""
        return self._spool.closed

    async def changed(self) -> None:
        """Wait for the next commit or the close."""
        await self._spool.changed()

    @property
    def lag(self) -> int:
        """Committed scans not yet acked (a span: scans the budget dropped count until passed)."""
        return self._spool.committed_seq - self.acked

    @property
    def gap_lag(self) -> int:
        """Committed gaps not yet acked."""
        return self._spool.last_gap_id - self.gap_acked

    @property
    def event_lag(self) -> int:
        """Committed events not yet acked."""
        return self._spool.last_event_id - self.event_acked

    async def wait(self) -> bool:
        """Wait until a scan, gap or event is pending; False when closed and all drained.

        True does not mean `peek` has scans: it may be only gaps or events (check the lags).
        """
        while self.lag == 0 and self.gap_lag == 0 and self.event_lag == 0:
            if self._spool.closed:
                return False
            await self._spool.changed()
        return True

    def peek(self, limit: int) -> list[tuple[int, Scan]]:
        """Up to `limit` pending scans, oldest first (the same ones until acked)."""
        return self._spool.items_after(self.acked, limit)

    def peek_after(self, seq: int, limit: int) -> list[tuple[int, Scan]]:
        """Up to `limit` pending scans after `seq` (the live end during a backlog); no ack."""
        return self._spool.items_after(max(seq, self.acked), limit)

    def ack(self, seq: int) -> None:
        """Everything up to and including `seq` is delivered (persisted with the next commit)."""
        if seq > self.acked:
            self.acked = min(seq, self._spool.committed_seq)
            self._mark()

    def peek_gaps(self, limit: int) -> list[tuple[int, Gap]]:
        """Up to `limit` committed gaps not yet acked, oldest first."""
        return self._spool.gaps_after(self.gap_acked, limit)

    def ack_gap(self, gap_id: int) -> None:
        """Gaps up to and including `gap_id` are delivered."""
        if gap_id > self.gap_acked:
            self.gap_acked = gap_id
            self._mark()

    def peek_events(self, limit: int) -> list[tuple[int, Event]]:
        """Up to `limit` committed events not yet acked, oldest first (the same until acked)."""
        return self._spool.events_after(self.event_acked, limit)

    def ack_event(self, event_id: int) -> None:
        """Events up to and including `event_id` are delivered (persisted with the next commit)."""
        if event_id > self.event_acked:
            self.event_acked = min(event_id, self._spool.last_event_id)
            self._mark()

    def _mark(self) -> None:
        self.dirty = True
        self._spool.position_moved()
