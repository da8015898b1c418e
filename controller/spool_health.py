"""What of the spool's file is failing now, and the log lines on each transition.

Commits, the sinks' reads, checkpoints and size measurements fail independently (a full
disk, an I/O error, a corrupt page). Each is logged once when it starts failing and once
when it works again; `failure` is what the built-in `cellfab.spool_failing` alarm and the
health document report. No I/O here: the spool calls in with what happened.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("controller.spool")  # the spool's own log lines, as before


class SpoolHealth:
    """Failure state of one spool file: commits, reads, checkpoints, measurements."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self._path = path
        self._clock = clock
        self._commit_since: float | None = None
        self._commit_error = ""
        self._read_error: str | None = None
        self._checkpoint_failing = False
        self._measure_failing = False

    @property
    def failing(self) -> bool:
        """True while commits or the sinks' reads fail: scans stay buffered, sinks wait."""
        return self.failure is not None

    @property
    def failure(self) -> str | None:
        """Why the spool is `failing` (the latest error); None if it is not."""
        if self._commit_since is not None:
            return f"commit failed: {self._commit_error}"
        return self._read_error

    def commit_failed(self, exc: Exception, pending: int, max_buffered: int) -> None:
        self._commit_error = str(exc)
        if self._commit_since is None:
            self._commit_since = self._clock()
            log.error(
                "spool %s: commit failed (%s): %d scans kept in memory (at most %d) and retried",
                self._path,
                exc,
                pending,
                max_buffered,
            )

    def commit_ok(self) -> None:
        if self._commit_since is not None:
            log.info(
                "spool %s: commits succeed again after %.1f s",
                self._path,
                self._clock() - self._commit_since,
            )
            self._commit_since = None

    def read_failed(self, what: str, exc: Exception) -> None:
        """A sink's read failed: said once; the sinks get nothing for now and retry."""
        if self._read_error is None:
            log.error(
                "spool %s: reading %s for the sinks failed (%s); they wait and retry",
                self._path,
                what,
                exc,
            )
        self._read_error = f"read of {what} failed: {exc}"

    def read_ok(self) -> None:
        if self._read_error is not None:
            log.info("spool %s: reads succeed again", self._path)
            self._read_error = None

    def checkpoint_failed(self, exc: Exception) -> None:
        if not self._checkpoint_failing:
            log.error("spool %s: checkpoint failed (%s); retried", self._path, exc)
        self._checkpoint_failing = True

    def checkpoint_ok(self) -> None:
        if self._checkpoint_failing:
            log.info("spool %s: checkpoints succeed again", self._path)
        self._checkpoint_failing = False

    def measure_failed(self, exc: Exception) -> None:
        """The file's size could not be re-read after a commit: the estimate stands."""
        if not self._measure_failing:
            log.error("spool %s: cannot measure the file (%s)", self._path, exc)
        self._measure_failing = True

    def measure_ok(self) -> None:
        self._measure_failing = False
