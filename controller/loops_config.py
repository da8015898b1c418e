"""The site file's control part: `[[loop_groups]]`, `[[loops]]` and `[[command_tags]]`.

Each model checks what it can see alone (limits in order, a set point inside its own
range); whether a loop's tags exist and its output is writable needs the device profiles,
so `controller/loops_check.py` checks that once they are loaded. Objects are named
`device.name` everywhere, the form commands use (`docs/commands.md`).
"""

from __future__ import annotations

import math
from typing import Self

from pydantic import Field, model_validator

from controller.pid_settings import LoopSettings
from drivers.registermap import Frozen

# `device.name`: the device id, a dot, a tag or loop name (see drivers/registermap.py)
OBJECT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}\.[a-z][a-z0-9_]{0,62}$"
GROUP_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class LoopGroupConfig(Frozen):
    """Loops that tick together at one period: read, compute, write, in that order."""

    id: str = Field(pattern=GROUP_PATTERN)
    period_s: float = Field(default=1.0, gt=0.0, le=3600.0)
    stale_after_s: float = Field(
        default=5.0, gt=0.0, description="a PV older than this is not used (loop holds)"
    )
    write_retries: int = Field(default=2, ge=0, le=10, description="per output, per tick")
    write_timeout_s: float = Field(default=1.0, gt=0.0, le=60.0)

    @model_validator(mode="after")
    def _stale_covers_period(self) -> Self:
        if self.stale_after_s < self.period_s:
            raise ValueError(
                f"stale_after_s ({self.stale_after_s}) below period_s ({self.period_s}): "
                "every PV would be stale"
            )
        return self

    @property
    def dt_bounds_s(self) -> tuple[float, float]:
        """The measured tick length is clipped to this range before the PID sees it."""
        return 0.1 * self.period_s, 10.0 * self.period_s


class Takeover(Frozen):
    """A device's own controller, switched off while cellfab drives its output.

    `remote` is written before the loop's first output, `local` at shutdown, so the device
    keeps controlling itself when the daemon is stopped.
    """

    tag: str = Field(pattern=OBJECT_PATTERN, description="device.tag, writable")
    remote: float = Field(allow_inf_nan=False)
    local: float = Field(allow_inf_nan=False)


class LoopConfig(LoopSettings):
    """One loop: where its PV comes from, where its output goes, its tuning and limits."""

    id: str = Field(pattern=OBJECT_PATTERN, description="device.loop, the name commands use")
    group: str = Field(pattern=GROUP_PATTERN)
    pv: str = Field(pattern=OBJECT_PATTERN, description="device.tag of the measurement")
    output: str = Field(pattern=OBJECT_PATTERN, description="device.tag written, writable")
    takeover: Takeover | None = None
    readback: str | None = Field(
        default=None,
        pattern=OBJECT_PATTERN,
        description="device.tag where the actuator reports its present output (takeover start)",
    )
    sp_min: float = Field(allow_inf_nan=False, description="lowest set point a command may set")
    sp_max: float = Field(allow_inf_nan=False)
    sp_max_step: float | None = Field(
        default=None, gt=0.0, description="largest set-point change one command may make"
    )
    output_max_step: float | None = Field(
        default=None, gt=0.0, description="largest manual-output change one command may make"
    )

    @model_validator(mode="after")
    def _sp_range(self) -> Self:
        if not self.sp_min < self.sp_max:
            raise ValueError(f"sp_min {self.sp_min} must be below sp_max {self.sp_max}")
        if not self.sp_min <= self.setpoint <= self.sp_max:
            raise ValueError(f"setpoint {self.setpoint} outside [{self.sp_min}, {self.sp_max}]")
        if self.pv == self.output:
            raise ValueError(f"pv and output are the same tag {self.pv!r}")
        return self

    @property
    def device(self) -> str:
        """The device the loop belongs to (the part of its id before the dot)."""
        return self.id.split(".", 1)[0]


class CommandTag(Frozen):
    """A writable tag outside any loop that the `write` command may set, within limits."""

    tag: str = Field(pattern=OBJECT_PATTERN, description="device.tag, writable")
    min: float = Field(allow_inf_nan=False)
    max: float = Field(allow_inf_nan=False)
    max_step: float | None = Field(default=None, gt=0.0)

    @model_validator(mode="after")
    def _range(self) -> Self:
        if not self.min < self.max:
            raise ValueError(f"min {self.min} must be below max {self.max}")
        if self.max_step is not None and not math.isfinite(self.max_step):
            raise ValueError("max_step must be finite")
        return self


def split(obj: str) -> tuple[str, str]:
    """`device.name` -> (device, name)."""
    device, name = obj.split(".", 1)
    return device, name


def loop_tag_names(loop: LoopConfig) -> list[str]:
    """Every `device.tag` a loop reads or writes: PV, output, readback, takeover switch."""
    names = [loop.pv, loop.output]
    if loop.readback is not None:
        names.append(loop.readback)
    if loop.takeover is not None:
        names.append(loop.takeover.tag)
    return names
