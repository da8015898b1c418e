"""Backup and restore: the manifest's claims, every tamper found, secrets left out, refusals."""

from __future__ import annotations

import fcntl
import io
import json
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.audit import AuditTrail, read_lines
from controller.audit_chain import verify_trail
from controller.backup import RestoreRefused, backup, check, main, restore
from controller.backup_manifest import MANIFEST_NAME, ManifestError, check_backup, read_manifest
from controller.configload import ENV_OVERRIDES, load_site

ROOT = Path(__file__).resolve().parents[2]
KEY = "ab" * 32
PASSWORD = "hunter2-not-in-any-backup"  # noqa: S105 - a test value, never a real secret


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV_OVERRIDES:
        monkeypatch.delenv(var, raising=False)


def write_site(conf: Path, state: Path) -> Path:
    """A site file naming a path profile, a built-in profile, a user key and a password file."""
    (conf / "profiles").mkdir(parents=True)
    shutil.copy(ROOT / "config/profiles/co2-incubator.toml", conf / "profiles/inc.toml")
    (conf / "secrets").mkdir()
    (conf / "secrets/alice.key").write_text(KEY)
    (conf / "secrets/mqtt.pw").write_text(PASSWORD)
    site = conf / "site.toml"
    site.write_text(
        f'[site]\nid = "test"\n[state]\ndir = "{state}"\n'
        '[mqtt]\npassword_file = "secrets/mqtt.pw"\n'
        '[[devices]]\nid = "inc-1"\ndevice_class = "co2_incubator"\narea = "a"\n'
        'driver = "modbus_tcp"\nhost = "127.0.0.1"\nport = 15021\nprofile = "profiles/inc.toml"\n'
        '[[devices]]\nid = "inc-2"\ndevice_class = "co2_incubator"\narea = "a"\n'
        'driver = "modbus_tcp"\nhost = "127.0.0.1"\nport = 15022\nprofile = "co2-incubator"\n'
        '[[roles]]\nname = "operator"\n'
        '[[users]]\nid = "alice"\nrole = "operator"\nkey_file = "secrets/alice.key"\n'
    )
    return site


def append(trail: AuditTrail, n: int) -> None:
    for i in range(n):
        trail.append(
            user="alice",
            role="operator",
            action="setpoint",
            obj="inc-1/temp",
            old=float(i),
            new=float(i + 1),
            reason="test",
            client="unit",
            result="accepted",
        )


def fill_state(state: Path, records: int = 7, rows: int = 300) -> None:
    """An audit trail and a WAL-mode database, both closed."""
    with AuditTrail.open(state / "audit.jsonl") as trail:
        append(trail, records)
    db = sqlite3.connect(state / "spool.sqlite3", isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("CREATE TABLE scans (seq INTEGER PRIMARY KEY, blob BLOB NOT NULL)")
    db.execute("CREATE TABLE cursors (name TEXT PRIMARY KEY, acked INTEGER)")
    db.executemany("INSERT INTO scans (blob) VALUES (?)", [(bytes(50),)] * rows)
    db.execute("INSERT INTO cursors VALUES ('influx', 3)")
    db.close()


class Site:
    """A site file, its filled state dir and a backup of it."""

    def __init__(self, tmp: Path) -> None:
        self.state = tmp / "state"
        self.site = write_site(tmp / "conf", self.state)
        fill_state(self.state)
        self.cfg = load_site(self.site, read_secrets=False)
        self.backup = tmp / "backup"


@pytest.fixture
def made(tmp_path: Path) -> Iterator[Site]:
    site = Site(tmp_path)
    backup(site.cfg, site.site, site.backup)
    yield site


def checked(backup_dir: Path) -> tuple[bool, str]:
    out = io.StringIO()
    return check(backup_dir, out) is not None, out.getvalue()


def test_manifest_round_trip(made: Site) -> None:
    """The manifest read back equals what backup returned, and names every file's facts."""
    manifest = read_manifest(made.backup)
    data = json.loads((made.backup / MANIFEST_NAME).read_text())
    assert data["format"] == "cellfab-backup/1"
    by_path = {e.path: e for e in manifest.files}
    assert set(by_path) == {
        "state/audit.jsonl",
        "state/spool.sqlite3",
        "config/site.toml",
        "config/profiles/inc.toml",
    }
    assert by_path["state/audit.jsonl"].audit is not None
    assert by_path["state/audit.jsonl"].audit.records == 7
    db = by_path["state/spool.sqlite3"].db
    assert db is not None
    assert db.tables == {"scans": 300, "cursors": 1}
    assert (db.integrity_check, db.source_journal_mode) == ("ok", "wal")
    assert {s.path for s in manifest.skipped} == {str(made.state / "audit.lock")}
    ok, text = checked(made.backup)
    assert ok, text
    assert "COMPLETE: all 4 files verified" in text


def test_secrets_are_listed_not_copied(made: Site) -> None:
    """Key and password files are named in the manifest and their bytes are nowhere in it."""
    manifest = read_manifest(made.backup)
    assert {n.key for n in manifest.not_copied} == {"mqtt.password_file", "users.0.key_file"}
    for f in made.backup.rglob("*"):
        if f.is_file() and f.name != "site.toml":
            assert KEY.encode() not in f.read_bytes()
            assert PASSWORD.encode() not in f.read_bytes()
    assert not list(made.backup.rglob("*.key"))


def test_backup_copies_committed_rows_only_from_a_live_wal(tmp_path: Path) -> None:
    """With a transaction open and WAL frames not checkpointed, the copy has the committed rows."""
    site = Site(tmp_path)
    db = sqlite3.connect(site.state / "spool.sqlite3", isolation_level=None)
    db.execute("PRAGMA wal_autocheckpoint = 0")
    db.executemany("INSERT INTO scans (blob) VALUES (?)", [(bytes(10),)] * 50)
    db.execute("BEGIN")
    db.executemany("INSERT INTO scans (blob) VALUES (?)", [(bytes(10),)] * 25)
    try:
        assert (site.state / "spool.sqlite3-wal").stat().st_size > 0
        manifest = backup(site.cfg, site.site, site.backup)
    finally:
        db.rollback()
        db.close()
    entry = next(e for e in manifest.files if e.kind == "sqlite")
    assert entry.db is not None
    assert entry.db.tables["scans"] == 350
    assert checked(site.backup)[0]


def test_torn_last_line_is_left_out(tmp_path: Path) -> None:
    """A trail ending in half a line is copied up to its last newline and the copy verifies."""
    site = Site(tmp_path)
    torn = b'{"v":1,"seq":8,"time":"2026-11-22T'
    with (site.state / "audit.jsonl").open("ab") as f:
        f.write(torn)
    manifest = backup(site.cfg, site.site, site.backup)
    facts = next(e.audit for e in manifest.files if e.audit is not None)
    assert (facts.records, facts.head_seq, facts.torn_bytes_excluded) == (7, 7, len(torn))
    copy = site.backup / "state/audit.jsonl"
    assert copy.read_bytes().endswith(b"}\n")
    assert verify_trail(copy).intact
    assert (site.state / "audit.jsonl").read_bytes().endswith(torn)  # the source untouched


def flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def remove_trail_line(path: Path) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:3] + lines[4:]))


TAMPERS: dict[str, tuple[str, Callable[[Path], object], str]] = {
    "db byte flipped": ("state/spool.sqlite3", lambda p: flip_byte(p, 4096 + 200), "SHA-256"),
    "trail line removed": ("state/audit.jsonl", remove_trail_line, "removed"),
    "file missing": ("config/profiles/inc.toml", Path.unlink, "missing"),
    "file truncated": (
        "state/spool.sqlite3",
        lambda p: p.write_bytes(p.read_bytes()[:-100]),
        "truncated",
    ),
    "trail truncated": ("state/audit.jsonl", lambda p: p.write_bytes(p.read_bytes()[:-1]), "torn"),
}


@pytest.mark.parametrize("name", TAMPERS)
def test_every_tamper_is_found(made: Site, name: str) -> None:
    """Each tamper fails the check, naming the file and what is wrong with it."""
    rel, tamper, reason = TAMPERS[name]
    tamper(made.backup / rel)
    ok, text = checked(made.backup)
    assert not ok
    failed = [ln for ln in text.splitlines() if ln.startswith("FAILED")]
    assert len(failed) == 1, text
    assert rel in failed[0]
    assert reason in failed[0]
    assert "INCOMPLETE: 1 of 4 files failed" in text


def test_edited_row_counts_in_the_manifest_are_found(made: Site) -> None:
    """A manifest claiming other row counts than the database holds fails the check."""
    path = made.backup / MANIFEST_NAME
    data = json.loads(path.read_text())
    for entry in data["files"]:
        if entry["db"]:
            entry["db"]["tables"]["scans"] = 299
    path.write_text(json.dumps(data))
    ok, text = checked(made.backup)
    assert not ok
    assert "table scans: 300 rows, the manifest says 299" in text


def test_missing_manifest_fails(made: Site) -> None:
    """A backup without its manifest (interrupted) is reported as incomplete."""
    (made.backup / MANIFEST_NAME).unlink()
    ok, text = checked(made.backup)
    assert not ok
    assert "missing: the backup did not finish" in text
    with pytest.raises(ManifestError):
        check_backup(made.backup)


def test_garbled_manifest_fails(made: Site) -> None:
    """A manifest that is not valid JSON of the format fails, saying so."""
    (made.backup / MANIFEST_NAME).write_text('{"format": "cellfab-backup/1"')
    ok, text = checked(made.backup)
    assert not ok
    assert "not a valid manifest" in text


def test_added_file_is_flagged(made: Site) -> None:
    """A file in the backup that the manifest does not list is reported."""
    (made.backup / "state/extra.db").write_bytes(b"x")
    ok, text = checked(made.backup)
    assert not ok
    assert "FAILED  state/extra.db: not in the manifest" in text


def test_restore_into_fresh_dir(made: Site, tmp_path: Path) -> None:
    """A restore writes byte-identical state files that verify, into a new state dir."""
    target = tmp_path / "fresh"
    cfg = made.cfg.model_copy(update={"state": made.cfg.state.model_copy(update={"dir": target})})
    out = io.StringIO()
    assert restore(cfg, made.backup, out, force=False, config_to=None), out.getvalue()
    for name in ("audit.jsonl", "spool.sqlite3"):
        assert (target / name).read_bytes() == (made.backup / "state" / name).read_bytes()
        assert (target / name).stat().st_mode & 0o777 == 0o600
    assert verify_trail(target / "audit.jsonl").intact
    with AuditTrail.open(target / "audit.jsonl") as trail:  # the daemon can carry on
        append(trail, 1)
        assert trail.last_seq == 8
    db = sqlite3.connect(target / "spool.sqlite3")
    assert db.execute("SELECT count(*) FROM scans").fetchone() == (300,)
    db.close()
    assert "users.0.key_file" in out.getvalue()


def test_restore_refused_while_the_trail_is_open(made: Site) -> None:
    """A state dir whose trail an AuditTrail holds is not touched: stop the daemon first."""
    before = (made.state / "audit.jsonl").read_bytes()
    with AuditTrail.open(made.state / "audit.jsonl") as trail:
        append(trail, 1)
        during = (made.state / "audit.jsonl").read_bytes()
        with pytest.raises(RestoreRefused, match="stop the daemon first"):
            restore(made.cfg, made.backup, io.StringIO(), force=True, config_to=None)
        assert (made.state / "audit.jsonl").read_bytes() == during
    assert during != before


def test_restore_refused_while_a_spool_lock_is_held(made: Site, tmp_path: Path) -> None:
    """A held spool lock (`<db>.lock`, as controller/spool.py takes it) also refuses."""
    target = tmp_path / "fresh"
    target.mkdir()
    cfg = made.cfg.model_copy(update={"state": made.cfg.state.model_copy(update={"dir": target})})
    with (target / "spool.sqlite3.lock").open("wb") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RestoreRefused, match="stop the daemon first"):
            restore(cfg, made.backup, io.StringIO(), force=False, config_to=None)
    locks = ["audit.lock", "spool.sqlite.lock", "spool.sqlite3.lock"]  # the daemon's made too
    assert sorted(p.name for p in target.iterdir()) == locks


def test_restore_refuses_non_empty_target(made: Site) -> None:
    """A state dir with files is refused without --force and nothing is written."""
    before = {p.name: p.read_bytes() for p in made.state.iterdir()}
    with pytest.raises(RestoreRefused, match="is not empty"):
        restore(made.cfg, made.backup, io.StringIO(), force=False, config_to=None)
    assert {p.name: p.read_bytes() for p in made.state.iterdir()} == before


def test_forced_restore_moves_replaced_files_aside(made: Site) -> None:
    """--force replaces the state files, keeping the old ones (and stale WAL) in pre-restore-*."""
    with AuditTrail.open(made.state / "audit.jsonl") as trail:
        append(trail, 2)
    (made.state / "spool.sqlite3-wal").write_bytes(b"stale wal")
    out = io.StringIO()
    assert restore(made.cfg, made.backup, out, force=True, config_to=None), out.getvalue()
    assert sum(1 for _ in read_lines(made.state / "audit.jsonl")) == 7
    assert not (made.state / "spool.sqlite3-wal").exists()
    (aside,) = made.state.glob("pre-restore-*")
    assert sum(1 for _ in read_lines(aside / "audit.jsonl")) == 9
    assert (aside / "spool.sqlite3-wal").read_bytes() == b"stale wal"


def test_restore_refuses_a_tampered_backup(
    made: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Restore checks first: a damaged backup writes nothing, not even the state dir."""
    remove_trail_line(made.backup / "state/audit.jsonl")
    target = tmp_path / "fresh"
    monkeypatch.setenv("CELLFAB_STATE_DIR", str(target))
    code = main(["restore", "-c", str(made.site), "--from", str(made.backup)])
    assert code == 1
    assert not target.exists()


def test_cli_round_trip_and_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """backup, check and restore exit 0; a bad site file 2; a refused or failed one 1."""
    site = Site(tmp_path)
    assert main(["backup", "-c", str(site.site), "--to", str(site.backup)]) == 0
    assert "not copied (secret) users.0.key_file" in capsys.readouterr().out
    assert main(["backup", "-c", str(site.site), "--to", str(site.backup)]) == 1
    assert "is not empty" in capsys.readouterr().err
    assert main(["restore", "--check-only", "--from", str(site.backup)]) == 0
    monkeypatch.setenv("CELLFAB_STATE_DIR", str(tmp_path / "restored"))
    conf_out = tmp_path / "conf-restored"
    argv = ["restore", "-c", str(site.site), "--from", str(site.backup), "--config-to"]
    assert main([*argv, str(conf_out)]) == 0
    assert (conf_out / "site.toml").read_bytes() == site.site.read_bytes()
    assert (conf_out / "profiles/inc.toml").is_file()
    bad = tmp_path / "bad.toml"
    bad.write_text("[site]\n")
    assert main(["backup", "-c", str(bad), "--to", str(tmp_path / "b2")]) == 2
    assert main(["restore", "-c", str(bad), "--from", str(site.backup)]) == 2
    assert main(["restore", "--from", str(site.backup)]) == 2
    assert main(["restore", "--check-only", "-c", str(bad), "--from", str(site.backup)]) == 2
    (site.backup / "config/site.toml").write_text(site.site.read_text() + "# edited\n")
    assert main(["restore", "--check-only", "--from", str(site.backup)]) == 1
    assert "FAILED  config/site.toml: grown" in capsys.readouterr().out
