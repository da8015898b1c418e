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
_fmax, _fmin, _copyto = np.fmax, np.fmin, np.copyto
_and, _not, _isfinite, _count = np.logical_and, np.logical_not, np.isfinite, np.count_nonzero
_ge, _le, _nonzero = np.greater_equal, np.less_equal, np.nonzero
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
    that matters at 1,000 loops.
    """
    s, q = state, params
    h = _clip_dt(dt, q, s)
    good = s.good
    _isfinite(pv, good)
    _and(good, ok, good)
    nbad = good.shape[0] - int(_count(good))
    _add(s.bad_s, h, s.tsg)  # time since the last good sample, this tick included
    held = safe = _NONE
    nheld = 0
    if nbad:  # the few bad loops, by index: masked ufuncs cost per element, indices do not
        _not(good, s.bad)
        bad = _nonzero(s.bad)[0]
        x = s.pvn  # NaN and inf never enter the arithmetic: use the last good value
        _copyto(x, pv)
        x[bad] = s.pv_last[bad]
        s.bad_s.fill(0.0)
        s.bad_s[bad] = s.tsg[bad]
        held = bad[s.auto[bad]]  # auto loops hold their output ...
        nheld = held.shape[0]
        if nheld:  # ... or go to the safe one
            safe = held[s.bad_s[held] >= q.safe_after_s[held]]
            s.u[safe] = q.safe_output[safe]
    else:
        x = pv
        if s.had_bad:
            s.bad_s.fill(0.0)
    s.had_bad = nbad > 0
    # windows: the output may move rate*h from where it is, the set point ramps the same way
    step, u, spw = s.tmp, s.u, s.spw  # scratch is shared: fewer arrays stay in cache
    _mul(q.rate_out, h, step)
    if nheld:
        step[held] = 0.0  # a held loop's window is its output: it cannot move
    _sub(u, step, s.lo)
    _fmax(s.lo, q.out_min, s.lo)
    _add(u, step, s.hi)
    _fmin(s.hi, q.out_max, s.hi)
    _mul(q.rate_sp, h, step)
    sp_lo, sp_hi = s.ab_lo, s.ab_hi
    _sub(spw, step, sp_lo)
    _add(spw, step, sp_hi)
    _fmax(sp, sp_lo, spw)
    _fmin(spw, sp_hi, spw)
    # p = kp * (b * spw - pv); e = ki * (spw - pv) * h, the integral increment
    p, e = s.p, s.e
    _mul(q.b, spw, p)
    _sub(p, x, p)
    _mul(p, q.kp, p)
    _sub(spw, x, e)
    _mul(e, q.ki, e)
    _mul(e, h, e)
    if nbad:  # no integration on a stale measurement
        e[bad] = 0.0
    # d = (tf * d - kd * (pv - pv_last)) / (tf + time since the last good sample)
    d, dy = s.d, s.dy
    _sub(x, s.pv_last, dy)
    _mul(s.dd, q.tk, s.dd)
    _sub(d, dy, d)
    _add(s.tsg, q.tk[0], dy)
    _div(d, dy, d)
    # integrator candidate, replaced by the tracking value in manual
    pd, i = s.pd, s.i
    _add(s.p, d, pd)
    _add(e, i, e)
    if s.n_manual:
        mi = s.manual_idx
        e[mi] = s.manual_output[mi] - pd[mi]
    # clamp: never further into a bound than the value that puts the output on it
    _sub(s.lo, pd, s.ab_lo)
    _sub(s.hi, pd, s.ab_hi)
    _ge(e, s.ab_hi, s.sat_high)
    _le(e, s.ab_lo, s.sat_low)
    _fmin(s.ab_lo, i, s.ab_lo)
    _fmax(s.ab_hi, i, s.ab_hi)
    _fmax(e, s.ab_lo, e)
    _fmin(e, s.ab_hi, i)
    _add(pd, i, s.tmp)
    _fmax(s.tmp, s.lo, s.tmp)
    _fmin(s.tmp, s.hi, s.u)
    if nheld or s.mode_dirty:
        _copyto(s.mode, s.auto)
        s.mode[held] = HOLD  # a held output is not a saturated one
        s.mode[safe] = SAFE
        s.sat_high[held] = False
        s.sat_low[held] = False
        s.mode_dirty = nheld > 0
    if nbad:
        s.pv_last, s.pvn = s.pvn, s.pv_last
    else:
        _copyto(s.pv_last, pv)
    return s.terms if out is None else _copy_terms(s.terms, out)


def _clip_dt(dt: float | F64, q: PidParams, s: PidState) -> float | F64:
    """The measured dt, clipped; NaN becomes dt_min_s."""
    if isinstance(dt, np.ndarray):
        _fmax(dt, q.dt_min_s, s.h)
        _fmin(s.h, q.dt_max_s, s.h)
        return s.h
    h = float(dt)
    return q.dt_max_s if h > q.dt_max_s else h if h >= q.dt_min_s else q.dt_min_s


_TERMS = ("output", "p", "i", "d", "sp", "sat_high", "sat_low", "mode")


def _copy_terms(src: PidTerms, out: PidTerms) -> PidTerms:
    for name in _TERMS:
        _copyto(getattr(out, name), getattr(src, name))
    return out
