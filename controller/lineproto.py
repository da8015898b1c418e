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
from controller.spool_events import JSON, Event
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
    Never raises for its text: a line break in a cause (an HTTP error page quoted in an
    outage reason) becomes a space, since a gap that cannot be written would stop the sink.
    """
    duration = format_float((gap.end_ns - gap.start_ns) / 1e9) or "0"
    head = f"gap{_tags(site=site, cause=gap.cause)}"
    fields = f"end_ns={int(gap.end_ns)}i,duration_s={duration},scans={int(gap.scans)}i"
    return [
        f"{head}{_tags(device=device)} {fields} {int(gap.start_ns)}"
        for device in gap.devices or ("*",)
    ]


EVENT_MEASUREMENTS = {"alarm": "alarm_events", "audit": "audit_events"}
EVENT_TAGS = {"alarm": ("priority", "cause", "to"), "audit": ("action", "user")}
EVENT_TEXT_FIELDS = {"audit": ("old", "new")}
"""Fields whose value is a number in one record and text in another (a setpoint's old and
new value, a config's hash): always written as text, plus `<key>_num` (a float) when the
value is a number. InfluxDB refuses a field whose type changes (docs/influx.md)."""


def event_line(site: str, event: Event) -> str:
    """An event as one line: measurement `alarm_events` / `audit_events` / `<kind>`.

    Tags: site, `key` (the alarm id, the audit object …) and a few per kind (an alarm's
    priority, cause and new state); every other member of the body is a field: numbers
    as floats, booleans as 0/1, text quoted, nested values as JSON text, and the members of
    EVENT_TEXT_FIELDS as text always. Line breaks in any text become spaces: an event must
    never be unwritable for its characters.
    """
    measurement = EVENT_MEASUREMENTS.get(event.kind, event.kind)
    tag_keys = EVENT_TAGS.get(event.kind, ())
    text_keys = EVENT_TEXT_FIELDS.get(event.kind, ())
    head = escape_measurement(_one_line(measurement) or "event")
    head += _tags(site=site, key=event.key)
    for key in tag_keys:
        value = event.body.get(key)
        if isinstance(value, str):
            head += _tags(**{key: value})
    fields = []
    for key, value in event.body.items():
        name = escape_key(_one_line(key))
        if key not in tag_keys and value is not None and name:
            fields += _fields(name, value, text=key in text_keys)
    if not fields:
        fields.append("count=1i")
    return f"{head} {','.join(fields)} {int(event.t_ns)}"


def _fields(name: str, value: JSON, *, text: bool) -> list[str]:
    """The field(s) of one body member; `text`: written as text whatever its type, with its
    number also as `<name>_num` (one type per field, whatever the record)."""
    number = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = format_float(value)
    if text:
        out = [f"{name}={quote_string(_one_line(_text(value)))}"]
        return [*out, f"{name}_num={number}"] if number is not None else out
    if isinstance(value, bool):
        return [f"{name}={int(value)}i"]
    if isinstance(value, int | float):
        return [f"{name}={number}"] if number is not None else []
    if isinstance(value, str):
        return [f"{name}={quote_string(_one_line(value))}"]
    return [f"{name}={quote_string(_text(value))}"]


def _tags(**tags: str) -> str:
    """`,key=value` for each tag with a value left after line breaks became spaces (an
    empty tag value cannot be written, so such a tag is left out)."""
    out = ""
    for key, value in tags.items():
        text = _one_line(value)
        if text:
            out += f",{escape_key(key)}={escape_key(text)}"
    return out


def _text(value: object) -> str:
    """A body value as text: a string as is, anything else as its JSON."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _one_line(text: str) -> str:
    return text.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
