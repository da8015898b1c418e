"""The daemon's loops and commandable tags as the command verifier sees and changes them.

`controller/authz.py` decides with the `Plant` view (limits and current values); this
module gives that view over the running loop groups and carries accepted actions out.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence

from controller.authz import Limits, Target
from controller.commands import Action, Mode, Setpoint, Write
from controller.loops import LoopGroup, Writer
from controller.loops_config import CommandTag, LoopConfig, split
from controller.tagstore import TagStore


class ActionFailed(Exception):
    """An accepted action that could not be carried out (a device refused the write)."""


class LoopPlant:
    """Implements `authz.Plant` and executes `Accepted` actions."""

    def __init__(
        self,
        groups: Sequence[LoopGroup],
        command_tags: Sequence[CommandTag],
        store: TagStore,
        writers: Mapping[str, Writer],
        write_timeout_s: float = 2.0,
    ) -> None:
        self._groups = {loop.id: g for g in groups for loop in g.loops}
        self._loops: dict[str, LoopConfig] = {loop.id: loop for g in groups for loop in g.loops}
        self._tags = {t.tag: t for t in command_tags}
        self._store = store
        self._writers = writers
        self._timeout_s = write_timeout_s

    def setpoint(self, loop: str) -> Target | None:
        """Set-point limits of `loop` and its commanded set point."""
        cfg, group = self._loops.get(loop), self._groups.get(loop)
        if cfg is None or group is None:
            return None
        current = float(group.sp_target[group.index[loop]])
        return Target(Limits(cfg.sp_min, cfg.sp_max, cfg.sp_max_step), current)

    def output(self, loop: str) -> Target | None:
        """Output limits of `loop` (for a manual output) and its current output."""
        cfg, group = self._loops.get(loop), self._groups.get(loop)
        if cfg is None or group is None:
            return None
        return Target(Limits(cfg.out_min, cfg.out_max, cfg.output_max_step), group.output(loop))

    def mode(self, loop: str) -> str | None:
        """`auto` or `manual`, or None for no such loop."""
        group = self._groups.get(loop)
        return None if group is None else group.mode(loop)

    def tag(self, tag: str) -> Target | None:
        """Limits and latest value of a `[[command_tags]]` entry; other tags: None."""
        cfg = self._tags.get(tag)
        if cfg is None:
            return None
        i = self._store.index.get(split(tag))
        value = None if i is None else float(self._store.value[i])
        current = value if value is not None and math.isfinite(value) else None
        return Target(Limits(cfg.min, cfg.max, cfg.max_step), current)

    async def execute(self, action: Action) -> None:
        """Carry out an accepted action; raises ActionFailed when a device refuses."""
        if isinstance(action, Setpoint):
            self._groups[action.loop].set_setpoint(action.loop, action.value)
        elif isinstance(action, Mode):
            group = self._groups[action.loop]
            group.set_mode(action.loop, action.mode == "auto", action.manual_output)
        elif isinstance(action, Write):
            await self._write(action.tag, action.value)

    async def _write(self, name: str, value: float) -> None:
        device, tag = split(name)
        writer = self._writers.get(device)
        if writer is None:
            raise ActionFailed(f"device {device} cannot be written")
        try:
            await asyncio.wait_for(writer.write(tag, value), self._timeout_s)
        except TimeoutError:
            raise ActionFailed(f"write {name} timed out after {self._timeout_s} s") from None
        except (ValueError, RuntimeError, OSError) as exc:
            raise ActionFailed(str(exc) or type(exc).__name__) from None
