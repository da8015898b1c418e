"""What a new site file changes, and whether the running daemon can take it without a restart.

Devices, loops, command tags, users and roles change live (SIGHUP): a device whose config
is identical keeps its driver, connection and schedule, so its data have no gap. Sections
that every component depends on (site id, state dir, brokers, buses, journal) need a
restart; a reload that touches them changes nothing and says so, rather than half-applying.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from controller.config import SiteConfig

LIVE = ("devices", "loop_groups", "loops", "command_tags", "users", "roles", "commands")


class ReloadRefused(Exception):
    """The new file cannot be applied to the running daemon; nothing was changed."""


@dataclass(frozen=True)
class ConfigDiff:
    """Device ids added, removed, changed; whether control or access changed."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    control: bool = False  # loop groups, loops or command tags
    access: bool = False  # users, roles or command settings
    restart: tuple[str, ...] = field(default=())  # sections that need a restart

    @property
    def empty(self) -> bool:
        """Nothing to do."""
        return not (self.added or self.removed or self.changed or self.control or self.access)

    def summary(self) -> str:
        """One line for the log and the audit trail."""
        if self.restart:
            return f"needs a restart: [{'], ['.join(self.restart)}] changed"
        if self.empty:
            return "no change"
        parts = []
        for sign, ids in (("+", self.added), ("-", self.removed), ("~", self.changed)):
            if ids:
                parts.append(f"devices {sign}{', '.join(ids)}")
        if self.control:
            parts.append("loops/command tags changed")
        if self.access:
            parts.append("users/roles changed")
        return "; ".join(parts)


def diff(old: SiteConfig, new: SiteConfig) -> ConfigDiff:
    """Compare two validated configs (profiles resolved)."""
    restart = tuple(
        name
        for name in SiteConfig.model_fields
        if name not in LIVE and getattr(old, name) != getattr(new, name)
    )
    before = {d.id: d for d in old.devices}
    after = {d.id: d for d in new.devices}
    return ConfigDiff(
        added=tuple(i for i in after if i not in before),
        removed=tuple(i for i in before if i not in after),
        changed=tuple(i for i in after if i in before and before[i] != after[i]),
        control=(old.loop_groups, old.loops, old.command_tags)
        != (new.loop_groups, new.loops, new.command_tags),
        access=(old.users, old.roles, old.commands) != (new.users, new.roles, new.commands),
        restart=restart,
    )


def batch_conflict(d: ConfigDiff, running: Mapping[str, str]) -> str | None:
    """Why the diff cannot apply while batches run, or None.

    Removing a device that runs a batch would end the batch's data without a word in its
    record; the batch is ended first (a signed `batch/end`), then the device removed.
    """
    busy = [f"{device} runs batch {running[device]}" for device in d.removed if device in running]
    if not busy:
        return None
    return "; ".join(busy) + ": end the batch before removing the device"
