"""Spool write path and backlog drain: ours vs the naive SQLite spool, same run, same disk.

Live: 200 devices x 20 tags x 1 Hz, run faster than real time (`--ticks` simulated seconds
back to back). Ours appends the tick's 200 scans (one packed row each) and commits once;
the baseline writes one row per sample with one INSERT each and a transaction per scan
(autocommit per scan), in WAL mode with the same `synchronous`. Scans are generated before
timing. Reported: CPU ms per simulated second (the spool's CPU share), the commit time of
one tick, and samples/s committed at full speed.
Backlog: 600 ticks x 200 scans pending after a 10-minute outage, drained by one cursor with
peek + ack in batches of `--batch` (each ack persisted by a commit, which also deletes a
chunk of acked scans), against the live append rate of 200 scans/s. Then the file: its size
after the drain and a second outage's refill, against after the first (free pages reused).
Ours checkpoints in a worker thread once per simulated second, as `Spool.run` does; the
baseline keeps SQLite's automatic checkpoint (every 1000 pages, on the writing thread).
Usage: python bench/spool.py [--ticks 60] [--sync NORMAL|FULL] [--batch 1000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import statistics
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from controller.spool import Spool
from drivers.sample import Sample, Scan

DEVICES = 200
TAGS = 20
BIG = 1 << 40


def ticks_of(n_ticks: int, start: int = 0) -> list[list[Scan]]:
    """Scans of `n_ticks` seconds: one per device per tick, 20 good samples each."""
    out = []
    for k in range(start, start + n_ticks):
        t = 1_700_000_000_000_000_000 + k * 1_000_000_000
        out.append(
            [
                Scan(
                    f"dev{d:03d}",
                    t,
                    tuple(
                        Sample.good(f"tag{j}", 20.0 + d + j / 10 + k, "degC", t)
                        for j in range(TAGS)
                    ),
                )
                for d in range(DEVICES)
            ]
        )
    return out


def run_ours(path: Path, ticks: list[list[Scan]], sync: str) -> tuple[float, list[float], float]:
    """CPU seconds, commit seconds per tick, wall seconds."""
    commits = []
    with (
        Spool(path, budget_bytes=BIG, synchronous=sync) as spool,  # type: ignore[arg-type]
        ThreadPoolExecutor(1) as pool,
    ):
        spool.cursor("sink")
        spool._db.execute("PRAGMA wal_autocheckpoint = 0")  # as Spool.run: checkpoints in a thread
        checkpointer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        pending: Future[object] | None = None
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for tick in ticks:
            for scan in tick:
                spool.append(scan)
            t0 = time.perf_counter()
            spool.commit()
            commits.append(time.perf_counter() - t0)
            if pending is None or pending.done():  # once per simulated second, as Spool.run
                pending = pool.submit(checkpointer.execute, "PRAGMA wal_checkpoint(PASSIVE)")
        if pending is not None:
            pending.result()
        result = time.process_time() - cpu0, commits, time.perf_counter() - wall0
        checkpointer.close()
        return result


def run_naive(path: Path, ticks: list[list[Scan]], sync: str) -> tuple[float, list[float], float]:
    """One row and one INSERT per sample, a transaction per scan."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(f"PRAGMA synchronous = {sync}")
    db.execute(
        "CREATE TABLE samples (id INTEGER PRIMARY KEY, device TEXT, t_scan INTEGER, tag TEXT,"
        " value REAL, unit TEXT, quality INTEGER, t_receive INTEGER, reason TEXT,"
        " t_device INTEGER, t_server INTEGER, backfill INTEGER)"
    )
    per_tick = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for tick in ticks:
        t0 = time.perf_counter()
        for scan in tick:
            db.execute("BEGIN")
            for s in scan.samples:
                db.execute(
                    "INSERT INTO samples (device, t_scan, tag, value, unit, quality, t_receive,"
                    " reason, t_device, t_server, backfill) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (scan.device, scan.t_scan_ns, s.tag, s.value, s.unit, int(s.quality),
                     s.t_receive_ns, s.reason, s.t_device_ns, s.t_server_ns, scan.backfill),
                )  # fmt: skip
            db.execute("COMMIT")
        per_tick.append(time.perf_counter() - t0)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    db.close()
    return cpu, per_tick, wall


def drain(path: Path, outage: list[list[Scan]], sync: str, batch: int) -> tuple[float, int, int]:
    """Fill a spool with an outage's backlog, drain it; scans/s and file sizes."""
    with Spool(path, budget_bytes=BIG, synchronous=sync, cleanup_chunk=batch * 2) as spool:  # type: ignore[arg-type]
        cursor = spool.cursor("sink")
        fill(spool, outage)
        spool._cache.clear()  # a real backlog is read back from disk, not from memory
        size_full = settled_size(spool)
        t0 = time.perf_counter()
        drained = 0
        while cursor.lag:
            items = cursor.peek(batch)
            cursor.ack(items[-1][0])
            spool.commit()  # what the flusher does: persist the ack, delete a chunk
            drained += len(items)
        rate = drained / (time.perf_counter() - t0)
        while spool.cleanup_pending:  # finish the cleanup
            spool.commit()
        fill(spool, outage)  # a second outage: the freed pages are reused
        return rate, size_full, settled_size(spool)


def settled_size(spool: Spool) -> int:
    """The database file's size once the WAL is folded in (what stays on disk)."""
    spool._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return spool.path.stat().st_size


def fill(spool: Spool, outage: list[list[Scan]]) -> None:
    for tick in outage:
        for scan in tick:
            spool.append(scan)
        spool.commit()


def line(
    case: str, n: int, ours: float, baseline: float, unit: str, *, higher_better: bool
) -> None:
    """One JSON result; ratio > 1 means cellfab is better (rates: ours/baseline)."""
    ratio = ours / baseline if higher_better else baseline / ours if ours else math.inf
    print(
        json.dumps(
            {
                "bench": "spool",
                "case": case,
                "n": n,
                "ours": round(ours, 3),
                "baseline": round(baseline, 3),
                "unit": unit,
                "ratio": round(ratio, 2),
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=60)
    parser.add_argument("--sync", choices=["FULL", "NORMAL"], default="NORMAL")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--outage-ticks", type=int, default=600)
    parser.add_argument("--dir", type=Path, default=None, help="where the files go (a real disk)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        live = ticks_of(args.ticks)
        n = DEVICES * TAGS
        ours_cpu, commits, ours_wall = run_ours(root / "ours.sqlite", live, args.sync)
        base_cpu, base_ticks, base_wall = run_naive(root / "naive.sqlite", live, args.sync)
        sim_s = len(live)
        line(
            "cpu_per_simulated_s",
            n,
            1e3 * ours_cpu / sim_s,
            1e3 * base_cpu / sim_s,
            "ms",
            higher_better=False,
        )
        line(
            "tick_write_p50",
            n,
            1e3 * statistics.median(commits),
            1e3 * statistics.median(base_ticks),
            "ms",
            higher_better=False,
        )
        line(
            "tick_write_max",
            n,
            1e3 * max(commits),
            1e3 * max(base_ticks),
            "ms",
            higher_better=False,
        )
        samples = n * sim_s
        line(
            "throughput",
            n,
            samples / ours_wall,
            samples / base_wall,
            "samples/s",
            higher_better=True,
        )
        outage = ticks_of(args.outage_ticks, start=args.ticks)
        rate, size_full, size_refill = drain(root / "drain.sqlite", outage, args.sync, args.batch)
        scans = DEVICES * args.outage_ticks
        line("backlog_drain_vs_live", scans, rate, float(DEVICES), "scans/s", higher_better=True)
        line(
            "file_after_refill",
            scans,
            size_refill / 1e6,
            size_full / 1e6,
            "MB",
            higher_better=False,
        )


if __name__ == "__main__":
    main()
