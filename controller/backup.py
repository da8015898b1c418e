"""`cellfab backup` / `cellfab restore`: a verifiable copy of the spool, audit trail and config.

Backup runs beside a live daemon: each SQLite database is copied with the online backup API
(one consistent snapshot, even mid-write in WAL mode), the audit trail up to its last complete
line (its chain verified in the copy), the site file and the profile files it names by path.
Secrets are never copied; the manifest lists them. Restore checks the whole backup first,
refuses a backup of another site (without --other-site), a state dir a daemon holds or one
that is not empty (without --force), then copies into place (temp + rename + fsync) and
checks again. Exit 0 ok, 1 failure, 2 bad site file.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import socket
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from controller.audit import LOCK_NAME, TRAIL_NAME
from controller.backup_manifest import (
    DIR_MODE,
    FILE_MODE,
    JSONL_SUFFIX,
    SIDE_SUFFIXES,
    AuditFacts,
    BackupError,
    DbFacts,
    FileCheck,
    FileEntry,
    JsonlFacts,
    Kind,
    Manifest,
    ManifestError,
    NotCopied,
    check_backup,
    check_file,
    copy_bytes,
    copy_database,
    copy_lines,
    copy_trail,
    fsync_dir,
    inline_secrets,
    is_sqlite,
    secret_files,
    sha256_file,
    write_manifest,
)
from controller.config import SiteConfig
from controller.configload import ENV_OVERRIDES, ConfigError, load_site
from controller.version import cellfab_version

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
# The daemon's first act on a state dir: daemon_parts.open_spool opens `spool.sqlite`, whose
# Spool takes `spool.sqlite.lock` (spool._lock) before it touches anything; with controls it
# later takes `audit.lock` (audit._lock). Restore holds both, created if missing.
SPOOL_LOCK = "spool.sqlite.lock"
DAEMON_LOCKS = (SPOOL_LOCK, LOCK_NAME)


class RestoreRefused(Exception):
    """Restoring would clobber a live or non-empty state dir; nothing was written."""


# --- backup -------------------------------------------------------------------------------


def backup(
    cfg: SiteConfig, site_file: Path, dest: Path, env: Mapping[str, str] | None = None
) -> Manifest:
    """Copy the state dir and config of `cfg` into the new or empty dir `dest`."""
    env = os.environ if env is None else env
    state = cfg.state.dir
    if not state.is_dir():
        raise BackupError(f"state dir {state} does not exist or is not a directory")
    _make_empty_dir(dest, "backup dir")
    (dest / "state").mkdir(mode=DIR_MODE)
    files: list[FileEntry] = []
    skipped: list[NotCopied] = []
    for src in sorted(state.iterdir()):
        why = _skip_reason(src)
        if why is not None:
            skipped.append(NotCopied(key="state.dir", path=str(src), why=why))
            continue
        files.append(_copy_state_file(src, dest / "state" / src.name))
    files += _copy_config(cfg, site_file, dest)
    fsync_dir(dest / "state")
    fsync_dir(dest)
    manifest = Manifest(
        cellfab_version=cellfab_version(),
        created_utc=datetime.now(UTC).isoformat(),
        host=socket.gethostname(),
        site_id=cfg.site.id,
        site_file=str(site_file.resolve()),
        state_dir=str(state.resolve()),
        env_overrides=tuple(sorted(v for v in ENV_OVERRIDES if env.get(v))),
        files=tuple(files),
        not_copied=tuple(secret_files(cfg, site_file.parent)),
        skipped=tuple(skipped),
        warnings=tuple(inline_secrets(dest / "config" / site_file.name) + _no_trail(state)),
    )
    write_manifest(dest, manifest)
    return manifest


def _skip_reason(path: Path) -> str | None:
    name = path.name
    if name == LOCK_NAME or name.endswith(".lock"):
        return "lock file: held by the running daemon, recreated on start"
    if name.endswith(SIDE_SUFFIXES):
        return "SQLite WAL/journal side file: the database copy is a consolidated snapshot"
    if not path.is_file() or path.is_symlink():
        return "not a regular file (only the state dir's own files are backed up)"
    return None


def _copy_state_file(src: Path, dst: Path) -> FileEntry:
    kind: Kind
    audit: AuditFacts | None = None
    db: DbFacts | None = None
    lines: JsonlFacts | None = None
    if src.name == TRAIL_NAME:
        kind, audit = "audit", copy_trail(src, dst)
    elif src.name.endswith(JSONL_SUFFIX):  # append-only (batches.jsonl): no torn last line
        kind, lines = "jsonl", copy_lines(src, dst)
    elif is_sqlite(src):
        kind, db = "sqlite", copy_database(src, dst)
    else:
        kind = "file"
        copy_bytes(src, dst)
    size, digest = sha256_file(dst)
    rel = f"state/{src.name}"
    return FileEntry(
        path=rel,
        kind=kind,
        source=str(src.resolve()),
        size=size,
        sha256=digest,
        audit=audit,
        db=db,
        jsonl=lines,
    )


def _copy_config(cfg: SiteConfig, site_file: Path, dest: Path) -> list[FileEntry]:
    """The site file as `config/<name>`, each profile it names by path beside it."""
    (dest / "config").mkdir(mode=DIR_MODE)
    sources: list[tuple[Path, str, Kind]] = [(site_file, site_file.name, "site")]
    for ref in sorted({p for d in cfg.devices if (p := getattr(d, "profile", None))}):
        if "/" in ref or ref.endswith(".toml"):  # a path; a bare name is built in
            rel = Path(ref)
            safe = not rel.is_absolute() and ".." not in rel.parts
            name = rel.as_posix() if safe else f"external/{len(sources)}-{rel.name}"
            sources.append((site_file.parent / ref, name, "profile"))
    entries = []
    for src, name, kind in sources:
        dst = dest / "config" / name
        dst.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        try:
            copy_bytes(src, dst)
        except OSError as exc:
            raise BackupError(f"{src}: cannot copy: {exc.strerror}") from None
        size, digest = sha256_file(dst)
        entries.append(
            FileEntry(
                path=f"config/{name}",
                kind=kind,
                source=str(src.resolve()),
                size=size,
                sha256=digest,
            )
        )
    return entries


def _no_trail(state: Path) -> list[str]:
    if (state / TRAIL_NAME).exists():
        return []
    return [f"{state} holds no {TRAIL_NAME}: this backup has no audit trail"]


# --- restore ------------------------------------------------------------------------------


def check(backup_dir: Path, out: TextIO) -> Manifest | None:
    """Verify every file of a backup against its manifest, printing one line per file.

    Returns the manifest when every file verifies, else None.
    """
    try:
        manifest, checks = check_backup(backup_dir)
    except ManifestError as exc:
        print(f"FAILED  {exc}", file=out)
        return None
    site = "site not recorded" if manifest.site_id is None else f"site {manifest.site_id}"
    print(
        f"backup {backup_dir}: made {manifest.created_utc} on {manifest.host} by cellfab "
        f"{manifest.cellfab_version} from {manifest.state_dir} ({site})",
        file=out,
    )
    return manifest if _report(checks, out) else None


def restore(
    cfg: SiteConfig,
    backup_dir: Path,
    out: TextIO,
    *,
    force: bool,
    config_to: Path | None,
    other_site: bool = False,
) -> bool:
    """Check the backup, then restore its state files into the site's state dir (and config).

    Raises RestoreRefused (nothing written) when the backup is of another site without
    `other_site`, a daemon holds the state dir, or it is not empty without `force`. Returns
    whether the restored files verify.
    """
    manifest = check(backup_dir, out)
    if manifest is None:
        print("restore refused: the backup is not complete (above); nothing was written", file=out)
        return False
    _check_site(manifest, cfg.site.id, other_site, out)
    target = cfg.state.dir
    state = _destinations(manifest, "state/", target)
    config = _destinations(manifest, "config/", config_to) if config_to is not None else []
    _refuse_non_empty(target, force, ignore=_is_lock)  # before the locks: then nothing is made
    with _locked(target):
        _refuse_non_empty(target, force, ignore=_is_lock)  # again: a daemon may have started
        if config_to is not None:
            _refuse_non_empty(config_to, force, ignore=lambda _: False)
        checks = _place(backup_dir, state, target, force)
        if config_to is not None:
            checks += _place(backup_dir, config, config_to, force)
    print(f"restored into {target}" + (f" and {config_to}" if config_to else "") + ":", file=out)
    if manifest.not_copied:
        print("not in the backup (secrets), provide them:", file=out)
        for item in manifest.not_copied:
            print(f"  {item.key}: {item.path}", file=out)
    return _report(checks, out)


def _check_site(manifest: Manifest, here: str, other_site: bool, out: TextIO) -> None:
    """Refuse another site's backup: this site's daemon would send its spool as its own."""
    there = manifest.site_id
    if there is None:
        print(
            f"site: the backup does not record its site id (an older cellfab made it): it "
            f"cannot be checked against this site, {here}",
            file=out,
        )
    elif there != here and not other_site:
        raise RestoreRefused(
            f"the backup is of site {there!r}, the site file is of site {here!r}: its spool "
            f"would be forwarded as {here!r}; give --other-site to restore it here anyway"
        )
    elif there != here:
        print(f"site: restoring a backup of site {there} into site {here} (--other-site)", file=out)


def _destinations(manifest: Manifest, prefix: str, target: Path) -> list[tuple[FileEntry, Path]]:
    """Each entry under `prefix` with where it goes, refused unless that is inside `target`.

    The manifest's paths are already plain (backup_manifest.path_problem); this also catches
    a symlink in the target that would lead a file out of it.
    """
    root = target.resolve()
    placed = []
    for entry in manifest.files:
        if not entry.path.startswith(prefix):
            continue
        final = target / entry.path.removeprefix(prefix)
        where = final.parent.resolve() / final.name  # the rename replaces a link, never follows
        if where == root or not where.is_relative_to(root):
            raise RestoreRefused(
                f"{entry.path}: would be written to {where}, outside {target}; nothing was written"
            )
        placed.append((entry, final))
    return placed


def _report(checks: list[FileCheck], out: TextIO) -> bool:
    for c in checks:
        if c.ok:
            print(f"OK      {c.path}: {c.detail}", file=out)
        else:
            print(f"FAILED  {c.path}: {'; '.join(c.problems)}", file=out)
    failed = sum(not c.ok for c in checks)
    if failed:
        print(f"INCOMPLETE: {failed} of {len(checks)} files failed", file=out)
    else:
        print(f"COMPLETE: all {len(checks)} files verified", file=out)
    return not failed


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    """Hold every lock the daemon takes (created if missing) and any other there.

    A daemon holding one means it runs; holding them keeps one from starting mid-restore,
    even in a new state dir: its spool lock is the first thing it takes, so it exits.
    """
    target.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        others = sorted(p for p in target.glob("*.lock") if p.name not in DAEMON_LOCKS)
        for path in [*(target / name for name in DAEMON_LOCKS), *others]:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
            held.callback(os.close, fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                raise RestoreRefused(
                    f"{path} is held by pid {pid}: a cellfab daemon is running on {target}; "
                    "stop the daemon first"
                ) from None
            if path.name == LOCK_NAME:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield


def _is_lock(path: Path) -> bool:
    return path.name == LOCK_NAME or path.name.endswith(".lock")


def _refuse_non_empty(directory: Path, force: bool, ignore: Callable[[Path], bool]) -> None:
    present = (
        sorted(p.name for p in directory.iterdir() if not ignore(p)) if (directory.is_dir()) else []
    )
    if present and not force:
        shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
        raise RestoreRefused(
            f"{directory} is not empty ({shown}): restore into an empty dir, or give --force "
            "(what is replaced is moved into a pre-restore-<time> folder there, never deleted)"
        )


def _place(
    backup_dir: Path, entries: list[tuple[FileEntry, Path]], target: Path, force: bool
) -> list[FileCheck]:
    """Copy every file to a temp name and check it; only then move the old aside and rename."""
    staged: list[tuple[Path, Path]] = []
    try:
        for entry, final in entries:
            final.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            tmp = final.with_name(f".{final.name}.restore-tmp")
            tmp.unlink(missing_ok=True)
            staged.append((tmp, final))
            _stage(backup_dir / entry.path, tmp, entry)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    aside = target / f"pre-restore-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    for tmp, final in staged:
        if force:
            _move_aside(final, target, aside)
        tmp.rename(final)
        fsync_dir(final.parent)
    return [check_file(final, entry) for entry, final in entries]


def _stage(src: Path, tmp: Path, entry: FileEntry) -> None:
    copy_bytes(src, tmp)
    copied = check_file(tmp, entry)
    if not copied.ok:
        raise RestoreRefused(f"{tmp}: the copy did not verify: {'; '.join(copied.problems)}")


def _move_aside(final: Path, target: Path, aside: Path) -> None:
    """Keep what a forced restore replaces, with a database's side files (never delete)."""
    for old in [final, *(final.with_name(final.name + s) for s in SIDE_SUFFIXES)]:
        if old.exists():
            dest = aside / old.relative_to(target)
            dest.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            old.rename(dest)


# --- files --------------------------------------------------------------------------------


def _make_empty_dir(path: Path, what: str) -> None:
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if any(path.iterdir()):
        raise BackupError(f"{what} {path} is not empty: give a new or empty dir")


# --- command line -------------------------------------------------------------------------


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The `backup` and `restore` sub-commands."""
    bk = sub.add_parser(
        "backup",
        help="copy the spool, audit trail and config (daemon may run)",
        description="Copy the state dir (SQLite databases as consistent snapshots, the audit "
        "trail up to its last complete record), the site file and its profile files into a "
        "new or empty DIR, with a manifest written last (docs/backup.md). Secrets are not "
        "copied. Exit 0 ok, 1 failed, 2 bad site file.",
    )
    bk.add_argument("-c", "--config", type=Path, required=True, metavar="FILE")
    bk.add_argument("--to", type=Path, required=True, metavar="DIR", dest="to")
    bk.set_defaults(handler=run_backup)
    rs = sub.add_parser(
        "restore",
        help="check a backup, restore it into the site's state dir",
        description="Verify every file of a backup against its manifest (size, SHA-256, "
        "audit chain, database integrity and row counts), then copy the state files into the "
        "site's state dir, which must be empty (or --force) and not in use by a daemon, and "
        "verify again. A backup of another site id is refused unless --other-site. Exit 0 "
        "complete, 1 failed or refused, 2 bad site file.",
    )
    rs.add_argument("-c", "--config", type=Path, metavar="FILE", help="needed unless --check-only")
    rs.add_argument("--from", type=Path, required=True, metavar="DIR", dest="source")
    rs.add_argument("--check-only", action="store_true", help="verify the backup, write nothing")
    rs.add_argument("--force", action="store_true", help="restore into a non-empty state dir")
    rs.add_argument("--config-to", type=Path, metavar="DIR", help="also write the config there")
    rs.add_argument(
        "--other-site",
        action="store_true",
        help="restore a backup whose site id differs from the site file's",
    )
    rs.set_defaults(handler=run_restore)


def run_backup(args: argparse.Namespace) -> int:
    """Handler of `cellfab backup`."""
    cfg = _site(args.config)
    if cfg is None:
        return EXIT_INVALID
    try:
        manifest = backup(cfg, args.config, args.to)
    except (BackupError, OSError) as exc:
        print(f"cellfab backup: FAILED: {exc}", file=sys.stderr)
        print(f"{args.to} has no manifest: it is not a usable backup", file=sys.stderr)
        return EXIT_FAILED
    digest = sha256_file(args.to / "manifest.json")[1]
    print(f"backup of {manifest.state_dir} in {args.to}: {len(manifest.files)} files")
    for item in manifest.skipped:
        print(f"  skipped {item.path}: {item.why}")
    for item in manifest.not_copied:
        print(f"  not copied (secret) {item.key}: {item.path}")
    for warning in manifest.warnings:
        print(f"  WARNING: {warning}")
    print(f"manifest.json SHA-256 {digest} (keep it apart from the backup)")
    return EXIT_OK


def run_restore(args: argparse.Namespace) -> int:
    """Handler of `cellfab restore`."""
    if args.check_only:
        if args.config is not None and _site(args.config) is None:
            return EXIT_INVALID
        return EXIT_OK if check(args.source, sys.stdout) is not None else EXIT_FAILED
    if args.config is None:
        print("cellfab restore: -c/--config is required (it names the state dir)", file=sys.stderr)
        return EXIT_INVALID
    cfg = _site(args.config)
    if cfg is None:
        return EXIT_INVALID
    try:
        ok = restore(
            cfg,
            args.source,
            sys.stdout,
            force=args.force,
            config_to=args.config_to,
            other_site=args.other_site,
        )
    except (RestoreRefused, OSError) as exc:
        print(f"cellfab restore: refused: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK if ok else EXIT_FAILED


def _site(path: Path) -> SiteConfig | None:
    try:
        return load_site(path, read_secrets=False)
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m controller.backup backup|restore ...` until cli.py wires the sub-commands."""
    parser = argparse.ArgumentParser(prog="cellfab")
    add_parsers(parser.add_subparsers(required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
