"""A device that gives no good reading at all is a gap in its record: say so, as a record.

Every scan of an unreachable device is kept (bad quality, with the reason), so nothing is
lost; but "no usable data from inc-1 from 10:02:11 to 10:07:40, device unreachable" is
what a batch record and an auditor need to see in one line (ALCOA+ complete). A device is
in a gap while none of its tags is GOOD; the gap runs from its last good reading (or from
when it was first seen failing) to its first good one again, and is recorded when it
closes, or when the daemon stops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from controller.spool_budget import Gap
from controller.tagstore import TagStore
from drivers.sample import Quality


class DeviceGaps:
    """Watches the tag store; reports each device's all-bad span once it ends."""

    def __init__(self, devices: Iterable[str], report: Callable[[Gap], None]) -> None:
        self._devices = list(devices)
        self._report = report
        self._open: dict[str, tuple[int, str]] = {}  # device -> (start ns, first reason)
        self._last_good: dict[str, int] = {}

    def check(self, store: TagStore, now_ns: int) -> list[Gap]:
        """Open gaps for devices with no good tag; close and report those good again."""
        closed = []
        for device in self._devices:
            sl = store.device_slice(device)
            if sl is None or sl.start == sl.stop:
                continue
            quality, t_rx = store.quality[sl], store.t_receive_ns[sl]
            good = quality == Quality.GOOD
            if good.any():
                newest = int(t_rx[good].max())
                if device in self._open:
                    start, reason = self._open.pop(device)
                    closed.append(self._gap(device, start, int(t_rx[good].min()), reason))
                self._last_good[device] = newest
            elif device not in self._open and int(t_rx.max()) > 0:  # read, and all bad
                reason = store.reasons[sl.start] or "no good reading"
                self._open[device] = (self._last_good.get(device, now_ns), reason)
        return closed

    def follow(self, devices: Iterable[str], now_ns: int) -> list[Gap]:
        """The site's devices after a reload: added ones are watched from now on, and a
        removed device's open gap ends now, when it left the config."""
        self._devices = list(devices)
        keep = set(self._devices)
        self._last_good = {d: t for d, t in self._last_good.items() if d in keep}
        gone = {d: span for d, span in self._open.items() if d not in keep}
        for device in gone:
            del self._open[device]
        return [self._gap(d, start, now_ns, why) for d, (start, why) in gone.items()]

    def close_all(self, now_ns: int) -> list[Gap]:
        """At shutdown: every open gap ends now."""
        gaps = [self._gap(d, start, now_ns, why) for d, (start, why) in self._open.items()]
        self._open.clear()
        return gaps

    def _gap(self, device: str, start: int, end: int, reason: str) -> Gap:
        gap = Gap(start, max(start, end), f"device unreachable: {reason}"[:200], (device,), 0)
        self._report(gap)
        return gap
