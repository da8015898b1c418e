"""The daemon watching itself: its own health as a recorded stream, the alarm system's
health, and the batch archive's periodic commits.

These run beside the pollers for the daemon's whole life. They read the daemon's parts
through a small protocol, so the supervisor (controller/app.py) only wires them; what a
reload replaces (devices, tag store) is read again on every round.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol, cast

from controller.alarm_service import SYSTEM, SYSTEM_TAGS, AlarmService
from controller.batch_archive import ArchiveWriteError, BatchArchive
from controller.cancel import wait_at_most
from controller.device_gaps import DeviceGaps
from controller.disk_free import disk_free
from controller.health import payload as health_payload
from controller.spool import Spool
from controller.spool_budget import Gap
from controller.spool_events import JSON, Event
from controller.tagstore import TagStore
from controller.watchdog import Liveness
from drivers.sample import Sample, Scan, utc_now_ns

log = logging.getLogger(__name__)


class Watched(Protocol):
    """What the self-report reads from the daemon; devices and store change on a reload."""

    @property
    def journal(self) -> Spool: ...

    @property
    def liveness(self) -> Liveness: ...

    @property
    def devices(self) -> Mapping[str, object]: ...

    @property
    def sinks(self) -> Mapping[str, object]: ...

    @property
    def store(self) -> TagStore: ...

    def record_gap(self, gap: Gap) -> None: ...


async def record_self(
    daemon: Watched,
    publish: Callable[[Scan], object],
    state_dir: Path,
    stop: asyncio.Event,
    period_s: float = 2.0,
) -> None:
    """The daemon's own health as the `cellfab` stream, so it is recorded and alarmed;
    and devices that give no good reading at all, as gaps."""
    sp = daemon.journal
    devices = daemon.devices
    gaps = DeviceGaps(devices, daemon.record_gap)
    while not stop.is_set():
        t_ns = utc_now_ns()
        if daemon.devices is not devices:  # a reload replaced them
            devices = daemon.devices
            gaps.follow(devices, t_ns)
        gaps.check(daemon.store, t_ns)
        lags = [getattr(s, "lag", 0) for s in daemon.sinks.values()]
        values = (
            sp.usage_fraction,
            float(sp.buffered),
            float(max(lags, default=0)),
            float(len(daemon.liveness.overdue())),
            float(sp.failing),
        )
        counters = zip(SYSTEM_TAGS[:-1], values, strict=True)  # the last is the disk's
        samples = (
            *(Sample.good(t.tag, v, t.unit, t_ns) for t, v in counters),
            disk_free(state_dir, t_ns),
        )
        publish(Scan(SYSTEM, t_ns, samples))
        await wait_at_most(stop.wait(), period_s)
    gaps.close_all(utc_now_ns())


async def alarm_health(
    service: AlarmService,
    stop: asyncio.Event,
    *,
    publish_state: Callable[[str, bytes], None],
    record_event: Callable[[Event], None],
    site: str,
    period_s: float,
) -> None:
    """ISA-18.2 / EEMUA 191 health: retained on `<prefix>/alarm_health`, and an event."""
    while True:
        await wait_at_most(stop.wait(), period_s)
        if stop.is_set():
            return
        t_ns = utc_now_ns()
        doc = service.health_doc(t_ns)
        publish_state("alarm_health", health_payload(doc))
        body = cast("dict[str, JSON]", {k: v for k, v in doc.items() if k != "ts"})
        record_event(Event(t_ns, "alarm_health", site, body))


async def archive_commits(archive: BatchArchive, stop: asyncio.Event) -> None:
    """The batch archive's buffered rows, committed once a second in a worker thread."""
    failing = False
    while True:
        stopping = stop.is_set()
        try:
            await asyncio.to_thread(archive.commit)
        except ArchiveWriteError as exc:
            if not failing:
                log.error("batch archive: %s; rows kept and retried", exc)  # noqa: TRY400
            failing = True
        else:
            if failing:
                log.info("batch archive: writing again")
            failing = False
        if stopping:
            return
        await wait_at_most(stop.wait(), 1.0)


def close_archive(archive: BatchArchive) -> None:
    """Last commit (scans of the shutdown itself), then close."""
    try:
        archive.commit()
    except ArchiveWriteError as exc:
        log.error("batch archive: %d rows not written at shutdown: %s", archive.pending, exc)  # noqa: TRY400
    archive.close()
