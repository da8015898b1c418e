"""The PID core: one pure update of every loop of a tick, as numpy arrays shaped (n_loops,).

No Python loop over controllers, no I/O, no clock: the caller measures `dt` and says which
measurements are usable (`ok`). Every array is preallocated in `PidState`; the hot path
writes into it with positional-`out` ufuncs. docs/control.md gives the algorithm and its
equations; tests/unit/pid_reference.py is the same algorithm loop by loop, held equal.

Anti-windup is integrator clamping (a form of conditional integration): the integrator moves
freely while the output is inside the tick's window and never further into a bound than the
value that puts the output on it, so it cannot grow while the output is saturated.
"""

from __future__ import annotations

import numpy as np

from controller.pid_state import (
    AUTO,
    F64,
    HOLD,
    MANUAL,
    NEVER_S,
    SAFE,
    Bool,
    PidParams,
    PidState,
    PidTerms,
    new_state,
    set_mode,
)

__all__ = [
    "AUTO",
    "HOLD",
    "MANUAL",
    "NEVER_S",
    "SAFE",
    "PidParams",
    "PidState",
    "PidTerms",
    "new_state",
    "set_mode",
    "update",
]

# bound once: the attribute lookup is a measurable part of a call on small arrays
_add, _sub, _mul, _div = np.add, np.subtract, np.multiply, np.divide
_fmax, _fmin, _copyto, _equal = np.fmax, np.fmin, np.copyto, np.equal
_and, _not, _isfinite = np.logical_and, np.logical_not, np.isfinite
_NONE = np.zeros(0, dtype=np.intp)


def update(  # noqa: PLR0915, PLR0917 - one hot path; the issue's signature
    state: PidState,
    params: PidParams,
    pv: F64,
    sp: F64,
    dt: float | F64,
    ok: Bool,
    out: PidTerms | None = None,
) -> PidTerms:
    """Advance every loop by one tick of measured length `dt` seconds.

    `pv`, `sp` and `ok` are shaped (n,); `ok` is False where the measurement is bad or stale,
    and a non-finite pv counts as not ok. `sp` must be finite (set points are validated
    where they are set). Returns views into `state` (overwritten next tick), or copies in
    `out`. One long function on purpose: each helper call and attribute reload costs time
    that matters at 1,000 loops. About 35 ufunc calls when no sample is bad.
    """
    s, q = state, params
    h = _clip_dt(dt, q, s)  # a 0-d array, or one per loop
    x, xl = s.x, s.pv_last  # swapped every tick
    (su, spw, u, wl, wh, sp_lo, sp_hi, lo, hi, t4, p, e, kd_dx, d, v0, i, good, sat_low,
     sat_high) = s.views  # fmt: skip
    _copyto(x, pv)  # aligned, and NaN-free below: bad loops use their last good value
    _isfinite(x, good)
    _and(good, ok, good)
    _not(good, s.bad)
    bad = s.bad.nonzero()[0]
    nbad = bad.shape[0]
    _mul(q.rates, h, wh)  # [sp ramp, out rate] * h
    held = safe = _NONE
    nheld = 0
    tsg = h  # time since the last good sample, this tick included
    if nbad or s.stale_idx.shape[0]:  # somewhere it is not h
        bad_s, tsg = s.bad_s, s.tsg
        _add(bad_s, h, tsg)
        bad_s[s.stale_idx] = 0.0
        s.stale_idx = bad
        if nbad:  # the few bad loops, by index: masked ufuncs cost per element, indices do not
            bad_s[bad] = tsg[bad]
            x[bad] = xl[bad]
            held = bad[s.auto[bad]]  # auto loops hold their output ...
            nheld = held.shape[0]
            if nheld:  # ... or go to the safe one
                safe = held[bad_s[held] >= q.safe_after_s[held]]
                if safe.shape[0]:
                    u[safe] = q.safe_output[safe]
                wh[1, held] = 0.0  # ... and their output cannot move
    # windows: [spw, u] -/+ [sp rate, out rate] * h; then the set point ramps, the output
    # limits apply. fmin/fmax always get arrays: a scalar operand leaves numpy's SIMD loop.
    _sub(su, wh, wl)
    _add(su, wh, wh)
    _fmax(sp, sp_lo, spw)
    _fmin(spw, sp_hi, spw)
    _fmax(lo, q.out_min, lo)
    _fmin(hi, q.out_max, hi)
    # [b*spw - x, spw - x, pv_last - x, D] * [kp, ki, kd, tf] = [P, ., ., tf*D]
    _mul(q.b, spw, p)
    _sub(p, x, p)
    _sub(spw, x, e)
    _sub(xl, x, kd_dx)
    _mul(t4, q.gains, t4)
    _add(d, kd_dx, d)  # D = (tf*D - kd*(x - pv_last)) / (tf + time since a good sample)
    den = kd_dx
    _add(q.tf, tsg, den)
    _div(d, den, d)
    _mul(e, h, e)  # the integral step
    if nbad:  # no integration on a stale measurement
        e[bad] = 0.0
    # the integrator moves by e, but never further into a bound of the window than the step
    # that puts the output on it: [min(0, lo - v0), max(0, hi - v0)], v0 = P + D + I
    ab_lo, ab_hi = sp_lo, sp_hi  # free again
    _add(p, d, v0)
    _add(v0, i, v0)
    _fmax(lo, v0, ab_lo)  # lo - max(lo, v0) is exactly min(0, lo - v0)
    _fmin(hi, v0, ab_hi)
    _sub(lo, ab_lo, ab_lo)
    _sub(hi, ab_hi, ab_hi)
    if s.n_manual:  # manual: the step that puts the output on the operator's value
        mi = s.manual_idx
        e[mi] = s.manual_output[mi] - v0[mi]
    _fmax(e, ab_lo, e)
    _fmin(e, ab_hi, e)
    _add(i, e, i)
    _add(v0, e, u)
    _fmax(u, lo, u)
    _fmin(u, hi, u)
    _equal(u, lo, sat_low)  # u is inside [lo, hi]: on a bound is equal to it
    _equal(u, hi, sat_high)
    if nheld or s.mode_dirty:
        mode = s.mode
        _copyto(mode, s.auto)
        if nheld:
            mode[held] = HOLD
            mode[safe] = SAFE
            sat_low[held] = False  # a held output is not a saturated one
            sat_high[held] = False
        s.mode_dirty = nheld > 0
    s.pv_last, s.x = x, xl  # this tick's x are the next tick's last good values
    return s.terms if out is None else _copy_terms(s.terms, out)


def _clip_dt(dt: float | F64, q: PidParams, s: PidState) -> F64:
    """The measured dt, clipped; NaN becomes dt_min_s."""
    if isinstance(dt, np.ndarray):
        _fmax(dt, q.dt_min_s, s.h)
        _fmin(s.h, q.dt_max_s, s.h)
        return s.h
    h = float(dt)
    s.hz[()] = q.dt_max_s if h > q.dt_max_s else h if h >= q.dt_min_s else q.dt_min_s
    return s.hz


_TERMS = ("output", "p", "i", "d", "sp", "sat_high", "sat_low", "mode")


def _copy_terms(src: PidTerms, out: PidTerms) -> PidTerms:
    for name in _TERMS:
        _copyto(getattr(out, name), getattr(src, name))
    return out
