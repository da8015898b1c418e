"""A Lighthouse REMOTE airborne particle counter: pure, seeded, on simulated time.

No I/O and no wall clock. The counter runs the instrument cycle of the vendor manual
(initial delay, then sample / hold, repeated) and at the end of every sample appends one
record of raw cumulative counts to a ring buffer, as the real instrument does. Counts are
Poisson draws around a mean concentration that follows the room's grade: a fraction of
the Annex 1 (2022) Table 5 at-rest limit at 0.5 µm, with an ISO 14644-1 size distribution
(C ∝ D^-2.08) for the other channels, and occasional excursions above the limit
(docs/devices/particle-counter.md).
"""

from __future__ import annotations

import collections
import math
from typing import Literal

import numpy as np
from pydantic import Field, field_validator

from drivers.lighthouse import DataStatus, DeviceStatus, RawRecord
from drivers.registermap import Frozen
from simulators.config import FaultSpec

Grade = Literal["A", "B", "C", "D"]
StatusFaultKind = Literal["laser_alert", "flow_alert", "overflow", "malfunction"]

# Annex 1 (2022) Table 5, at rest, total particles/m³ >= 0.5 µm (shared/domain.md §1.2)
LIMIT_0_5UM_PER_M3: dict[str, float] = {
    "A": 3_520.0,
    "B": 3_520.0,
    "C": 352_000.0,
    "D": 3_520_000.0,
}
STATUS_BITS: dict[str, DataStatus] = {
    "laser_alert": DataStatus.LASER_ALERT,
    "flow_alert": DataStatus.FLOW_ALERT,
    "overflow": DataStatus.OVERFLOW,
    "malfunction": DataStatus.SERVICE,
}
FLOW_RAW = 100  # 1.00 CFM
FLOW_ALERT_RAW = 85  # a pump losing flow: 0.85 CFM, outside the ±5 % band
M3_PER_FT3 = 0.028316846592


class StatusFaultSpec(Frozen):
    """An instrument condition shown in the data-status bits of records during a window."""

    kind: StatusFaultKind
    start_s: float = Field(ge=0.0, description="wall seconds after the simulator started")
    duration_s: float = Field(gt=0.0)


class ParticleCounterSimConfig(Frozen):
    """A remote particle counter in a room of one grade."""

    model: Literal["lighthouse_remote"] = "lighthouse_remote"
    grade: Grade = "B"
    seed: int = 0
    time_scale: float = Field(default=1.0, gt=0.0, le=10000.0, description="sim s per wall s")
    mean_fraction_of_limit: float = Field(default=0.05, gt=0.0, le=1.0)
    excursion_rate: float = Field(default=0.02, ge=0.0, le=1.0, description="per sample")
    excursion_factor: float = Field(default=30.0, ge=1.0, description="× the mean")
    buffer_records: int = Field(default=3000, ge=1, le=32767, description="ring buffer size")
    clock_start_unix: int | None = Field(default=None, description="RTC at start; default: now")
    faults: tuple[FaultSpec, ...] = ()
    status_faults: tuple[StatusFaultSpec, ...] = ()

    @field_validator("faults")
    @classmethod
    def _no_nan(cls, faults: tuple[FaultSpec, ...]) -> tuple[FaultSpec, ...]:
        if any(f.kind == "nan" for f in faults):
            raise ValueError("nan does not apply to integer counts; use status_faults")
        return faults


def mean_per_m3(grade: str, fraction: float, size_um: float) -> float:
    """Mean cumulative concentration >= size_um for a room of `grade`."""
    return float(fraction * LIMIT_0_5UM_PER_M3[grade] * (0.5 / size_um) ** 2.08)


class ParticleCounterModel:
    """The instrument: cycle state, RTC, ring buffer of records; stepped by `run_to(t_s)`."""

    def __init__(
        self, cfg: ParticleCounterSimConfig, sizes_um: tuple[float, ...], clock_start: int
    ) -> None:
        self._cfg = cfg
        self.sizes_um = sizes_um
        self._rng = np.random.default_rng(cfg.seed)
        self.t_s = 0.0
        self._clock_offset = float(clock_start)
        self.buffer: collections.deque[RawRecord] = collections.deque(maxlen=cfg.buffer_records)
        self.records_taken = 0
        self.running = False
        self.sampling = False
        self.new_data = False
        self.sample_s, self.hold_s, self.delay_s = 60, 0, 0
        self._phase_end = math.inf
        self.status_bits = 0  # data-status bits of conditions in force now
        self.location = 1

    @property
    def rtc_s(self) -> int:
        """The instrument clock, Unix seconds."""
        return math.floor(self._clock_offset + self.t_s)

    def set_clock(self, unix_s: int) -> None:
        """Set the RTC (registers 40027-40028)."""
        self._clock_offset = unix_s - self.t_s

    @property
    def status(self) -> int:
        """Register 40003."""
        bits = DeviceStatus(0)
        if self.running:
            bits |= DeviceStatus.RUNNING
        if self.sampling:
            bits |= DeviceStatus.SAMPLING
        if self.new_data:
            bits |= DeviceStatus.NEW_DATA
        return int(bits)

    @property
    def flow_raw(self) -> int:
        """Register 40023: the pump's flow in hundredths of a CFM."""
        if not self.running:
            return 0
        return FLOW_ALERT_RAW if self.status_bits & DataStatus.FLOW_ALERT else FLOW_RAW

    def start(self) -> None:
        """Command 11: initial delay, then sample/hold cycles (no-op while running)."""
        if self.running:
            return
        self.running = True
        self.sampling = self.delay_s == 0
        self._phase_end = self.t_s + (self.sample_s if self.sampling else self.delay_s)

    def stop(self) -> None:
        """Command 12: abort the current sample and stop the pump."""
        self.running = self.sampling = False
        self._phase_end = math.inf

    def clear(self) -> None:
        """Command 3: empty the buffer."""
        self.buffer.clear()

    def run_to(self, t_s: float) -> None:
        """Advance simulated time to `t_s`, completing every sample that ends on the way."""
        while self._phase_end <= t_s:
            self.t_s = self._phase_end
            if self.sampling:
                self._complete_sample()
                if self.hold_s > 0:
                    self.sampling = False
                    self._phase_end = self.t_s + self.hold_s
                    continue
            self.sampling = True
            self._phase_end = self.t_s + self.sample_s
        self.t_s = max(self.t_s, t_s)

    def _complete_sample(self) -> None:
        flow_cfm = self.flow_raw / 100.0
        volume_m3 = flow_cfm * self.sample_s / 60.0 * M3_PER_FT3
        factor = self._cfg.excursion_factor if self._rng.random() < self._cfg.excursion_rate else 1
        means = [
            mean_per_m3(self._cfg.grade, self._cfg.mean_fraction_of_limit, d) * factor * volume_m3
            for d in self.sizes_um
        ]
        # differential bins (each >= its size, < the next) drawn independently, then summed
        # from the largest down, so the cumulative channels never increase with size
        diff = [max(0.0, m - n) for m, n in zip(means, [*means[1:], 0.0], strict=True)]
        drawn = self._rng.poisson(diff)
        counts = np.cumsum(drawn[::-1])[::-1]
        record = RawRecord(
            timestamp_s=self.rtc_s,
            sample_time_s=self.sample_s,
            location=self.location,
            data_status=self.status_bits,
            counts=tuple(int(c) for c in counts) + (0,) * (8 - len(self.sizes_um)),
        )
        self.buffer.append(record)
        self.records_taken += 1
        self.new_data = True
