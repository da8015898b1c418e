"""Everything that can change the process: loop groups, the plant view, the command service.

Built from one config over one tag store; `rebuild` makes the next generation for a
reloaded config and carries the running state over (commanded set points, manual modes,
takeovers, the replay caches), so a reload is not a bump in any loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from controller.access_config import AccessConfig, UserKey
from controller.authz import Verifier
from controller.batches import BatchRegistry
from controller.command_service import CommandService
from controller.config import SiteConfig
from controller.loops import LoopGroup, Writer, groups_of
from controller.plant import AlarmDesk, LoopPlant
from controller.tagstore import TagStore


def has_controls(cfg: SiteConfig) -> bool:
    """Loops, commandable tags or users: the daemon can change the process, so it audits."""
    return bool(cfg.loops or cfg.command_tags or cfg.users)


class ControlPlane:
    """One generation of loop groups and the command path over them."""

    def __init__(
        self,
        cfg: SiteConfig,
        store: TagStore,
        writers: Mapping[str, Writer],
        units: Mapping[str, str],
        keys: Mapping[str, UserKey],
        *,
        batches: BatchRegistry | None = None,
        alarms: AlarmDesk | None = None,
    ) -> None:
        self.batches = batches
        self.alarms = alarms
        self.groups: list[LoopGroup] = groups_of(cfg.loop_groups, cfg.loops, store, writers, units)
        self.plant = self._plant(cfg, store, writers)
        self.commands: CommandService | None = None
        self._verifier: Verifier | None = None
        if has_controls(cfg):
            self._verifier = Verifier(
                _access(cfg), keys, self.plant, site=cfg.site.id, not_before=datetime.now(UTC)
            )
            self.commands = CommandService(self._verifier, self.plant, None, cfg.topic_prefix)

    def trail_opened(self, last_time: datetime | None) -> None:
        """The audit trail is open and its newest record, before this run appended any, is
        from `last_time` (None: empty): refuse requests the previous run may have accepted.
        Call it before the command channel starts."""
        if self._verifier is not None:
            self._verifier.trail_opened(last_time)

    def rebuild(
        self,
        cfg: SiteConfig,
        store: TagStore,
        writers: Mapping[str, Writer],
        units: Mapping[str, str],
        keys: Mapping[str, UserKey],
    ) -> list[LoopGroup]:
        """Switch to `cfg`: new groups that adopt the old ones' state. Returns the old groups
        (stop them; each already knows which of its loops it must not hand back)."""
        old = self.groups
        self.groups = groups_of(cfg.loop_groups, cfg.loops, store, writers, units)
        by_loop = {loop.id: g for g in old for loop in g.loops}
        for group in self.groups:
            for predecessor in {by_loop[lp.id] for lp in group.loops if lp.id in by_loop}:
                predecessor.keep |= group.adopt(predecessor)
        self.plant = self._plant(cfg, store, writers)
        if self._verifier is not None and self.commands is not None:
            self._verifier.reconfigure(_access(cfg), keys, self.plant)
            self.commands.plant = self.plant
        return old

    def _plant(self, cfg: SiteConfig, store: TagStore, writers: Mapping[str, Writer]) -> LoopPlant:
        devices = frozenset(dev.id for dev in cfg.devices)
        return LoopPlant(
            self.groups,
            cfg.command_tags,
            store,
            writers,
            batches=self.batches,
            devices=devices,
            alarms=self.alarms,
        )


def _access(cfg: SiteConfig) -> AccessConfig:
    return AccessConfig(users=cfg.users, roles=cfg.roles, commands=cfg.commands)
