"""The audit trail on disk: one writer appending fsync'd JSON lines, any number of readers.

Annex 11 §9 and 21 CFR 11.10(e) want who/what/when/why of every GMP-relevant change, kept so
that later changes cannot obscure it. Each record is one line (controller/audit_record.py)
chained to the one before by SHA-256, written with O_APPEND and fsync'd before `append`
returns, so an acknowledged record survives SIGKILL or a power cut. One daemon per state dir:
the writer holds an exclusive flock on `audit.lock`. A line left incomplete by a crash is
moved into a recovery record when the next writer opens the trail, never silently dropped.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Self

from controller.audit_record import (
    GENESIS,
    AuditRecord,
    AuditValue,
    MalformedRecord,
    body_of,
    parse_line,
    seal,
    sha256_hex,
    utc_now,
)
from controller.errors import RefusedToStart

log = logging.getLogger(__name__)

TRAIL_NAME = "audit.jsonl"
LOCK_NAME = "audit.lock"
FILE_MODE = 0o600
DIR_MODE = 0o700


class TrailLocked(RuntimeError):
    """Another process already writes this trail (a second daemon on the same state dir)."""


class TrailCorrupt(RefusedToStart):
    """The trail's last complete line is unreadable, so there is nothing to chain to."""


class AuditWriteError(RuntimeError):
    """An append failed; the record is not acknowledged and this writer accepts no more."""


@dataclass(frozen=True, slots=True)
class Line:
    """One line of the file as read: a record (hash checked), or why it is unreadable.

    `torn` marks a last line without its newline: an append cut short by a crash, or a
    truncation.
    """

    lineno: int
    record: AuditRecord | None
    error: str | None = None
    hash_ok: bool = False
    torn: bool = False
    size: int = 0


def trail_path(state_dir: Path) -> Path:
    """Where the daemon keeps its trail: `<state.dir>/audit.jsonl`."""
    return state_dir / TRAIL_NAME


def read_lines(path: Path) -> Iterator[Line]:
    """Every line of a trail in file order, each parsed and its self-hash checked.

    Never raises on content: garbage and a torn tail come back as `Line`s saying so.
    """
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            yield _read_line(lineno, raw)


def _read_line(lineno: int, raw: bytes) -> Line:
    torn = not raw.endswith(b"\n")
    content = raw if torn else raw[:-1]
    if torn:
        return Line(lineno, None, "incomplete last line (no newline)", torn=True, size=len(raw))
    try:
        record = parse_line(content)
    except MalformedRecord as exc:
        return Line(lineno, None, str(exc), size=len(raw))
    ok = sha256_hex(body_of(content, record.hash)) == record.hash
    return Line(lineno, record, None, hash_ok=ok, size=len(raw))


class AuditTrail:
    """The single writer of one trail file. Use `AuditTrail.open(...)` (a context manager).

    `append` is thread-safe and serialised; it returns the record it made durable, which the
    caller forwards as an event (MQTT, InfluxDB). It blocks for one fsync: from asyncio, call
    it through `asyncio.to_thread`.
    """

    def __init__(
        self,
        path: Path,
        *,
        fd: int,
        lock_fd: int,
        seq: int,
        head: str,
        clock: Callable[[], datetime],
        last_time: datetime | None = None,
    ) -> None:
        self.path = path
        self._fd: int | None = fd
        self._lock_fd = lock_fd
        self._seq = seq
        self._head = head
        self._last_time = last_time
        self._clock = clock
        self._mutex = threading.Lock()
        self._broken: str | None = None

    @classmethod
    def open(cls, path: Path, *, clock: Callable[[], datetime] = utc_now) -> Self:
        """Lock the trail, repair a torn tail left by a crash, and position after its head.

        Raises TrailLocked if another process writes it and TrailCorrupt if its last
        complete line is unreadable. `clock` must return aware datetimes (tests inject one).
        """
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        with contextlib.ExitStack() as undo:
            lock_fd = _lock(path.with_name(LOCK_NAME))
            undo.callback(os.close, lock_fd)
            fd, created = _open_append(path)
            undo.callback(os.close, fd)
            if created:
                _fsync_dir(path.parent)
            torn = _cut_torn_tail(path, fd)
            last = _last_record(path)
            seq, head = (last.seq, last.hash) if last is not None else (0, GENESIS)
            last_time = last.time if last is not None else None
            trail = cls(
                path, fd=fd, lock_fd=lock_fd, seq=seq, head=head, clock=clock, last_time=last_time
            )
            if torn is not None:
                trail._record_torn_tail(torn)
            undo.pop_all()
        log.info("audit trail %s open at record %d", path, trail.last_seq)
        return trail

    @property
    def last_seq(self) -> int:
        """Sequence number of the newest record (0 for an empty trail)."""
        return self._seq

    @property
    def last_time(self) -> datetime | None:
        """Time of the newest record found by `open` (None: empty trail), before this writer
        appended anything: the end of the previous run, which bounds what it accepted."""
        return self._last_time

    @property
    def head(self) -> str:
        """SHA-256 of the newest record (GENESIS for an empty trail): publish it as an anchor."""
        return self._head

    def append(
        self,
        *,
        user: str,
        role: str,
        action: str,
        obj: str,
        old: AuditValue,
        new: AuditValue,
        reason: str,
        client: str,
        result: str,
    ) -> AuditRecord:
        """Append one record and return it once it is on disk (written and fsync'd)."""
        with self._mutex:
            fd = self._writable_fd()
            record, line = seal(
                self._seq + 1, self._clock(), self._head, user=user, role=role,
                action=action, obj=obj, old=old, new=new, reason=reason, client=client,
                result=result,
            )  # fmt: skip
            self._write(fd, line)
            self._seq, self._head = record.seq, record.hash
            return record

    def close(self) -> None:
        """Release the file and the lock; idempotent."""
        with self._mutex:
            if self._fd is None:
                return
            os.close(self._fd)
            self._fd = None
            os.close(self._lock_fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _writable_fd(self) -> int:
        if self._fd is None:
            raise AuditWriteError(f"audit trail {self.path} is closed")
        if self._broken is not None:
            raise AuditWriteError(f"audit trail {self.path} refused appends since: {self._broken}")
        return self._fd

    def _write(self, fd: int, line: bytes) -> None:
        """Write + fsync; on failure cut a partial line back off and refuse further appends."""
        size = os.fstat(fd).st_size
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError as exc:
            # After a failed fsync the page cache state is unknown (Linux drops the error):
            # no later append may claim the chain is durable, so this writer stops here.
            self._broken = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            log.exception("audit trail %s append failed", self.path)
            raise AuditWriteError(f"audit append to {self.path} failed: {exc}") from exc

    def _record_torn_tail(self, torn: bytes) -> None:
        log.warning("audit trail %s: incomplete last line (%d bytes) moved into a recovery "
                    "record", self.path, len(torn))  # fmt: skip
        self.append(
            user="cellfab",
            role="system",
            action="audit.recover_torn_tail",
            obj=self.path.name,
            old=torn.decode("latin-1"),
            new=None,
            reason="an append was interrupted (crash or power loss) before it completed; "
            "its incomplete line, never acknowledged, is kept here verbatim (latin-1)",
            client=f"cellfab pid {os.getpid()}",
            result="recovered",
        )


def _lock(lock_path: Path) -> int:
    """Take the exclusive, non-blocking flock that makes this process the only writer."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise TrailLocked(
            f"audit trail lock {lock_path} is held by another process (pid {holder}): "
            "only one cellfab daemon may run on a state dir"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


def _open_append(path: Path) -> tuple[int, bool]:
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
    try:
        return os.open(path, flags), False
    except FileNotFoundError:
        return os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE), True


def _fsync_dir(directory: Path) -> None:
    """Make a new file's directory entry durable too."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cut_torn_tail(path: Path, fd: int) -> bytes | None:
    """Remove bytes after the last newline (an interrupted append) and return them."""
    size = os.fstat(fd).st_size
    with path.open("rb") as f:
        start = size
        while start > 0:
            chunk_start = max(0, start - 65536)
            f.seek(chunk_start)
            chunk = f.read(start - chunk_start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                start = chunk_start + nl + 1
                break
            start = chunk_start
        if start == size:
            return None
        f.seek(start)
        torn = f.read(size - start)
    os.ftruncate(fd, start)
    os.fsync(fd)
    return torn


def _last_record(path: Path) -> AuditRecord | None:
    """The last record, which the next one chains to (None: the trail is empty)."""
    last: Line | None = None
    for line in read_lines(path):
        last = line
    if last is None:
        return None
    if last.record is None:
        raise TrailCorrupt(
            f"audit trail {path} line {last.lineno} is unreadable ({last.error}); "
            "run `cellfab audit verify` and have the trail examined before appending"
        )
    # Chain to the stored hash: a content edit of the head stays visible to verify.
    return last.record
