"""The supervisor: one TaskGroup with a named task per device, loop group and sink.

Expected device errors stay inside a driver and become quality; anything else is a bug and
ends the process so that systemd restarts it. Shutdown is ordered so nothing in flight is
lost: pollers finish their current scan, loop groups hand control back, the journal closes,
sinks drain it, then exit. SIGHUP reloads the site file (`controller/reload.py`): devices
whose config did not change keep their task, connection and schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from controller import sdnotify
from controller.access_config import KeyFileError, UserKey, load_keys
from controller.alarm_service import (
    BUILT_IN,
    AlarmService,
    cleanroom_alarms,
)
from controller.alarms import AlarmEvent
from controller.audit import AuditTrail, trail_path
from controller.batch_archive import BatchArchive
from controller.batches import BatchRegistry
from controller.command_service import audit_event
from controller.config import SiteConfig
from controller.control_plane import ControlPlane, has_controls
from controller.daemon_parts import (
    ConfigSource,
    DeviceRun,
    Sink,
    build_store,
    open_archive,
    open_spool,
    units_of,
    warn_orphan_batches,
    writers,
)
from controller.health import publish_health
from controller.hub import Hub
from controller.loops import LoopGroup
from controller.loops_config import loop_tag_names, split
from controller.poller import Poller, scan_phase_s
from controller.reload import ReloadRefused, batch_conflict, diff
from controller.self_watch import alarm_health, archive_commits, close_archive, record_self
from controller.sinks.influx import InfluxSink
from controller.sinks.mqtt import MqttSink
from controller.spool_budget import Gap
from controller.spool_events import JSON, Event
from controller.tagstore import TagStore
from controller.version import cellfab_version
from controller.watchdog import Liveness, feed, watchdog_interval_s
from drivers.base import Driver
from drivers.registry import AnyDeviceConfig, make_driver
from drivers.rtubus import RtuBus
from drivers.sample import utc_now_ns

log = logging.getLogger(__name__)


class Daemon:
    """Everything one site file describes, wired together; `run` until `stop` is set."""

    def __init__(
        self,
        cfg: SiteConfig,
        keys: Mapping[str, UserKey] | None = None,
        source: ConfigSource | None = None,
    ) -> None:
        self.cfg = cfg
        self.source = source
        self.buses = {bus.id: RtuBus(bus) for bus in cfg.buses}
        self.journal = open_spool(cfg)
        self.hub = Hub(TagStore([]), self.journal)
        self.liveness = Liveness()
        self.devices: dict[str, DeviceRun] = {
            dev.id: self._device(dev, cfg.devices) for dev in cfg.devices
        }
        units = units_of(cfg)
        self.hub.store = build_store(cfg, self.devices, units)
        self.hub.config_id = source.sha256[:12] if source else None
        self.controls = has_controls(cfg)
        self.batches = BatchRegistry(cfg.state.dir) if self.controls else None
        self.archive: BatchArchive | None = None
        if self.batches is not None:
            self.hub.batches = self.batches.by_device
            warn_orphan_batches(self.batches.by_device, self.devices)
            self.archive = open_archive(cfg.state.dir)
            self.hub.archive = self.archive
        self.alarms = self._alarm_service(cfg)
        self.control = ControlPlane(
            cfg,
            self.store,
            writers(self.devices),
            units,
            keys or {},
            batches=self.batches,
            alarms=self.alarms,
        )
        if self.commands is not None:
            self.commands.record_event = self.journal.record_event
        self.trail: AuditTrail | None = None
        self.sinks: dict[str, Sink] = {}
        if cfg.influx.url:
            self.sinks["influx"] = InfluxSink(
                cfg,
                self.journal.cursor("influx"),
                liveness=self.liveness,
                on_outage=self.record_gap,
                outages=self.journal,  # an open outage span outlives a restart
            )
        if cfg.mqtt.url:
            self.sinks["mqtt"] = MqttSink(
                cfg,
                self.journal.cursor("mqtt"),
                cellfab_version(),
                commands=self.commands,
                liveness=self.liveness,
                on_outage=self.record_gap,
                outages=self.journal,  # an open outage span outlives a restart
            )
        self.ready = asyncio.Event()
        self.reloaded = asyncio.Event()  # set after each reload attempt (tests await it)
        self.last_reload: str | None = None
        self._reload_wanted = asyncio.Event()
        # a reload and the shutdown both stop and start tasks: one at a time, and no
        # reload once the shutdown has begun (it would start pollers after the journal closed)
        self._lifecycle = asyncio.Lock()
        self._stopping = False
        self._tg: asyncio.TaskGroup | None = None
        self._loop_tasks: dict[int, asyncio.Task[None]] = {}
        self._loop_stops: dict[int, asyncio.Event] = {}

    def _alarm_service(self, cfg: SiteConfig) -> AlarmService:
        """The built-in alarms on the daemon's own health, the configured ones, the rooms'."""
        alarms = [*BUILT_IN, *cfg.alarms, *cleanroom_alarms(cfg.cleanroom)]
        rooms = {room.id: room.state for room in cfg.cleanroom.rooms} if cfg.cleanroom else {}
        return AlarmService(
            alarms,
            self.store,
            rooms,
            publish_state=self._publish_state,
            record_event=self._alarm_event,
            record_scan=self.hub.publish,
            state_path=cfg.state.dir / "alarms.json",
        )

    def _publish_state(self, suffix: str, payload: bytes) -> None:
        """A retained state topic (`alarms/<id>`, `health` …) when MQTT is configured."""
        mqtt = self.sinks.get("mqtt")
        if isinstance(mqtt, MqttSink):
            mqtt.set_state(suffix, payload)

    def _alarm_event(self, event: AlarmEvent) -> None:
        body = cast("dict[str, JSON]", {k: v for k, v in event.as_dict().items() if k != "ts"})
        self.journal.record_event(Event(event.t_ns, "alarm", event.alarm, body))
        if self.archive is not None:
            cfg = self.alarms.engine.table.configs[self.alarms.engine.index(event.alarm)]
            stream = cfg.tag.rsplit(".", 1)[0]
            batch = self.hub.batches.get(stream.split(".", 1)[0])
            if batch is not None:
                self.archive.record_event(batch, event.t_ns, "alarm", stream, event.as_dict())

    def record_gap(self, gap: Gap) -> None:
        """A gap onto the stream (InfluxDB, MQTT) and into the batch record of its devices."""
        self.journal.record_gap(gap)
        if self.archive is None:
            return
        for device in gap.devices:
            batch = self.hub.batches.get(device)
            if batch is not None:
                body = {"start_ns": gap.start_ns, "end_ns": gap.end_ns, "cause": gap.cause}
                self.archive.record_event(batch, gap.end_ns, "gap", device, body)

    # --- views the CLI, demo, benches and tests use -----------------------------------
    @property
    def store(self) -> TagStore:
        """The latest value of every tag (replaced on a reload)."""
        return self.hub.store

    @property
    def drivers(self) -> dict[str, Driver]:
        """Device id -> its driver."""
        return {dev_id: run.driver for dev_id, run in self.devices.items()}

    @property
    def pollers(self) -> list[Poller]:
        """One poller per device, in config order."""
        return [run.poller for run in self.devices.values()]

    @property
    def loop_groups(self) -> list[LoopGroup]:
        """The running loop groups."""
        return self.control.groups

    @property
    def commands(self) -> Any:
        """The command service (None when the site has no loops, command tags or users)."""
        return self.control.commands

    def request_reload(self) -> None:
        """SIGHUP: reload `source.path` at the next opportunity."""
        self._reload_wanted.set()

    # --- running ------------------------------------------------------------------------
    async def run(
        self,
        stop: asyncio.Event,
        extra: Callable[[asyncio.Event], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        """Poll, control and forward until `stop`; then drain the sinks and return."""
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self.journal.shutdown)  # last: after the sinks have drained
            self._record_downtime()
            if self.controls:  # commands and loops change the process: audited
                path = trail_path(self.cfg.state.dir)
                self.trail = await asyncio.to_thread(AuditTrail.open, path)
                stack.callback(self.trail.close)
                self.control.trail_opened(self.trail.last_time)  # replay bound across restarts
                src = self.source
                sha = src.sha256 if src else None
                await self._audit("config_load", None, sha, "accepted", "daemon start")
                if self.commands is not None:
                    self.commands.trail = self.trail
            for bus in self.buses.values():  # entered first, so they outlive their slaves
                await stack.enter_async_context(bus)
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                sp = self.cfg.spool
                tg.create_task(
                    self.journal.run(sp.flush_interval_s, sp.checkpoint_interval_s), name="spool"
                )
                for name, sink in self.sinks.items():
                    tg.create_task(sink.run(), name=f"sink:{name}")
                for run in self.devices.values():
                    self._start_device(run)
                for group in self.loop_groups:
                    self._start_group(group)
                if self.archive is not None:
                    stack.callback(close_archive, self.archive)
                    tg.create_task(archive_commits(self.archive, stop), name="archive")
                period = self.cfg.alarm_engine.period_s
                tg.create_task(
                    record_self(self, self.hub.publish, self.cfg.state.dir, stop), name="self"
                )
                tg.create_task(self.alarms.run(stop, period), name="alarms")
                tg.create_task(
                    alarm_health(
                        self.alarms,
                        stop,
                        publish_state=self._publish_state,
                        record_event=self.journal.record_event,
                        site=self.cfg.site.id,
                        period_s=self.cfg.alarm_engine.health_period_s,
                    ),
                    name="alarm-health",
                )
                tg.create_task(self._announce_ready(), name="ready")
                tg.create_task(self._reloads(stop), name="reload")
                mqtt = self.sinks.get("mqtt")
                if isinstance(mqtt, MqttSink):
                    post = functools.partial(mqtt.set_state, "health")
                    period = self.cfg.mqtt.health_period_s
                    tg.create_task(
                        publish_health(self, post, period, stop, utc_now_ns), name="health"
                    )
                interval = watchdog_interval_s()
                if interval is not None:
                    tg.create_task(feed(self.liveness, interval, stop), name="watchdog")
                if extra is not None:
                    tg.create_task(extra(stop), name="extra")
                await stop.wait()
                async with self._lifecycle:  # waits for a reload under way to finish
                    self._stopping = True
                    await self._stop_all()
                sdnotify.notify("STOPPING=1")
                log.info("pollers stopped after %d scans; draining sinks", self.hub.scans)
                self.journal.close()
        log.info("stopped")

    def _record_downtime(self) -> None:
        """The time between the last commit of the previous run and now is a gap: say so."""
        since = self.journal.previous_commit_ns
        if since is not None:
            now = utc_now_ns()
            devices = tuple(self.cfg.streams())  # every stream: devices, loops, rooms, cellfab
            self.record_gap(Gap(since, now, "daemon down", devices))
            log.warning("data gap: daemon was down for %.1f s", (now - since) / 1e9)

    def _device(self, cfg: AnyDeviceConfig, site_devices: Sequence[AnyDeviceConfig]) -> DeviceRun:
        """A device's driver and poller; its scan phase depends on the site's other devices."""
        driver = make_driver(cfg, self.buses)
        poller = Poller(
            cfg.id,
            driver,
            cfg.poll_period_s,
            self.hub,
            liveness=self.liveness,
            phase_s=scan_phase_s(cfg.id, site_devices),
        )
        return DeviceRun(cfg, driver, poller, asyncio.Event())

    def _start_device(self, run: DeviceRun) -> None:
        assert self._tg is not None
        run.task = self._tg.create_task(self._poll(run), name=f"poll:{run.cfg.id}")

    @staticmethod
    async def _poll(run: DeviceRun) -> None:
        async with run.driver:
            await run.poller.run(run.stop)

    def _start_group(self, group: LoopGroup) -> None:
        assert self._tg is not None
        stop = asyncio.Event()
        self._loop_stops[id(group)] = stop
        self._loop_tasks[id(group)] = self._tg.create_task(
            self._run_loops(group, stop), name=f"loops:{group.cfg.id}"
        )

    async def _stop_groups(self, groups: list[LoopGroup]) -> None:
        tasks = []
        for group in groups:
            self._loop_stops.pop(id(group)).set()
            tasks.append(self._loop_tasks.pop(id(group)))
        if tasks:
            await asyncio.wait(tasks)

    async def _stop_devices(self, runs: list[DeviceRun]) -> None:
        for run in runs:
            run.stop.set()
        tasks = [run.task for run in runs if run.task is not None]
        if tasks:
            await asyncio.wait(tasks)

    async def _stop_all(self) -> None:
        """Loops first (they hand control back through the drivers), then the pollers."""
        await self._stop_groups(list(self.loop_groups))
        await self._stop_devices(list(self.devices.values()))

    async def _run_loops(self, group: LoopGroup, stop: asyncio.Event) -> None:
        """A loop group starts once every device it reads or writes has been scanned (its
        readback too: priming from a readback not yet read would start at the safe output)."""
        devices = {split(name)[0] for loop in group.loops for name in loop_tag_names(loop)}
        first = [run.poller.scanned.wait() for d, run in self.devices.items() if d in devices]
        await asyncio.gather(*first)
        if stop.is_set():  # stopped before a first tick: control it carried over goes back
            await group.release()
            return
        await group.run(stop, self.hub, self.liveness)

    async def _announce_ready(self) -> None:
        """READY once every device has been scanned once (good or bad), as systemd expects."""
        await asyncio.gather(*(p.scanned.wait() for p in self.pollers))
        if self.journal.closed:
            return
        self.ready.set()
        # What exists now (config, drivers, tables, the tag store) lives as long as the
        # process: keep it out of every full collection, whose pause would otherwise land
        # on a scan's start (a 60-80 ms pause measured at 100 devices, docs/performance.md)
        gc.freeze()
        sdnotify.notify(f"READY=1\nSTATUS=polling {len(self.pollers)} devices")
        log.info("ready: %d devices, sinks: %s", len(self.pollers), ", ".join(self.sinks) or "none")

    # --- reload -------------------------------------------------------------------------
    async def _reloads(self, stop: asyncio.Event) -> None:
        """Apply SIGHUP reloads one at a time until `stop`."""
        stopping = asyncio.create_task(stop.wait())
        try:
            while True:
                wanted = asyncio.create_task(self._reload_wanted.wait())
                await asyncio.wait([stopping, wanted], return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set():
                    wanted.cancel()
                    return
                self._reload_wanted.clear()
                await self.reload()
        finally:
            stopping.cancel()

    async def reload(self) -> None:
        """Read the site file again and apply it; a bad or unappliable file changes nothing."""
        from controller.configload import ConfigError, load_site  # noqa: PLC0415 - no cycle

        src = self.source
        if src is None:
            log.error("reload refused: the embedded config cannot be reloaded")
            return
        try:
            path = Path(src.path)
            data = await asyncio.to_thread(path.read_bytes)
            new = await asyncio.to_thread(load_site, path)
            digest = _sha256(data)
            async with self._lifecycle:
                summary = await self._apply(new, path)
        except (ConfigError, ReloadRefused, KeyFileError, OSError) as exc:
            errors = exc.errors if isinstance(exc, ConfigError | KeyFileError) else [str(exc)]
            why = "\n".join(errors)
            log.error("reload refused, the running config is unchanged: %s", why)  # noqa: TRY400
            self.last_reload = f"refused: {why}"
            await self._audit_quietly(None, f"refused: {why}")
        else:
            self.source = ConfigSource(src.path, digest)
            self.hub.config_id = digest[:12]
            log.info("reloaded %s: %s", src.path, summary)
            self.last_reload = f"accepted: {summary}"
            await self._audit_quietly(digest, f"accepted: {summary}", old=src.sha256)
        self.reloaded.set()
        self.reloaded = asyncio.Event()

    async def _apply(self, new: SiteConfig, path: Path) -> str:
        if self._stopping:
            raise ReloadRefused("the daemon is stopping")
        d = diff(self.cfg, new)
        if d.restart:
            raise ReloadRefused(d.summary())
        if has_controls(new) != self.controls:
            raise ReloadRefused("adding or removing all loops/command tags/users needs a restart")
        if self.batches is not None and (why := batch_conflict(d, self.batches.by_device)):
            raise ReloadRefused(why)
        if d.empty:
            return d.summary()
        keys = await asyncio.to_thread(load_keys, new.users, path.parent) if new.users else {}
        old_groups = list(self.loop_groups)
        going = [self.devices[i] for i in (*d.removed, *d.changed)]
        runs = {i: self.devices[i] for i in self.devices if i not in {*d.removed, *d.changed}}
        new_runs = {
            dev.id: runs.get(dev.id) or self._device(dev, new.devices) for dev in new.devices
        }
        units = units_of(new)
        store = build_store(new, new_runs, units)
        # 1. the old loops stop; those that continue in the new config are not handed back
        self.control.rebuild(new, store, writers(new_runs), units, keys)
        await self._stop_groups(old_groups)
        # 2. removed and changed devices finish their scan and close
        await self._stop_devices(going)
        # 3. one synchronous switch: store, devices, config; then the new tasks start
        store.carry_from(self.store)
        self.hub.store = store
        self.alarms.rebind(store)
        self.devices = new_runs
        self.cfg = new
        for sink in self.sinks.values():
            sink.add_streams(new)
        for dev_id in (*d.added, *d.changed):
            self._start_device(self.devices[dev_id])
        for group in self.loop_groups:
            self._start_group(group)
        return d.summary()

    # --- audit --------------------------------------------------------------------------
    async def _audit(
        self, action: str, old: str | None, new: str | None, result: str, reason: str
    ) -> None:
        """A record by the daemon itself (user `system`) about its config file."""
        if self.trail is None:
            return
        src = self.source
        record = await asyncio.to_thread(
            self.trail.append,
            user="system",
            role="system",
            action=action,
            obj=src.path if src else "(embedded)",
            old=old,
            new=new,
            reason=reason,
            client=f"cellfab {cellfab_version()}",
            result=result,
        )
        self.journal.record_event(audit_event(record))

    async def _audit_quietly(self, new: str | None, result: str, old: str | None = None) -> None:
        """A reload record; a failing trail is logged, the reload itself already happened."""
        try:
            await self._audit("config_reload", old, new, result, "SIGHUP")
        except (RuntimeError, OSError) as exc:
            log.error("audit trail: config reload not recorded: %s", exc)  # noqa: TRY400


def _sha256(data: bytes) -> str:
    import hashlib  # noqa: PLC0415

    return hashlib.sha256(data).hexdigest()
