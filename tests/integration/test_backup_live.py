"""`cellfab backup` beside a live writer, then `restore --check-only` and a restore that verify.

A real child process plays the daemon: it holds the audit trail (its lock included) and, in a
loop, appends a record and commits a batch of rows to a WAL-mode SQLite database in the state
dir, printing what it acknowledged. The backup and restores run as separate processes.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from pathlib import Path

import pytest

from controller.audit_chain import verify_trail
from controller.backup_manifest import read_manifest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 60.0
ROWS_PER_COMMIT = 20

WRITER = """
import fcntl, sqlite3, sys
from pathlib import Path
from controller.audit import AuditTrail

state = Path(sys.argv[1])
spool_lock = (state / "spool.sqlite.lock").open("wb")  # as controller/spool.py holds it
fcntl.flock(spool_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
db = sqlite3.connect(state / "spool.sqlite", isolation_level=None)
db.execute("PRAGMA journal_mode = WAL")
db.execute("PRAGMA synchronous = FULL")
db.execute("CREATE TABLE IF NOT EXISTS scans (seq INTEGER PRIMARY KEY, t INTEGER, blob BLOB)")
with AuditTrail.open(state / "audit.jsonl") as trail:
    i = 0
    while True:
        i += 1
        r = trail.append(user="cellfab", role="system", action="tick", obj="spool",
                         old=i - 1, new=i, reason="x" * (i * 37 % 500), client="writer",
                         result="accepted")
        db.execute("BEGIN")
        db.executemany("INSERT INTO scans (t, blob) VALUES (?, ?)",
                       [(i, bytes([i % 256]) * 400)] * ROWS)
        db.execute("COMMIT")
        (rows,) = db.execute("SELECT max(seq) FROM scans").fetchone()
        print(r.seq, rows, flush=True)
""".replace("ROWS", str(ROWS_PER_COMMIT))


def site_file(tmp: Path, state: Path) -> Path:
    site = tmp / "site.toml"
    site.write_text(
        f'[site]\nid = "live"\n[state]\ndir = "{state}"\n'
        '[[devices]]\nid = "inc-1"\ndevice_class = "co2_incubator"\narea = "a"\n'
        'driver = "modbus_tcp"\nhost = "127.0.0.1"\nport = 15021\nprofile = "co2-incubator"\n'
    )
    return site


async def cellfab(*args: str, state: Path | None = None) -> tuple[int, str, str]:
    """Run `python -m controller.backup ARGS` (the future `cellfab ARGS`) to completion."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELLFAB_")}
    if state is not None:
        env["CELLFAB_STATE_DIR"] = str(state)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "controller.backup",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT_S)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Acks:
    """Drains the writer's stdout (so it never blocks on a full pipe) into (seq, rows) pairs."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.seen: list[tuple[int, int]] = []
        self._task = asyncio.create_task(self._drain(proc), name="writer-stdout")

    async def _drain(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            seq, rows = line.split()
            self.seen.append((int(seq), int(rows)))

    async def past(self, seq: int) -> tuple[int, int]:
        """Wait (with a deadline) for an acknowledgement of a record after `seq`."""
        async with asyncio.timeout(TIMEOUT_S):
            while not self.seen or self.seen[-1][0] <= seq:
                assert not self._task.done(), "the writer stopped"
                await asyncio.sleep(0.01)
        return self.seen[-1]

    async def close(self) -> None:
        await asyncio.wait_for(self._task, TIMEOUT_S)


async def test_backup_of_a_live_state_dir_restores_complete(tmp_path: Path) -> None:
    """A backup taken mid-write holds everything acknowledged before it and restores intact."""
    state = tmp_path / "state"
    state.mkdir()
    site = site_file(tmp_path, state)
    backup_dir = tmp_path / "bk"
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WRITER, str(state), cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    acks = Acks(writer)
    try:
        seq_before, rows_before = await acks.past(30)
        code, out, err = await cellfab("backup", "-c", str(site), "--to", str(backup_dir))
        assert code == 0, out + err
        manifest = read_manifest(backup_dir)
        files = {e.path: e for e in manifest.files}
        trail, spool = files["state/audit.jsonl"].audit, files["state/spool.sqlite"].db
        assert trail is not None
        assert spool is not None
        await acks.past(trail.records)  # the writer went on writing across the backup
        code, _, err = await cellfab(
            "restore", "-c", str(site), "--from", str(backup_dir), "--force"
        )
        assert code == 1
        assert "stop the daemon first" in err
    finally:
        writer.terminate()
        await asyncio.wait_for(writer.wait(), TIMEOUT_S)
        await acks.close()
    assert trail.records >= seq_before
    assert spool.tables["scans"] >= rows_before
    assert spool.tables["scans"] % ROWS_PER_COMMIT == 0  # whole transactions only
    skipped = {Path(s.path).name for s in manifest.skipped}
    assert {"audit.lock", "spool.sqlite.lock", "spool.sqlite-wal", "spool.sqlite-shm"} <= skipped

    code, out, err = await cellfab("restore", "--check-only", "--from", str(backup_dir))
    assert code == 0, out + err
    assert "COMPLETE: all 3 files verified" in out

    fresh = tmp_path / "restored"
    code, out, err = await cellfab(
        "restore", "-c", str(site), "--from", str(backup_dir), state=fresh
    )
    assert code == 0, out + err
    verdict = verify_trail(fresh / "audit.jsonl")
    assert verdict.intact
    assert verdict.records == trail.records
    source = (state / "audit.jsonl").read_bytes()
    assert source.startswith((fresh / "audit.jsonl").read_bytes())  # a prefix of the live trail
    restored = sqlite3.connect(fresh / "spool.sqlite")
    live = sqlite3.connect(state / "spool.sqlite")
    try:
        query = "SELECT seq, t, blob FROM scans WHERE seq <= ? ORDER BY seq"
        have = restored.execute(query, (spool.tables["scans"],)).fetchall()
        assert have == live.execute(query, (spool.tables["scans"],)).fetchall()
        assert len(have) == spool.tables["scans"]
    finally:
        restored.close()
        live.close()
