"""The daemon's own health as one JSON document, retained on `<prefix>/health`.

An engineer's dashboard (or a monitoring probe) should see without logging in: which
device last gave a good value when, which are failing and how often, how far each sink
is behind, how much is waiting in the journal, which loops fail to write, and whether
anything has stopped making progress (the watchdog's view).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from controller.cancel import wait_at_most
from controller.sinks.mqtt import iso_utc
from drivers.sample import Quality

if TYPE_CHECKING:
    from controller.app import Daemon

log = logging.getLogger(__name__)


def snapshot(daemon: Daemon, now_ns: int) -> dict[str, Any]:
    """Everything above, from the daemon's counters; cheap enough to call every few seconds."""
    store = daemon.store
    good = store.quality == Quality.GOOD
    devices: dict[str, Any] = {}
    for dev_id, run in daemon.devices.items():
        sl = store.device_slice(dev_id) or slice(0, 0)
        ok = good[sl]
        last_good = int(store.t_receive_ns[sl][ok].max()) if ok.any() else None
        stats = run.poller.stats
        entry: dict[str, Any] = {
            "last_good": iso_utc(last_good) if last_good else None,
            "tags": int(ok.size),
            "tags_not_good": int(ok.size - ok.sum()),
            "scans": stats.scans,
            "failed_scans": stats.failed,
            "skipped_slots": stats.skipped,
            "p99_lateness_ms": round(stats.p99_lateness_s() * 1000.0, 1),
        }
        counters = getattr(run.driver, "counters", None)
        if callable(counters):
            entry["driver"] = counters()
        devices[dev_id] = entry
    loops = {
        loop.id: {"write_error": group.write_errors[i], "ticks": group.ticks}
        for group in daemon.loop_groups
        for i, loop in enumerate(group.loops)
    }
    sinks = {name: _sink_health(sink) for name, sink in daemon.sinks.items()}
    return {
        "ts": iso_utc(now_ns),
        "site": daemon.cfg.site.id,
        "config": daemon.hub.config_id,
        "spool": _spool_health(daemon.journal),
        "devices": devices,
        "sinks": sinks,
        "loops": loops,
        "buses": {
            bus_id: {
                "queue_depth": bus.queue_depth,
                "port_open": bus.port_open,
                "slaves": {
                    str(unit): {
                        "requests": st.requests,
                        "replies": st.replies,
                        "exceptions": st.exceptions,
                        "timeouts": st.timeouts,
                        "skipped": st.skipped,
                        "backed_off": st.backed_off,
                    }
                    for unit, st in bus.slaves.items()
                },
            }
            for bus_id, bus in daemon.buses.items()
        },
        "stuck": daemon.liveness.overdue(),
    }


def _spool_health(spool: object) -> dict[str, Any]:
    """Sequence, budget use, what waits for a commit, and what the budget dropped."""
    out: dict[str, Any] = {}
    for key in ("last_seq", "dropped", "usage_fraction", "buffered", "failing"):
        value = getattr(spool, key, None)
        if value is not None:
            out[key] = round(value, 4) if isinstance(value, float) else value
    path = getattr(spool, "path", None)
    if path is not None:
        with contextlib.suppress(OSError):
            out["file_bytes"] = path.stat().st_size
    return out


def _sink_health(sink: object) -> dict[str, Any]:
    health = getattr(sink, "health", None)
    return dict(health()) if callable(health) else {}


def payload(doc: dict[str, Any]) -> bytes:
    """Compact JSON; non-finite numbers become null."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x

    return json.dumps(clean(doc), separators=(",", ":"), allow_nan=False).encode()


async def publish_health(
    daemon: Daemon,
    post: Callable[[bytes], None],
    period_s: float,
    stop: asyncio.Event,
    clock_ns: Callable[[], int],
) -> None:
    """Hand a fresh snapshot to `post` every `period_s` until `stop`."""
    while not stop.is_set():
        try:
            post(payload(snapshot(daemon, clock_ns())))
        except (ValueError, TypeError, KeyError) as exc:  # a bug here must not stop polling
            log.error("health snapshot failed: %r", exc)  # noqa: TRY400
        await wait_at_most(stop.wait(), period_s)
