"""A batch's record, computed from local data only: archive, batch history, audit trail.

`build_report` gathers per-parameter statistics, every command on the batch's
device, every alarm transition and data gap, and the audit-chain check into one `Report`;
batch_report_html writes it as HTML, CSV and SHA256SUMS. Nothing here reads the clock:
the same inputs give the same report, byte for byte (docs/batch-record.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from controller import batches
from controller.audit import read_lines, trail_path
from controller.audit_chain import verify_trail
from controller.audit_record import AuditRecord
from controller.batch_archive import BatchArchive, Event
from controller.batch_stats import (
    NS,
    Gap,
    ParamStats,
    Range,
    as_arrays,
    merge_gaps,
    missing_spans,
    nominal_period_s,
    parameter_stats,
)
from controller.config import SiteConfig
from controller.version import cellfab_version

MS = 1_000_000  # ns: the batch history's times are ISO 8601 cut to the millisecond


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
        """False when the batch is unknown, its history damaged or the audit chain broken."""
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

    def skipped(message: str, damage: bool) -> None:
        (failures if damage else notes).append(f"batch history: {message}")

    start, end = _history(state_dir, batch_id, skipped)
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


def _history(
    state_dir: Path, batch_id: str, skipped: Callable[[str, bool], None]
) -> tuple[dict[str, str] | None, dict[str, str] | None]:
    """The batch's (first) start and the end that follows it; unreadable lines to `skipped`."""
    start: dict[str, str] | None = None
    end: dict[str, str] | None = None
    for item in batches.history(state_dir, skipped):
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
    """Every `cmd.*` record on the device or its objects within the batch.

    The batch's start command is audited just before the start took effect, so the window
    opens at the last accepted `batch/start` of exactly this batch on this device at or
    before the start (else at the start); the history's times are cut to the millisecond,
    so the window ends 1 ms after the end (the end command, audited just before, is in it).
    """
    path = trail_path(state_dir)
    if not path.exists():
        return []
    records = [line.record for line in read_lines(path) if line.record is not None]
    mine = [
        (_dt_ns(r.time), r)
        for r in records
        if r.action.startswith("cmd.") and (r.obj == device or r.obj.startswith(device + "."))
    ]
    if lo is not None:
        starts = [t for t, r in mine if t < lo + MS and _starts(r, batch_id)]
        lo = max(starts, default=lo)
    out: list[Change] = []
    for t, r in mine:
        if (lo is not None and t < lo) or (hi is not None and t >= hi + MS):
            continue
        out.append(Change(r.seq, t, r.user, r.role,
                          r.action, r.obj, r.old, r.new, r.reason, r.result))  # fmt: skip
    return out


def _starts(r: AuditRecord, batch_id: str) -> bool:
    """An accepted `batch/start` of exactly `batch_id`: its `new` is "ID (product, phase)".

    Batch ids hold no space (command_actions.BATCH), so the id is everything before the
    first one; a mere substring would let LOT-1 claim LOT-10's start.
    """
    return (
        r.action == "cmd.batch/start"
        and r.result == "accepted"
        and isinstance(r.new, str)
        and r.new.split(" ", 1)[0] == batch_id
    )


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


def _ns(iso: str) -> int:
    return _dt_ns(datetime.fromisoformat(iso))


def _dt_ns(t: datetime) -> int:
    seconds = int(t.timestamp())
    return seconds * NS + t.microsecond * 1000
