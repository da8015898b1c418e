"""A batch's record, computed from local data only: archive, batch history, audit trail.

`build_report` gathers per-parameter statistics, every command on the batch's
device, every alarm transition and data gap, and the audit-chain check into one `Report`;
batch_report_html writes it as HTML, CSV and SHA256SUMS. Nothing here reads the clock:
the same inputs give the same report, byte for byte (docs/batch-record.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from controller import batches
from controller.audit import read_lines, trail_path
from controller.audit_chain import verify_trail
from controller.batch_archive import BatchArchive, Event, Series, archive_path
from controller.config import SiteConfig
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


@dataclass(frozen=True)
class Header:
    """Who, what, where and when: the top of the record."""

    batch: str
    product: str
    phase: str
    device: str
    started: str
    started_by: str
    ended: str
    ended_by: str
    site: str
    configs: tuple[str, ...]
    version: str


@dataclass(frozen=True)
class Change:
    """One command on the batch's device or its loops, from the audit trail."""

    seq: int
    t_ns: int
    user: str
    role: str
    action: str
    obj: str
    old: object
    new: object
    reason: str
    result: str


@dataclass(frozen=True)
class AlarmRow:
    """One alarm transition as the engine recorded it."""

    t_ns: int
    alarm: str
    from_state: str
    to_state: str
    cause: str
    priority: str
    value: object
    limit: object
    user: str
    reason: str


@dataclass(frozen=True)
class AuditCheck:
    """The trail's verification: intact, or every finding."""

    path: str
    records: int
    intact: bool
    findings: tuple[str, ...]


@dataclass(frozen=True)
class Report:
    """Everything the writers print; `failures` go to the top and make the exit code 1."""

    header: Header
    params: tuple[ParamStats, ...]
    changes: tuple[Change, ...]
    alarms: tuple[AlarmRow, ...]
    gaps: tuple[Gap, ...]
    audit: AuditCheck
    window_ns: tuple[int, int] | None
    failures: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """False when the batch is unknown or the audit chain is not intact."""
        return not self.failures


def build_report(
    archive: BatchArchive | None,
    state_dir: Path,
    cfg: SiteConfig,
    batch_id: str,
    ranges: Mapping[str, Range] | None = None,
) -> Report:
    """The record of `batch_id`; `archive` None when there is no archive file.

    `ranges` ("stream.tag" -> (low, high), either None) adds to and overrides the default
    ranges (each loop's PV within its [sp_min, sp_max]).
    """
    failures: list[str] = []
    notes: list[str] = []
    start, end = _history(state_dir, batch_id)
    span = archive.span(batch_id) if archive is not None else None
    if start is None:
        failures.append(
            f"batch {batch_id} is unknown: not in the batch history, no data"
            if span is None
            else f"batch {batch_id} has data but no start in the batch history"
        )
    if archive is None:
        notes.append("no batch archive in the state dir: no readings, alarms or gaps")
    if start is not None and end is None:
        notes.append(f"batch {batch_id} is still running: this record ends at its last data")
    window = _window(start, end, span)
    params: list[ParamStats] = []
    gaps: list[Gap] = []
    alarms: list[AlarmRow] = []
    if archive is not None and window is not None:
        params, found = _params(archive, cfg, batch_id, window, ranges)
        events = archive.events(batch_id)
        alarms = [_alarm(e) for e in events if e.kind == "alarm"]
        recorded = [_recorded_gap(e) for e in events if e.kind == "gap"]
        bad = merge_gaps(g for p in params for g in p.bad_spans)
        gaps = sorted(recorded + found + bad, key=lambda g: (g.start_ns, g.source, g.cause))
    audit = _audit(state_dir)
    target = failures if not audit.intact else notes
    target.extend(f"audit trail: {f}" for f in audit.findings)
    device = start["device"] if start is not None else ""
    lo = _ns(start["started"]) if start is not None else None
    hi = _ns(end["ended"]) if end is not None else None
    return Report(
        header=_header(cfg, batch_id, start, end, archive),
        params=tuple(params),
        changes=tuple(_changes(state_dir, device, batch_id, lo, hi)) if device else (),
        alarms=tuple(alarms),
        gaps=tuple(gaps),
        audit=audit,
        window_ns=window,
        failures=tuple(failures),
        notes=tuple(notes),
    )


def _history(state_dir: Path, batch_id: str) -> tuple[dict[str, str] | None, dict[str, str] | None]:
    """The batch's (first) start and the end that follows it."""
    start: dict[str, str] | None = None
    end: dict[str, str] | None = None
    for item in batches.history(state_dir):
        if item.get("batch") != batch_id:
            continue
        if item.get("event") == "start" and start is None:
            start = item
        elif item.get("event") == "end" and start is not None:
            end = item
    return start, end


def default_ranges(cfg: SiteConfig) -> dict[str, Range]:
    """Each loop's PV against the loop's [sp_min, sp_max], keyed `device.loop.pv`."""
    return {f"{loop.id}.pv": (loop.sp_min, loop.sp_max) for loop in cfg.loops}


def periods_s(cfg: SiteConfig) -> dict[str, float]:
    """The nominal time between two scans of each stream: poll period, loop-group period."""
    out = {dev.id: dev.poll_period_s for dev in cfg.devices}
    groups = {g.id: g.period_s for g in cfg.loop_groups}
    out.update({loop.id: groups[loop.group] for loop in cfg.loops if loop.group in groups})
    return out


def _params(
    archive: BatchArchive,
    cfg: SiteConfig,
    batch_id: str,
    window: tuple[int, int],
    ranges: Mapping[str, Range] | None,
) -> tuple[list[ParamStats], list[Gap]]:
    """Statistics per parameter, and the spans in which a stream recorded nothing."""
    limits = default_ranges(cfg) | dict(ranges or {})
    periods = periods_s(cfg)
    params: list[ParamStats] = []
    times: dict[str, list[np.ndarray]] = {}
    for series in archive.parameters(batch_id):
        rows = archive.samples(batch_id, series.stream, series.tag)
        data = as_arrays(rows)
        period = periods.get(series.stream) or nominal_period_s(data[0])
        name = f"{series.stream}.{series.tag}"
        params.append(parameter_stats(series, data, limits.get(name, (None, None)), period, window))
        times.setdefault(series.stream, []).append(data[0])
    gaps: list[Gap] = []
    for stream, arrays in sorted(times.items()):
        t = np.unique(np.concatenate(arrays))
        gaps += missing_spans(stream, t, periods.get(stream) or nominal_period_s(t), window)
    return params, merge_gaps(gaps)


def _window(
    start: dict[str, str] | None, end: dict[str, str] | None, span: tuple[int, int] | None
) -> tuple[int, int] | None:
    """From the batch's start (else its first data) to its end (else its last data)."""
    lo = _ns(start["started"]) if start is not None else (span[0] if span else None)
    hi = _ns(end["ended"]) if end is not None else (span[1] if span else None)
    if lo is None or hi is None:
        return None
    return lo, max(lo, hi)


def _recorded_gap(e: Event) -> Gap:
    p = e.payload
    start = _int(p.get("start_ns"), e.t_ns)
    end = _int(p.get("end_ns"), start)
    affected = p.get("streams") or p.get("devices") or [e.stream]
    names = tuple(str(a) for a in affected) if isinstance(affected, list | tuple) else (e.stream,)
    return Gap(start, end, str(p.get("cause", "recorded gap")), names, "recorded")


def _int(value: object, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _alarm(e: Event) -> AlarmRow:
    p = e.payload

    def s(key: str) -> str:
        value = p.get(key)
        return "" if value is None else str(value)

    return AlarmRow(
        e.t_ns, s("alarm"), s("from"), s("to"), s("cause"), s("priority"),
        p.get("value"), p.get("limit"), s("user"), s("reason"),
    )  # fmt: skip


def _changes(
    state_dir: Path, device: str, batch_id: str, lo: int | None, hi: int | None
) -> list[Change]:
    """Every `cmd.*` record on the device or its objects within the batch, and the batch's
    own start and end commands (audited just before they took effect)."""
    path = trail_path(state_dir)
    if not path.exists():
        return []
    out: list[Change] = []
    for line in read_lines(path):
        r = line.record
        if r is None or not r.action.startswith("cmd."):
            continue
        if r.obj != device and not r.obj.startswith(device + "."):
            continue
        t = _dt_ns(r.time)
        own = r.action.startswith("cmd.batch/") and batch_id in str(r.new)
        if not own and ((lo is not None and t < lo) or (hi is not None and t > hi)):
            continue
        out.append(Change(r.seq, t, r.user, r.role,
                          r.action, r.obj, r.old, r.new, r.reason, r.result))  # fmt: skip
    return out


def _audit(state_dir: Path) -> AuditCheck:
    path = trail_path(state_dir)
    try:
        verdict = verify_trail(path)
    except OSError as exc:
        return AuditCheck(path.name, 0, False, (f"cannot read {path.name}: {exc.strerror}",))
    # A torn last line alone is an append in progress (or a crash): noted, not a break.
    intact = verdict.intact or verdict.torn_only
    findings = tuple(f.message for f in verdict.findings)
    return AuditCheck(path.name, verdict.records, intact, findings)


def _header(
    cfg: SiteConfig,
    batch_id: str,
    start: dict[str, str] | None,
    end: dict[str, str] | None,
    archive: BatchArchive | None,
) -> Header:
    s, e = start or {}, end or {}
    site = f"{cfg.site.id} ({cfg.site.name})" if cfg.site.name else cfg.site.id
    return Header(
        batch=batch_id, product=s.get("product", ""), phase=s.get("phase", ""),
        device=s.get("device", ""), started=s.get("started", ""),
        started_by=s.get("started_by", ""), ended=e.get("ended", ""),
        ended_by=e.get("ended_by", ""), site=site,
        configs=tuple(archive.configs(batch_id)) if archive is not None else (),
        version=cellfab_version(),
    )  # fmt: skip


def cellfab_version() -> str:
    """The installed distribution's version (an input of the report, not a clock)."""
    try:
        return version("cellfab")
    except PackageNotFoundError:
        return "unknown"


def _ns(iso: str) -> int:
    return _dt_ns(datetime.fromisoformat(iso))


def _dt_ns(t: datetime) -> int:
    seconds = int(t.timestamp())
    return seconds * NS + t.microsecond * 1000


# --- command line --------------------------------------------------------------------------

EXIT_INVALID = 2


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `report` sub-command."""
    p = sub.add_parser(
        "report",
        help="write a batch's record (HTML, CSV, SHA256SUMS)",
        description="Write the record of one batch from local data (batch archive, batch "
        "history, audit trail) as report.html, report.csv and SHA256SUMS (docs/"
        "batch-record.md). Exit 0 written, 1 written but the batch is unknown or the audit "
        "chain is broken (the finding is at the top), 2 bad site file.",
    )
    p.add_argument("-c", "--config", type=Path, required=True, metavar="FILE")
    p.add_argument("--batch", required=True, metavar="ID", help="the batch (lot) id")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output folder (default: ./batch-<ID>)")  # fmt: skip
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of `cellfab report`."""
    from controller.batch_report_html import write_report  # noqa: PLC0415
    from controller.configload import ConfigError, load_site  # noqa: PLC0415

    try:
        cfg = load_site(args.config, read_secrets=False)
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return EXIT_INVALID
    state = cfg.state.dir
    path = archive_path(state)
    archive = BatchArchive(path, readonly=True) if path.exists() else None
    try:
        report = build_report(archive, state, cfg, args.batch)
    finally:
        if archive is not None:
            archive.close()
    out: Path = args.out or Path(f"batch-{args.batch}")
    digest = write_report(report, out)
    for line in report.failures:
        print(f"cellfab report: {line}", file=sys.stderr)
    print(f"{digest}  {out / 'report.html'}")
    return 0 if report.ok else 1
