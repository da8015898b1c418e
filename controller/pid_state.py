"""The arrays the PID core works on: parameters, state, the terms a tick returns.

Everything is allocated once, here, as contiguous 1-D arrays: stacking quantities into 2-D
blocks saves calls at 1,000 loops but costs more than it saves at 10,000, where broadcast
and strided ufunc loops are several times slower than contiguous ones (measured).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]

MANUAL: Final = 0  # the operator's output, rate-limited; the integrator tracks it
AUTO: Final = 1  # the PID computes the output
HOLD: Final = 2  # auto, measurement bad or stale: integrator frozen, output held
SAFE: Final = 3  # auto, bad for safe_after_s or longer: output at safe_output
NEVER_S: Final = 1e300  # "time since the last good sample" before the first one


@dataclass(slots=True)
class PidParams:
    """Tuning and limits per loop, laid out for the core; the action sign is in the gains."""

    kp: F64  # signed proportional gain (output per pv unit)
    ki: F64  # signed integral gain (output per pv unit and second)
    b: F64  # set-point weight of the P term
    tk: F64  # (2, n): derivative filter time constant tf_s, signed kd (output·s per pv unit)
    rate_out: F64  # output rate limit, per second; inf = none
    rate_sp: F64  # set-point ramp rate, per second; inf = none
    out_min: F64
    out_max: F64
    safe_after_s: F64  # bad this long in auto -> safe_output; inf = never
    safe_output: F64
    dt_min_s: float  # the measured dt is clipped to [dt_min_s, dt_max_s]
    dt_max_s: float

    @property
    def n(self) -> int:
        return int(self.out_min.shape[0])


@dataclass(slots=True)
class PidTerms:
    """What a tick produced, one array per quantity, to be recorded like any tag."""

    output: F64
    p: F64
    i: F64
    d: F64
    sp: F64  # the working (ramped) set point
    sat_high: Bool  # the demand reached the upper bound of the tick's window
    sat_low: Bool
    mode: npt.NDArray[np.int8]  # MANUAL / AUTO / HOLD / SAFE

    @classmethod
    def empty(cls, n: int) -> PidTerms:
        """Preallocated buffers for `update(..., out=)`."""
        z, b = np.zeros(n), np.zeros(n, dtype=bool)
        return cls(z, z.copy(), z.copy(), z.copy(), z.copy(), b, b.copy(), np.zeros(n, np.int8))


class PidState:
    """Everything the loops remember between ticks, scratch, and named views into blocks."""

    def __init__(self, n: int) -> None:
        z = np.zeros
        self.u, self.spw, self.p, self.e = z(n), z(n), z(n), z(n)
        self.dd = z((2, n))  # [filtered D term, scaled pv change]: one multiply by [tf, kd]
        self.lo, self.hi, self.ab_lo, self.ab_hi = z(n), z(n), z(n), z(n)
        self.sat_low, self.sat_high = z(n, bool), z(n, bool)
        self.i, self.pd, self.tmp, self.h = z(n), z(n), z(n), z(n)
        self.pv_last, self.pvn, self.bad_s, self.tsg = z(n), z(n), z(n), z(n)
        self.manual_output = z(n)
        self.good, self.bad = z(n, bool), z(n, bool)
        self.auto, self.manual = z(n, bool), z(n, bool)
        self.n_manual = 0
        self.manual_idx = np.zeros(0, dtype=np.intp)
        self.had_bad = True  # bad_s starts at NEVER_S
        self.mode_dirty = True  # mode must be recomputed from auto next tick
        self.mode = z(n, np.int8)
        self.d, self.dy = self.dd  # views, made once
        self.terms = PidTerms(
            self.u, self.p, self.i, self.d, self.spw, self.sat_high, self.sat_low, self.mode
        )


def new_state(params: PidParams, sp: F64, output: F64, auto: Bool) -> PidState:
    """Loops that start at `output` (also their manual output), before any sample."""
    s = PidState(params.n)
    np.clip(output, params.out_min, params.out_max, out=s.u)
    s.spw[:] = sp
    s.i[:] = s.u  # the first auto tick starts from `output` when P and D are zero
    s.pv_last[:] = sp
    s.bad_s[:] = NEVER_S  # the first derivative then sees ~0 change per second
    s.manual_output[:] = s.u
    s.auto[:] = auto
    _manual_changed(s)
    s.mode[:] = s.auto
    return s


def set_mode(
    state: PidState,
    params: PidParams,
    loops: Sequence[int] | npt.NDArray[np.intp] | npt.NDArray[np.bool_] | slice,
    auto: bool,
    manual_output: float | None = None,
) -> None:
    """Switch `loops` (indices or a mask) to auto or manual, bumplessly.

    Going to manual without an output keeps the current output. Going to auto needs nothing:
    the integrator has tracked the manual output all along.
    """
    idx = np.arange(params.n)[loops]
    if not auto:
        value = state.u[idx] if manual_output is None else np.full(idx.shape, manual_output)
        if not np.all((value >= params.out_min[idx]) & (value <= params.out_max[idx])):
            raise ValueError(f"manual output {manual_output} outside the output limits")
        state.manual_output[idx] = value
    state.auto[idx] = auto
    _manual_changed(state)


def _manual_changed(state: PidState) -> None:
    np.logical_not(state.auto, out=state.manual)
    state.manual_idx = np.flatnonzero(state.manual)
    state.n_manual = int(state.manual_idx.shape[0])
    state.mode_dirty = True
