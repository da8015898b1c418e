"""InfluxDB line protocol for scans, formatted by hand and in bulk.

influxdb-client's `Point` costs ~9 µs a point and leaves a trailing backslash unescaped, so
we format lines ourselves (shared/libraries.md §4.4). One scan becomes one line: the
measurement is the device class, the tags say where it was read, and every sample gives a
float field only when it has a value plus an integer `<tag>_quality` field always, so a
failed read is a recorded gap, never a 0 (docs/influx.md).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping
from typing import Final, SupportsFloat

from controller.config import SiteConfig
from controller.spool_budget import Gap
from controller.spool_events import Event
from drivers.sample import Quality, Sample, Scan

_MEASUREMENT = str.maketrans({"\\": "\\\\", ",": "\\,", " ": "\\ "})
_KEY = str.maketrans({"\\": "\\\\", ",": "\\,", "=": "\\=", " ": "\\ "})
_STRING = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"})
_LINE_BREAKS = ("\n", "\r")


def escape_measurement(name: str) -> str:
    """A measurement name with commas, spaces and backslashes escaped."""
    _refuse_line_breaks(name)
    return name.translate(_MEASUREMENT)


def escape_key(text: str) -> str:
    """A tag key, tag value or field key with commas, equals, spaces and backslashes escaped.

    Backslashes are doubled although the spec does not require it: a value ending in one
    would otherwise escape the separator after it (InfluxDB and VictoriaMetrics both read
    `\\\\` back as one backslash).
    """
    _refuse_line_breaks(text)
    return text.translate(_KEY)


def quote_string(text: str) -> str:
    """A string field value: quoted, with quotes and backslashes escaped, line breaks as \\n."""
    return '"' + text.translate(_STRING) + '"'


def format_float(value: SupportsFloat) -> str | None:
    """A float field value, or None for NaN/inf (line protocol has no way to write them).

    Every number goes through `float()`: a Python or numpy int must not become an integer
    field (`3i`), which real InfluxDB rejects once the field holds floats.
    """
    number = float(value)
    if not math.isfinite(number):
        return None
    return repr(number)


def _refuse_line_breaks(text: str) -> None:
    if any(ch in text for ch in _LINE_BREAKS):
        raise ValueError(f"line breaks cannot be written in line protocol: {text!r}")


log = logging.getLogger(__name__)

UNCONFIGURED: Final = ("unconfigured", "unknown")
"""Device class and area of a stream the site file no longer names: its scans were spooled
before a restart on another file. They are forwarded under these, never dropped."""


def unconfigured(name: str) -> tuple[str, str]:
    """The metadata of a stream missing from the site file; said once per sink and stream."""
    log.warning(
        "scans of %r, which the site file does not name, are forwarded as device class %r, "
        "area %r (spooled before the file changed)",
        name,
        *UNCONFIGURED,
    )
    return UNCONFIGURED


class LineFormatter:
    """Turns scans into lines for one site; device metadata comes from the site config.

    `reasons=True` adds a `<tag>_reason` string field to non-good samples. It is off by
    default because VictoriaMetrics turns string fields into numeric series of junk (0, or
    whatever number the text spells), so reasons travel on MQTT (docs/influx.md).
    """

    def __init__(self, cfg: SiteConfig, *, reasons: bool = False) -> None:
        self._reasons = reasons
        self._heads: dict[str, str] = {}
        self.add_streams(cfg)
        self._keys: dict[str, tuple[str, str, str]] = {}

    def add_streams(self, cfg: SiteConfig) -> None:
        """Know the devices and loops of `cfg` too (a reload; old ones stay for the backlog)."""
        self._site = escape_key(cfg.site.id)
        for name, (device_class, area) in cfg.streams().items():
            self._head(name, device_class, area)

    def _head(self, name: str, device_class: str, area: str) -> None:
        self._heads[name] = (
            f"{escape_measurement(device_class)},site={self._site},"
            f"area={escape_key(area)},device={escape_key(name)}"
        )

    def lines(self, scans: Iterable[Scan], batches: Mapping[str, str] | None = None) -> list[str]:
        """One line per scan that has samples, in order; `batches` maps device -> batch id."""
        out = []
        for scan in scans:
            line = self.line(scan, batches.get(scan.device) if batches else None)
            if line is not None:
                out.append(line)
        return out

    def line(self, scan: Scan, batch: str | None = None) -> str | None:
        """The line of one scan, or None when it has no samples (a point needs a field)."""
        if not scan.samples:
            return None
        head = self._heads.get(scan.device)
        if head is None:
            self._head(scan.device, *unconfigured(scan.device))
            head = self._heads[scan.device]
        batch = batch or scan.batch
        if batch:
            head = f"{head},batch={escape_key(batch)}"
        if scan.config:
            head = f"{head},config={scan.config}"
        fields = ",".join([self._fields(s) for s in scan.samples])
        return f"{head} {fields} {int(scan.t_scan_ns)}"

    def _fields(self, sample: Sample) -> str:
        keys = self._keys.get(sample.tag)
        if keys is None:
            tag = escape_key(sample.tag)
            keys = self._keys[sample.tag] = (f"{tag}=", f"{tag}_quality=", f"{tag}_reason=")
        text = f"{keys[1]}{int(sample.quality)}i"
        if sample.value is not None:
            number = format_float(sample.value)
            if number is not None:
                text = f"{keys[0]}{number},{text}"
        if self._reasons and sample.reason and sample.quality is not Quality.GOOD:
            text = f"{text},{keys[2]}{quote_string(sample.reason)}"
        return text


def gap_lines(site: str, gap: Gap) -> list[str]:
    """A data gap as measurement `gap`, one line per affected device, at the gap's start.

    Fields: `end_ns`, `duration_s` and `scans` (known missing scans, 0 when unknown); tags
    `cause` and `device`. The same series + timestamp on a retry overwrites, never doubles.
    """
    duration = format_float((gap.end_ns - gap.start_ns) / 1e9) or "0"
    head = f"gap,site={escape_key(site)},cause={escape_key(gap.cause)}"
    fields = f"end_ns={int(gap.end_ns)}i,duration_s={duration},scans={int(gap.scans)}i"
    return [
        f"{head},device={escape_key(device)} {fields} {int(gap.start_ns)}"
        for device in gap.devices or ("*",)
    ]


EVENT_MEASUREMENTS = {"alarm": "alarm_events", "audit": "audit_events"}
EVENT_TAGS = {"alarm": ("priority", "cause", "to"), "audit": ("action", "user")}


def event_line(site: str, event: Event) -> str:
    """An event as one line: measurement `alarm_events` / `audit_events` / `<kind>`.

    Tags: site, `key` (the alarm id, the audit object …) and a few per kind (an alarm's
    priority, cause and new state); every other member of the body is a field: numbers
    as floats, booleans as 0/1, text quoted, nested values as JSON text.
    """
    measurement = EVENT_MEASUREMENTS.get(event.kind, event.kind)
    tag_keys = EVENT_TAGS.get(event.kind, ())
    head = f"{escape_measurement(measurement)},site={escape_key(site)},key={escape_key(event.key)}"
    for key in tag_keys:
        value = event.body.get(key)
        if isinstance(value, str) and value:
            head += f",{escape_key(key)}={escape_key(value)}"
    fields = []
    for key, value in event.body.items():
        if key in tag_keys or value is None:
            continue
        if isinstance(value, bool):
            fields.append(f"{escape_key(key)}={int(value)}i")
        elif isinstance(value, int | float):
            number = format_float(float(value))
            if number is not None:
                fields.append(f"{escape_key(key)}={number}")
        elif isinstance(value, str):
            fields.append(f"{escape_key(key)}={quote_string(_one_line(value))}")
        else:
            text = json.dumps(value, separators=(",", ":"))
            fields.append(f"{escape_key(key)}={quote_string(text)}")
    if not fields:
        fields.append("count=1i")
    return f"{head} {','.join(fields)} {int(event.t_ns)}"


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")
