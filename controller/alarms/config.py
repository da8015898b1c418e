"""One alarm's settings, validated on their own: kind, limit, priority, deadband, delays.

Config code builds one `AlarmConfig` per configured alarm; `controller.alarms.table.pack`
turns a list of them into the arrays the evaluation works on. Nothing is repaired: a field
that does not belong to the alarm's kind, or a missing one that does, is an error that names
the field.
"""

from __future__ import annotations

import math
from typing import Literal, Self

from pydantic import Field, model_validator

from drivers.registermap import Frozen

Kind = Literal[
    "high", "low", "high_high", "low_low", "deviation", "roc", "discrete", "quality", "n_of_m"
]
Priority = Literal["low", "medium", "high", "critical"]

# "device.tag" (a loop's own data: "br-1.temp.sp"): the stream is what comes before the last dot
TAG = r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.[a-z][a-z0-9_]*$"
ALARM_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"  # safe as an MQTT topic level
DEFAULT_SHELVE_MAX_S = 8 * 3600.0  # one shift

# Which optional fields each kind needs (and which it must not have).
NEEDS: dict[str, tuple[str, ...]] = {
    "high": ("limit",),
    "low": ("limit",),
    "high_high": ("limit",),
    "low_low": ("limit",),
    "deviation": ("limit", "setpoint_tag"),
    "roc": ("rate_per_min",),
    "discrete": ("state", "for_s"),
    "quality": ("stale_after_s",),
    "n_of_m": ("limit", "window_n", "window_m"),
}
OPTIONAL = ("limit", "setpoint_tag", "rate_per_min", "state", "for_s", "stale_after_s")
OPTIONAL_WINDOW = ("window_n", "window_m")
NO_DEADBAND = ("discrete", "quality", "n_of_m")  # conditions without a measured margin
OWN_DELAY = ("discrete", "quality")  # for_s / stale_after_s is their on-delay


class Suppress(Frozen):
    """Suppressed by design while tag `tag` reads `equals` (e.g. bioreactor/state == 0)."""

    tag: str = Field(pattern=TAG)
    equals: float = Field(allow_inf_nan=False)


class AlarmConfig(Frozen):
    """One alarm: what it watches, when it is active, how loud it is and how it returns.

    Kinds: `high`/`high_high` (value > limit), `low`/`low_low` (value < limit), `deviation`
    (|value − setpoint_tag| > limit), `roc` (|rate of change| > rate_per_min, per minute,
    over the measured time between samples), `discrete` (value == state for for_s seconds),
    `quality` (no good sample for stale_after_s seconds), `n_of_m` (window_n of the last
    window_m samples > limit). The deadband, in engineering units, applies on return only.
    """

    id: str = Field(pattern=ALARM_ID)
    tag: str = Field(pattern=TAG)
    kind: Kind
    priority: Priority = "medium"
    message: str = Field("", max_length=500)
    limit: float | None = Field(None, allow_inf_nan=False)
    deadband: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    on_delay_s: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    off_delay_s: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    latch: bool = False
    setpoint_tag: str | None = Field(None, pattern=TAG)
    rate_per_min: float | None = Field(None, gt=0.0, allow_inf_nan=False)
    state: float | None = Field(None, allow_inf_nan=False)
    for_s: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    stale_after_s: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    window_n: int | None = Field(None, ge=1, le=1000)
    window_m: int | None = Field(None, ge=1, le=1000)
    suppress_when: Suppress | None = None
    shelve_max_s: float = Field(DEFAULT_SHELVE_MAX_S, gt=0.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _fields_of_kind(self) -> Self:
        needs = NEEDS[self.kind]
        for name in (*OPTIONAL, *OPTIONAL_WINDOW):
            value = getattr(self, name)
            if name in needs and value is None:
                raise ValueError(f"{name}: required for a {self.kind} alarm")
            if name not in needs and value is not None:
                raise ValueError(f"{name}: not used by a {self.kind} alarm")
        if self.kind in NO_DEADBAND and self.deadband:
            raise ValueError(f"deadband: a {self.kind} alarm has no margin to apply it to")
        if self.kind in OWN_DELAY and self.on_delay_s:
            own = "for_s" if self.kind == "discrete" else "stale_after_s"
            raise ValueError(f"on_delay_s: a {self.kind} alarm's on-delay is {own}")
        n, m = self.window_n, self.window_m
        if n is not None and m is not None and n > m:
            raise ValueError(f"window_n: {self.window_n} exceeds window_m {self.window_m}")
        return self

    @property
    def compared_limit(self) -> float:
        """The number the alarm's value is compared with (see docs/alarms.md, per kind)."""
        for name in ("limit", "rate_per_min", "state", "stale_after_s"):
            value = getattr(self, name)
            if value is not None:
                return float(value)
        return math.nan  # unreachable: every kind has one of the above
