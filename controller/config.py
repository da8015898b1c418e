"""The site file's schema: frozen pydantic models, unknown keys are errors, units in names.

Secrets (the InfluxDB token, the MQTT password) never have to be in this file: they come
from `CELLFAB_*` environment variables or from files named here (`*_file`), which is what
systemd's `LoadCredential=` provides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from controller.access_config import CommandsSection, RoleConfig, UserConfig, access_problems
from controller.alarms import AlarmConfig
from controller.cleanroom.rooms import CleanroomConfig
from controller.loops_config import CommandTag, LoopConfig, LoopGroupConfig
from drivers.modbus_rtu import ModbusRtuConfig
from drivers.registermap import Frozen
from drivers.registry import DeviceConfig
from drivers.rtubus import RtuBusConfig

LOOP_CLASS = "pid_loop"  # measurement / device_class of the loops' own data
ROOM_CLASS = "room"  # a room's operational state (at rest / in operation)
SLUG = r"^[a-z0-9][a-z0-9_-]{0,62}$"


def endpoint_url(url: str | None, schemes: tuple[str, ...]) -> str | None:
    """`url` if it names a scheme of `schemes`, a host and a numeric port (if any).

    Checked here, not when a sink starts, so `cellfab check` catches it. The messages never
    repeat the URL: it may carry a password (`mqtt://user:password@host`).
    """
    if url is None:
        return None
    if not url.startswith(schemes):
        raise ValueError(f"must start with {' or '.join(schemes)}")
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError("names no host")
    try:
        parts.port  # noqa: B018 - urllib parses the port lazily, and raises here
    except ValueError:
        raise ValueError("port is not a number from 0 to 65535") from None
    return url


class SiteSection(Frozen):
    """Who we are: the id is the MQTT prefix's last part and the `site` tag in InfluxDB."""

    id: str = Field(pattern=SLUG)
    name: str = ""


class StateSection(Frozen):
    """Where the daemon keeps local state: the spool, the audit trail, the batches."""

    dir: Path = Path("/var/lib/cellfab")


class MqttSection(Frozen):
    """The broker that receives telemetry and status; no `url` means MQTT is off."""

    url: str | None = Field(default=None, description="mqtt://host:port or mqtts://host:port")
    username: str | None = None
    password: SecretStr | None = Field(default=None, description="prefer password_file or env")
    password_file: Path | None = None
    tls_ca_file: Path | None = None
    topic_prefix: str | None = Field(default=None, description="default: cellfab/<site.id>")
    client_id: str | None = Field(default=None, description="default: cellfab-<site.id>")
    telemetry_qos: Literal[0, 1, 2] = 1
    keepalive_s: int = Field(default=15, ge=5, le=3600)
    publish_timeout_s: float = Field(default=5.0, gt=0.0)
    reconnect_min_s: float = Field(default=0.5, gt=0.0)
    reconnect_max_s: float = Field(default=30.0, gt=0.0)
    health_period_s: float = Field(default=10.0, ge=1.0, le=3600.0, description="<prefix>/health")
    backlog_max_msgs_per_s: int = Field(
        default=2000, ge=10, description="drain rate after an outage (live data go first)"
    )
    session_expiry_s: int = Field(
        default=3600, ge=0, le=7 * 86400, description="persistent session; 0: clean each time"
    )

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str | None) -> str | None:
        return endpoint_url(url, ("mqtt://", "mqtts://"))

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, prefix: str | None) -> str | None:
        if prefix is not None and (
            not prefix or prefix.endswith("/") or "#" in prefix or "+" in prefix
        ):
            raise ValueError("must be non-empty, without a trailing '/' and without wildcards")
        return prefix


class InfluxSection(Frozen):
    """The time-series store (InfluxDB 2/3 or anything speaking /api/v2/write); no url: off."""

    url: str | None = Field(default=None, description="http(s)://host:port")
    org: str = "cellfab"
    bucket: str = "cellfab"
    token: SecretStr | None = Field(default=None, description="prefer token_file or env")
    token_file: Path | None = None
    batch_max_lines: int = Field(default=5000, ge=1, le=100_000)
    flush_interval_s: float = Field(default=1.0, gt=0.0, le=60.0)
    timeout_s: float = Field(default=5.0, gt=0.0, le=120.0)
    retry_min_s: float = Field(default=0.5, gt=0.0)
    retry_max_s: float = Field(default=30.0, gt=0.0)
    backlog_max_lines_per_s: int = Field(
        default=20_000, ge=100, description="drain rate after an outage (live data go first)"
    )

    @field_validator("url")
    @classmethod
    def _scheme(cls, url: str | None) -> str | None:
        return endpoint_url(url, ("http://", "https://"))


class AlarmEngineSection(Frozen):
    """How often alarms are evaluated and the alarm system's health is published."""

    period_s: float = Field(default=1.0, gt=0.0, le=60.0, description="alarm evaluation tick")
    health_period_s: float = Field(default=60.0, ge=1.0, le=3600.0)


class SpoolSection(Frozen):
    """The durable spool between pollers and sinks (`<state.dir>/spool.sqlite`, docs/spool.md).

    Its size is bounded by a disk budget, in MB or in hours at the configured scan rate;
    at the limit the oldest scans of devices not in `gmp_devices` go first, every dropped
    span is recorded as a gap, and GMP-critical scans are never dropped.
    """

    budget_mb: float | None = Field(default=None, gt=0.0)
    budget_hours: float | None = Field(default=None, gt=0.0, description="default 24 h")
    gmp_devices: tuple[str, ...] = Field(
        default=(),
        description="devices (with their loops `<id>.<loop>`) or rooms `room.<id>` whose "
        "scans are never dropped by the budget",
    )
    synchronous: Literal["NORMAL", "FULL"] = Field(
        default="NORMAL", description="FULL: every commit survives power loss too (slower)"
    )
    flush_interval_s: float = Field(default=0.2, gt=0.0, le=10.0)
    checkpoint_interval_s: float = Field(default=1.0, gt=0.0, le=60.0)
    max_buffered_scans: int = Field(default=100_000, ge=100, description="while disk fails")

    @model_validator(mode="after")
    def _one_budget(self) -> SpoolSection:
        if self.budget_mb is not None and self.budget_hours is not None:
            raise ValueError("give budget_mb or budget_hours, not both")
        return self


class SiteConfig(Frozen):
    """A whole site file."""

    site: SiteSection
    state: StateSection = StateSection()
    mqtt: MqttSection = MqttSection()
    influx: InfluxSection = InfluxSection()
    spool: SpoolSection = SpoolSection()
    buses: tuple[RtuBusConfig, ...] = Field(default=(), description="RS-485 lines")
    devices: tuple[DeviceConfig, ...] = Field(min_length=1)
    loop_groups: tuple[LoopGroupConfig, ...] = ()
    loops: tuple[LoopConfig, ...] = ()
    command_tags: tuple[CommandTag, ...] = Field(
        default=(), description="writable tags the `write` command may set, with limits"
    )
    alarms: tuple[AlarmConfig, ...] = Field(default=(), description="ISA-18.2 alarms")
    alarm_engine: AlarmEngineSection = AlarmEngineSection()
    cleanroom: CleanroomConfig | None = Field(default=None, description="rooms, grades, ΔP")
    users: tuple[UserConfig, ...] = Field(default=(), description="who may sign commands")
    roles: tuple[RoleConfig, ...] = ()
    commands: CommandsSection = CommandsSection()

    @model_validator(mode="after")
    def _unique_ids(self) -> SiteConfig:
        seen: set[str] = set()
        for dev in self.devices:
            if dev.id == "cellfab":
                raise ValueError("device id 'cellfab' is reserved for the daemon's own stream")
            if dev.id in seen:
                raise ValueError(f"duplicate device id {dev.id!r}")
            seen.add(dev.id)
        return self

    @model_validator(mode="after")
    def _buses_consistent(self) -> SiteConfig:
        """Every RTU slave names a bus that exists, with a unit id nobody else has there."""
        bus_ids = [b.id for b in self.buses]
        if len(set(bus_ids)) != len(bus_ids):
            raise ValueError(f"duplicate bus id in {bus_ids}")
        taken: dict[tuple[str, int], str] = {}
        for dev in self.devices:
            if not isinstance(dev, ModbusRtuConfig):
                continue
            if dev.bus not in bus_ids:
                raise ValueError(f"device {dev.id!r}: bus {dev.bus!r} is not a [[buses]] id")
            other = taken.setdefault((dev.bus, dev.unit_id), dev.id)
            if other != dev.id:
                raise ValueError(
                    f"devices {other!r} and {dev.id!r} share unit id {dev.unit_id} on {dev.bus}"
                )
        return self

    @model_validator(mode="after")
    def _gmp_devices_exist(self) -> SiteConfig:
        """Devices, or any stream (a room's `room.<id>`); a device's loops come with it."""
        ids = set(self.streams())
        unknown = [d for d in self.spool.gmp_devices if d not in ids]
        if unknown:
            raise ValueError(
                f"spool.gmp_devices: no device or stream {', '.join(map(repr, unknown))}"
            )
        return self

    @model_validator(mode="after")
    def _control_unique(self) -> SiteConfig:
        for kind, ids in (
            ("loop group", [g.id for g in self.loop_groups]),
            ("loop", [loop.id for loop in self.loops]),
            ("command tag", [t.tag for t in self.command_tags]),
        ):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            if dupes:
                raise ValueError(f"duplicate {kind} {', '.join(dupes)}")
        problems = access_problems(self.users, self.roles)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def streams(self) -> dict[str, tuple[str, str]]:
        """Every source of scans -> (device_class, area): the devices, the loops, the rooms.

        A loop reports its terms like a device reports its tags, under its own id
        (`device.loop`), in the area of the device it controls.
        """
        out = {dev.id: (dev.device_class, dev.area) for dev in self.devices}
        for loop in self.loops:
            out[loop.id] = (LOOP_CLASS, out[loop.device][1] if loop.device in out else "")
        for room in self.cleanroom.rooms if self.cleanroom else ():
            out[f"room.{room.id}"] = (ROOM_CLASS, room.id)
        out["cellfab"] = ("cellfab", "daemon")  # the daemon's own health (alarm_service.SYSTEM)
        return out

    @property
    def topic_prefix(self) -> str:
        """MQTT topic prefix, `cellfab/<site>` unless configured."""
        return self.mqtt.topic_prefix or f"cellfab/{self.site.id}"
