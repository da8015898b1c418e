"""systemd's watchdog, fed only while every poller, loop group and sink makes progress.

A task that hangs (a read that never returns, a deadlocked sink) would leave a daemon that
looks alive to systemd and records nothing: the worst kind of silent loss. Each component
promises, every time it goes round its loop, the monotonic time by which it will come round
again (`beat(name, within_s)`): a poller one period plus its timeout, a sink its next retry
plus its timeout. A sink whose server is down keeps coming round its retry loop, so it is
alive; only a component that stops coming round is stuck. While anything is overdue the
watchdog stops sending `WATCHDOG=1`, says which component in the log and in `STATUS=`, and
systemd kills and restarts the service (`WatchdogSec=`, `Restart=on-failure`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

from controller import sdnotify
from controller.cancel import wait_at_most

log = logging.getLogger(__name__)


class Liveness:
    """The promises of every component: name -> monotonic deadline of its next beat."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._due: dict[str, float] = {}

    def beat(self, name: str, within_s: float) -> None:
        """`name` went round its loop and will again within `within_s` seconds."""
        self._due[name] = self._clock() + within_s

    def done(self, name: str) -> None:
        """`name` ended on purpose (shutdown): no longer watched."""
        self._due.pop(name, None)

    def overdue(self) -> list[str]:
        """Components past their promise, most overdue first."""
        now = self._clock()
        late = [(due, name) for name, due in self._due.items() if due < now]
        return [name for _, name in sorted(late)]


def watchdog_interval_s(env: dict[str, str] | None = None) -> float | None:
    """Half of systemd's WATCHDOG_USEC (as sd_watchdog_enabled advises), or None if off."""
    env = dict(os.environ) if env is None else env
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    if not usec.isdigit():
        log.error("WATCHDOG_USEC=%r is not a number: watchdog not fed", usec)
        return None
    return max(0.01, int(usec) / 2e6)


async def feed(liveness: Liveness, interval_s: float, stop: asyncio.Event) -> None:
    """Send WATCHDOG=1 every `interval_s` while nothing is overdue, until `stop`."""
    stuck: list[str] = []
    while not stop.is_set():
        late = liveness.overdue()
        if late and late != stuck:
            log.error("watchdog: not fed, no progress from %s", ", ".join(late))
            sdnotify.notify(f"STATUS=stuck: {', '.join(late)}")
        elif not late and stuck:
            log.info("watchdog: progress again from %s", ", ".join(stuck))
        if not late:
            sdnotify.notify("WATCHDOG=1")
        stuck = late
        await wait_at_most(stop.wait(), interval_s)


class Heart:
    """One component's beats; a no-op without a Liveness (tests, benches, no systemd)."""

    def __init__(self, liveness: Liveness | None, name: str) -> None:
        self._live = liveness
        self.name = name

    def busy(self, within_s: float) -> None:
        """Working: will come round again within `within_s`."""
        if self._live is not None:
            self._live.beat(self.name, within_s)

    def idle(self) -> None:
        """Waiting for work that others produce: not something that can hang."""
        if self._live is not None:
            self._live.done(self.name)
