"""Per-loop PID settings, validated one loop at a time, and their packing into arrays.

Config code (the site file's loops) builds one `LoopSettings` per loop; `build` turns a
group's list into the `PidParams`/`PidState` arrays that `controller.pid.update` works on.
Nothing is repaired: inverted limits, a safe output outside them or a NaN gain are errors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from controller.pid_state import PidParams, PidState, new_state


class LoopSettings(BaseModel):
    """One loop's tuning, limits and fail-safe behaviour (units in the field names)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kp: float = Field(ge=0.0, allow_inf_nan=False)
    ki_per_s: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    kd_s: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    action: Literal["reverse", "direct"] = "reverse"  # reverse: output rises as pv falls
    sp_weight_p: float = Field(1.0, ge=0.0, le=1.0)  # b: 0 = P on measurement only
    d_filter_s: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    out_min: float = Field(allow_inf_nan=False)
    out_max: float = Field(allow_inf_nan=False)
    out_rate_per_s: float = Field(math.inf, gt=0.0)
    sp_rate_per_s: float = Field(math.inf, gt=0.0)
    safe_after_s: float = Field(math.inf, ge=0.0)
    safe_output: float = Field(allow_inf_nan=False)
    setpoint: float = Field(allow_inf_nan=False)
    auto: bool = True
    initial_output: float | None = None  # default: the safe output

    @model_validator(mode="after")
    def _limits(self) -> Self:
        if not self.out_min < self.out_max:
            raise ValueError(f"out_min {self.out_min} must be below out_max {self.out_max}")
        for name in ("safe_output", "initial_output"):
            value = getattr(self, name)
            if value is not None and not self.out_min <= value <= self.out_max:
                raise ValueError(f"{name} {value} outside [{self.out_min}, {self.out_max}]")
        return self


def build(
    loops: Sequence[LoopSettings], dt_min_s: float, dt_max_s: float
) -> tuple[PidParams, PidState]:
    """Arrays for a group of loops that tick together; dt is clipped to [dt_min_s, dt_max_s]."""
    if not 0.0 < dt_min_s <= dt_max_s < math.inf:
        raise ValueError(f"need 0 < dt_min_s <= dt_max_s < inf, got {dt_min_s}, {dt_max_s}")

    def col(name: str) -> np.ndarray[tuple[int], np.dtype[np.float64]]:
        return np.array([getattr(loop, name) for loop in loops], dtype=np.float64)

    sign = np.array([1.0 if loop.action == "reverse" else -1.0 for loop in loops])
    params = PidParams(
        kp=sign * col("kp"),
        ki=sign * col("ki_per_s"),
        b=col("sp_weight_p"),
        tk=np.stack([col("d_filter_s"), sign * col("kd_s")]),
        rate_out=col("out_rate_per_s"),
        rate_sp=col("sp_rate_per_s"),
        out_min=col("out_min"),
        out_max=col("out_max"),
        safe_after_s=col("safe_after_s"),
        safe_output=col("safe_output"),
        dt_min_s=float(dt_min_s),
        dt_max_s=float(dt_max_s),
    )
    start = [
        loop.safe_output if loop.initial_output is None else loop.initial_output for loop in loops
    ]
    auto = np.array([loop.auto for loop in loops], dtype=bool)
    return params, new_state(params, col("setpoint"), np.array(start, dtype=np.float64), auto)
