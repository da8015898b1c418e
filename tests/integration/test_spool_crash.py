"""SIGKILL mid-run: every seq the writer reported committed is on disk, intact, after reopen."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from controller.spool import Spool
from drivers.sample import Quality, Sample, Scan

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BATCH = 7  # scans per commit: a "tick"
BIG = 1 << 30


def expected(seq: int) -> Scan:
    """The scan the writer appends as number `seq` (deterministic, so the reader can check)."""
    t = 1_700_000_000_000_000_000 + seq * 1_000_000_000
    samples = tuple(
        Sample.good(f"tag{k}", seq + k / 10, "degC", t + 5)
        if k != 3
        else Sample("tag3", None, "%", Quality.BAD, t + 6, "timeout", None, None)
        for k in range(20)
    )
    return Scan(f"dev{seq % 5}", t, samples)


def child(path: str) -> None:
    """The writer: commit a tick at a time and say so; ack behind, as a slow sink would."""
    spool = Spool(Path(path), budget_bytes=BIG)
    cursor = spool.cursor("sink")
    seq = 0
    while True:
        for _ in range(BATCH):
            seq += 1
            if spool.append(expected(seq)) != seq:
                raise SystemExit(f"numbering broke at {seq}")
        if spool.commit() != BATCH:
            raise SystemExit(f"commit of {seq} failed")
        print(f"committed {seq}", flush=True)
        if seq > 50:
            cursor.ack(seq - 50)
            spool.commit()
            if cursor.dirty:
                raise SystemExit(f"ack {seq - 50} not persisted")
            print(f"acked {seq - 50}", flush=True)


async def test_sigkill_loses_nothing_that_was_reported(tmp_path: Path) -> None:
    """Kill -9 while writing: reported scans are all there, the cursor is where it was acked."""
    path = tmp_path / "spool.sqlite"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        f"from tests.integration.test_spool_crash import child; child({str(path)!r})",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    committed = acked = 0
    try:
        async with asyncio.timeout(60):
            while committed < 2000:
                line = (await proc.stdout.readline()).decode()
                assert line, "the writer exited early"
                kind, value = line.split()
                if kind == "committed":
                    committed = int(value)
                else:
                    acked = int(value)
        proc.send_signal(signal.SIGKILL)  # mid-run: it is still writing
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL

    with Spool(path, budget_bytes=BIG) as spool:
        cursor = spool.cursor("sink")
        top = spool.committed_seq  # the writer may have run ahead of what we read
        assert top >= committed
        assert acked <= cursor.acked  # every ack it reported is still there
        assert cursor.acked in {top - 50, top - 50 - BATCH}  # the last ack it persisted
        held = dict(spool.items_after(0, 1_000_000))
        for seq in range(cursor.acked + 1, top + 1):
            assert held[seq] == expected(seq), f"seq {seq} missing or damaged"
        assert spool.append(expected(top + 1)) == top + 1
