"""The audit trail survives SIGKILL of its writer: every acknowledged record is there, intact.

A real child process appends in a loop and prints each record's number and hash once
`append` has returned (written and fsync'd); the test kills it with SIGKILL after a given
number of acknowledgements, read from its stdout, never after a sleep.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest

from controller.audit import AuditTrail, TrailLocked, read_lines
from controller.audit_chain import verify_trail

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ACK_TIMEOUT_S = 30.0

CHILD = """
import sys
from pathlib import Path
from controller.audit import AuditTrail

with AuditTrail.open(Path(sys.argv[1])) as trail:
    i = 0
    while True:
        i += 1
        r = trail.append(
            user="alice", role="operator", action="setpoint", obj="br-1/temp",
            old=float(i - 1), new=float(i), reason="crash test " + "x" * (i * 37 % 900),
            client="child", result="accepted",
        )
        print(r.seq, r.hash, flush=True)
"""


async def start_writer(path: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(path), cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )


async def read_acks(proc: asyncio.subprocess.Process, want: int) -> dict[int, str]:
    """Acknowledged records, read until `want` of them, each within a deadline."""
    assert proc.stdout is not None
    acked: dict[int, str] = {}
    while len(acked) < want:
        line = await asyncio.wait_for(proc.stdout.readline(), ACK_TIMEOUT_S)
        assert line, f"writer exited after {len(acked)} acks with code {await proc.wait()}"
        seq, digest = line.decode().split()
        acked[int(seq)] = digest
    return acked


@pytest.mark.parametrize("acks", [1, 57, 600])
async def test_sigkill_keeps_every_acknowledged_record(tmp_path: Path, acks: int) -> None:
    """After SIGKILL the trail is intact (or only torn at its tail) and holds every ack."""
    path = tmp_path / "state" / "audit.jsonl"
    proc = await start_writer(path)
    try:
        acked = await read_acks(proc, acks)
        with pytest.raises(TrailLocked, match=rf"pid {proc.pid}\)"):
            AuditTrail.open(path)
        proc.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(proc.wait(), ACK_TIMEOUT_S) == -signal.SIGKILL
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.stdout is not None
    for line in (await proc.stdout.read()).decode().splitlines():
        number, digest = line.split()
        acked[int(number)] = digest

    verdict = verify_trail(path)
    assert verdict.intact or verdict.torn_only, verdict.findings
    stored = {ln.record.seq: ln.record for ln in read_lines(path) if ln.record is not None}
    for seq, digest in acked.items():
        assert stored[seq].hash == digest
        assert stored[seq].new == float(seq)


async def test_the_next_writer_continues_after_a_kill(tmp_path: Path) -> None:
    """A writer opened after the kill repairs any torn tail and extends an intact chain."""
    path = tmp_path / "state" / "audit.jsonl"
    proc = await start_writer(path)
    try:
        acked = await read_acks(proc, 200)
        proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), ACK_TIMEOUT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    with AuditTrail.open(path) as trail:
        assert trail.last_seq >= max(acked)
        record = trail.append(
            user="bob", role="supervisor", action="restart", obj="cellfab", old=None,
            new=None, reason="after crash test", client="test", result="ok",
        )  # fmt: skip
    verdict = verify_trail(path)
    assert verdict.intact, verdict.findings
    assert verdict.last == record
