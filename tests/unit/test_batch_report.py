"""The batch record of a synthetic batch against hand-computed numbers, and its files."""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from controller.audit import AuditTrail, trail_path
from controller.batch_archive import BatchArchive, archive_path
from controller.batch_report import Report, build_report
from controller.batch_report_html import render_csv, render_html, tables, write_report
from controller.batch_stats import NS
from controller.config import SiteConfig
from controller.report_cli import add_parser
from drivers.sample import Sample, Scan

START = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
T0 = int(START.timestamp()) * NS
BATCH = "LOT-0042"

SITE = {
    "site": {"id": "lab", "name": "Suite A"},
    "devices": [
        {
            "id": dev,
            "device_class": "bioreactor",
            "area": "suite-1",
            "driver": "modbus_tcp",
            "host": "127.0.0.1",
            "poll_period_s": 1.0,
            "register_map": {
                "name": "m",
                "registers": [{"tag": "temperature", "address": 0, "type": "u16"}],
            },
        }
        for dev in ("br-1", "br-2")
    ],
    "loop_groups": [{"id": "fast", "period_s": 1.0}],
    "loops": [
        {
            "id": "br-1.temp",
            "group": "fast",
            "pv": "br-1.temperature",
            "output": "br-1.heat",
            "sp_min": 30.0,
            "sp_max": 39.0,
            "setpoint": 37.0,
            "kp": 10.0,
            "out_min": 0.0,
            "out_max": 100.0,
            "safe_output": 0.0,
        }
    ],
}


def iso(seconds: float) -> str:
    return (START + timedelta(seconds=seconds)).isoformat(timespec="milliseconds")[:-6] + "Z"


def pv_samples() -> Iterator[tuple[float, float | None]]:
    """br-1.temp.pv: 1 s apart, 40 s missing at 40..49, 2 s apart from 80; see the test."""
    for k in range(40):
        yield k, 40.0 if 10 <= k <= 14 else 37.0
    for k in range(50, 80):
        yield k, None if 60 <= k <= 64 else 37.0
    for k in range(80, 100, 2):
        yield k, 38.0


def loop_scan(k: float, value: float | None) -> Scan:
    t = T0 + int(k * NS)
    pv = (
        Sample.bad("pv", "degC", "timeout", t)
        if value is None
        else Sample.good("pv", value, "degC", t)
    )
    return Scan("br-1.temp", t, (pv, Sample.good("sp", 37.0, "degC", t)), batch=BATCH,
                config="aaaabbbbcccc")  # fmt: skip


class Clock:
    """The audit writer's clock: the given offsets from START, in order."""

    def __init__(self, *offsets_s: float) -> None:
        self._times = iter(offsets_s)

    def __call__(self) -> datetime:
        return START + timedelta(seconds=next(self._times))


def setpoint(trail: AuditTrail, obj: str, old: float, new: float, user: str) -> None:
    trail.append(user=user, role="operator", action="cmd.setpoint", obj=obj, old=old, new=new,
                 reason=f"to {new}", client="test", result="accepted")  # fmt: skip


def batch_cmd(trail: AuditTrail, action: str, new: str, user: str) -> None:
    trail.append(user=user, role="supervisor", action=action, obj="br-1", old=None, new=new,
                 reason="batch", client="test", result="accepted")  # fmt: skip


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state dir holding one ended batch: history, archive and audit trail."""
    history = [
        {"event": "start", "device": "br-1", "batch": BATCH, "product": "CAR-T", "phase":
         "expansion", "started": iso(0), "started_by": "alice"},
        {"event": "end", "device": "br-1", "batch": BATCH, "product": "CAR-T", "phase":
         "expansion", "started": iso(0), "started_by": "alice", "ended": iso(100),
         "ended_by": "bob"},
    ]  # fmt: skip
    (tmp_path / "batches.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    archive = BatchArchive(archive_path(tmp_path))
    for k, value in pv_samples():
        archive.record(loop_scan(k, value))
    for k in range(100):
        t = T0 + k * NS
        archive.record(Scan("br-1", t, (Sample.good("temperature", 37.0 + k / 100, "degC", t),),
                            batch=BATCH, config="aaaabbbbcccc"))  # fmt: skip
    archive.record(Scan("br-2", T0, (Sample.good("temperature", 1.0, "degC", T0),)))
    alarm = {"alarm": "br-1.temp_hi", "from": "normal", "to": "unacknowledged", "cause":
             "alarm", "value": 40.0, "limit": 39.0, "priority": "high", "user": None}  # fmt: skip
    archive.record_event(BATCH, T0 + 11 * NS, "alarm", "br-1.temp", alarm)
    ack = alarm | {"from": "unacknowledged", "to": "acknowledged", "cause": "ack",
                   "user": "carol", "reason": "seen"}  # fmt: skip
    archive.record_event(BATCH, T0 + 12 * NS, "alarm", "br-1.temp", ack)
    down = {"start_ns": T0 + 85 * NS, "end_ns": T0 + 90 * NS, "cause": "influx down",
            "devices": ["br-1"]}  # fmt: skip
    archive.record_event(BATCH, T0 + 90 * NS, "gap", "br-1", down)
    archive.commit()
    archive.close()
    with AuditTrail.open(trail_path(tmp_path), clock=Clock(-100, -0.5, 20, 30, 70, 99.9)) as trail:
        setpoint(trail, "br-1.temp", 36.0, 37.0, "alice")  # before the batch
        batch_cmd(trail, "cmd.batch/start", f"{BATCH} (CAR-T, expansion)", "alice")
        setpoint(trail, "br-1.temp", 37.0, 37.5, "alice")
        setpoint(trail, "br-2.temp", 37.0, 36.0, "bob")  # another device
        setpoint(trail, "br-1.temp", 37.5, 37.0, "dave")
        batch_cmd(trail, "cmd.batch/end", f"ended {BATCH}", "bob")
    return tmp_path


def report(state: Path) -> Report:
    cfg = SiteConfig.model_validate(SITE)
    archive = BatchArchive(archive_path(state), readonly=True)
    try:
        return build_report(archive, state, cfg, BATCH)
    finally:
        archive.close()


def test_parameter_numbers_match_the_hand_computed_ones(state: Path) -> None:
    """Count, min, max, both means, time out of range and BAD time of the loop's PV.

    80 samples (40 at 0..39 s, 30 at 50..79 s, 10 at 80..98 s every 2 s), 5 BAD (60..64 s).
    Sample-and-hold weights: 1 s each, 2 s from 80 s on, one period (1 s) for the sample
    before the 11 s gap and for the last one. Weighted sum 35*37+5*40 + 25*37 + 9*2*38+38 =
    3142 over 84 s; plain mean (35*37+5*40+25*37+10*38)/75 = 2800/75; 40.0 > sp_max 39 for
    5 samples of 1 s.
    """
    pv = next(p for p in report(state).params if p.name == "br-1.temp.pv")
    assert (pv.count, pv.values, pv.min, pv.max) == (80, 75, 37.0, 40.0)
    assert pv.mean == pytest.approx(3142 / 84)
    assert pv.mean_samples == pytest.approx(2800 / 75)
    assert (pv.low, pv.high) == (30.0, 39.0)
    assert (pv.out_of_range_s, pv.bad_s, pv.uncertain_s) == (5.0, 5.0, 0.0)


def test_ranges_argument_overrides_the_default(state: Path) -> None:
    """A range given for a parameter replaces the loop's default and applies elsewhere too."""
    cfg = SiteConfig.model_validate(SITE)
    archive = BatchArchive(archive_path(state), readonly=True)
    r = build_report(archive, state, cfg, BATCH, {"br-1.temp.pv": (None, 37.5),
                                                  "br-1.temperature": (37.5, None)})  # fmt: skip
    archive.close()
    by_name = {p.name: p for p in r.params}
    assert by_name["br-1.temp.pv"].out_of_range_s == 5.0 + 19.0  # the 40s and the 38s
    assert by_name["br-1.temperature"].out_of_range_s == 50.0  # 37.00..37.49: 50 samples
    assert by_name["br-1.temp.sp"].out_of_range_s == 0.0


def test_every_gap_is_found_with_its_cause(state: Path) -> None:
    """The recorded gap, the missing samples at 39..50 s and the BAD span at 60..65 s."""
    gaps = [(g.start_ns - T0, g.end_ns - T0, g.source, g.cause, g.affected)
            for g in report(state).gaps]  # fmt: skip
    assert gaps == [
        (39 * NS, 50 * NS, "samples", "no samples recorded (daemon or poller not running)",
         ("br-1.temp",)),
        (60 * NS, 65 * NS, "quality", "BAD: timeout", ("br-1.temp.pv",)),
        (85 * NS, 90 * NS, "recorded", "influx down", ("br-1",)),
    ]  # fmt: skip


def test_header_changes_alarms_and_audit(state: Path) -> None:
    """Who started and ended it, the two set-point changes within it, both alarm events."""
    r = report(state)
    h = r.header
    assert (h.batch, h.product, h.phase, h.device) == (BATCH, "CAR-T", "expansion", "br-1")
    assert (h.started_by, h.ended_by, h.configs) == ("alice", "bob", ("aaaabbbbcccc",))
    assert h.site == "lab (Suite A)"
    assert [(c.seq, c.user, c.old, c.new, c.action) for c in r.changes] == [
        (2, "alice", None, f"{BATCH} (CAR-T, expansion)", "cmd.batch/start"),
        (3, "alice", 37.0, 37.5, "cmd.setpoint"),
        (5, "dave", 37.5, 37.0, "cmd.setpoint"),
        (6, "bob", None, f"ended {BATCH}", "cmd.batch/end"),
    ]
    assert [c.t_ns - T0 for c in r.changes] == [-NS // 2, 20 * NS, 70 * NS, 99_900_000_000]
    assert [(a.to_state, a.user) for a in r.alarms] == [("unacknowledged", ""),
                                                        ("acknowledged", "carol")]  # fmt: skip
    assert r.audit.intact and r.audit.records == 6 and r.ok
    assert {p.stream for p in r.params} == {"br-1", "br-1.temp"}


def test_a_tampered_trail_is_a_finding_at_the_top(state: Path) -> None:
    """An edited audit record makes the report not ok, with the finding first in the HTML."""
    path = trail_path(state)
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace('"to 37.5"', '"to 38.5"')
    path.write_text("".join(lines))
    r = report(state)
    assert not r.ok and not r.audit.intact
    assert any("record #3 edited" in f for f in r.failures)
    html = render_html(r).decode()
    assert html.index('class="fail"') < html.index("<h2>Batch</h2>")
    assert "record #3 edited" in html


def test_a_missing_trail_is_a_finding(state: Path) -> None:
    """Without its audit trail the record is not ok: the chain cannot be checked."""
    trail_path(state).unlink()
    r = report(state)
    assert not r.ok and r.changes == ()
    assert r.failures == ("audit trail: cannot read audit.jsonl: No such file or directory",)


def test_an_unknown_batch_is_a_finding(state: Path) -> None:
    """A batch id with neither history nor data is reported as unknown."""
    cfg = SiteConfig.model_validate(SITE)
    r = build_report(None, state, cfg, "LOT-9999")
    assert not r.ok and "LOT-9999 is unknown" in r.failures[0]
    assert r.params == () and r.changes == ()


def test_two_runs_give_identical_bytes_and_the_sums_check(state: Path, tmp_path: Path) -> None:
    """Same inputs, same files; SHA256SUMS holds each file's digest; the HTML digest returned."""
    one = write_report(report(state), tmp_path / "one")
    two = write_report(report(state), tmp_path / "two")
    assert one == two
    for name in ("report.html", "report.csv", "SHA256SUMS"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    sums: dict[str, str] = {}
    for line in (tmp_path / "one" / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split("  ")
        sums[name] = digest
    assert sorted(sums) == ["report.csv", "report.html"]
    for name, digest in sums.items():
        assert hashlib.sha256((tmp_path / "one" / name).read_bytes()).hexdigest() == digest
    assert sums["report.html"] == one


class Balance(HTMLParser):
    """Checks that every element is closed in order (void elements excepted)."""

    VOID = frozenset({"meta", "br", "hr", "img", "input", "link"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """A self-closed element (`<meta/>`, `<rect/>`) opens and closes nothing."""

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def test_html_is_well_formed_with_one_plot_per_parameter(state: Path) -> None:
    """The page balances, is XML, has no script or external reference, one SVG per param."""
    r = report(state)
    html = render_html(r).decode()
    checker = Balance()
    checker.feed(html)
    assert checker.errors == [] and checker.stack == []
    root = ET.fromstring(html.split("\n", 1)[1])  # noqa: S314 - our own output; past the doctype
    svgs = root.findall(".//{http://www.w3.org/2000/svg}svg")
    assert len(svgs) == len(r.params) == 3
    assert "<script" not in html and "src=" not in html and "href=" not in html
    pv = svgs[[p.name for p in r.params].index("br-1.temp.pv")]
    dashed = [e for e in pv.iter("{http://www.w3.org/2000/svg}line") if e.get("stroke-dasharray")]
    assert len(dashed) == 2  # sp_min and sp_max
    (trace,) = pv.iter("{http://www.w3.org/2000/svg}path")
    assert trace.get("d", "").count("M") == 3  # broken at the 39..50 s gap and the BAD span


def test_csv_is_long_format_with_full_precision(state: Path) -> None:
    """report.csv has section,key,field,value rows, the PV's mean unrounded."""
    rows = [line.split(",", 3) for line in render_csv(report(state)).decode().splitlines()]
    assert rows[0] == ["section", "key", "field", "value"]
    assert ["parameters", "br-1.temp.pv", "mean (time-weighted)", repr(3142 / 84)] in rows
    assert ["batch", "", "ended by", "bob"] in rows
    assert sum(1 for r in rows if r[0] == "gaps" and r[2] == "cause") == 3


def site_file(tmp_path: Path, state: Path) -> Path:
    text = f"""
[site]
id = "lab"
[state]
dir = "{state}"
[[devices]]
id = "br-1"
device_class = "bioreactor"
area = "suite-1"
driver = "modbus_tcp"
host = "127.0.0.1"
[devices.register_map]
name = "m"
[[devices.register_map.registers]]
tag = "temperature"
address = 0
type = "u16"
"""
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(required=True))
    args = parser.parse_args(argv)
    code: int = args.handler(args)
    return code


def test_cli_exit_codes(state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """0 written, 1 unknown batch or broken chain (still written), 2 bad site file."""
    site = site_file(tmp_path, state)
    out = tmp_path / "out"
    assert cli("report", "-c", str(site), "--batch", BATCH, "--out", str(out)) == 0
    digest = hashlib.sha256((out / "report.html").read_bytes()).hexdigest()
    assert capsys.readouterr().out.startswith(digest)
    unknown = tmp_path / "unknown"
    assert cli("report", "-c", str(site), "--batch", "LOT-9", "--out", str(unknown)) == 1
    assert (unknown / "report.html").exists()
    trail = trail_path(state)
    trail.write_text(trail.read_text().replace('"to 37.5"', '"to 99"'))
    broken = tmp_path / "broken"
    assert cli("report", "-c", str(site), "--batch", BATCH, "--out", str(broken)) == 1
    assert "record #3 edited" in (broken / "report.html").read_text()
    site.write_text("[site]\nid = 'lab'\n")
    assert cli("report", "-c", str(site), "--batch", BATCH, "--out", str(out)) == 2


def csv_rows(r: Report) -> list[list[str]]:
    return list(csv.reader(io.StringIO(render_csv(r).decode(), newline="")))


def test_csv_carries_every_column_the_html_shows(state: Path) -> None:
    """Each command's seq, alarm's time and gap's start is in the CSV, as every other cell:
    one row per column of the HTML table (a parameter's name is its key instead)."""
    r = report(state)
    rows = csv_rows(r)
    for section, _title, columns, table in tables(r):
        if columns == ("field", "value"):
            continue
        keyed = section == "parameters"
        want = [
            [section, str(row[0]) if keyed else str(n), c, str(v) if isinstance(v, str) else v]
            for n, row in enumerate(table, 1)
            for c, v in zip(columns[keyed:], row[keyed:], strict=True)
        ]
        got = [x for x in rows if x[0] == section]
        assert [x[:3] for x in got] == [w[:3] for w in want]
    assert ["commands", "1", "seq", "2"] in rows
    assert ["alarms", "1", "time", "2026-11-22T08:00:11.000000Z"] in rows
    assert ["gaps", "1", "start", "2026-11-22T08:00:39.000000Z"] in rows


FORMULAS = ('=HYPERLINK("http://evil/","alice")', "=cmd|' /C calc'!A0", "+1+1", "-2+3",
            "@SUM(1+1)", "\t=1", "\r=1")  # fmt: skip
INSIDE = "x\r=1"  # a CR inside a cell: quoted, or a spreadsheet starts a row with "=1"


def test_csv_defuses_formulas_in_text_but_keeps_numbers(state: Path) -> None:
    """Claimed users, reasons and alarm text starting = + - @ tab CR get a leading quote;
    a negative number stays a number."""
    r = report(state)
    change = r.changes[1]
    texts = (*FORMULAS, INSIDE)
    changes = [replace(change, user=f, reason=f, old=-2.5, new=-3) for f in texts]
    alarms = [replace(r.alarms[0], user=f, reason=f, value=-2.5) for f in texts]
    rows = csv_rows(replace(r, changes=tuple(changes), alarms=tuple(alarms)))
    for section in ("commands", "alarms"):
        for field in ("user", "reason"):
            assert [x[3] for x in rows if x[0] == section and x[2] == field] == [
                *("'" + f for f in FORMULAS),
                INSIDE,
            ]
    assert ["commands", "1", "old", "-2.5"] in rows and ["commands", "1", "new", "-3"] in rows
    assert ["alarms", "1", "value", "-2.5"] in rows
    for x in rows:
        assert not x[3].startswith(("=", "+", "@", "\t", "\r")), x
        assert not x[3].startswith("-") or float(x[3]) < 0, x


def rewrite_trail(state: Path, *entries: tuple[float, str, str, str]) -> None:
    """A new audit trail of (seconds from START, action, new, result) records on br-1."""
    trail_path(state).unlink()
    with AuditTrail.open(trail_path(state), clock=Clock(*(e[0] for e in entries))) as trail:
        for _t, action, new, result in entries:
            trail.append(user="u", role="supervisor", action=action, obj="br-1", old=None,
                         new=new, reason="r", client="test", result=result)  # fmt: skip


def test_commands_of_another_batch_are_not_in_the_record(state: Path) -> None:
    """Only this batch's start opens the window: not LOT-00420's whose id contains ours,
    nor one whose product names it, nor a refused attempt; nothing after the end."""
    rewrite_trail(
        state,
        (-60, "cmd.batch/start", f"{BATCH} (CAR-T, expansion)", "refused (batch_running): x"),
        (-30, "cmd.batch/start", f"LOT-7 ({BATCH}, x)", "accepted"),
        (-20, "cmd.batch/end", "ended LOT-7", "accepted"),
        (-0.5, "cmd.batch/start", f"{BATCH} (CAR-T, expansion)", "accepted"),
        (99.9, "cmd.batch/end", f"ended {BATCH}", "accepted"),
        (200, "cmd.batch/start", f"{BATCH}0 (CAR-T, expansion)", "accepted"),
        (300, "cmd.batch/end", f"ended {BATCH}0", "accepted"),
        (400, "cmd.batch/start", f"{BATCH} (CAR-T, expansion)", "refused (bad_signature): x"),
    )
    assert [(c.seq, c.new) for c in report(state).changes] == [
        (4, f"{BATCH} (CAR-T, expansion)"),
        (5, f"ended {BATCH}"),
    ]


def test_commands_window_allows_for_the_history_milliseconds(state: Path) -> None:
    """The history's times are cut to the ms: a start audited in the same ms as the start
    and an end in the same ms as the end belong to the batch; the next ms does not."""
    rewrite_trail(
        state,
        (0.0009, "cmd.batch/start", f"{BATCH} (CAR-T, expansion)", "accepted"),
        (100.0009, "cmd.batch/end", f"ended {BATCH}", "accepted"),
        (100.001, "cmd.setpoint", "x", "accepted"),
    )
    assert [c.seq for c in report(state).changes] == [1, 2]


def test_a_torn_last_history_line_is_a_note(state: Path, tmp_path: Path) -> None:
    """A crash mid-append leaves a line without its newline: ignored, noted, exit 0."""
    with (state / "batches.jsonl").open("a") as f:
        f.write('{"event":"start","device":"br-2","batch":"LOT-9')
    r = report(state)
    assert r.ok and r.header.ended_by == "bob"
    assert "batch history: last line incomplete (crash while writing), ignored" in r.notes
    site = site_file(tmp_path, state)
    assert cli("report", "-c", str(site), "--batch", BATCH, "--out", str(tmp_path / "o")) == 0


def test_an_unreadable_history_line_is_a_failure(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Damage before the last line is a finding at the top and exit 1, never a traceback;
    the lines that can be read still make the record."""
    path = state / "batches.jsonl"
    start, end = path.read_text().splitlines(keepends=True)
    path.write_text(start + '{"event":"end","batch":\n' + end)
    r = report(state)
    assert not r.ok and r.header.ended_by == "bob"
    assert r.failures == (
        "batch history: batches.jsonl line 2 unreadable (not JSON: Expecting value), ignored",
    )
    assert csv_rows(r)[1][:3] == ["finding", "1", "failure"]
    site = site_file(tmp_path, state)
    assert cli("report", "-c", str(site), "--batch", BATCH, "--out", str(tmp_path / "o")) == 1
    assert "line 2 unreadable" in capsys.readouterr().err
