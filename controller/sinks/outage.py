"""A sink's outage as a recorded span: when the far side was unreachable, and why.

Nothing is lost while a sink is down (the spool keeps it and the sink delivers it late),
but a dashboard or an InfluxDB query during that time saw nothing: ALCOA+ "complete"
asks that this be visible as data, so the span goes on the stream as a gap whose cause
says the data were delivered late, not lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from controller.spool_budget import Gap, one_line
from controller.spool_outages import OpenOutage
from drivers.sample import utc_now_ns

log = logging.getLogger(__name__)


class OutageMemory(Protocol):
    """Where an open span survives a restart (the spool; `controller/spool_outages.py`)."""

    def open_outage(self, sink: str) -> OpenOutage | None: ...
    def set_outage(self, sink: str, span: OpenOutage | None) -> None: ...


class Outage:
    """Tracks one sink's unreachable span; reports it once the sink delivers again."""

    def __init__(
        self,
        name: str,
        devices: tuple[str, ...],
        report: Callable[[Gap], None] | None,
        clock_ns: Callable[[], int] = utc_now_ns,
        *,
        memory: OutageMemory | None = None,
        key: str = "",
    ) -> None:
        """`memory` and `key` (the sink's cursor name): an open span outlives a restart."""
        self._name = name
        self._devices = devices  # what the open (or next) span covers
        self._current = devices  # the site's streams now
        self._report = report
        self._clock = clock_ns
        self._memory = memory
        self._key = key or name
        self._since_ns: int | None = None
        self._reason = ""
        self.reported = 0
        span = memory.open_outage(self._key) if memory is not None else None
        if span is not None:
            self._since_ns, self._reason = span.since_ns, one_line(span.reason)
            log.warning("%s: outage open since before the restart (%s)", name, span.reason)

    def follow(self, devices: tuple[str, ...]) -> None:
        """The site's streams after a reload: a span open now covers the old and the new."""
        self._current = devices
        if self._since_ns is None:
            self._devices = devices
        else:
            self._devices = (*self._devices, *(d for d in devices if d not in self._devices))

    def failed(self, reason: str) -> None:
        """The far side refused or could not be reached (the first failure opens the span).

        The reason is kept as one bounded line: an HTTP error page (a proxy's 502) or a
        library's multi-line message would otherwise reach line protocol in the gap's cause.
        """
        if self._since_ns is None:
            self._since_ns = self._clock()
        self._reason = one_line(reason)
        if self._memory is not None:
            self._memory.set_outage(self._key, OpenOutage(self._since_ns, self._reason))

    def delivered(self) -> None:
        """The far side accepted something: close and report the span, if one is open."""
        if self._since_ns is None:
            return
        start, self._since_ns = self._since_ns, None
        if self._report is not None:
            cause = one_line(f"{self._name} unreachable, delivered late: {self._reason}")
            self._report(Gap(start, self._clock(), cause, self._devices, 0))
            self.reported += 1
        self._devices = self._current
        if self._memory is not None:  # with the gap's commit: recorded and closed at once
            self._memory.set_outage(self._key, None)
