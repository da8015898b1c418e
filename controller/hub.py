"""Where a scan goes when a poller has it: into the tag store, then into the journal.

The one place that fans out, so the order (state first, then the record every sink
forwards) is the same for every device and a later stage (loops, alarms, spool) slots in
here without touching pollers or sinks.
"""

from __future__ import annotations

from controller.journal import Journal
from controller.tagstore import TagStore
from drivers.sample import Scan


class Hub:
    """Accepts scans from pollers; owns nothing but the order of the fan-out."""

    def __init__(self, store: TagStore, journal: Journal) -> None:
        self.store = store
        self.journal = journal
        self.scans = 0

    def publish(self, scan: Scan) -> int:
        """Record a scan; returns its journal sequence number.

        A backfilled scan is history: it goes to the record, not into the latest values.
        """
        if not scan.backfill:
            self.store.update(scan)
        self.scans += 1
        return self.journal.append(scan)

    def latest(self, scan: Scan) -> None:
        """Update the latest values only: a record driver's state, which is not a record."""
        self.store.update(scan)

    def record(self, scan: Scan) -> int:
        """Journal a device's own record (it may carry a subset of the device's tags)."""
        self.scans += 1
        return self.journal.append(scan)
