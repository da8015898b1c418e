"""The interface between the hub and the sinks: an ordered stream of scans, a cursor per sink.

`controller/spool.py` (durable, what the daemon runs) and `controller/journal.py` (in
memory, for tools and tests that need no disk) both provide it. A cursor also carries the
gaps the stream recorded (spans of missing data with their cause) and its events (alarm
transitions, audit records, ...), each with its own position, forwarded like data. `wait`
returns True when any of the three is pending, so a sink checks each lag.
"""

from __future__ import annotations

from typing import Protocol

from controller.spool_budget import Gap
from controller.spool_events import Event
from drivers.sample import Scan


class StreamCursor(Protocol):
    """One consumer's position: `peek` what is pending, `ack` what the far side accepted."""

    name: str
    acked: int

    @property
    def closed(self) -> bool: ...

    @property
    def lag(self) -> int: ...

    @property
    def gap_lag(self) -> int: ...

    @property
    def event_lag(self) -> int: ...

    async def changed(self) -> None: ...

    async def wait(self) -> bool: ...

    def peek(self, limit: int) -> list[tuple[int, Scan]]: ...

    def peek_after(self, seq: int, limit: int) -> list[tuple[int, Scan]]: ...

    def ack(self, seq: int) -> None: ...

    def peek_gaps(self, limit: int) -> list[tuple[int, Gap]]: ...

    def ack_gap(self, gap_id: int) -> None: ...

    def peek_events(self, limit: int) -> list[tuple[int, Event]]: ...

    def ack_event(self, event_id: int) -> None: ...


class Stream(Protocol):
    """Where the hub appends: ordered, one sequence number per scan."""

    @property
    def closed(self) -> bool: ...

    @property
    def last_seq(self) -> int: ...

    @property
    def dropped(self) -> int: ...

    def append(self, scan: Scan) -> int: ...

    def record_event(self, event: Event) -> None: ...

    def close(self) -> None: ...

    async def changed(self) -> None: ...
