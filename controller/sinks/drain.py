"""The shutdown drain deadline every sink shares.

Once the journal closes, a sink gets `timeout_s` to deliver what is pending; waits for a
retry or a reconnect are cut short by that deadline so shutdown never hangs on a dead server.
"""

from __future__ import annotations

import math
import time

from controller.cancel import wait_at_most
from controller.stream import StreamCursor as Cursor


class DrainDeadline:
    """Starts counting when the cursor's journal closes; `pause` waits within it."""

    def __init__(self, cursor: Cursor, timeout_s: float) -> None:
        self._cursor = cursor
        self._timeout_s = timeout_s
        self._until: float | None = None

    def expired(self) -> bool:
        """True once the journal is closed and the drain time is used up."""
        if self._until is None and self._cursor.closed:
            self._until = time.monotonic() + self._timeout_s
        return self._until is not None and time.monotonic() >= self._until

    async def pause(self, wait_s: float) -> bool:
        """Wait `wait_s`, cut short by the deadline; False once the deadline has passed."""
        end = time.monotonic() + wait_s
        while not self.expired():
            left = min(end, self._until or math.inf) - time.monotonic()
            if left <= 0:
                return True
            await wait_at_most(self._cursor.changed(), left)  # a close starts the clock
        return False
