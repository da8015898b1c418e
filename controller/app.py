"""The supervisor: one TaskGroup with a named task per device poller and per sink.

Expected device errors stay inside a driver and become quality; anything else is a bug and
ends the process so that systemd restarts it. Shutdown is ordered so nothing in flight is
lost: pollers finish their current scan, the journal closes, sinks drain it, then exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from importlib.metadata import version
from typing import Any, Protocol

from controller import sdnotify
from controller.config import SiteConfig
from controller.hub import Hub
from controller.journal import Journal
from controller.poller import Poller
from controller.sinks.influx import InfluxSink
from controller.sinks.mqtt import MqttSink
from controller.tagstore import TagStore
from drivers.base import Driver
from drivers.registry import make_driver
from drivers.rtubus import RtuBus

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Forwards the journal to one destination until it is closed and drained."""

    async def run(self) -> None: ...


def cellfab_version() -> str:
    """The installed distribution's version (stamped on status messages)."""
    return version("cellfab")


class Daemon:
    """Everything one site file describes, wired together; `run` until `stop` is set."""

    def __init__(self, cfg: SiteConfig) -> None:
        self.cfg = cfg
        self.buses = {bus.id: RtuBus(bus) for bus in cfg.buses}
        self.drivers: dict[str, Driver] = {
            dev.id: make_driver(dev, self.buses) for dev in cfg.devices
        }
        self.journal = Journal(cfg.journal.max_scans)
        self.store = TagStore((dev_id, drv.tags) for dev_id, drv in self.drivers.items())
        self.hub = Hub(self.store, self.journal)
        self.pollers = [
            Poller(dev.id, self.drivers[dev.id], dev.poll_period_s, self.hub) for dev in cfg.devices
        ]
        self.sinks: dict[str, Sink] = {}
        if cfg.influx.url:
            self.sinks["influx"] = InfluxSink(cfg, self.journal.cursor("influx"))
        if cfg.mqtt.url:
            self.sinks["mqtt"] = MqttSink(cfg, self.journal.cursor("mqtt"), cellfab_version())
        self.ready = asyncio.Event()

    async def run(
        self,
        stop: asyncio.Event,
        extra: Callable[[asyncio.Event], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        """Poll and forward until `stop`; then drain the sinks and return."""
        async with contextlib.AsyncExitStack() as stack:
            for bus in self.buses.values():  # entered first, so they outlive their slaves
                await stack.enter_async_context(bus)
            for driver in self.drivers.values():
                await stack.enter_async_context(driver)
            async with asyncio.TaskGroup() as tg:
                for name, sink in self.sinks.items():
                    tg.create_task(sink.run(), name=f"sink:{name}")
                polls = [tg.create_task(p.run(stop), name=f"poll:{p.device}") for p in self.pollers]
                tg.create_task(self._announce_ready(), name="ready")
                if extra is not None:
                    tg.create_task(extra(stop), name="extra")
                await asyncio.wait(polls)
                sdnotify.notify("STOPPING=1")
                log.info("pollers stopped after %d scans; draining sinks", self.hub.scans)
                self.journal.close()
        log.info("stopped")

    async def _announce_ready(self) -> None:
        """READY once every device has been scanned once (good or bad), as systemd expects."""
        await asyncio.gather(*(p.scanned.wait() for p in self.pollers))
        if self.journal.closed:
            return
        self.ready.set()
        sdnotify.notify(f"READY=1\nSTATUS=polling {len(self.pollers)} devices")
        log.info("ready: %d devices, sinks: %s", len(self.pollers), ", ".join(self.sinks) or "none")
