"""A sink's outage as a recorded span: when the far side was unreachable, and why.

Nothing is lost while a sink is down (the spool keeps it and the sink delivers it late),
but a dashboard or an InfluxDB query during that time saw nothing: ALCOA+ "complete"
asks that this be visible as data, so the span goes on the stream as a gap whose cause
says the data were delivered late, not lost.
"""

from __future__ import annotations

from collections.abc import Callable

from controller.spool_budget import Gap
from drivers.sample import utc_now_ns


class Outage:
    """Tracks one sink's unreachable span; reports it once the sink delivers again."""

    def __init__(
        self,
        name: str,
        devices: tuple[str, ...],
        report: Callable[[Gap], None] | None,
        clock_ns: Callable[[], int] = utc_now_ns,
    ) -> None:
        self._name = name
        self._devices = devices
        self._report = report
        self._clock = clock_ns
        self._since_ns: int | None = None
        self._reason = ""
        self.reported = 0

    def failed(self, reason: str) -> None:
        """The far side refused or could not be reached (the first failure opens the span)."""
        if self._since_ns is None:
            self._since_ns = self._clock()
        self._reason = reason

    def delivered(self) -> None:
        """The far side accepted something: close and report the span, if one is open."""
        if self._since_ns is None:
            return
        start, self._since_ns = self._since_ns, None
        if self._report is not None:
            cause = f"{self._name} unreachable, delivered late: {self._reason}"[:200]
            self._report(Gap(start, self._clock(), cause, self._devices, 0))
            self.reported += 1
