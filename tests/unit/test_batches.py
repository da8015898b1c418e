"""Starting and ending a batch is all or nothing: a failed write leaves no trace anywhere."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.batches import BatchRegistry, history

DEVICES = {"br-1", "br-2"}


def failing_fsync(monkeypatch: pytest.MonkeyPatch, nth: int) -> None:
    """Make the `nth` fsync from now on fail as on a full disk (1: the history line, 2: the
    running file, 3: its directory entry), and only that one."""
    real = os.fsync
    calls = iter(range(1, 1000))

    def fsync(fd: int) -> None:
        if next(calls) == nth:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr("controller.batches.os.fsync", fsync)


def start(reg: BatchRegistry, device: str = "br-1", batch: str = "LOT-001") -> None:
    reg.start(device, batch, "CAR-T", "expansion", user="alice", known=DEVICES)


def end(reg: BatchRegistry) -> None:
    reg.end("br-1", "LOT-001", "alice")


@pytest.mark.parametrize("nth", [1, 2, 3])
@pytest.mark.parametrize("change", [start, end], ids=["start", "end"])
def test_a_failed_write_changes_neither_memory_nor_disk(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    change: Callable[[BatchRegistry], None],
    nth: int,
) -> None:
    """Whichever write fails, the error propagates and the batches run as before: in memory
    (what scans are stamped with), in the running file (a restart) and in the history."""
    reg = BatchRegistry(tmp_path)
    if change is end:
        start(reg)
    start(reg, "br-2", "LOT-002")
    before = (dict(reg.by_device), reg.running("br-1"), history(tmp_path))
    failing_fsync(monkeypatch, nth)
    with pytest.raises(OSError, match="No space left"):
        change(reg)
    monkeypatch.undo()
    assert (dict(reg.by_device), reg.running("br-1"), history(tmp_path)) == before
    reloaded = BatchRegistry(tmp_path)
    assert (reloaded.by_device, reloaded.running("br-1")) == (before[0], before[1])
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []
    change(reg)  # once there is space again it works, and the history reads as it happened
    assert [e["event"] for e in history(tmp_path)] == [e["event"] for e in before[2]] + [
        "start" if change is start else "end"
    ]


def test_history_skips_a_torn_last_line_and_names_damage(tmp_path: Path) -> None:
    """A crash mid-append leaves a last line without its newline: skipped and told; a bad
    line before it is damage: told as such, or ValueError without a listener."""
    reg = BatchRegistry(tmp_path)
    start(reg)
    end(reg)
    path = tmp_path / "batches.jsonl"
    whole = path.read_text()
    path.write_text(whole + '{"event":"start","dev')
    told: list[tuple[str, bool]] = []
    assert [e["event"] for e in history(tmp_path, lambda m, d: told.append((m, d)))] == [
        "start",
        "end",
    ]
    assert told == [("last line incomplete (crash while writing), ignored", False)]
    assert [e["event"] for e in history(tmp_path)] == ["start", "end"]
    first, second = whole.splitlines(keepends=True)
    for bad, why in [
        ("{oops\n", "not JSON: Expecting property name enclosed in double quotes"),
        ('["start"]\n', "not a start or end event"),
        (second.replace('"ended_by"', '"who"'), "no text ended_by"),
        (first.replace('"started":"', '"started":"x'), "Invalid isoformat string"),
        (first.replace("Z", ""), "started has no time zone"),
    ]:
        path.write_bytes((first + bad + second).encode() + b"\xff\n")
        told.clear()
        assert len(history(tmp_path, lambda m, d: told.append((m, d)))) == 2
        assert [d for _m, d in told] == [True, True]
        assert why in told[0][0] and told[0][0].startswith("batches.jsonl line 2 unreadable")
        assert told[1][0] == "batches.jsonl line 4 unreadable (not UTF-8), ignored"
        with pytest.raises(ValueError, match="line 2 unreadable"):
            history(tmp_path)


def test_the_next_event_after_a_torn_line_is_not_glued_onto_it(tmp_path: Path) -> None:
    """The registry cuts a torn last line before appending, so the next event stays whole."""
    reg = BatchRegistry(tmp_path)
    start(reg)
    path = tmp_path / "batches.jsonl"
    path.write_text(path.read_text() + '{"event":"end","dev')  # the crash, mid-append
    told: list[tuple[str, bool]] = []
    end(reg)
    assert [e["event"] for e in history(tmp_path, lambda m, d: told.append((m, d)))] == [
        "start",
        "end",
    ]
    assert told == []
