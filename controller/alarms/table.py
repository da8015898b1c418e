"""A list of `AlarmConfig` packed into arrays, grouped by kind so each group is a slice.

The engine evaluates each kind on a contiguous slice (views, no gathers). The packed order
is therefore the kinds' order below, and within a kind the configuration order; `ids` gives
it, and every input array of a tick is aligned with it (`tag_columns` builds the gather
index from the tag store's columns once).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from controller.alarms.config import AlarmConfig

F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]
Idx = npt.NDArray[np.intp]

# Group order: the packed order of the alarms.
GROUPS = ("level", "deviation", "roc", "discrete", "quality", "n_of_m")
GROUP_OF = {
    "high": "level",
    "high_high": "level",
    "low": "level",
    "low_low": "level",
    "deviation": "deviation",
    "roc": "roc",
    "discrete": "discrete",
    "quality": "quality",
    "n_of_m": "n_of_m",
}
PRIORITY_CODE = {"low": 1, "medium": 2, "high": 3, "critical": 4}


@dataclass(frozen=True, slots=True)
class AlarmTable:
    """Per-alarm constants, in packed order; `groups` maps each kind group to its slice."""

    configs: tuple[AlarmConfig, ...]
    ids: tuple[str, ...]
    groups: dict[str, slice]
    limit: F64  # the compared limit: limit, rate_per_min, state or stale_after_s
    sign: F64  # +1 for high kinds, -1 for low kinds (1 elsewhere)
    deadband: F64
    on_delay_s: F64  # for_s / stale_after_s for discrete / quality alarms
    off_delay_s: F64
    latch: Bool
    priority: npt.NDArray[np.int8]
    window_n: npt.NDArray[np.int64]  # per n_of_m alarm (length of the n_of_m slice)
    window_m: npt.NDArray[np.int64]
    suppressible: Bool  # has a suppress_when
    suppress_equals: F64  # NaN where none

    @property
    def n(self) -> int:
        return len(self.ids)

    def tag_columns(self, columns: Mapping[str, int]) -> tuple[Idx, Idx, Idx]:
        """Column indices (tag store order) of each alarm's tag, set-point and suppress tags.

        `columns` maps "device.tag" to a column. Alarms without a set-point or suppress tag
        get their own tag's column there (the engine ignores those values). A tag missing
        from `columns` raises KeyError naming it.
        """

        def col(tag: str) -> int:
            if tag not in columns:
                raise KeyError(f"alarm tag {tag!r} is not a configured tag")
            return columns[tag]

        value = np.array([col(c.tag) for c in self.configs], dtype=np.intp)
        sp = [col(c.setpoint_tag) if c.setpoint_tag else col(c.tag) for c in self.configs]
        sw = [col(c.suppress_when.tag) if c.suppress_when else col(c.tag) for c in self.configs]
        return value, np.array(sp, dtype=np.intp), np.array(sw, dtype=np.intp)

    def suppression(self, suppress_values: F64) -> Bool:
        """The per-alarm suppression flag from the values of the suppress tags (aligned)."""
        flags: Bool = np.equal(suppress_values, self.suppress_equals)
        flags &= self.suppressible
        return flags


def pack(configs: Sequence[AlarmConfig]) -> AlarmTable:
    """Arrays for alarms that are evaluated together; ids must be unique."""
    seen: set[str] = set()
    for cfg in configs:
        if cfg.id in seen:
            raise ValueError(f"id: alarm {cfg.id!r} is configured twice")
        seen.add(cfg.id)
    ordered: list[AlarmConfig] = []
    groups: dict[str, slice] = {}
    for group in GROUPS:
        start = len(ordered)
        ordered += [c for c in configs if GROUP_OF[c.kind] == group]
        groups[group] = slice(start, len(ordered))
    nm = ordered[groups["n_of_m"]]

    def col(values: list[float]) -> F64:
        return np.array(values, dtype=np.float64)

    return AlarmTable(
        configs=tuple(ordered),
        ids=tuple(c.id for c in ordered),
        groups=groups,
        limit=col([c.compared_limit for c in ordered]),
        sign=col([-1.0 if c.kind in ("low", "low_low") else 1.0 for c in ordered]),
        deadband=col([c.deadband for c in ordered]),
        on_delay_s=col([_on_delay(c) for c in ordered]),
        off_delay_s=col([c.off_delay_s for c in ordered]),
        latch=np.array([c.latch for c in ordered], dtype=bool),
        priority=np.array([PRIORITY_CODE[c.priority] for c in ordered], dtype=np.int8),
        window_n=np.array([c.window_n for c in nm], dtype=np.int64),
        window_m=np.array([c.window_m for c in nm], dtype=np.int64),
        suppressible=np.array([c.suppress_when is not None for c in ordered], dtype=bool),
        suppress_equals=col(
            [c.suppress_when.equals if c.suppress_when else np.nan for c in ordered]
        ),
    )


def _on_delay(cfg: AlarmConfig) -> float:
    if cfg.kind == "discrete":
        return float(cfg.for_s or 0.0)
    if cfg.kind == "quality":
        return float(cfg.stale_after_s or 0.0)
    return cfg.on_delay_s
