"""The latest value of every tag, as numpy columns, so later stages evaluate a tick at once.

Loops and alarms (later issues) read whole arrays; the live view reads rows. Columns are
indexed by tag position; each device owns a contiguous slice, in its driver's tag order.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from drivers.base import TagInfo
from drivers.sample import Quality, Scan


@dataclass(frozen=True, slots=True)
class TagRow:
    """One tag's latest state, for display."""

    device: str
    tag: str
    unit: str
    value: float | None
    quality: Quality
    reason: str | None
    t_receive_ns: int


class TagStore:
    """Columns `value`, `quality`, `t_receive_ns` over every tag of every device."""

    def __init__(self, devices: Iterable[tuple[str, Sequence[TagInfo]]]) -> None:
        self.keys: list[tuple[str, str]] = []
        self.units: list[str] = []
        self._slices: dict[str, slice] = {}
        for device, tags in devices:
            start = len(self.keys)
            self.keys += [(device, t.tag) for t in tags]
            self.units += [t.unit for t in tags]
            self._slices[device] = slice(start, len(self.keys))
        n = len(self.keys)
        self.value: npt.NDArray[np.float64] = np.full(n, np.nan)
        self.quality: npt.NDArray[np.int8] = np.full(n, Quality.BAD, dtype=np.int8)
        self.t_receive_ns: npt.NDArray[np.int64] = np.zeros(n, dtype=np.int64)
        # when the value arrived here, on the monotonic clock: staleness is scheduling
        self.t_stored_s: npt.NDArray[np.float64] = np.full(n, -np.inf)
        self.reasons: list[str | None] = ["no reading yet"] * n
        self.index = {key: i for i, key in enumerate(self.keys)}

    def update(self, scan: Scan) -> None:
        """Take a device's scan; samples arrive in the driver's tag order."""
        sl = self._slices[scan.device]
        samples = scan.samples
        if len(samples) != sl.stop - sl.start:
            raise ValueError(
                f"scan of {scan.device} has {len(samples)} samples, store expects "
                f"{sl.stop - sl.start}"
            )
        if not samples:
            return
        # One transposition (a C loop) instead of a list comprehension per column.
        _, values, _, quality, t_receive_ns, reasons, _, _ = zip(*samples, strict=True)
        if None in values:
            values = tuple(np.nan if v is None else v for v in values)
        self.value[sl] = values
        self.quality[sl] = quality
        self.t_receive_ns[sl] = t_receive_ns
        self.t_stored_s[sl] = time.monotonic()
        self.reasons[sl] = reasons

    def device_slice(self, device: str) -> slice | None:
        """The columns of one device (or stream), None if the store does not hold it."""
        return self._slices.get(device)

    def carry_from(self, old: TagStore) -> None:
        """Take over the latest state of every tag both stores have (a config reload)."""
        pairs = [(i, old.index[key]) for i, key in enumerate(self.keys) if key in old.index]
        if not pairs:
            return
        new_i, old_i = (np.array(x, dtype=np.intp) for x in zip(*pairs, strict=True))
        for name in ("value", "quality", "t_receive_ns", "t_stored_s"):
            getattr(self, name)[new_i] = getattr(old, name)[old_i]
        for i, j in pairs:
            self.reasons[i] = old.reasons[j]

    def rows(self) -> list[TagRow]:
        """Every tag's latest state, in configuration order."""
        return [
            TagRow(
                dev,
                tag,
                self.units[i],
                None if np.isnan(self.value[i]) else float(self.value[i]),
                Quality(int(self.quality[i])),
                self.reasons[i],
                int(self.t_receive_ns[i]),
            )
            for i, (dev, tag) in enumerate(self.keys)
        ]
