"""Log on transitions only: the first failure, a change of reason, and the recovery.

A dead device polled every second must not write a line a second to the journal; it
writes one line when it fails and one when it comes back, with the outage length and
the number of failed reads in between.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class TransitionLog:
    """Tracks one condition per key (a device link, a tag) and logs only its changes."""

    def __init__(
        self,
        logger: logging.Logger,
        subject: str,
        clock: Callable[[], float] = time.monotonic,
        attempts: str = "reads",
    ) -> None:
        self._attempts = attempts
        self._log = logger
        self._subject = subject
        self._clock = clock
        self._failing: dict[str, tuple[str, float, int]] = {}

    @property
    def any_failing(self) -> bool:
        """True while any key is in a failed state."""
        return bool(self._failing)

    def failing(self, key: str) -> bool:
        """True while `key` is in a failed state."""
        return key in self._failing

    def fail(self, key: str, reason: str) -> None:
        """Record a failure of `key`; logs when it starts or its reason changes."""
        previous = self._failing.get(key)
        if previous is None or previous[0] != reason:
            self._log.warning("%s %s: %s", self._subject, key, reason)
            since = previous[1] if previous else self._clock()
            self._failing[key] = (reason, since, 1)
        else:
            self._failing[key] = (reason, previous[1], previous[2] + 1)

    def ok(self, key: str) -> None:
        """Record a success of `key`; logs the recovery if it was failing."""
        previous = self._failing.pop(key, None)
        if previous is not None:
            self._log.info(
                "%s %s: recovered after %.1f s (%d failed %s, last: %s)",
                self._subject,
                key,
                self._clock() - previous[1],
                previous[2],
                self._attempts,
                previous[0],
            )
