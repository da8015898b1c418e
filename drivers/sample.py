"""The unit of data that flows from a driver to every later stage.

A `Sample` is immutable: it is born in a driver with its quality and never changes after that.
Later stages add derived records instead of editing readings (shared/architecture.md).
"""

from __future__ import annotations

import enum
import time
from typing import NamedTuple


class Quality(enum.IntEnum):
    """OPC-UA-like quality; the integer codes are what InfluxDB stores (docs/influx.md)."""

    GOOD = 0
    UNCERTAIN = 1
    BAD = 2


class Sample(NamedTuple):
    """One reading of one tag: value in engineering units, its quality and its two times.

    `value` is None whenever nothing trustworthy was read (quality BAD); `reason` says why
    for anything not GOOD. Times are integer nanoseconds since the Unix epoch, UTC: the
    device's own (when it has one), the server's (when one stands between), and ours.
    A NamedTuple, not a dataclass: immutable and about 5x cheaper to create, and a busy
    floor creates thousands per second.
    """

    tag: str
    value: float | None
    unit: str
    quality: Quality
    t_receive_ns: int
    reason: str | None = None
    t_device_ns: int | None = None
    t_server_ns: int | None = None  # an intermediate server's time (OPC UA ServerTimestamp)

    @classmethod
    def good(cls, tag: str, value: float, unit: str, t_receive_ns: int) -> Sample:
        """A reading the device gave and nothing speaks against."""
        return cls(tag, value, unit, Quality.GOOD, t_receive_ns)

    @classmethod
    def bad(cls, tag: str, unit: str, reason: str, t_receive_ns: int) -> Sample:
        """No usable value: carries the reason instead of a made-up number."""
        return cls(tag, None, unit, Quality.BAD, t_receive_ns, reason)


class Scan(NamedTuple):
    """All samples of one poll of one device, stamped with the scan's UTC start time.

    The scan time is what InfluxDB and MQTT both carry, so the two records of one scan have
    the same timestamp (docs/influx.md, docs/mqtt.md). `backfill` marks a record read back
    from a device's own buffer after an outage: its time is the device's, in the past.
    `batch` is the batch the device was running when the scan was taken, `config` the
    short hash of the site file it was taken under; both are stamped by the hub.
    """

    device: str
    t_scan_ns: int
    samples: tuple[Sample, ...]
    backfill: bool = False
    batch: str | None = None
    config: str | None = None


def utc_now_ns() -> int:
    """Wall-clock UTC time in ns: for timestamps only, never for scheduling."""
    return time.time_ns()
