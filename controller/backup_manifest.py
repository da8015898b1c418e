"""The files of a backup: how each is copied, what the manifest claims, and checking it.

The manifest lists each copied file with its size and SHA-256, the audit trail's record count
and head, each database's `PRAGMA integrity_check` and table row counts, and the secrets that
were deliberately left out. It is written last and atomically, so a backup without one is
visibly incomplete. `check_backup` recomputes every claim from the bytes on disk and names
each file that does not match, and why.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Self
from urllib.parse import quote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from controller.audit_chain import verify_trail

FORMAT = "cellfab-backup/1"
MANIFEST_NAME = "manifest.json"
FILE_MODE = 0o600
DIR_MODE = 0o700
DB_SUFFIXES = (".sqlite3", ".sqlite", ".db")
SQLITE_MAGIC = b"SQLite format 3\x00"
SQLITE_TIMEOUT_S = 10.0
SIDE_SUFFIXES = ("-wal", "-shm", "-journal")
JSONL_SUFFIX = ".jsonl"
SECRETS_POLICY = (
    "key files and credential files (every `*_file` of the site file) and CELLFAB_* "
    "environment values are never copied: provide them on the restored host"
)

Kind = Literal["audit", "sqlite", "jsonl", "file", "site", "profile"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AuditFacts(_Model):
    """The trail copy's chain: records, head, and the torn bytes left out (0 normally)."""

    records: int = Field(ge=0)
    head_seq: int = Field(ge=0)
    head_hash: str
    torn_bytes_excluded: int = Field(default=0, ge=0)


class DbFacts(_Model):
    """A database copy: `PRAGMA integrity_check`, row count per table, source journal mode."""

    integrity_check: str
    tables: dict[str, int]
    source_journal_mode: str


class JsonlFacts(_Model):
    """An append-only JSON-lines copy (`batches.jsonl`): its lines, the torn bytes left out."""

    lines: int = Field(ge=0)
    torn_bytes_excluded: int = Field(default=0, ge=0)


def path_problem(path: str) -> str | None:
    """Why `path` is not one the backup writes, or None: restore joins it onto a target dir.

    The writer makes `state/<file name>` (never a lock or SQLite side file: it skips those)
    and `config/<relative path>`; anything else (`state//etc/x`, `state/../x`, `config/a/../b`)
    would let a forged manifest write outside the state or config dir.
    """
    area, _, rest = path.partition("/")
    parts = rest.split("/")
    problem = None
    if "\x00" in path:
        problem = "holds a NUL byte"
    elif area == "state":
        if len(parts) != 1 or parts[0] in ("", ".", ".."):
            problem = "must be state/<one file name>, without '/', '.' or '..'"
        elif parts[0].endswith((".lock", *SIDE_SUFFIXES)):
            problem = "names a lock or SQLite side file, which a backup never holds"
    elif area == "config":
        if any(part in ("", ".", "..") for part in parts):
            problem = "must be config/<relative path>, without empty, absolute, '.' or '..' parts"
    else:
        problem = "must be state/<file name> or config/<relative path>"
    return problem


class FileEntry(_Model):
    """One copied file: `path` is relative to the backup dir (`state/...`, `config/...`)."""

    path: str
    kind: Kind
    source: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    audit: AuditFacts | None = None
    db: DbFacts | None = None
    jsonl: JsonlFacts | None = None

    @field_validator("path")
    @classmethod
    def _safe_path(cls, path: str) -> str:
        """Refuse a path that restore could not place inside its target dir (see path_problem)."""
        problem = path_problem(path)
        if problem is not None:
            raise ValueError(f"file {path!r} {problem}")
        return path


class NotCopied(_Model):
    """A file deliberately not in the backup: a secret the site file names, or a lock file."""

    key: str
    path: str
    why: str


class Manifest(_Model):
    """The whole claim of one backup."""

    format: Literal["cellfab-backup/1"] = "cellfab-backup/1"
    cellfab_version: str
    created_utc: str
    host: str
    site_id: str | None = Field(
        default=None, description="[site] id of the site backed up; None: an older backup"
    )
    site_file: str
    state_dir: str
    env_overrides: tuple[str, ...] = Field(description="CELLFAB_* names set (values never)")
    files: tuple[FileEntry, ...]
    not_copied: tuple[NotCopied, ...]
    skipped: tuple[NotCopied, ...] = Field(description="state dir entries left out, and why")
    warnings: tuple[str, ...] = ()
    secrets_policy: str = SECRETS_POLICY

    @model_validator(mode="after")
    def _unique_paths(self) -> Self:
        """One entry per path: a second entry must not vouch for a file the first one names."""
        seen: set[str] = set()
        for entry in self.files:
            if entry.path in seen:
                raise ValueError(f"file {entry.path!r} is listed twice")
            seen.add(entry.path)
        return self


class BackupError(Exception):
    """The backup could not be made complete; the message names the file and why."""


class ManifestError(Exception):
    """The manifest is missing or unreadable: the backup cannot be trusted as complete."""


@dataclass(frozen=True, slots=True)
class FileCheck:
    """The verdict on one file: `problems` empty means OK; `detail` says what was proven."""

    path: str
    problems: tuple[str, ...]
    detail: str = ""

    @property
    def ok(self) -> bool:
        """True when every claim about this file holds."""
        return not self.problems


def sha256_file(path: Path) -> tuple[int, str]:
    """(size, SHA-256 hex) of the bytes of `path`."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def open_readonly(path: Path, *, immutable: bool) -> sqlite3.Connection:
    """A read-only connection; `immutable` for a backup copy (no locks, no side files)."""
    flags = "mode=ro&immutable=1" if immutable else "mode=ro"
    uri = f"file:{quote(str(path.resolve()))}?{flags}"
    return sqlite3.connect(uri, uri=True, timeout=SQLITE_TIMEOUT_S, isolation_level=None)


def db_counts(db: sqlite3.Connection) -> tuple[str, dict[str, int]]:
    """(integrity_check result, row count of every table) of an open database."""
    rows = db.execute("PRAGMA integrity_check").fetchall()
    integrity = "; ".join(str(r[0]) for r in rows)
    names = [
        str(r[0])
        for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
    ]
    quoted = {name: '"' + name.replace('"', '""') + '"' for name in names}
    counts = {
        n: int(db.execute(f"SELECT count(*) FROM {q}").fetchone()[0])  # noqa: S608
        for n, q in quoted.items()
    }
    return integrity, counts


def write_manifest(backup_dir: Path, manifest: Manifest) -> Path:
    """Write manifest.json atomically: temp file, fsync, rename, fsync of the directory."""
    final = backup_dir / MANIFEST_NAME
    tmp = backup_dir / f".{MANIFEST_NAME}.tmp"
    data = (manifest.model_dump_json(indent=2) + "\n").encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(final)
    fsync_dir(backup_dir)
    return final


def read_manifest(backup_dir: Path) -> Manifest:
    """The manifest of `backup_dir`; ManifestError says why there is no usable one."""
    path = backup_dir / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(
            f"{path}: missing: the backup did not finish (the manifest is written last) "
            "or this is not a cellfab backup"
        ) from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return Manifest.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        msg = first["msg"].removeprefix("Value error, ")
        raise ManifestError(f"{path}: not a valid manifest: {where}: {msg}") from None


def fsync_dir(directory: Path) -> None:
    """Make renames and new entries in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_backup(backup_dir: Path) -> tuple[Manifest, list[FileCheck]]:
    """Every file of the manifest checked in `backup_dir`, plus files it does not list.

    Raises ManifestError when there is no usable manifest (nothing can be checked then).
    """
    manifest = read_manifest(backup_dir)
    root = backup_dir.resolve()
    checks = [
        check_file(backup_dir / e.path, e)
        if (backup_dir / e.path).resolve().is_relative_to(root)
        else FileCheck(e.path, (f"resolves outside the backup dir {backup_dir} (a symlink?)",))
        for e in manifest.files
    ]
    listed = {e.path for e in manifest.files} | {MANIFEST_NAME}
    for extra in sorted(p for p in backup_dir.rglob("*") if p.is_file()):
        rel = extra.relative_to(backup_dir).as_posix()
        if rel not in listed:
            checks.append(FileCheck(rel, ("not in the manifest: added after the backup",)))
    return manifest, checks


def check_file(path: Path, entry: FileEntry) -> FileCheck:
    """Check one file against its entry: size, SHA-256, then its chain or its database."""
    try:
        size, digest = sha256_file(path)
    except FileNotFoundError:
        return FileCheck(entry.path, ("missing",))
    except OSError as exc:
        return FileCheck(entry.path, (f"cannot read: {exc.strerror}",))
    problems: list[str] = []
    if size != entry.size:
        what = "truncated" if size < entry.size else "grown"
        problems.append(f"{what}: {size} bytes, the manifest says {entry.size}")
    if digest != entry.sha256:
        problems.append(f"SHA-256 {digest} differs from the manifest's {entry.sha256}")
    detail = f"{size} bytes, SHA-256 {'ok' if digest == entry.sha256 else 'differs'}"
    if entry.audit is not None:
        found, said = _check_audit(path, entry.audit)
        problems += found
        detail += f", {said}"
    if entry.db is not None:
        found, said = _check_db(path, entry.db)
        problems += found
        detail += f", {said}"
    if entry.jsonl is not None:
        found, said = _check_lines(path, entry.jsonl)
        problems += found
        detail += f", {said}"
    return FileCheck(entry.path, tuple(problems), detail)


def _check_audit(path: Path, want: AuditFacts) -> tuple[list[str], str]:
    verdict = verify_trail(path)
    problems = [f"audit chain: {f.kind}: {f.message}" for f in verdict.findings]
    seq = verdict.last.seq if verdict.last else 0
    head = verdict.last.hash if verdict.last else None
    if verdict.records != want.records:
        problems.append(f"{verdict.records} audit records, the manifest says {want.records}")
    if (seq, head) != (want.head_seq, want.head_hash) and want.records:
        problems.append(
            f"audit head #{seq} {head}, the manifest says #{want.head_seq} {want.head_hash}"
        )
    state = "chain intact" if verdict.intact else "chain NOT intact"
    return problems, f"{state}, {verdict.records} records, head #{seq} {head or '-'}"


def _check_lines(path: Path, want: JsonlFacts) -> tuple[list[str], str]:
    lines, torn = _count_lines(path)
    problems = []
    if torn:
        problems.append(f"ends in a torn line ({torn} bytes after the last newline)")
    if lines != want.lines:
        problems.append(f"{lines} lines, the manifest says {want.lines}")
    return problems, f"{lines} complete lines"


def _count_lines(path: Path) -> tuple[int, int]:
    """(newlines, bytes after the last one) of `path`."""
    lines = tail = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            count = chunk.count(b"\n")
            lines += count
            tail = len(chunk) - chunk.rfind(b"\n") - 1 if count else tail + len(chunk)
    return lines, tail


def _check_db(path: Path, want: DbFacts) -> tuple[list[str], str]:
    try:
        db = open_readonly(path, immutable=True)
        try:
            integrity, counts = db_counts(db)
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        return [f"not a readable SQLite database: {exc}"], "database unreadable"
    problems = []
    if integrity != "ok":
        problems.append(f"PRAGMA integrity_check: {integrity}")
    for table in sorted(set(want.tables) | set(counts)):
        have, said = counts.get(table), want.tables.get(table)
        if have != said:
            problems.append(f"table {table}: {have} rows, the manifest says {said}")
    rows = sum(counts.values())
    return problems, f"integrity_check {integrity}, {len(counts)} tables, {rows} rows"


def is_sqlite(path: Path) -> bool:
    """A database by name (`*.sqlite3`, `*.sqlite`, `*.db`) or by its header."""
    if path.name.endswith(DB_SUFFIXES):
        return True
    with path.open("rb") as f:
        return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC


def _copy_complete_lines(src: Path, dst: Path) -> tuple[int, int]:
    """Copy `src` up to its last newline; (bytes kept, bytes read).

    Appends are O_APPEND writes ending in the newline: every byte below the size read here
    is written, and the bytes after the last newline are an append in flight (or a crash's
    torn tail), which a reader of the copy would choke on.
    """
    with src.open("rb") as fin, _create(dst) as fout:
        end = os.fstat(fin.fileno()).st_size
        keep = pos = 0
        while pos < end and (chunk := fin.read(min(1 << 20, end - pos))):
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = pos + newline + 1
            fout.write(chunk)
            pos += len(chunk)
        fout.truncate(keep)
        fout.flush()
        os.fsync(fout.fileno())
    return keep, pos


def copy_lines(src: Path, dst: Path) -> JsonlFacts:
    """Copy an append-only JSON-lines file (`batches.jsonl`) up to its last newline."""
    keep, pos = _copy_complete_lines(src, dst)
    lines, _ = _count_lines(dst)
    return JsonlFacts(lines=lines, torn_bytes_excluded=pos - keep)


def copy_trail(src: Path, dst: Path) -> AuditFacts:
    """Copy the trail up to its last newline (never a torn half line) and verify the copy."""
    keep, pos = _copy_complete_lines(src, dst)
    verdict = verify_trail(dst)
    if not verdict.intact:
        found = "; ".join(f.message for f in verdict.findings[:3])
        raise BackupError(
            f"{src}: the audit chain does not verify ({found}): run `cellfab "
            "audit verify` and have the trail examined; no backup was made"
        )
    last = verdict.last
    return AuditFacts(
        records=verdict.records,
        head_seq=last.seq if last else 0,
        head_hash=last.hash if last else "0" * 64,
        torn_bytes_excluded=pos - keep,
    )


def copy_database(src: Path, dst: Path) -> DbFacts:
    """Snapshot a live database with the online backup API (one step: one read transaction).

    The copy is switched to rollback-journal mode so that it is one self-contained file;
    the spool turns WAL back on when it opens it.
    """
    os.close(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE))
    try:
        source = open_readonly(src, immutable=False)
        try:
            (mode,) = source.execute("PRAGMA journal_mode").fetchone()
            target = sqlite3.connect(dst, isolation_level=None)
            try:
                source.backup(target)
                target.execute("PRAGMA journal_mode = DELETE")
                integrity, counts = db_counts(target)
            finally:
                target.close()
        finally:
            source.close()
    except sqlite3.Error as exc:
        raise BackupError(f"{src}: SQLite backup failed: {exc}") from None
    if integrity != "ok":
        raise BackupError(f"{src}: the copy fails PRAGMA integrity_check: {integrity}")
    _fsync_file(dst)
    return DbFacts(integrity_check=integrity, tables=counts, source_journal_mode=str(mode))


def _create(path: Path) -> BinaryIO:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    return os.fdopen(fd, "wb")


def copy_bytes(src: Path, dst: Path) -> None:
    with src.open("rb") as fin, _create(dst) as fout:
        while chunk := fin.read(1 << 20):
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def secret_files(cfg: BaseModel, base: Path) -> list[NotCopied]:
    """Every `*_file` the config names (keys, passwords, tokens, certificates): not copied."""
    found: list[NotCopied] = []

    def walk(obj: object, where: str) -> None:
        if isinstance(obj, BaseModel):
            for name in type(obj).model_fields:
                value, key = getattr(obj, name), f"{where}.{name}".lstrip(".")
                if name.endswith("_file") and isinstance(value, Path):
                    why = "credential file: secrets are never backed up; provide it on restore"
                    found.append(NotCopied(key=key, path=str(base / value), why=why))
                else:
                    walk(value, key)
        elif isinstance(obj, tuple | list):
            for i, item in enumerate(obj):
                walk(item, f"{where}.{i}")

    walk(cfg, "")
    return found


def inline_secrets(site_copy: Path) -> list[str]:
    """A warning per secret written into the copied site file itself (never the secret).

    Read from the copy, not the loaded config: an env override (CELLFAB_*) is not in the
    backup, while the file's own value is, even when the environment overrides it.
    """
    try:
        raw = tomllib.loads(site_copy.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        return [f"{site_copy.name}: cannot be read to look for secrets written in it ({exc})"]
    out = []
    for section, key in (("mqtt", "password"), ("influx", "token")):
        if _value(raw, section, key) is not None:
            out.append(
                f"{section}.{key} is written in the site file itself: it is in this backup; "
                f"move it to {section}.{key}_file or the environment"
            )
    for section in ("mqtt", "influx"):
        url = _value(raw, section, "url")
        if isinstance(url, str) and _url_password(url):
            out.append(
                f"{section}.url holds a password (user:password@host) in the site file "
                "itself: it is in this backup; take it out of the URL and use "
                f"{'mqtt.password_file' if section == 'mqtt' else 'influx.token_file'}"
            )
    return out


def _value(raw: dict[str, object], section: str, key: str) -> object:
    table = raw.get(section)
    return table.get(key) if isinstance(table, dict) else None


def _url_password(url: str) -> bool:
    """Whether the sinks would read a password from the URL's userinfo (as mqtt.Endpoint)."""
    try:
        return bool(urlsplit(url).password)
    except ValueError:  # malformed (a bad IPv6 host): look at the authority by hand
        authority = url.partition("://")[2].split("/", 1)[0]
        return bool(authority.rpartition("@")[0].partition(":")[2])
