"""The audit trail: hash chain, tamper detection naming the record, show/verify, one writer."""

from __future__ import annotations

import io
import itertools
import json
import os
import stat
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.audit import (
    AuditTrail,
    AuditWriteError,
    TrailCorrupt,
    TrailLocked,
    read_lines,
    trail_path,
)
from controller.audit_chain import verify_trail
from controller.audit_cli import show, verify
from controller.audit_record import GENESIS, AuditRecord, seal

T0 = datetime(2026, 11, 22, 9, 14, 27, 123456, tzinfo=UTC)


class Clock:
    """Injectable writer clock: one second per call from T0."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        t, self.now = self.now, self.now + timedelta(seconds=1)
        return t


def entry(i: int) -> dict[str, Any]:
    return {
        "user": "alice",
        "role": "operator",
        "action": "setpoint",
        "obj": f"br-{i % 3}/temp",
        "old": 37.0 + i,
        "new": 37.5 + i,
        "reason": f"step {i}",
        "client": "10.0.0.5",
        "result": "accepted",
    }


def write_trail(path: Path, n: int) -> list[AuditRecord]:
    with AuditTrail.open(path, clock=Clock()) as trail:
        return [trail.append(**entry(i)) for i in range(n)]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return trail_path(tmp_path / "state")


@pytest.fixture
def five(path: Path) -> list[bytes]:
    """A five-record trail; returns its lines (each with its newline)."""
    write_trail(path, 5)
    return path.read_bytes().splitlines(keepends=True)


def run_verify(path: Path) -> tuple[int, str]:
    out = io.StringIO()
    return verify(path, out), out.getvalue()


def forge(seq: int, prev: str, new: float) -> bytes:
    """A record with a correct self-hash chained to `prev`, as a forger would make it."""
    fields = {**entry(seq - 1), "new": new}
    return seal(seq, T0, prev, **fields)[1]


def test_chain_builds_and_verifies(path: Path) -> None:
    """Records number from 1, chain from the genesis value, and an untouched trail is intact."""
    records = write_trail(path, 5)
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[0].prev == GENESIS
    assert all(b.prev == a.hash for a, b in itertools.pairwise(records))
    code, text = run_verify(path)
    assert code == 0
    assert "5 records" in text
    assert "INTACT" in text


def test_lines_are_canonical_json_with_utc_offsets(path: Path) -> None:
    """Each line is sorted-key compact ASCII JSON, its time UTC with +00:00 and microseconds."""
    write_trail(path, 2)
    first = path.read_bytes().splitlines()[0]
    data = json.loads(first)
    assert first == json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    assert data["time"] == "2026-11-22T09:14:27.123456+00:00"
    assert data["object"] == "br-0/temp"


def test_the_documented_recipe_verifies_by_hand(five: list[bytes], path: Path) -> None:
    """The ten-line recipe in docs/audit.md, run as written, passes an intact trail only."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "audit.md").read_text()
    recipe = doc.split("```python\n", 1)[1].split("```", 1)[0]
    script = path.parent / "recipe.py"
    script.write_text(recipe)

    def run() -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, str(script), str(path)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)

    ok = run()
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == f"intact: 5 records, head {json.loads(five[-1])['hash']}\n"
    five[3] = five[3].replace(b"step 3", b"step 4")
    path.write_bytes(b"".join(five))
    bad = run()
    assert bad.returncode == 1
    assert "line 4: edited" in bad.stderr


def test_trail_is_private_and_opened_append_only(path: Path) -> None:
    """The trail and its lock are 0600 in a new 0700 state dir; the writer's fd is O_APPEND."""
    with AuditTrail.open(path, clock=Clock()) as trail:
        trail.append(**entry(0))
        fds = [fd for fd in Path("/proc/self/fd").iterdir() if fd.resolve() == path]
        flags = [int((Path("/proc/self/fdinfo") / fd.name).read_text().split()[3], 8) for fd in fds]
        assert flags
        assert all(f & os.O_APPEND for f in flags)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.with_name("audit.lock").stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_append_returns_the_durable_record(path: Path) -> None:
    """What append returns is what a reader reads back; its event has the file's keys."""
    records = write_trail(path, 3)
    assert [ln.record for ln in read_lines(path)] == records
    event = records[-1].to_event()
    assert event["object"] == "br-2/temp"
    assert event["hash"] == records[-1].hash
    assert event["time"] == "2026-11-22T09:14:29.123456+00:00"


def test_a_non_utc_clock_is_stored_in_utc(path: Path) -> None:
    """A clock in another zone still yields UTC with +00:00 in the file."""
    cet = timezone(timedelta(hours=1))
    with AuditTrail.open(path, clock=lambda: datetime(2026, 11, 22, 10, 0, tzinfo=cet)) as trail:
        rec = trail.append(**entry(0))
    assert rec.to_event()["time"] == "2026-11-22T09:00:00.000000+00:00"


def test_bad_values_are_refused_without_consuming_a_number(path: Path) -> None:
    """NaN, non-scalars and a naive clock raise; the next good append is still #1."""
    times = itertools.chain([datetime(2026, 1, 1)], itertools.repeat(T0))  # noqa: DTZ001
    with AuditTrail.open(path, clock=lambda: next(times)) as trail:
        with pytest.raises(ValueError, match="timezone-aware"):
            trail.append(**entry(0))
        with pytest.raises(ValueError, match="finite"):
            trail.append(**{**entry(0), "new": float("nan")})
        with pytest.raises(TypeError, match="JSON scalar"):
            trail.append(**{**entry(0), "new": [1, 2]})
        assert trail.append(**entry(0)).seq == 1
    assert run_verify(path)[0] == 0


def tampered(path: Path, lines: list[bytes]) -> tuple[int, str]:
    path.write_bytes(b"".join(lines))
    return run_verify(path)


def test_edited_field_is_named(five: list[bytes], path: Path) -> None:
    """Changing a value in record 3 is reported as record #3 edited, and nothing else."""
    five[2] = five[2].replace(b'"new":39.5', b'"new":39.0')
    code, text = tampered(path, five)
    assert code == 3
    assert "EDITED: line 3: record #3 edited" in text
    assert "TAMPERED: 1 finding(s)" in text


def test_edit_with_recomputed_hash_breaks_the_chain_at_the_next_record(
    five: list[bytes], path: Path
) -> None:
    """A forger who re-hashes record 3 is caught where record 4 no longer chains to it."""
    prev = json.loads(five[1])["hash"]
    five[2] = forge(3, prev, 99.0)
    code, text = tampered(path, five)
    assert code == 3
    assert "chain broken between record #3 (line 3) and record #4" in text


def test_removed_record_is_named(five: list[bytes], path: Path) -> None:
    """Deleting line 3 is reported as record #3 removed, between lines 2 and 3."""
    del five[2]
    code, text = tampered(path, five)
    assert code == 3
    assert "REMOVED: line 3: record #3 removed (after line 2, before record #4)" in text


def test_removed_first_record_is_named(five: list[bytes], path: Path) -> None:
    """Deleting the first line is reported as record #1 removed at the start."""
    del five[0]
    code, text = tampered(path, five)
    assert code == 3
    assert "record #1 removed (at the start" in text


def test_swapped_records_are_named(five: list[bytes], path: Path) -> None:
    """Swapping lines 2 and 3 is reported as a reorder naming both records and lines."""
    five[1], five[2] = five[2], five[1]
    code, text = tampered(path, five)
    assert code == 3
    assert "REORDERED: line 3: records reordered: #2 comes after #3 (line 2)" in text
    assert "REMOVED" not in text
    assert "BROKEN" not in text


def test_inserted_forged_record_is_named(five: list[bytes], path: Path) -> None:
    """A self-consistent forgery with a wrong prev, slipped in as #3, is named as inserted."""
    five.insert(2, forge(3, "ab" * 32, 99.0))
    code, text = tampered(path, five)
    assert code == 3
    assert "INSERTED: line 3: inserted record: it claims #3, which line 4 holds" in text
    assert "TAMPERED: 1 finding(s)" in text


def test_garbage_line_is_named(five: list[bytes], path: Path) -> None:
    """A line that is not a record is reported as malformed, after the record before it."""
    five.insert(1, b'{"note":"hello"}\n')
    code, text = tampered(path, five)
    assert code == 3
    assert "MALFORMED: line 2: not a valid record after record #1" in text


def test_truncated_last_line_is_a_torn_tail(five: list[bytes], path: Path) -> None:
    """Cutting the last line mid-way is reported as a torn tail after record #4, exit 4."""
    five[4] = five[4][:40]
    code, text = tampered(path, five)
    assert code == 4
    assert "TORN: line 5: torn tail after record #4: 40 bytes without a newline" in text


def test_next_writer_keeps_a_torn_tail_in_a_recovery_record(five: list[bytes], path: Path) -> None:
    """Reopening after a crash mid-append moves the partial line into record #6; intact."""
    torn = b'{"action":"setpoint","cli\xff'
    path.write_bytes(b"".join(five) + torn)
    with AuditTrail.open(path, clock=Clock()) as trail:
        assert trail.last_seq == 6
        nxt = trail.append(**entry(9))
    records = [ln.record for ln in read_lines(path)]
    recovery = records[5]
    assert recovery is not None
    assert recovery.action == "audit.recover_torn_tail"
    assert recovery.old == torn.decode("latin-1")
    assert nxt.seq == 7
    assert run_verify(path)[0] == 0


def test_last_time_is_the_newest_record_before_this_writer_appended(
    five: list[bytes], path: Path
) -> None:
    """`last_time` ends the previous run (restart replay bound): not this writer's records."""
    path.write_bytes(b"".join(five) + b'{"action":"set')  # a torn tail: a recovery record
    with AuditTrail.open(path, clock=Clock(T0 + timedelta(hours=1))) as trail:
        assert trail.last_seq == 6
        trail.append(**entry(9))
        assert trail.last_time == T0 + timedelta(seconds=4)
    empty = path.with_name("empty.jsonl")
    with AuditTrail.open(empty, clock=Clock()) as trail:
        trail.append(**entry(0))
        assert trail.last_time is None


def test_unreadable_last_line_refuses_the_writer(five: list[bytes], path: Path) -> None:
    """With no readable head there is nothing to chain to: the writer refuses to start."""
    path.write_bytes(b"".join(five) + b"garbage\n")
    with pytest.raises(TrailCorrupt, match="line 6 is unreadable"):
        AuditTrail.open(path)


def test_failed_fsync_stops_the_writer(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed fsync is not acknowledged, its line is cut off, and no later append is taken."""
    with AuditTrail.open(path, clock=Clock()) as trail:
        trail.append(**entry(0))

        def fail(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "fsync", fail)
        with pytest.raises(AuditWriteError, match="Input/output error"):
            trail.append(**entry(1))
        monkeypatch.undo()
        with pytest.raises(AuditWriteError, match="refused appends since"):
            trail.append(**entry(2))
        assert trail.last_seq == 1
    assert run_verify(path)[0] == 0
    assert len(path.read_bytes().splitlines()) == 1


def test_second_writer_is_refused(path: Path) -> None:
    """While one writer holds the trail a second is refused clearly; after close it may open."""
    with AuditTrail.open(path, clock=Clock()) as first:
        first.append(**entry(0))
        with pytest.raises(TrailLocked, match=r"only one cellfab daemon may run on a state dir"):
            AuditTrail.open(path)
        first.append(**entry(1))
    with AuditTrail.open(path, clock=Clock()) as again:
        assert again.append(**entry(2)).seq == 3
    assert run_verify(path)[0] == 0


def test_show_prints_readable_records(five: list[bytes], path: Path) -> None:
    """Each record on one line: number, UTC time, who, where from, what, old -> new, why."""
    out = io.StringIO()
    assert show(path, out) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 5
    assert lines[0] == (
        "#1 2026-11-22T09:14:27.123456+00:00 alice (operator) via 10.0.0.5: setpoint "
        'br-0/temp 37.0 -> 37.5 [accepted] reason: "step 0"'
    )


def test_show_filters_by_time_and_limits_to_the_last(five: list[bytes], path: Path) -> None:
    """`since` keeps records at or after it; `limit` keeps the newest of those."""
    out = io.StringIO()
    assert show(path, out, since=T0 + timedelta(seconds=1), limit=2) == 0
    assert [ln.split()[0] for ln in out.getvalue().splitlines()] == ["#4", "#5"]


def test_show_escapes_control_characters(path: Path) -> None:
    """Terminal escape sequences in a record are printed escaped, never interpreted."""
    with AuditTrail.open(path, clock=Clock()) as trail:
        trail.append(**{**entry(0), "user": "eve\x1b[2J", "reason": "x\x07"})
    out = io.StringIO()
    show(path, out)
    assert "\x1b" not in out.getvalue()
    assert "\x07" not in out.getvalue()
    assert "eve\\u001b[2J" in out.getvalue()


def test_show_flags_unreadable_and_edited_lines(five: list[bytes], path: Path) -> None:
    """show still prints the rest, marks the bad lines, and exits non-zero."""
    five_edited = [*five[:2], five[2].replace(b"step 2", b"step X"), *five[3:]]
    assert tampered(path, five_edited)[0] == 3
    assert show(path, io.StringIO()) == 3
    five[1] = b"not json\n"
    five[2] = five[2].replace(b"step 2", b"step X")
    out = io.StringIO()
    assert show(path.parent / "missing.jsonl", out) == 1
    assert tampered(path, five)[0] == 3
    out = io.StringIO()
    assert show(path, out) == 3
    text = out.getvalue()
    assert "!! line 2: unreadable: not JSON" in text
    assert "!! does not match its hash" in text
    assert "#5 " in text


TEXT = st.text(max_size=20)
VALUE: st.SearchStrategy[object] = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), TEXT
)
ENTRY = st.fixed_dictionaries(
    dict.fromkeys(("user", "role", "action", "obj", "reason", "client", "result"), TEXT)
    | {"old": VALUE, "new": VALUE}
)


@settings(max_examples=50, deadline=None)
@given(entries=st.lists(ENTRY, max_size=8), step_us=st.integers(-(10**9), 10**9))
def test_any_sequence_of_appends_verifies(entries: list[dict[str, Any]], step_us: int) -> None:
    """Whatever is appended (any text, any scalar, clock steps back or forth) verifies intact."""
    times = iter(T0 + timedelta(microseconds=step_us * i) for i in range(len(entries)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.jsonl"
        with AuditTrail.open(path, clock=lambda: next(times)) as trail:
            records = [trail.append(**e) for e in entries]
        assert [ln.record for ln in read_lines(path)] == records
        assert verify_trail(path).intact


@pytest.fixture(scope="module")
def sample_trail(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    write_trail(path, 4)
    return path.read_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_single_byte_change_is_detected(sample_trail: bytes, data: st.DataObject) -> None:
    """Any one byte, anywhere, changed to any other value makes verify report the trail."""
    pos = data.draw(st.integers(0, len(sample_trail) - 1), label="position")
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != sample_trail[pos]), label="byte")
    changed = bytearray(sample_trail)
    changed[pos] = byte
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.jsonl"
        path.write_bytes(bytes(changed))
        assert not verify_trail(path).intact
        assert verify(path, io.StringIO()) in (3, 4)
