"""Virtual monotonic time, for code that schedules on a clock it is given (backoffs)."""

from __future__ import annotations


class Clock:
    """A monotonic clock the test moves by hand: `clock.t += 10.0`."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t
