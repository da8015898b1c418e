"""Statistics of one batch parameter from its archived samples: numpy over whole columns.

Sample-and-hold weights (each sample holds until the next, or one nominal period across a
gap) make the means and the times out of range or with bad quality independent of the poll
rate; spans without samples and runs of BAD samples become gaps. Pure functions: the report
(controller/batch_report.py) calls them, the tests feed them arrays.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from controller.batch_archive import Series
from drivers.sample import Quality

Range = tuple[float | None, float | None]
NS = 1_000_000_000


GAP_FACTOR = 3  # samples further apart than 3 nominal periods: data are missing
PLOT_COLUMNS = 600  # min/max envelope per column of the HTML plots
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, list[str | None]]  # t, value, quality, why


@dataclass(frozen=True)
class Gap:
    """A span without usable data: recorded by the daemon, or found in the samples."""

    start_ns: int
    end_ns: int
    cause: str
    affected: tuple[str, ...]
    source: str  # "recorded" (an archive event), "samples" (none arrived), "quality" (BAD)

    @property
    def duration_s(self) -> float:
        """Length of the span in seconds."""
        return (self.end_ns - self.start_ns) / NS


@dataclass(frozen=True)
class ParamStats:
    """One parameter (stream.tag) over the batch; times in seconds, sample-and-hold weights."""

    stream: str
    tag: str
    unit: str
    count: int  # samples, any quality
    values: int  # samples with a value (GOOD or UNCERTAIN)
    min: float | None
    max: float | None
    mean: float | None  # time-weighted over samples with a value
    mean_samples: float | None  # plain mean of the same samples
    low: float | None
    high: float | None
    out_of_range_s: float
    bad_s: float
    uncertain_s: float
    period_s: float
    t_first_ns: int
    t_last_ns: int
    envelope: tuple[tuple[int, float, float], ...]  # (column, min, max) for the plot
    bad_spans: tuple[Gap, ...]

    @property
    def name(self) -> str:
        """`stream.tag`, the key of `ranges`."""
        return f"{self.stream}.{self.tag}"


def as_arrays(rows: Iterable[tuple[int, float | None, int, str | None]]) -> Arrays:
    """Archive rows as numpy columns; a missing value becomes NaN."""
    data = list(rows)
    t = np.fromiter((r[0] for r in data), dtype=np.int64, count=len(data))
    v = np.fromiter((np.nan if r[1] is None else r[1] for r in data), np.float64, len(data))
    q = np.fromiter((r[2] for r in data), dtype=np.int8, count=len(data))
    return t, v, q, [r[3] for r in data]


def nominal_period_s(t: np.ndarray) -> float:
    """For a stream the site file does not name: the median time between its samples."""
    return float(np.median(np.diff(t))) / NS if len(t) > 1 else 1.0


def weights_ns(t: np.ndarray, period_ns: int) -> np.ndarray:
    """Sample-and-hold: each sample holds until the next, unless that is a gap (then one
    nominal period); the last one holds one period."""
    dt = np.diff(t, append=t[-1] + period_ns) if len(t) else t
    return np.where(dt <= GAP_FACTOR * period_ns, dt, period_ns)


def parameter_stats(
    series: Series, data: Arrays, limits: Range, period_s: float, window: tuple[int, int]
) -> ParamStats:
    """Count, min, max, means, time out of range and with bad / uncertain quality."""
    t, v, q, _why = data
    period_ns = round(period_s * NS)
    w = weights_ns(t, period_ns)
    has = ~np.isnan(v)
    low, high = limits
    out = np.zeros_like(has)
    if low is not None:
        out |= has & (v < low)
    if high is not None:
        out |= has & (v > high)
    vals, wv = v[has], w[has]
    tw = float(np.sum(vals * wv) / np.sum(wv)) if len(vals) and np.sum(wv) > 0 else None
    return ParamStats(
        series.stream, series.tag, series.unit, len(t), int(has.sum()),
        float(vals.min()) if len(vals) else None, float(vals.max()) if len(vals) else None,
        tw, float(vals.mean()) if len(vals) else None, low, high,
        float(w[out].sum()) / NS, float(w[q == Quality.BAD].sum()) / NS,
        float(w[q == Quality.UNCERTAIN].sum()) / NS, period_s,
        int(t[0]) if len(t) else 0, int(t[-1]) if len(t) else 0,
        envelope(t[has], vals, window), bad_spans(series, data, period_ns),
    )  # fmt: skip


def envelope(
    t: np.ndarray, v: np.ndarray, window: tuple[int, int]
) -> tuple[tuple[int, float, float], ...]:
    """Min and max per plot column over the window (columns without data are left out)."""
    lo, hi = window
    col = np.clip((t - lo) * PLOT_COLUMNS // max(hi - lo, 1), 0, PLOT_COLUMNS - 1)
    mins = np.full(PLOT_COLUMNS, np.inf)
    maxs = np.full(PLOT_COLUMNS, -np.inf)
    np.minimum.at(mins, col, v)
    np.maximum.at(maxs, col, v)
    return tuple((int(c), float(mins[c]), float(maxs[c])) for c in np.flatnonzero(mins <= maxs))


def bad_spans(series: Series, data: Arrays, period_ns: int) -> tuple[Gap, ...]:
    """Each run of BAD samples: from its first to the next sample (or one period)."""
    t, _v, q, why = data
    bad = np.concatenate(([False], q == Quality.BAD, [False]))
    starts = np.flatnonzero(bad[1:] & ~bad[:-1])
    ends = np.flatnonzero(~bad[1:] & bad[:-1])  # index after the run
    name = f"{series.stream}.{series.tag}"
    out = []
    for i, j in zip(starts, ends, strict=True):
        end = int(t[j]) if j < len(t) else int(t[j - 1]) + period_ns
        reasons = sorted({r or "no reason" for r in why[i:j]})
        out.append(Gap(int(t[i]), end, "BAD: " + "; ".join(reasons), (name,), "quality"))
    return tuple(out)


def missing_spans(
    stream: str, t: np.ndarray, period_s: float, window: tuple[int, int]
) -> list[Gap]:
    """Spans longer than GAP_FACTOR periods without a sample of `stream` (sorted times)."""
    limit = GAP_FACTOR * round(period_s * NS)
    lo, hi = window
    edges = np.concatenate(([lo], t, [hi]))
    gaps = np.flatnonzero(np.diff(edges) > limit)
    cause = "no samples recorded (daemon or poller not running)"
    return [Gap(int(edges[i]), int(edges[i + 1]), cause, (stream,), "samples") for i in gaps]


def merge_gaps(gaps: Iterable[Gap]) -> list[Gap]:
    """Overlapping gaps of one cause and source become one, listing every affected name."""
    out: list[Gap] = []
    for g in sorted(gaps, key=lambda g: (g.source, g.cause, g.start_ns, g.end_ns)):
        last = out[-1] if out else None
        if last and (last.source, last.cause) == (g.source, g.cause) and g.start_ns <= last.end_ns:
            names = tuple(sorted({*last.affected, *g.affected}))
            out[-1] = Gap(last.start_ns, max(last.end_ns, g.end_ns), g.cause, names, g.source)
        else:
            out.append(g)
    return sorted(out, key=lambda g: (g.start_ns, g.end_ns, g.source, g.cause))
