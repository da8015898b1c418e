"""Which batch each device is running: the chain of identity from a lot id to every reading.

A batch is started and ended by signed commands (`batch/start`, `batch/end`); while it
runs, every scan of its device carries the batch id. The running set is a small JSON file
in the state dir, replaced atomically (write, fsync, rename, fsync the dir), so a restart
or a crash keeps every batch running; every start and end is also appended to
`batches.jsonl`, the history `cellfab report` reads. Batch ids are pseudonymous lot ids,
never a patient's name: the pattern allows no spaces.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from controller.command_actions import Refusal

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
        self._running[device] = record
        self._save()
        self._history({"event": "start", **asdict(record)})
        return record

    def end(self, device: str, batch: str, user: str) -> Batch:
        """End `batch` on `device`; refused unless that batch is what it runs."""
        current = self._running.get(device)
        if current is None or current.batch != batch:
            what = f"batch {current.batch}" if current else "no batch"
            raise BatchRefused("no_such_batch", f"{device} runs {what}, not {batch}")
        del self._running[device]
        self._save()
        self._history({"event": "end", **asdict(current), "ended": _now(), "ended_by": user})
        return current

    def _sync(self) -> None:
        """Update `by_device` in place: the hub holds a reference to it."""
        self.by_device.clear()
        self.by_device.update({d: b.batch for d, b in self._running.items()})

    def _save(self) -> None:
        self._sync()
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = {"running": [asdict(b) for b in self._running.values()]}
        tmp = self._path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self._path)
        _fsync_dir(self._dir)

    def _history(self, event: dict[str, str]) -> None:
        with (self._dir / HISTORY).open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(event, separators=(",", ":")) + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def history(state_dir: Path) -> list[dict[str, str]]:
    """Every start and end, oldest first."""
    path = state_dir / HISTORY
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
