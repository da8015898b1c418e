"""The parts the supervisor wires from a site file: the spool with its disk budget, the tag
store's layout, the drivers that write, and one record per running device.

Kept apart from controller/app.py so the supervisor reads as the order of things; these
are the same at start and after a reload.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from controller.alarm_service import SYSTEM, SYSTEM_TAGS, RoomTag, room_stream
from controller.batch_archive import BatchArchive, archive_path
from controller.config import SiteConfig
from controller.errors import RefusedToStart
from controller.loops import Writer, loop_tags
from controller.loops_check import catalog
from controller.poller import Poller
from controller.spool import Spool
from controller.spool_budget import budget_hours_to_bytes, mean_scan_bytes
from controller.tagstore import TagStore
from drivers.base import Driver
from drivers.registry import AnyDeviceConfig

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Forwards the journal to one destination until it is closed and drained."""

    async def run(self) -> None: ...

    def add_streams(self, cfg: SiteConfig) -> None: ...


@dataclass(frozen=True)
class ConfigSource:
    """Where the running config came from: audited at load and reload."""

    path: str
    sha256: str


@dataclass
class DeviceRun:
    """One device's driver and poller, and the stop that ends just this device."""

    cfg: AnyDeviceConfig
    driver: Driver
    poller: Poller
    stop: asyncio.Event
    task: asyncio.Task[None] | None = None


def build_store(
    cfg: SiteConfig, devices: Mapping[str, DeviceRun], units: Mapping[str, str]
) -> TagStore:
    """One row per tag of every device, loop, room and the daemon's own stream."""
    rooms = cfg.cleanroom.rooms if cfg.cleanroom else ()
    return TagStore(
        [
            *((dev_id, run.driver.tags) for dev_id, run in devices.items()),
            *((lp.id, loop_tags(units[lp.pv], units[lp.output])) for lp in cfg.loops),
            *((room_stream(room.id), (RoomTag(),)) for room in rooms),
            (SYSTEM, SYSTEM_TAGS),
        ]
    )


def writers(devices: Mapping[str, DeviceRun]) -> dict[str, Writer]:
    """The drivers that can write (loop outputs, `write` commands), by device id."""
    return {
        dev_id: run.driver  # type: ignore[misc]  # checked by hasattr: the drivers that write
        for dev_id, run in devices.items()
        if hasattr(run.driver, "write")
    }


def open_spool(cfg: SiteConfig) -> Spool:
    """The site's spool in its state dir, with its disk budget (MB, or hours at our rate)."""
    sp = cfg.spool
    cfg.state.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if sp.budget_mb is not None:
        budget = int(sp.budget_mb * 1_000_000)
    else:
        tags = catalog(cfg.devices)
        rate = sum(1.0 / d.poll_period_s for d in cfg.devices)
        rate += sum(
            1.0 / g.period_s for g in cfg.loop_groups for lp in cfg.loops if lp.group == g.id
        )
        n_tags = max(1, round(len(tags) / max(1, len(cfg.devices))))
        budget = budget_hours_to_bytes(rate, mean_scan_bytes(n_tags), sp.budget_hours or 24.0)
    path = cfg.state.dir / "spool.sqlite"
    try:
        return Spool(
            path,
            budget_bytes=budget,
            gmp_devices=sp.gmp_devices,
            synchronous=sp.synchronous,
            max_buffered_scans=sp.max_buffered_scans,
            on_alarm=spool_alarm,
        )
    except sqlite3.DatabaseError as exc:  # not a database, or damaged beyond opening
        raise RefusedToStart(
            f"spool {path}: {exc}: move the file aside (its data are lost to the sinks) "
            "or restore the state from a backup (cellfab restore)"
        ) from None


def open_archive(state_dir: Path) -> BatchArchive:
    """The batch archive of the state dir; a file that is not a database stops the start."""
    path = archive_path(state_dir)
    try:
        return BatchArchive(path)
    except sqlite3.DatabaseError as exc:
        raise RefusedToStart(
            f"batch archive {path}: {exc}: move the file aside or restore the state from a "
            "backup (cellfab restore); batch records need it"
        ) from None


def spool_alarm(active: bool, fraction: float) -> None:
    """The spool's budget alarm, in the log (the alarm engine raises it on the stream)."""
    if active:
        log.error("spool at %.0f %% of its disk budget: a sink is down for long", fraction * 100)
    else:
        log.info("spool back to %.0f %% of its disk budget", fraction * 100)


def units_of(cfg: SiteConfig) -> dict[str, str]:
    """`device.tag` -> its unit, for every device tag of the site."""
    return {name: meta.unit for name, meta in catalog(cfg.devices).items()}


def warn_orphan_batches(running: Mapping[str, str], devices: Mapping[str, object]) -> None:
    """A batch left running on a device the site file no longer has: say so at start.

    A reload refuses to remove such a device; a restart on another file cannot be refused
    without leaving the floor unmonitored, so it is logged as an error instead.
    """
    for device, batch in running.items():
        if device not in devices:
            log.error(
                "batch %s runs on %s, which the site file does not have: the batch gets no "
                "data until the device is back or the batch is ended",
                batch,
                device,
            )
