"""What `[[loops]]` and `[[command_tags]]` refer to must exist: checked once profiles are loaded.

A loop whose PV names a tag the device does not have, or whose output is not writable,
would fail on the plant floor at the first tick; here it fails `cellfab check` instead,
with the key path of the offending entry.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from controller.alarms import AlarmConfig
from controller.loops_config import CommandTag, LoopConfig, split
from drivers.modbus_rtu import ModbusRtuConfig
from drivers.modbus_tcp import ModbusTcpConfig
from drivers.opcua_config import OpcUaConfig
from drivers.registry import DRIVERS, AnyDeviceConfig


@dataclass(frozen=True, slots=True)
class TagMeta:
    """What a loop needs to know of a tag before any reading: its unit, and can we write it."""

    unit: str
    writable: bool


def device_tags(dev: AnyDeviceConfig) -> dict[str, TagMeta]:
    """Every tag a configured device produces (profiles resolved), with writability."""
    if isinstance(dev, ModbusTcpConfig | ModbusRtuConfig):
        return {r.tag: TagMeta(r.unit, r.writable and r.function == 3) for r in dev.registers}
    if isinstance(dev, OpcUaConfig):
        return {n.tag: TagMeta(n.unit, n.writable) for n in dev.nodes}
    driver = DRIVERS[dev.driver](dev)  # record drivers: tags from config, no I/O at build
    return {t.tag: TagMeta(t.unit, False) for t in driver.tags}


def catalog(devices: Iterable[AnyDeviceConfig]) -> dict[str, TagMeta]:
    """`device.tag` -> TagMeta over the whole site."""
    return {f"{dev.id}.{tag}": meta for dev in devices for tag, meta in device_tags(dev).items()}


def loop_problems(
    loops: Iterable[LoopConfig],
    command_tags: Iterable[CommandTag],
    group_ids: Iterable[str],
    tags: dict[str, TagMeta],
) -> list[tuple[str, str]]:
    """(key path, message) for every reference that does not resolve."""
    problems: list[tuple[str, str]] = []
    groups = set(group_ids)
    devices = {split(t)[0] for t in tags}
    writers: dict[str, str] = {}
    for i, loop in enumerate(loops):
        at = f"loops.{i}"
        if loop.device not in devices:
            problems.append((f"{at}.id", f"{loop.id}: no device {loop.device!r} in [[devices]]"))
        if loop.group not in groups:
            known = ", ".join(sorted(groups)) or "none"
            problems.append(
                (f"{at}.group", f"{loop.id}: no loop group {loop.group!r} (known: {known})")
            )
        problems += _tag(tags, loop.pv, f"{at}.pv", writable=False)
        problems += _tag(tags, loop.output, f"{at}.output", writable=True)
        if loop.takeover is not None:
            problems += _tag(tags, loop.takeover.tag, f"{at}.takeover.tag", writable=True)
        if loop.readback is not None:
            problems += _tag(tags, loop.readback, f"{at}.readback", writable=False)
        written = [("output", loop.output)]
        if loop.takeover is not None:
            written.append(("takeover.tag", loop.takeover.tag))
        for key, tag in written:
            other = writers.setdefault(tag, loop.id)
            if other != loop.id:
                problems.append((f"{at}.{key}", f"{tag} is already written by loop {other}"))
    for i, ct in enumerate(command_tags):
        at = f"command_tags.{i}.tag"
        problems += _tag(tags, ct.tag, at, writable=True)
        if ct.tag in writers:
            problems.append((at, f"{ct.tag} is driven by loop {writers[ct.tag]}: command the loop"))
    return problems


def _tag(tags: dict[str, TagMeta], name: str, at: str, *, writable: bool) -> list[tuple[str, str]]:
    meta = tags.get(name)
    if meta is None:
        device = split(name)[0]
        known = sorted(t.split(".", 1)[1] for t in tags if t.startswith(f"{device}."))
        hint = f" (its tags: {', '.join(known)})" if known else f" (no device {device!r})"
        return [(at, f"unknown tag {name}{hint}")]
    if writable and not meta.writable:
        return [(at, f"{name} is not writable (not a writable holding register or node)")]
    return []


def alarm_problems(
    alarms: Iterable[AlarmConfig], tags: dict[str, TagMeta], stream_tags: Iterable[str]
) -> list[tuple[str, str]]:
    """(key path, message) for alarms on tags nobody produces (devices, loops, rooms)."""
    known = set(tags) | set(stream_tags)
    problems = []
    for i, alarm in enumerate(alarms):
        for key in ("tag", "setpoint_tag"):
            name = getattr(alarm, key)
            if name is not None and name not in known:
                problems.append((f"alarms.{i}.{key}", f"{alarm.id}: unknown tag {name}"))
        if alarm.suppress_when is not None and alarm.suppress_when.tag not in known:
            tag = alarm.suppress_when.tag
            problems.append((f"alarms.{i}.suppress_when.tag", f"{alarm.id}: unknown tag {tag}"))
    return problems
