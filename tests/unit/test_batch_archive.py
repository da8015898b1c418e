"""The batch archive: what it keeps, that one commit is one transaction, and disk full."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from controller.batch_archive import ArchiveWriteError, BatchArchive, Series, archive_path
from drivers.sample import Quality, Sample, Scan

T0 = 1_795_000_000_000_000_000
S = 1_000_000_000


def scan(t: int, batch: str | None, device: str = "br-1", value: float = 37.0) -> Scan:
    samples = (
        Sample.good("temperature", value, "degC", t),
        Sample.bad("ph", "pH", "timeout", t),
        Sample("do", 40.0, "%", Quality.UNCERTAIN, t, "calibration due"),
    )
    return Scan(device, t, samples, batch=batch, config="0123456789ab")


@pytest.fixture
def archive(tmp_path: Path) -> BatchArchive:
    return BatchArchive(archive_path(tmp_path))


def test_round_trip_keeps_every_sample_with_quality_and_reason(archive: BatchArchive) -> None:
    """Committed samples come back per parameter, in time order, with value/quality/reason."""
    archive.record(scan(T0 + S, "LOT-1", value=37.5))
    archive.record(scan(T0, "LOT-1", value=37.0))
    assert archive.commit() == 6
    assert archive.parameters("LOT-1") == [
        Series("br-1", "do", "%"), Series("br-1", "ph", "pH"), Series("br-1", "temperature", "degC")
    ]  # fmt: skip
    assert list(archive.samples("LOT-1", "br-1", "temperature")) == [
        (T0, 37.0, 0, None), (T0 + S, 37.5, 0, None)
    ]  # fmt: skip
    assert next(archive.samples("LOT-1", "br-1", "ph")) == (T0, None, 2, "timeout")
    assert next(archive.samples("LOT-1", "br-1", "do")) == (T0, 40.0, 1, "calibration due")
    assert archive.configs("LOT-1") == ["0123456789ab"]
    assert archive.span("LOT-1") == (T0, T0 + S)


def test_only_scans_under_a_batch_are_archived(archive: BatchArchive) -> None:
    """A scan without a batch is not buffered; two batches stay apart."""
    archive.record(scan(T0, None))
    assert archive.pending == 0
    archive.record(scan(T0, "LOT-1"))
    archive.record(scan(T0, "LOT-2", device="br-2"))
    archive.commit()
    assert archive.batches() == ["LOT-1", "LOT-2"]
    assert {s.stream for s in archive.parameters("LOT-2")} == {"br-2"}
    assert archive.span("LOT-3") is None


def test_a_repeated_scan_is_stored_once(archive: BatchArchive) -> None:
    """The same scan recorded twice (a replay after a restart) keeps one row per sample."""
    archive.record(scan(T0, "LOT-1"))
    archive.commit()
    archive.record(scan(T0, "LOT-1"))
    archive.commit()
    assert len(list(archive.samples("LOT-1", "br-1", "temperature"))) == 1


def test_events_round_trip_in_order(archive: BatchArchive) -> None:
    """Events come back by time, then in recording order, with their JSON payload."""
    archive.record_event("LOT-1", T0 + S, "alarm", "br-1", {"alarm": "a", "to": "acked"})
    archive.record_event("LOT-1", T0, "gap", "br-1", {"cause": "sink down", "devices": ["br-1"]})
    archive.record_event("LOT-1", T0 + S, "alarm", "br-1", {"alarm": "a", "to": "normal"})
    archive.commit()
    events = archive.events("LOT-1")
    assert [(e.t_ns, e.kind) for e in events] == [(T0, "gap"), (T0 + S, "alarm"), (T0 + S, "alarm")]
    assert [e.payload["to"] for e in archive.events("LOT-1", "alarm")] == ["acked", "normal"]
    assert events[0].payload["devices"] == ["br-1"]


def test_a_reader_sees_committed_rows_only(tmp_path: Path) -> None:
    """A read-only archive (the report) sees what was committed, never the buffer."""
    path = archive_path(tmp_path)
    writer = BatchArchive(path)
    writer.record(scan(T0, "LOT-1"))
    writer.commit()
    writer.record(scan(T0 + S, "LOT-1"))
    reader = BatchArchive(path, readonly=True)
    assert len(list(reader.samples("LOT-1", "br-1", "temperature"))) == 1
    reader.close()
    writer.close()


def test_a_failed_commit_keeps_its_rows_and_names_the_file(tmp_path: Path) -> None:
    """Out of space: the commit raises naming the file, and a later commit writes every row."""
    path = archive_path(tmp_path)
    archive = BatchArchive(path)
    archive.record(scan(T0, "LOT-1"))
    archive.commit()
    pages = archive._db.execute("PRAGMA page_count").fetchone()[0]
    archive._db.execute(f"PRAGMA max_page_count = {pages}")
    n = 2000
    for k in range(1, n + 1):
        archive.record(scan(T0 + k * S, "LOT-1", value=float(k)))
    archive.record(scan(T0, "LOT-1", device="br-9"))  # a new series, rolled back too
    archive.record_event("LOT-1", T0, "gap", "br-1", {"cause": "x"})
    with pytest.raises(ArchiveWriteError, match=str(path)) as info:
        archive.commit()
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    assert archive.pending == 3 * n + 3 + 1
    archive.record(scan(T0 + (n + 1) * S, "LOT-1"))  # buffered while the disk was full
    archive._db.execute("PRAGMA max_page_count = 1073741823")
    assert archive.commit() == 3 * (n + 1) + 3 + 1
    rows = list(archive.samples("LOT-1", "br-1", "temperature"))
    assert [t for t, *_ in rows] == [T0 + k * S for k in range(n + 2)]
    assert len(archive.events("LOT-1")) == 1
    assert len(list(archive.samples("LOT-1", "br-9", "temperature"))) == 1
    archive.close()


def test_commits_in_a_worker_thread_lose_nothing(archive: BatchArchive) -> None:
    """Recording on one thread while another commits (asyncio.to_thread) keeps every row."""
    done = threading.Event()
    errors: list[BaseException] = []

    def committer() -> None:
        try:
            while not done.is_set():
                archive.commit()
        except Exception as exc:  # reported by the assertion below
            errors.append(exc)

    worker = threading.Thread(target=committer)
    worker.start()
    n = 3000
    for k in range(n):
        archive.record(scan(T0 + k * S, "LOT-1"))
    done.set()
    worker.join(timeout=60)
    archive.commit()
    assert errors == []
    assert len(list(archive.samples("LOT-1", "br-1", "ph"))) == n


def test_a_snapshot_reads_one_committed_state_while_the_writer_goes_on(
    archive: BatchArchive, tmp_path: Path
) -> None:
    """`cellfab report` on a running batch: every query sees the data of one moment."""
    archive.record(scan(T0, "LOT-1"))
    archive.commit()
    reader = BatchArchive(archive_path(tmp_path), readonly=True)
    try:
        with reader.snapshot():
            assert reader.span("LOT-1") == (T0, T0)
            archive.record(scan(T0 + S, "LOT-1"))
            archive.commit()  # the daemon writes on meanwhile
            assert reader.span("LOT-1") == (T0, T0)
        assert reader.span("LOT-1") == (T0, T0 + S)
    finally:
        reader.close()
