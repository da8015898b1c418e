"""A simulated cell counter: a growing culture, counted every `period_s`, sent as `$CC` lines.

The instrument is a pty pair: the simulator holds the master end and SYMLINKS the client end
at the device's `port`, so `cellfab simulate` and `cellfab run` in two processes meet at one
path, as they would at /dev/ttyUSB0. The culture is pure and seeded: logistic growth of
viable cells, a slow rise of dead cells, Poisson counting error of the imaged volume, so
total, viable and viability always agree the way a real count does.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
import tty
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Self

from pydantic import Field, field_validator

from drivers.cellcount_record import CellCount, format_record
from drivers.registermap import Frozen
from simulators.base import steps_due
from simulators.config import FaultSpec

if TYPE_CHECKING:
    from drivers.cell_counter import CellCounterConfig

log = logging.getLogger(__name__)

LineFaultKind = Literal[
    "garbage", "bad_checksum", "truncated", "out_of_range", "silent", "disconnect"
]
FAULT_PRIORITY: tuple[LineFaultKind, ...] = (
    "disconnect", "silent", "truncated", "garbage", "bad_checksum", "out_of_range"
)  # fmt: skip
FROM_FAULTSPEC: dict[str, LineFaultKind] = {"no_response": "silent", "disconnect": "disconnect"}
NOISE = bytes(b for b in range(256) if b not in b"$\r\n")


class LineFaultSpec(Frozen):
    """A fault of the counter's serial output during a window of wall-clock time.

    garbage: line noise instead of each record; bad_checksum: records with a wrong CRC;
    truncated: half a record, then nothing until the window ends; out_of_range: a record
    with viability 130 % (valid CRC); silent: nothing is sent; disconnect: the pty is
    closed and its link removed, and a new pty is linked at the same path afterwards.
    """

    kind: LineFaultKind
    start_s: float = Field(ge=0.0, description="seconds after the simulator started")
    duration_s: float = Field(gt=0.0)


class CellCounterSimConfig(Frozen):
    """A cell counter measuring one expanding T-cell culture (the `[devices.simulator]`)."""

    model: Literal["cell_counter"] = "cell_counter"
    seed: int = 0
    time_scale: float = Field(default=1.0, gt=0.0, le=100000.0, description="sim s per wall s")
    period_s: float = Field(default=300.0, gt=0.0, description="sim s between measurements")
    instrument_serial: str = Field(default="NC2-100412", pattern=r"^[A-Z0-9][A-Z0-9-]{0,15}$")
    sample_prefix: str = Field(default="BATCH-001", min_length=1, max_length=24)
    seeding_per_mL: float = Field(default=5.0e5, gt=0.0, le=1.0e8, description="viable at t=0")
    capacity_per_mL: float = Field(default=4.0e6, gt=0.0, le=1.0e8, description="plateau")
    doubling_h: float = Field(default=30.0, gt=0.0, description="early doubling time")
    viability_pct: float = Field(default=95.0, gt=0.0, le=100.0, description="at t=0")
    viability_loss_pct_per_day: float = Field(default=1.0, ge=0.0, le=50.0)
    diameter_um: float = Field(default=9.5, ge=2.5, le=50.0, description="mean cell diameter")
    counted_volume_uL: float = Field(default=2.0, gt=0.0, description="imaged volume")
    faults: tuple[FaultSpec, ...] = ()
    line_faults: tuple[LineFaultSpec, ...] = ()

    @field_validator("faults")
    @classmethod
    def _kinds_that_fit(cls, faults: tuple[FaultSpec, ...]) -> tuple[FaultSpec, ...]:
        for fault in faults:
            if fault.kind not in FROM_FAULTSPEC:
                raise ValueError(
                    f"fault {fault.kind!r}: a serial counter knows only {FROM_FAULTSPEC}"
                )
        return faults


class CultureModel:
    """True culture state at a simulated time and one noisy count of it: pure and seeded."""

    def __init__(self, cfg: CellCounterSimConfig) -> None:
        self.cfg = cfg
        self._rng = random.Random(cfg.seed)

    def viable_true(self, t_s: float) -> float:
        """Logistic growth: exponential with `doubling_h` early, `capacity_per_mL` late."""
        c = self.cfg
        rate = math.log(2.0) / (c.doubling_h * 3600.0)
        ratio = c.capacity_per_mL / c.seeding_per_mL - 1.0
        return c.capacity_per_mL / (1.0 + ratio * math.exp(-rate * t_s))

    def viability_true(self, t_s: float) -> float:
        """Viability drifts down linearly, never below 50 %."""
        c = self.cfg
        return max(50.0, c.viability_pct - c.viability_loss_pct_per_day * t_s / 86400.0)

    def count(self, t_s: float) -> tuple[float, float, float, float]:
        """(total/mL, viable/mL, viability %, diameter um) as the instrument would report."""
        volume_mL = self.cfg.counted_volume_uL * 1e-3
        viable = self.viable_true(t_s)
        dead = viable * (100.0 / self.viability_true(t_s) - 1.0)
        n_viable, n_dead = self._poisson(viable * volume_mL), self._poisson(dead * volume_mL)
        n_total = n_viable + n_dead
        total_per_mL = float(f"{n_total / volume_mL:.3E}")
        viable_per_mL = float(f"{n_viable / volume_mL:.3E}")
        viability = round(100.0 * n_viable / n_total, 1) if n_total else 0.0
        diameter = round(self._rng.gauss(self.cfg.diameter_um, 0.15), 2)
        return total_per_mL, viable_per_mL, viability, min(60.0, max(2.0, diameter))

    def _poisson(self, mean: float) -> int:
        """Counting noise; normal approximation (the mean is hundreds to thousands)."""
        return max(0, round(self._rng.gauss(mean, math.sqrt(mean))))


class CellCounterSimulator:
    """Serves one counter on a pty linked at `port`; faults from the schedule or `inject`."""

    def __init__(self, cfg: CellCounterSimConfig, port: str | Path) -> None:
        self._cfg = cfg
        self.link = Path(port)
        self.model = CultureModel(cfg)
        self._noise = random.Random(cfg.seed + 1)
        self._master = self._slave = -1
        self._t0_ns = 0
        self._measured = 0
        self._scheduled: frozenset[LineFaultKind] = frozenset()
        self._injected: set[LineFaultKind] = set()
        self._truncated_sent = False
        self.sent: list[CellCount] = []  # intact records only, in the order sent
        self.dropped = 0

    @classmethod
    def from_device(cls, dev: CellCounterConfig) -> CellCounterSimulator:
        """The simulator of a configured device (the runner's SIMULATORS entry)."""
        if dev.simulator is None:
            raise ValueError(f"device {dev.id} has no simulator")
        return cls(dev.simulator, dev.port)

    @property
    def where(self) -> str:
        """The path clients open."""
        return str(self.link)

    @property
    def tick_s(self) -> float:
        """A few ticks per measurement, within 10 ms..0.5 s."""
        return max(0.01, min(0.5, self._cfg.period_s / self._cfg.time_scale / 4.0))

    @property
    def active_faults(self) -> frozenset[LineFaultKind]:
        """Faults in effect now, scheduled or injected."""
        return self._scheduled | frozenset(self._injected)

    async def __aenter__(self) -> Self:
        self._t0_ns = time.time_ns() // 1_000_000_000 * 1_000_000_000  # the clock shows seconds
        self._plug()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._unplug()

    async def wait_listening(self) -> None:
        """The pty exists as soon as the context is entered (and outside a disconnect)."""

    async def inject(self, kind: LineFaultKind, active: bool) -> None:
        """Switch a fault on or off at once (tests), on top of the schedule."""
        before = self.active_faults
        (self._injected.add if active else self._injected.discard)(kind)
        self._apply(before)

    async def advance(self, elapsed_s: float) -> None:
        """Apply the fault schedule, then send every measurement due by `elapsed_s`."""
        before = self.active_faults
        self._scheduled = self._scheduled_at(elapsed_s)
        self._apply(before)
        due = steps_due(elapsed_s, self._cfg.time_scale, self._cfg.period_s)
        while self._measured < due:
            self._measured += 1
            self._emit(self._measure(self._measured))

    def _scheduled_at(self, elapsed_s: float) -> frozenset[LineFaultKind]:
        kinds: set[LineFaultKind] = set()
        for f in self._cfg.line_faults:
            if f.start_s <= elapsed_s < f.start_s + f.duration_s:
                kinds.add(f.kind)
        for g in self._cfg.faults:
            if g.start_s <= elapsed_s < g.start_s + g.duration_s:
                kinds.add(FROM_FAULTSPEC[g.kind])
        return frozenset(kinds)

    def _apply(self, before: frozenset[LineFaultKind]) -> None:
        after = self.active_faults
        for kind in sorted(after - before):
            log.info("simulator %s: fault %s on", self.link, kind)
        for kind in sorted(before - after):
            log.info("simulator %s: fault %s off", self.link, kind)
        if "truncated" not in after:
            self._truncated_sent = False
        if "disconnect" in after and self._master >= 0:
            self._unplug()
        elif "disconnect" not in after and self._master < 0:
            self._plug()

    def _measure(self, n: int) -> CellCount:
        t_s = n * self._cfg.period_s
        total, viable, viability, diameter = self.model.count(t_s)
        t_ns = self._t0_ns + round(t_s * 1e9)
        sample = f"{self._cfg.sample_prefix}-{n:04d}"
        return CellCount(
            self._cfg.instrument_serial, sample, t_ns, total, viable, viability, diameter
        )

    def _emit(self, rec: CellCount) -> None:
        """Send `rec` as the active fault shapes it (the highest-priority fault wins)."""
        fault = next((k for k in FAULT_PRIORITY if k in self.active_faults), None)
        line = format_record(rec)
        if fault in {"disconnect", "silent"}:
            return
        if fault == "truncated":
            if not self._truncated_sent:
                self._truncated_sent = True
                self._write(line[: len(line) // 2])
            return
        if fault == "garbage":
            length = self._noise.randint(8, 80)
            self._write(bytes(self._noise.choice(NOISE) for _ in range(length)) + b"\r\n")
        elif fault == "bad_checksum":
            self._write(line[:-6] + f"{(int(line[-6:-2], 16) ^ 0x5A5A):04X}\r\n".encode())
        elif fault == "out_of_range":
            self._write(format_record(rec._replace(viability_pct=130.0)))
        elif self._write(line):
            self.sent.append(rec)

    def _write(self, data: bytes) -> bool:
        """Write to the master end; a full buffer (nobody reading) drops the line."""
        if self._master < 0:
            return False
        try:
            written = os.write(self._master, data)
        except BlockingIOError:
            written = 0
        if written < len(data):
            self.dropped += 1
            return False
        return True

    def _plug(self) -> None:
        """A new pty, its client end linked at `link` (atomically replacing an old link)."""
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no CR/LF mangling before the client configures the port
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        tmp = self.link.with_name(f".{self.link.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(os.ttyname(slave))
        tmp.replace(self.link)
        log.info("simulator: cell counter on %s -> %s", self.link, os.ttyname(slave))

    def _unplug(self) -> None:
        """Close the pty (the client sees a hang-up) and remove the link, like an unplug."""
        if self._master >= 0 and self.link.is_symlink():
            self.link.unlink()
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1
