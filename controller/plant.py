"""The daemon's loops and commandable tags as the command verifier sees and changes them.

`controller/authz.py` decides with the `Plant` view (limits and current values); this
module gives that view over the running loop groups and carries accepted actions out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

from controller.authz import Limits, Target
from controller.batches import BatchRefused, BatchRegistry
from controller.commands import (
    Action,
    AlarmAction,
    BatchEnd,
    BatchStart,
    Mode,
    RoomState,
    Setpoint,
    Write,
)
from controller.loops import LoopGroup, Writer, write_tag
from controller.loops_config import CommandTag, LoopConfig, split
from controller.tagstore import TagStore


class ActionFailed(Exception):
    """An accepted action that could not be carried out (a device refused the write)."""

    def __init__(self, message: str, code: str = "failed") -> None:
        super().__init__(message)
        self.code = code


class AlarmDesk(Protocol):
    """What commands need of the alarm engine (controller/alarms)."""

    def state(self, alarm: str) -> str | None: ...

    def operate(self, action: AlarmAction, user: str, reason: str) -> None:
        """Carry out ack/shelve/...; raises ValueError with a reason when not allowed."""
        ...

    def room_state(self, room: str) -> str | None: ...

    def set_room_state(self, action: RoomState, user: str) -> None: ...


class LoopPlant:
    """Implements `authz.Plant` and executes `Accepted` actions."""

    def __init__(
        self,
        groups: Sequence[LoopGroup],
        command_tags: Sequence[CommandTag],
        store: TagStore,
        writers: Mapping[str, Writer],
        write_timeout_s: float = 2.0,
        *,
        batches: BatchRegistry | None = None,
        devices: frozenset[str] = frozenset(),
        alarms: AlarmDesk | None = None,
    ) -> None:
        self.batches = batches
        self.alarms = alarms
        self._devices = devices
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

    def batch(self, device: str) -> tuple[bool, str | None]:
        """Whether the device exists and which batch it runs."""
        if device not in self._devices or self.batches is None:
            return False, None
        running = self.batches.running(device)
        return True, None if running is None else running.batch

    def alarm(self, alarm: str) -> str | None:
        """The alarm's state (None: no such alarm, or no alarm engine)."""
        return None if self.alarms is None else self.alarms.state(alarm)

    def room(self, room: str) -> str | None:
        """The room's operational state (None: no such room)."""
        return None if self.alarms is None else self.alarms.room_state(room)

    async def execute(self, action: Action, user: str = "", reason: str = "") -> None:
        """Carry out an accepted action; raises ActionFailed when it cannot be done."""
        if isinstance(action, BatchStart | BatchEnd):
            self._batch(action, user)
        elif isinstance(action, AlarmAction | RoomState):
            self._alarm(action, user, reason)
        elif isinstance(action, Setpoint):
            self._groups[action.loop].set_setpoint(action.loop, action.value)
        elif isinstance(action, Mode):
            group = self._groups[action.loop]
            group.set_mode(action.loop, action.mode == "auto", action.manual_output)
        elif isinstance(action, Write):
            await self._write(action.tag, action.value)

    async def _write(self, name: str, value: float) -> None:
        error = await write_tag(self._writers, name, value, self._timeout_s)
        if error is not None:
            raise ActionFailed(error)

    def _batch(self, action: BatchStart | BatchEnd, user: str) -> None:
        if self.batches is None:
            raise ActionFailed("batches are not kept by this daemon", "unknown_object")
        try:
            if isinstance(action, BatchStart):
                self.batches.start(
                    action.device,
                    action.batch,
                    action.product,
                    action.phase,
                    user=user,
                    known=set(self._devices),
                )
            else:
                self.batches.end(action.device, action.batch, user)
        except BatchRefused as exc:
            raise ActionFailed(exc.message, exc.code) from None
        except OSError as exc:
            raise ActionFailed(f"the batch record cannot be written: {exc}") from None

    def _alarm(self, action: AlarmAction | RoomState, user: str, reason: str) -> None:
        if self.alarms is None:
            raise ActionFailed("there is no alarm engine", "unknown_object")
        try:
            if isinstance(action, RoomState):
                self.alarms.set_room_state(action, user)
            else:
                self.alarms.operate(action, user, reason)
        except ValueError as exc:
            raise ActionFailed(str(exc), "not_allowed_now") from None
