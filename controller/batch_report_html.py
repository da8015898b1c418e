"""Write a `Report` as report.html (self-contained, inline SVG), report.csv and SHA256SUMS.

The HTML is also well-formed XML (void elements closed, everything escaped), so any XML
tool can read it; it holds no script and no external reference. Every number and time is
formatted from the report alone, never from the clock, so the same report gives the same
bytes and SHA256SUMS can be checked later with `sha256sum -c` (docs/batch-record.md).
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from html import escape
from pathlib import Path

from controller.batch_report import Report
from controller.batch_stats import GAP_FACTOR, NS, PLOT_COLUMNS, Gap, ParamStats

SUMS = "SHA256SUMS"
X0, Y0, PLOT_H = 80, 10, 140  # plot area: left edge, top edge, height (px)
WIDTH, HEIGHT = X0 + PLOT_COLUMNS + 10, Y0 + PLOT_H + 30

STYLE = """
body{font-family:sans-serif;font-size:13px;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #bbb;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#eee}.num{text-align:right;font-family:monospace}
.fail{border:2px solid #b00;background:#fee;padding:.3em 1em}
.note{border:1px solid #a80;background:#ffd;padding:.3em 1em}
.ok{color:#070;font-weight:bold}.bad{color:#b00;font-weight:bold}
"""


def write_report(report: Report, out: Path) -> str:
    """Write the three files into `out` (created); returns the SHA-256 of report.html."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"report.csv": render_csv(report), "report.html": render_html(report)}
    sums = ""
    for name, data in sorted(files.items()):
        (out / name).write_bytes(data)
        sums += f"{hashlib.sha256(data).hexdigest()}  {name}\n"
    (out / SUMS).write_text(sums, encoding="ascii")
    return hashlib.sha256(files["report.html"]).hexdigest()


def iso(t_ns: int) -> str:
    """UTC ISO 8601 with microseconds and a Z."""
    seconds, rest = divmod(t_ns, NS)
    stamp = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{rest // 1000:06d}Z"


def num(x: object) -> str:
    """A number for people: 6 significant digits; None as an empty cell."""
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:.6g}"
    return str(x)


# --- the tables, shared by HTML and CSV --------------------------------------------------

Table = tuple[str, str, tuple[str, ...], list[tuple[object, ...]]]  # key, title, columns, rows


def tables(r: Report) -> Iterator[Table]:
    """Every section as (csv section, title, columns, rows), in the order of the document."""
    h = r.header
    yield ("batch", "Batch", ("field", "value"), [
        ("batch", h.batch), ("product", h.product), ("phase", h.phase), ("device", h.device),
        ("started", h.started), ("started by", h.started_by), ("ended", h.ended),
        ("ended by", h.ended_by), ("site", h.site), ("config hashes", " ".join(h.configs)),
        ("cellfab version", h.version),
    ])  # fmt: skip
    a = r.audit
    audit_rows: list[tuple[object, ...]] = [
        ("trail", a.path), ("records", a.records), ("intact", "yes" if a.intact else "NO"),
    ]  # fmt: skip
    audit_rows += [(f"finding {i}", f) for i, f in enumerate(a.findings, 1)]
    yield ("audit", "Audit-chain check", ("field", "value"), audit_rows)
    yield ("parameters", "Parameters", PARAM_COLUMNS, [_param_row(p) for p in r.params])
    yield ("commands", "Commands on the device and its loops", CHANGE_COLUMNS, [
        (c.seq, iso(c.t_ns), c.user, c.role, c.action, c.obj, c.old, c.new, c.reason, c.result)
        for c in r.changes
    ])  # fmt: skip
    yield ("alarms", "Alarms", ALARM_COLUMNS, [
        (iso(e.t_ns), e.alarm, e.from_state, e.to_state, e.cause, e.priority, e.value,
         e.limit, e.user, e.reason)
        for e in r.alarms
    ])  # fmt: skip
    yield ("gaps", "Data gaps", GAP_COLUMNS, [_gap_row(g) for g in r.gaps])


PARAM_COLUMNS = (
    "parameter", "unit", "samples", "with value", "min", "max", "mean (time-weighted)",
    "mean (samples)", "low", "high", "out of range s", "BAD s", "UNCERTAIN s", "first", "last",
)  # fmt: skip
CHANGE_COLUMNS = ("seq", "time", "user", "role", "action", "object", "old", "new", "reason",
                  "result")  # fmt: skip
ALARM_COLUMNS = ("time", "alarm", "from", "to", "cause", "priority", "value", "limit", "user",
                 "reason")  # fmt: skip
GAP_COLUMNS = ("start", "end", "duration s", "cause", "source", "affected")


def _param_row(p: ParamStats) -> tuple[object, ...]:
    return (
        p.name, p.unit, p.count, p.values, p.min, p.max, p.mean, p.mean_samples, p.low,
        p.high, p.out_of_range_s, p.bad_s, p.uncertain_s, iso(p.t_first_ns), iso(p.t_last_ns),
    )  # fmt: skip


def _gap_row(g: Gap) -> tuple[object, ...]:
    return (iso(g.start_ns), iso(g.end_ns), g.duration_s, g.cause, g.source,
            " ".join(g.affected))  # fmt: skip


# --- CSV ---------------------------------------------------------------------------------


def render_csv(r: Report) -> bytes:
    """Long format, one row per value: section, key (row), field (column), value.

    Every column the HTML shows is a field; a parameter's name is its key. Floats keep
    full precision (repr); the HTML rounds them for reading. Text that a spreadsheet would
    run as a formula is defused (`_csv`): user names and reasons come from anyone who can
    publish a command. Lines end in CRLF (RFC 4180), so the writer quotes any cell holding a
    CR or LF: a bare CR inside a cell would start a new row in a spreadsheet.
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(("section", "key", "field", "value"))
    w.writerows(("finding", i, "failure", _csv(f)) for i, f in enumerate(r.failures, 1))
    w.writerows(("finding", i, "note", _csv(f)) for i, f in enumerate(r.notes, 1))
    for section, _title, columns, rows in tables(r):
        for n, row in enumerate(rows, 1):
            if columns == ("field", "value"):
                w.writerow((section, "", _csv(row[0]), _csv(row[1])))
            elif section == "parameters":
                w.writerows(
                    (section, _csv(row[0]), c, _csv(v))
                    for c, v in zip(columns[1:], row[1:], strict=True)
                )
            else:
                w.writerows((section, n, c, _csv(v)) for c, v in zip(columns, row, strict=True))
    return buf.getvalue().encode("utf-8")


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv(x: object) -> str:
    """A cell: numbers as they are (-2.5 stays a number), text that a spreadsheet would
    read as a formula behind a single quote (OWASP CSV injection)."""
    if x is None:
        return ""
    if isinstance(x, int | float) and not isinstance(x, bool):
        return repr(x) if isinstance(x, float) else str(x)
    text = str(x)
    return "'" + text if text.startswith(FORMULA_START) else text


# --- HTML --------------------------------------------------------------------------------


def render_html(r: Report) -> bytes:
    """The whole document: findings first, then the tables, then one plot per parameter."""
    e = escape
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/>',
        f"<title>Batch record {e(r.header.batch)}</title><style>{STYLE}</style></head><body>",
        f"<h1>Batch record {e(r.header.batch)}</h1>",
    ]
    if r.failures:
        parts.append('<div class="fail"><h2>Findings</h2>' + _ul(r.failures) + "</div>")
    if r.notes:
        parts.append('<div class="note">' + _ul(r.notes) + "</div>")
    verdict = ("ok", "intact") if r.audit.intact else ("bad", "NOT intact")
    parts.append(f'<p>Audit chain: <span class="{verdict[0]}">{verdict[1]}</span></p>')
    for _key, title, columns, rows in tables(r):
        parts.append(f"<h2>{e(title)}</h2>" + _table(columns, rows))
    parts.append("<h2>Plots</h2>")
    if r.window_ns is not None:
        window = r.window_ns
        parts.extend(_figure(p, window) for p in r.params if p.envelope)
    parts.append("</body></html>\n")
    return "\n".join(parts).encode("utf-8")


def _ul(items: Iterable[str]) -> str:
    return "<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>"


def _table(columns: tuple[str, ...], rows: list[tuple[object, ...]]) -> str:
    if not rows:
        return "<p>none</p>"
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(_td(v) for v in row) + "</tr>" for row in rows
    )  # fmt: skip
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _td(v: object) -> str:
    cls = ' class="num"' if isinstance(v, int | float) and not isinstance(v, bool) else ""
    return f"<td{cls}>{escape(num(v))}</td>"


def _figure(p: ParamStats, window: tuple[int, int]) -> str:
    unit = f" ({escape(p.unit)})" if p.unit else ""
    return f"<h3>{escape(p.name)}{unit}</h3>\n{svg_plot(p, window)}"


def svg_plot(p: ParamStats, window: tuple[int, int]) -> str:
    """Min/max envelope per pixel column, range limits dashed red, BAD spans shaded."""
    lo_t, hi_t = window
    marks = [v for v in (p.low, p.high) if v is not None]
    y_lo = min([c[1] for c in p.envelope] + marks)
    y_hi = max([c[2] for c in p.envelope] + marks)
    pad = (y_hi - y_lo) * 0.05 or 1.0
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def y(v: float) -> str:
        return f"{Y0 + PLOT_H * (y_hi - v) / (y_hi - y_lo):.1f}"

    def x(t_ns: int) -> float:
        return X0 + PLOT_COLUMNS * min(max(t_ns - lo_t, 0), hi_t - lo_t) / max(hi_t - lo_t, 1)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img">',
        f'<rect x="{X0}" y="{Y0}" width="{PLOT_COLUMNS}" height="{PLOT_H}" fill="#fafafa" '
        'stroke="#999"/>',
    ]
    for g in p.bad_spans:
        x1, x2 = x(g.start_ns), x(g.end_ns)
        out.append(f'<rect x="{x1:.1f}" y="{Y0}" width="{max(x2 - x1, 1.0):.1f}" '
                   f'height="{PLOT_H}" fill="#f4c0c0"/>')  # fmt: skip
    # Neighbouring columns are joined unless more than a gap (3 periods) lies between them.
    join = max(1.0, GAP_FACTOR * p.period_s * NS * PLOT_COLUMNS / max(hi_t - lo_t, 1))
    path, last = [], -PLOT_COLUMNS
    for c, lo, hi in p.envelope:
        path.append(f"{'L' if c - last <= join else 'M'}{X0 + c + 0.5:.1f} {y(hi)}V{y(lo)}")
        last = c
    out.append(f'<path d="{"".join(path)}" stroke="#1f5fa8" stroke-width="1" '
               'stroke-linecap="square" fill="none"/>')  # fmt: skip
    out.extend(
        f'<line x1="{X0}" x2="{X0 + PLOT_COLUMNS}" y1="{y(v)}" y2="{y(v)}" stroke="#c00" '
        'stroke-dasharray="4 3"/>'
        for v in marks
    )
    text = 'font-size="10" fill="#444"'
    out += [
        f'<text x="{X0 - 4}" y="{Y0 + 8}" text-anchor="end" {text}>{num(y_hi)}</text>',
        f'<text x="{X0 - 4}" y="{Y0 + PLOT_H}" text-anchor="end" {text}>{num(y_lo)}</text>',
        f'<text x="{X0}" y="{HEIGHT - 12}" {text}>{iso(lo_t)}</text>',
        f'<text x="{X0 + PLOT_COLUMNS}" y="{HEIGHT - 12}" text-anchor="end" {text}>'
        f"{iso(hi_t)}</text>",
        "</svg>",
    ]
    return "\n".join(out)
