"""The arrays the PID core works on: parameters, state, the terms a tick returns.

Everything is allocated once, here. Quantities the core treats alike sit in row blocks of the
same shape, so one ufunc call does several rows (`[spw, u] ± [sp rate, out rate]·h`; `[b·spw
- x, spw - x, pv_last - x, D] * [kp, ki, kd, tf]`); a call that broadcasts one operand over
rows costs about twice as much as one on equal shapes (measured), so none does. Every row
starts on a 64-byte boundary: with AVX-512 loops, misaligned float64 arrays cost about twice
as much per element (measured, N = 10,000).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]

MANUAL: Final = 0  # the operator's output, rate-limited; the integrator tracks it
AUTO: Final = 1  # the PID computes the output
HOLD: Final = 2  # auto, measurement bad or stale: integrator frozen, output held
SAFE: Final = 3  # auto, bad for safe_after_s or longer: output at safe_output
NEVER_S: Final = 1e300  # "time since the last good sample" before the first one

_ALIGN = 64  # bytes: a cache line, and an AVX-512 vector


def aligned(lead: tuple[int, ...], n: int, dtype: Any = np.float64) -> Any:
    """A zeroed block shaped `lead + (n,)` whose every length-n row starts 64-byte aligned."""
    item = np.dtype(dtype).itemsize
    row = -(-n * item // _ALIGN) * _ALIGN // item  # elements per row, padded
    rows = int(np.prod(lead, dtype=np.int64))
    raw = np.zeros(rows * row * item + _ALIGN, np.uint8)
    start = -raw.ctypes.data % _ALIGN
    block = raw[start : start + rows * row * item].view(dtype).reshape((*lead, row))
    return block[..., :n]


def _rows(*arrays: F64) -> F64:
    """The arrays stacked as rows of one aligned block."""
    block: F64 = aligned((len(arrays),), int(np.shape(arrays[0])[0]))
    for k, a in enumerate(arrays):
        block[k] = a
    return block


@dataclass(slots=True)
class PidParams:
    """Tuning and limits per loop, laid out for the core; the action sign is in the gains.

    Fixed once built: the blocks below are derived from the fields in `__post_init__`.
    """

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
    rates: F64 = field(init=False, repr=False)  # (2, n): [set-point ramp, output rate]
    gains: F64 = field(init=False, repr=False)  # (4, n): [kp, ki, kd, tf]
    tf: F64 = field(init=False, repr=False)

    def __post_init__(self) -> None:
        tf, kd = self.tk
        self.gains = _rows(self.kp, self.ki, kd, tf)
        self.kp, self.ki, self.tf = self.gains[0], self.gains[1], self.gains[3]
        self.tk = self.gains[3:1:-1]  # [tf, kd], views
        self.b = _rows(self.b)[0]
        self.safe_after_s, self.safe_output = _rows(self.safe_after_s, self.safe_output)
        self.rates = _rows(self.rate_sp, self.rate_out)
        self.rate_sp, self.rate_out = self.rates
        limits = _rows(self.out_min, self.out_max)
        self.out_min, self.out_max = limits[0], limits[1]

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
    sat_high: Bool  # the output is on the upper bound of the tick's window
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
        def z() -> F64:
            out: F64 = aligned((1,), n)[0]
            return out

        self.su = aligned((2,), n)  # [working set point, output]: persistent
        self.spw, self.u = self.su
        self.win_lo = aligned((2,), n)  # [spw, u] - [sp rate, out rate]*h = [sp_lo, lo]
        self.win_hi = aligned((2,), n)  # [sp rate, out rate]*h, then [sp_hi, hi]
        self.sp_lo, self.lo = self.win_lo
        self.sp_hi, self.hi = self.win_hi
        self.ab_lo, self.ab_hi = self.sp_lo, self.sp_hi  # reused: bounds of the integral step
        self.t4 = aligned((4,), n)  # [b*spw - x, spw - x, pv_last - x, D], then times gains
        self.p, self.e, self.den, self.d = self.t4  # -> P, the integral step, tf + dt, D
        self.i, self.v0 = z(), z()
        self.x, self.pv_last = z(), z()  # this tick's measurements and the last good ones
        self.tsg, self.bad_s, self.manual_output, self.h = z(), z(), z(), z()
        self.sat = aligned((2,), n, bool)
        self.sat_low, self.sat_high = self.sat
        self.good, self.bad = aligned((2,), n, bool)
        self.auto = aligned((1,), n, bool)[0]
        self.mode = aligned((1,), n, np.int8)[0]
        self.n_manual = 0
        self.manual_idx = np.zeros(0, dtype=np.intp)
        self.stale_idx = np.arange(n)  # loops with bad_s > 0: all, before the first sample
        self.mode_dirty = True  # mode must be recomputed from auto next tick
        self.hz = np.zeros(())  # the tick's dt as a 0-d array: cheaper than a Python float
        self.views = (  # unpacked at once by the core: one load instead of ~20
            *(self.su, self.spw, self.u, self.win_lo, self.win_hi, self.sp_lo, self.sp_hi),
            *(self.lo, self.hi, self.t4, self.p, self.e, self.den, self.d, self.v0, self.i),
            *(self.good, self.sat_low, self.sat_high),
        )
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
    state.manual_idx = np.flatnonzero(~state.auto)
    state.n_manual = int(state.manual_idx.shape[0])
    state.mode_dirty = True
