"""Where a scan goes when a poller has it: into the tag store, then into the journal.

The one place that fans out, so the order (state first, then the record every sink
forwards) is the same for every device and a later stage (loops, alarms, spool) slots in
here without touching pollers or sinks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from controller.spool_budget import Gap, SpoolFull
from controller.stream import Stream as Journal
from controller.tagstore import TagStore
from drivers.sample import Scan

log = logging.getLogger(__name__)

NO_BATCHES: Mapping[str, str] = {}


class Recorder(Protocol):
    """Keeps scans taken under a batch for the batch record (controller/batch_archive.py)."""

    def record(self, scan: Scan) -> None: ...


class Hub:
    """Accepts scans from pollers; owns nothing but the order of the fan-out."""

    def __init__(self, store: TagStore, journal: Journal) -> None:
        self.store = store
        self.journal = journal
        self.scans = 0
        self.config_id: str | None = None  # short hash of the site file in force
        self.batches: Mapping[str, str] = NO_BATCHES  # device -> running batch id
        self.full = False  # the spool refuses scans (budget full of GMP data, or disk failing)
        self.archive: Recorder | None = None  # the batch archive: scans taken under a batch

    def publish(self, scan: Scan) -> int:
        """Record a scan; returns its journal sequence number.

        A backfilled scan is history: it goes to the record, not into the latest values.
        """
        if not scan.backfill:
            self.store.update(scan)
        self.scans += 1
        return self._append(scan)

    def latest(self, scan: Scan) -> None:
        """Update the latest values only: a record driver's state, which is not a record."""
        self.store.update(scan)

    def record(self, scan: Scan) -> int:
        """Journal a device's own record (it may carry a subset of the device's tags)."""
        self.scans += 1
        return self._append(scan)

    def _append(self, scan: Scan) -> int:
        """Into the stream; a full spool records the lost scan as a gap instead (never silent)."""
        stamped = self._stamp(scan)
        if stamped.batch is not None and self.archive is not None:
            self.archive.record(stamped)
        try:
            seq = self.journal.append(stamped)
        except SpoolFull as exc:
            if not self.full:
                log.error("%s: GMP-critical scans refused, recorded as gaps", exc)  # noqa: TRY400
            self.full = True
            record_gap = getattr(self.journal, "record_gap", None)
            if record_gap is not None:
                record_gap(Gap(scan.t_scan_ns, scan.t_scan_ns, "spool full", (scan.device,), 1))
            return -1
        if self.full:
            log.info("spool accepts scans again")
            self.full = False
        return seq

    def _stamp(self, scan: Scan) -> Scan:
        """The batch its device runs now and the config in force, when there are any.

        A loop's stream (`br-1.temp`) belongs to the device before the dot.
        """
        batch = self.batches.get(scan.device.split(".", 1)[0]) if self.batches else None
        if batch is None and self.config_id is None:
            return scan
        # The constructor, not `_replace`: a Python-level rebuild cost ~2 µs on every scan.
        return Scan(scan.device, scan.t_scan_ns, scan.samples, scan.backfill, batch, self.config_id)
