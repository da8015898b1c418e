"""Exponential reconnect backoff with jitter, on the monotonic clock.

Jitter keeps a dozen devices that lost the same switch from reconnecting in lock-step.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

MAX_EXPONENT = 1023  # 2.0**1023 is the largest power of two a float holds


class Backoff:
    """Tells when the next attempt is due; doubles the wait after every failure."""

    def __init__(
        self,
        min_s: float,
        max_s: float,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._min, self._max = min_s, max(max_s, min_s)
        self._doublings = _doublings_to_max(self._min, self._max)
        self._rng = rng or random.Random()
        self._clock = clock
        self._failures = 0
        self._due = 0.0

    @property
    def failures(self) -> int:
        """Consecutive failed attempts since the last success."""
        return self._failures

    def ready(self) -> bool:
        """True when an attempt may be made now."""
        return self._clock() >= self._due

    def remaining_s(self) -> float:
        """Seconds until the next attempt is due (0 when due)."""
        return max(0.0, self._due - self._clock())

    def failed(self) -> float:
        """Record a failure; returns the wait before the next attempt."""
        base = min(self._max, self._min * 2.0 ** min(self._failures, self._doublings))
        self._failures += 1
        wait = base * self._rng.uniform(0.5, 1.0)
        self._due = self._clock() + wait
        return wait

    def succeeded(self) -> None:
        """Record a success: the next failure waits the minimum again."""
        self._failures = 0
        self._due = 0.0


def _doublings_to_max(min_s: float, max_s: float) -> int:
    """Doublings that take min_s to max_s: `failed()` caps the exponent there, because any
    more would be clamped anyway and 2.0**1024 raises OverflowError (~6 h of failures)."""
    ratio = max_s / min_s if min_s > 0.0 else 1.0
    if not math.isfinite(ratio):  # an unbounded max: the largest exponent a float holds
        return MAX_EXPONENT
    return min(MAX_EXPONENT, max(0, math.ceil(math.log2(ratio))))
