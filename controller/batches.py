"""Which batch each device is running: the chain of identity from a lot id to every reading.

A batch is started and ended by signed commands (`batch/start`, `batch/end`); while it
runs, every scan of its device carries the batch id. The running set is a small JSON file
in the state dir, replaced atomically (write, fsync, rename, fsync the dir), so a restart
or a crash keeps every batch running; every start and end is also appended to
`batches.jsonl`, the history `cellfab report` reads. Batch ids are pseudonymous lot ids,
never a patient's name: the pattern allows no spaces.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from controller.command_actions import Refusal

log = logging.getLogger(__name__)

BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,63}$")
TEXT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.,:/()+-]{0,63}$")
RUNNING = "batches.json"
HISTORY = "batches.jsonl"


class BatchRefused(Refusal):
    """A start or end that cannot be done; `code` and a message a person understands."""


@dataclass(frozen=True)
class Batch:
    """One running batch on one device."""

    device: str
    batch: str
    product: str
    phase: str
    started: str  # UTC ISO 8601
    started_by: str


class BatchRegistry:
    """The running batches of one state dir; `by_device` is what the hub stamps from."""

    def __init__(self, state_dir: Path) -> None:
        self._dir = state_dir
        self._path = state_dir / RUNNING
        self.by_device: dict[str, str] = {}
        self._running: dict[str, Batch] = {}
        if self._path.exists():
            data = json.loads(self._path.read_text(encoding="utf-8"))
            for item in data["running"]:
                batch = Batch(**item)
                self._running[batch.device] = batch
        self._sync()

    def running(self, device: str) -> Batch | None:
        """The batch `device` is running, if any."""
        return self._running.get(device)

    def start(
        self, device: str, batch: str, product: str, phase: str, *, user: str, known: set[str]
    ) -> Batch:
        """Start `batch` on `device`; refused if the device is unknown or already busy."""
        if device not in known:
            raise BatchRefused("unknown_object", f"there is no device {device!r}")
        if not BATCH_ID.fullmatch(batch):
            raise BatchRefused(
                "bad_field", "batch must be a lot id: 3-64 letters, digits, '.', '-' or '_'"
            )
        for name, text in (("product", product), ("phase", phase)):
            if not TEXT.fullmatch(text):
                raise BatchRefused("bad_field", f"{name} must be 1-64 plain characters")
        current = self._running.get(device)
        if current is not None:
            raise BatchRefused(
                "batch_running",
                f"{device} is running batch {current.batch} since {current.started}: end it first",
            )
        for other in self._running.values():
            if other.batch == batch:
                raise BatchRefused("batch_running", f"batch {batch} runs on {other.device}")
        now = _now()
        record = Batch(device, batch, product, phase, now, user)
        self._commit({**self._running, device: record}, {"event": "start", **asdict(record)})
        return record

    def end(self, device: str, batch: str, user: str) -> Batch:
        """End `batch` on `device`; refused unless that batch is what it runs."""
        current = self._running.get(device)
        if current is None or current.batch != batch:
            what = f"batch {current.batch}" if current else "no batch"
            raise BatchRefused("no_such_batch", f"{device} runs {what}, not {batch}")
        running = {d: b for d, b in self._running.items() if d != device}
        self._commit(
            running, {"event": "end", **asdict(current), "ended": _now(), "ended_by": user}
        )
        return current

    def _sync(self) -> None:
        """Update `by_device` in place: the hub holds a reference to it."""
        self.by_device.clear()
        self.by_device.update({d: b.batch for d, b in self._running.items()})

    def _commit(self, running: dict[str, Batch], event: dict[str, str]) -> None:
        """Persist the history event, then the running set, and only then adopt `running`.

        All or nothing: if a write fails (disk full) the error propagates with memory, the
        running file and the history as they were, so no scan is stamped with a batch the
        command was reported to have failed to start (or ended).
        """
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        size = self._history(event)
        try:
            self._save(running)
        except BaseException:
            _truncate(self._dir / HISTORY, size)
            raise
        self._running = running
        self._sync()

    def _save(self, running: dict[str, Batch]) -> None:
        """Replace the running file atomically; on failure the old one stays (or is put back)."""
        self._replace(running)
        try:
            _fsync_dir(self._dir)
        except BaseException:
            with contextlib.suppress(OSError):  # best effort: the rename may not be durable
                self._replace(self._running)
            raise

    def _replace(self, running: dict[str, Batch]) -> None:
        tmp = self._path.with_suffix(".tmp")
        data = {"running": [asdict(b) for b in running.values()]}
        try:
            with tmp.open("w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(self._path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _history(self, event: dict[str, str]) -> int:
        """Append `event` durably; returns the file's size before it (to undo the append)."""
        line = (json.dumps(event, separators=(",", ":")) + "\n").encode("utf-8")
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC  # read: torn-tail check
        fd = os.open(self._dir / HISTORY, flags, 0o666)  # as open("a"): the umask decides
        try:
            size = _cut_torn_tail(fd, self._dir / HISTORY)
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)
        return size


def _cut_torn_tail(fd: int, path: Path) -> int:
    """The history's size once a torn last line (a crash mid-append) is cut off.

    The torn event was never durable, so its command was never reported done; appending
    after it would glue the next real event onto it and make both unreadable.
    """
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1
    os.ftruncate(fd, keep)
    os.fsync(fd)
    log.warning(
        "%s: incomplete last line removed (a crash while writing): %r", path, data[keep:][:80]
    )
    return keep


def history(
    state_dir: Path, skipped: Callable[[str, bool], None] | None = None
) -> list[dict[str, str]]:
    """Every start and end, oldest first, from the lines that can be read.

    A last line without its newline is an append a crash cut short; the registry writes
    that line before the running file, so its start or end never took effect: it is
    skipped. Any other line that is not a whole start or end event is damage, and a record
    built around it may lack a start or an end. Each skipped line is told to `skipped`
    (message, damage?); without it, damage raises ValueError and a cut-short tail is
    skipped quietly.
    """
    path = state_dir / HISTORY
    if not path.exists():
        return []
    *lines, tail = path.read_bytes().split(b"\n")
    if tail.strip():
        note = "last line incomplete (crash while writing), ignored"
        if skipped is not None:
            skipped(note, False)
    out: list[dict[str, str]] = []
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            out.append(_event(raw))
        except ValueError as exc:
            message = f"{HISTORY} line {lineno} unreadable ({exc}), ignored"
            if skipped is None:
                raise ValueError(message) from exc
            skipped(message, True)
    return out


def _event(raw: bytes) -> dict[str, str]:
    """One history line as written by `_history`; ValueError saying what is wrong."""
    try:
        item = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg}") from None
    if not isinstance(item, dict) or item.get("event") not in {"start", "end"}:
        raise ValueError("not a start or end event")
    keys = [f.name for f in fields(Batch)]
    times = ["started"]
    if item["event"] == "end":
        keys += ["ended", "ended_by"]
        times.append("ended")
    missing = [k for k in keys if not isinstance(item.get(k), str)]
    if missing:
        raise ValueError(f"no text {', '.join(missing)}")
    for key in times:
        if datetime.fromisoformat(item[key]).utcoffset() is None:
            raise ValueError(f"{key} has no time zone")
    return {k: v for k, v in item.items() if isinstance(v, str)}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _truncate(path: Path, size: int) -> None:
    """Cut an append that must not stand back off; best effort (it is already failing)."""
    with contextlib.suppress(OSError):
        os.truncate(path, size)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
