"""The process-condition half of the alarm engine: one vectorised update per tick.

For every alarm, in this order: the compared quantity (`measure`) and its margin `e` beyond
the limit (> 0 is abnormal); the raw condition with the deadband applied on return only,
`raw = e > 0 or (active and e >= -deadband)`; a bad input holds the raw condition, an
UNCERTAIN one may raise it but never clear it (an overflowing particle count is a lower
bound: above the limit it is a certain excursion, below it proves nothing); then the
delays: `active` follows `raw` once `raw` has stayed put for on_delay_s (to become active)
or off_delay_s (to return). Each kind group is a slice of the packed table, so every step
is a ufunc over a view. The state machine (states.py) only sees the indices that flipped.
Ufuncs are called with a positional `out`: at 100 alarms the keyword form costs 2-3× more.
"""

from __future__ import annotations

import numpy as np

from controller.alarms.table import F64, AlarmTable, Bool, Idx

_add, _sub, _mul, _abs, _neg = np.add, np.subtract, np.multiply, np.abs, np.negative
_gt, _ge, _lt, _eq, _ne = np.greater, np.greater_equal, np.less, np.equal, np.not_equal
_and, _or, _not, _xor = np.logical_and, np.logical_or, np.logical_not, np.logical_xor
_isfinite, _copyto, _count = np.isfinite, np.copyto, np.count_nonzero


class Group:
    """Views of one kind group's slice into the per-alarm arrays, made once."""

    def __init__(self, t: AlarmTable, c: Conditions, name: str) -> None:
        s = t.groups[name]
        self.s, self.n = s, s.stop - s.start
        self.measure, self.e, self.usable, self.unc = c.measure[s], c.e[s], c.usable[s], c.unc[s]
        self.limit, self.sign, self.flag = t.limit[s], t.sign[s], c.flag[s]


class Conditions:
    """What the condition evaluation remembers between ticks, and its scratch arrays."""

    def __init__(self, table: AlarmTable) -> None:
        n = table.n
        self.raw = np.zeros(n, dtype=bool)  # condition with deadband, before the delays
        self.active = np.zeros(n, dtype=bool)  # after the delays: what the states see
        self.since_s = np.zeros(n)  # monotonic time raw last changed
        self.measure = np.full(n, np.nan)  # the compared quantity (docs/alarms.md)
        self.e = np.zeros(n)  # margin beyond the limit
        self.usable = np.zeros(n, dtype=bool)  # a good, finite sample: raises and clears
        self.unc = np.zeros(n, dtype=bool)  # an UNCERTAIN finite sample: may only raise
        self.take = np.zeros(n, dtype=bool)  # where raw follows this tick's input
        self.new_raw, self.flag, self.flip = (np.zeros(n, dtype=bool) for _ in range(3))
        self.delay = np.zeros(n)
        self.neg_deadband = -table.deadband
        g = {name: Group(table, self, name) for name in table.groups}
        self.level, self.dev, self.roc = g["level"], g["deviation"], g["roc"]
        self.disc, self.qual, self.nom = g["discrete"], g["quality"], g["n_of_m"]
        k = self.roc.n
        self.roc_value = np.full(k, np.nan)  # last usable sample and its time
        self.roc_t_s = np.full(k, np.nan)
        self.roc_rate = np.full(k, np.nan)  # per minute
        m = table.window_m
        self.window_n, self.window_m = table.window_n, m
        self.ring = np.zeros((m.shape[0], int(m.max(initial=1))), dtype=bool)
        self.ring_pos = np.zeros(m.shape[0], dtype=np.int64)
        self.ring_count = np.zeros(m.shape[0], dtype=np.int64)
        self.ring_filled = np.zeros(m.shape[0], dtype=np.int64)  # samples seen, at most m
        self.ring_open = np.zeros(m.shape[0], dtype=np.int64)  # scratch: count + unseen
        self.ring_rows = np.arange(m.shape[0])


def evaluate(  # noqa: PLR0917 - the tick's inputs, positionally like pid.update
    table: AlarmTable,
    c: Conditions,
    value: F64,
    good: Bool,
    setpoint: F64,
    now_s: float,
    fresh: Bool | None = None,
    uncertain: Bool | None = None,
) -> Idx:
    """Update every alarm's condition for this tick; return the indices whose `active` flipped.

    Inputs are aligned with `table.ids`. `good` is False for a bad or stale sample (a
    non-finite value counts as bad too); `setpoint` is read by deviation alarms only;
    `fresh` (default: all) marks alarms whose tag has a new sample this tick, so that
    N-of-M windows, rates of change and staleness count samples, not ticks; `uncertain`
    (default: none) marks UNCERTAIN samples, whose value may raise a condition but not
    clear it (`good` wins where both are set).
    """
    usable, unc, e, measure = c.usable, c.unc, c.e, c.measure
    _isfinite(value, usable)
    if uncertain is None:
        unc.fill(False)
    else:
        _and(usable, uncertain, unc)
        _gt(unc, good, unc)  # bools: unc and not good
    _and(usable, good, usable)
    c.roc.unc.fill(False)  # a rate from a lower bound means nothing: UNCERTAIN is bad there
    _copyto(measure, value)
    if c.level.n:
        _level(c.level)
    if c.dev.n:
        _deviation(c.dev, value, setpoint)
    _or(usable, unc, c.flag)
    _not(c.flag, c.flag)
    _copyto(measure, np.nan, where=c.flag)  # a bad sample has no value to report
    if c.roc.n:
        _roc(c, value, fresh, now_s)
    if c.disc.n:
        _discrete(c.disc, value)
    if c.qual.n:
        _quality(c.qual, fresh)
    if c.nom.n:
        _n_of_m(c, value, fresh)
    # raw = e > 0 or (active and e >= -deadband); a bad input keeps the previous raw, an
    # UNCERTAIN one is taken only where it raises (or keeps) the condition
    new_raw, hold, take = c.new_raw, c.flag, c.take
    _ge(e, c.neg_deadband, hold)
    _and(hold, c.active, hold)
    _gt(e, 0.0, new_raw)
    _or(new_raw, hold, new_raw)
    _and(unc, new_raw, take)
    _or(take, usable, take)
    changed = hold
    _ne(new_raw, c.raw, changed)
    _and(changed, take, changed)
    _copyto(c.raw, new_raw, where=take)
    _copyto(c.since_s, now_s, where=changed)
    # the delays: flip active where raw differs and has held for the delay that applies
    _sub(now_s, c.since_s, e)
    _copyto(c.delay, table.off_delay_s)
    _copyto(c.delay, table.on_delay_s, where=c.raw)
    flip = c.flip
    _ge(e, c.delay, flip)
    _ne(c.raw, c.active, new_raw)
    _and(flip, new_raw, flip)
    _xor(c.active, flip, c.active)
    return flip.nonzero()[0]


def _level(g: Group) -> None:
    """high/high_high: e = value − limit; low/low_low: e = limit − value."""
    _sub(g.measure, g.limit, g.e)
    _mul(g.e, g.sign, g.e)


def _deviation(g: Group, value: F64, sp: F64) -> None:
    """measure = value − set point; e = |measure| − limit; a bad set point is a bad input."""
    s = g.s
    _sub(value[s], sp[s], g.measure)
    _isfinite(sp[s], g.flag)
    _and(g.usable, g.flag, g.usable)
    _and(g.unc, g.flag, g.unc)
    _abs(g.measure, g.e)
    _sub(g.e, g.limit, g.e)


def _roc(c: Conditions, value: F64, fresh: Bool | None, now_s: float) -> None:
    """measure = change per minute between the last two usable samples; e = |rate| − limit.

    The rate is held between samples (reported only while the sample is good); the first
    sample has no rate (NaN: a bad input).
    """
    g = c.roc
    take = g.usable if fresh is None else g.usable & fresh[g.s]
    take = (take & ~(c.roc_t_s >= now_s)).nonzero()[0]
    x = value[g.s][take]
    c.roc_rate[take] = (x - c.roc_value[take]) / (now_s - c.roc_t_s[take]) * 60.0
    c.roc_value[take] = x
    c.roc_t_s[take] = now_s
    _copyto(g.measure, c.roc_rate, where=g.usable)
    _isfinite(c.roc_rate, g.usable)
    _abs(c.roc_rate, g.e)
    _sub(g.e, g.limit, g.e)


def _discrete(g: Group, value: F64) -> None:
    """e = +1 while value == state, −1 otherwise."""
    _eq(value[g.s], g.limit, g.flag)
    _mul(g.flag, 2.0, g.e)
    g.e -= 1.0


def _quality(g: Group, fresh: Bool | None) -> None:
    """e = +1 in a tick without a new good sample; never held (bad data is the condition).

    A tag whose receive time stops moving (a driver re-publishing its last record as GOOD)
    is as blind as a BAD one: with the on-delay stale_after_s, the alarm is active once no
    tick has brought a new good sample for stale_after_s. Without `fresh`, every sample is
    new and only bad ones count.
    """
    if fresh is None:
        _not(g.usable, g.flag)
    else:
        _and(g.usable, fresh[g.s], g.flag)
        _not(g.flag, g.flag)
    _mul(g.flag, 2.0, g.e)
    g.e -= 1.0
    g.usable.fill(True)


def _n_of_m(c: Conditions, value: F64, fresh: Bool | None) -> None:
    """measure = how many of the last window_m usable samples exceeded the limit.

    One ring buffer row per alarm; a fresh usable sample replaces the oldest one and the
    count moves by the difference; an UNCERTAIN one enters only when it is above the limit
    (a count it certainly is). e = count − window_n + ½, so count ≥ window_n is e > 0. A
    window not yet full (after a start or restart) raises as soon as it holds window_n
    counts but returns only once even counts in all its unseen places could not reach
    window_n: a restored active alarm with an empty window holds instead of returning.
    """
    g = c.nom
    above = value[g.s] > g.limit  # NaN is not above
    take = g.unc & above
    _or(take, g.usable, take)
    if fresh is not None:
        _and(take, fresh[g.s], take)
    rows = c.ring_rows if _count(take) == g.n else take.nonzero()[0]
    pos = c.ring_pos[rows]
    new = above[rows]
    c.ring_count[rows] += new.astype(np.int64) - c.ring[rows, pos]
    c.ring[rows, pos] = new
    pos += 1
    pos[pos >= c.window_m[rows]] = 0
    c.ring_pos[rows] = pos
    filled = c.ring_filled[rows] + 1
    c.ring_filled[rows] = np.minimum(filled, c.window_m[rows])
    _copyto(g.measure, c.ring_count)
    _sub(c.ring_count, c.window_n, g.e, casting="unsafe")
    g.e += 0.5
    # usable: the count decides (at or above n, or below n even if every unseen place counted)
    most = c.ring_open
    _sub(c.window_m, c.ring_filled, most)
    _add(most, c.ring_count, most)
    _lt(most, c.window_n, g.usable)
    _gt(g.e, 0.0, g.flag)
    _or(g.usable, g.flag, g.usable)
    g.unc.fill(False)
