"""Line protocol: escaping, float fields, quality fields, tags and timestamps."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from influxdb_client.client.write.point import Point
from influxdb_client.domain.write_precision import WritePrecision

from controller.config import SiteConfig
from controller.lineproto import (
    LineFormatter,
    escape_key,
    event_line,
    format_float,
    gap_lines,
    quote_string,
)
from controller.spool_budget import Gap
from controller.spool_events import JSON, Event
from drivers.sample import Quality, Sample, Scan

T_NS = 1_795_329_214_500_123_456
SPECIAL = {",", "=", " ", "\\"}

Fields = dict[str, float | int | str | bool]


def parse_line(line: str) -> tuple[str, dict[str, str], Fields, int]:
    """An independent reader of one line, written from the InfluxDB line protocol spec."""
    pos = 0

    def token(stops: str) -> str:
        nonlocal pos
        out = []
        while pos < len(line) and line[pos] not in stops:
            if line[pos] == "\\" and pos + 1 < len(line) and line[pos + 1] in SPECIAL:
                pos += 1  # an escaped special character stands for itself
            out.append(line[pos])
            pos += 1
        return "".join(out)

    measurement = token(", ")
    tags: dict[str, str] = {}
    while line[pos] == ",":
        pos += 1
        key = token("=")
        pos += 1
        tags[key] = token(", ")
    pos += 1  # the space before the fields
    fields: Fields = {}
    while True:
        key = token("=")
        pos += 1
        if line[pos] == '"':
            pos += 1
            out = []
            while line[pos] != '"':
                if line[pos] == "\\" and line[pos + 1] in '"\\':
                    pos += 1
                out.append(line[pos])
                pos += 1
            pos += 1
            fields[key] = "".join(out)
        else:
            raw = token(", ")
            if raw.endswith("i"):
                fields[key] = int(raw[:-1])
            elif raw in ("t", "T", "true", "True", "f", "F", "false", "False"):
                fields[key] = raw[0] in "tT"
            else:
                fields[key] = float(raw)
        if line[pos] == " ":
            break
        pos += 1
    return measurement, tags, fields, int(line[pos + 1 :])


def site(area: str = "Room A", site_id: str = "s1", device_class: str = "incubator") -> SiteConfig:
    """A site with devices `inc1` (given area and class) and `bsc1`."""
    regmap: dict[str, Any] = {
        "name": "m",
        "registers": [{"tag": "t", "address": 0, "type": "u16"}],
    }
    common = {"driver": "modbus_tcp", "host": "127.0.0.1", "register_map": regmap}
    return SiteConfig.model_validate(
        {
            "site": {"id": site_id},
            "devices": [
                {"id": "inc1", "device_class": device_class, "area": area, **common},
                {"id": "bsc1", "device_class": "bsc", "area": "Grade B", **common},
            ],
        }
    )


def scan(*samples: Sample, device: str = "inc1", t_ns: int = T_NS) -> Scan:
    return Scan(device, t_ns, samples)


def good(tag: str, value: Any) -> Sample:
    return Sample(tag, value, "degC", Quality.GOOD, T_NS)


def only(lines: list[str]) -> tuple[str, dict[str, str], Fields, int]:
    assert len(lines) == 1
    return parse_line(lines[0])


def test_good_sample_writes_value_and_quality_with_scan_timestamp() -> None:
    """A good reading gives a float field, a 0i quality field and the scan's ns timestamp."""
    line = LineFormatter(site()).line(scan(good("chamber_temp", 37.25)))
    assert line == (
        "incubator,site=s1,area=Room\\ A,device=inc1 "
        f"chamber_temp=37.25,chamber_temp_quality=0i {T_NS}"
    )


def test_bad_sample_writes_only_the_quality_field() -> None:
    """A failed read is a recorded gap (quality 2), never a 0 in the value field."""
    bad = Sample.bad("co2", "%", "timeout", T_NS)
    _, _, fields, _ = only(LineFormatter(site()).lines([scan(bad, good("t", 1.0))]))
    assert fields == {"co2_quality": 2, "t": 1.0, "t_quality": 0}


def test_quality_codes_are_integers_0_1_2() -> None:
    """Good, uncertain and bad are 0i, 1i and 2i; an uncertain value is still written."""
    uncertain = Sample("rh", 45.5, "%RH", Quality.UNCERTAIN, T_NS, "probe warming up")
    line = LineFormatter(site()).line(scan(good("t", 1.0), uncertain))
    assert line is not None
    assert "t_quality=0i" in line
    assert "rh=45.5,rh_quality=1i" in line


def test_python_and_numpy_ints_stay_floats() -> None:
    """Ints must not become `3i`: real InfluxDB refuses a field that changes type."""
    samples = (good("a", 3), good("b", np.int64(4)), good("c", np.float32(1.5)), good("d", True))
    _, _, fields, _ = only(LineFormatter(site()).lines([scan(*samples)]))
    for tag, want in {"a": 3.0, "b": 4.0, "c": 1.5, "d": 1.0}.items():
        assert type(fields[tag]) is float
        assert fields[tag] == want


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, np.float64("nan")])
def test_non_finite_values_are_never_written(value: float) -> None:
    """NaN and inf cannot be written: the sample keeps only its quality field."""
    line = LineFormatter(site()).line(scan(good("t", value)))
    assert line == f"incubator,site=s1,area=Room\\ A,device=inc1 t_quality=0i {T_NS}"


def test_format_float_uses_shortest_exact_repr() -> None:
    """Floats come out exact and always with a float syntax."""
    assert format_float(3) == "3.0"
    assert format_float(1e20) == "1e+20"
    assert format_float(np.float32(0.1)) == repr(float(np.float32(0.1)))
    assert format_float(math.nan) is None


def test_tags_come_from_the_site_config_and_batch_is_optional() -> None:
    """Measurement = device class; tags site, area, device, and batch when one is given."""
    fmt = LineFormatter(site())
    plain, with_batch = (
        fmt.lines([scan(good("t", 1.0))]),
        fmt.lines([scan(good("t", 1.0)), scan(good("x", 2.0), device="bsc1")], {"inc1": "B-001"}),
    )
    assert only(plain)[:2] == ("incubator", {"site": "s1", "area": "Room A", "device": "inc1"})
    first, second = (parse_line(line) for line in with_batch)
    assert first[1] == {"site": "s1", "area": "Room A", "device": "inc1", "batch": "B-001"}
    assert second[:2] == ("bsc", {"site": "s1", "area": "Grade B", "device": "bsc1"})


def test_unknown_device_and_empty_scans(caplog: pytest.LogCaptureFixture) -> None:
    """A scan without samples has no line; one from a stream the file no longer names (spooled
    before a restart on another file) is still written, under `unconfigured`, and said."""
    fmt = LineFormatter(site())
    assert fmt.lines([scan()]) == []
    with caplog.at_level(logging.WARNING, logger="controller.lineproto"):
        (line,) = fmt.lines([scan(good("t", 1.0), device="nope")])
        fmt.lines([scan(good("t", 2.0), device="nope")])
    assert line.startswith("unconfigured,site=s1,area=unknown,device=nope t=1")
    assert len(caplog.records) == 1
    assert "'nope'" in caplog.records[0].getMessage()


def test_escaping_of_measurement_tags_and_keys() -> None:
    """Commas, spaces, equals and backslashes are escaped where each is special."""
    fmt = LineFormatter(site(area='a,b=c d\\"e\\'))
    line = fmt.line(scan(good("odd tag,=x", 1.0)))
    assert line is not None
    assert 'area=a\\,b\\=c\\ d\\\\"e\\\\,device=inc1 ' in line
    assert " odd\\ tag\\,\\=x=1.0,odd\\ tag\\,\\=x_quality=0i " in line
    _, tags, fields, _ = parse_line(line)
    assert tags["area"] == 'a,b=c d\\"e\\'
    assert fields["odd tag,=x"] == 1.0


def test_line_breaks_cannot_be_written() -> None:
    """A tag value with a line break cannot be expressed and is refused, not rewritten."""
    with pytest.raises(ValueError, match="line breaks"):
        LineFormatter(site(area="two\nlines"))
    with pytest.raises(ValueError, match="line breaks"):
        escape_key("a\rb")


def test_reasons_are_opt_in_string_fields() -> None:
    """`reasons=True` adds escaped reason strings to non-good samples only."""
    bad = Sample.bad("co2", "%", 'said "no" \\ twice\nthen', T_NS)
    samples = (good("t", 1.0), bad)
    assert "reason" not in (LineFormatter(site()).line(scan(*samples)) or "")
    line = LineFormatter(site(), reasons=True).line(scan(*samples))
    assert line is not None
    assert 'co2_reason="said \\"no\\" \\\\ twice\\nthen"' in line
    _, _, fields, _ = parse_line(line)
    assert fields["co2_reason"] == 'said "no" \\ twice\\nthen'
    assert "t_reason" not in fields


def test_quote_string() -> None:
    """String fields escape quotes and backslashes."""
    assert quote_string('a"b\\c') == '"a\\"b\\\\c"'


no_breaks = st.text(st.characters(blacklist_characters="\n\r", codec="utf-8"), min_size=1)


@given(area=no_breaks, tag=no_breaks, batch=no_breaks)
def test_any_area_tag_and_batch_round_trip(area: str, tag: str, batch: str) -> None:
    """Whatever the strings, an independent parser reads back exactly what was written."""
    fmt = LineFormatter(site(area=area))
    line = fmt.line(scan(good(tag, 2.5)), batch)
    assert line is not None
    measurement, tags, fields, t_ns = parse_line(line)
    assert measurement == "incubator"
    assert tags == {"site": "s1", "area": area, "device": "inc1", "batch": batch}
    assert fields[tag] == 2.5
    assert fields[f"{tag}_quality"] == 0
    assert t_ns == T_NS


@given(value=st.floats(allow_nan=False, allow_infinity=False))
def test_any_finite_float_round_trips_exactly(value: float) -> None:
    """Every finite float is read back bit for bit, as a float."""
    _, _, fields, _ = only(LineFormatter(site()).lines([scan(good("t", value))]))
    assert type(fields["t"]) is float
    assert fields["t"] == value


plain_text = st.text(
    st.characters(blacklist_characters="\\\n\r\t", codec="utf-8", blacklist_categories=["Cs"]),
    min_size=1,
)


@given(area=plain_text, tag=plain_text)
def test_agrees_with_influxdb_client_point(area: str, tag: str) -> None:
    """For strings Point escapes correctly (no backslash), both lines mean the same."""
    ours = LineFormatter(site(area=area)).line(scan(good(tag, 21.5)))
    point = (  # the library is untyped
        Point("incubator")  # type: ignore[no-untyped-call]
        .tag("site", "s1")
        .tag("area", area)
        .tag("device", "inc1")
        .field(tag, 21.5)
        .field(f"{tag}_quality", 0)
        .time(T_NS, WritePrecision.NS)
        .to_line_protocol()
    )
    assert ours is not None
    assert parse_line(ours) == parse_line(point)


def test_scan_stamps_batch_and_config_as_tags() -> None:
    """A scan stamped by the hub carries its batch and the config hash it was taken under."""
    fmt = LineFormatter(site())
    stamped = scan(good("t", 1.0))._replace(batch="LOT-7", config="0123456789ab")
    _, tags, _, _ = only(fmt.lines([stamped]))
    assert tags["batch"] == "LOT-7"
    assert tags["config"] == "0123456789ab"
    _, tags, _, _ = only(fmt.lines([scan(good("t", 1.0))]))
    assert "batch" not in tags
    assert "config" not in tags


def test_gap_and_event_text_with_line_breaks_is_written_not_refused() -> None:
    """A gap cause or event text quoting an HTTP error page: each line break becomes a
    space. Raising here stopped the sink, and after every restart again (the gap stayed)."""
    cause = "InfluxDB unreachable, delivered late: HTTP 502: <html>\r\n<head>\n</head>"
    lines = gap_lines("s1", Gap(10, 2_000_000_010, cause, ("inc1", "two\nlines")))
    assert len(lines) == 2
    measurement, tags, fields, t_ns = parse_line(lines[0])
    assert measurement == "gap" and t_ns == 10
    assert tags["cause"] == "InfluxDB unreachable, delivered late: HTTP 502: <html> <head> </head>"
    assert fields == {"end_ns": 2_000_000_010, "duration_s": 2.0, "scans": 0}
    assert parse_line(lines[1])[1]["device"] == "two lines"
    body: dict[str, JSON] = {"to": "unack\nnow", "message": "a\r\nb", "n\nk": 1.0}
    line = event_line("s1", Event(5, "alarm", "inc1.hi\n", body))
    assert "\n" not in line and "\r" not in line
    measurement, tags, fields, _ = parse_line(line)
    assert measurement == "alarm_events"
    assert tags == {"site": "s1", "key": "inc1.hi ", "to": "unack now"}
    assert fields == {"message": "a b", "n k": 1.0}


def audit(new: JSON, old: JSON = None) -> Event:
    body: dict[str, JSON] = {"v": 1, "action": "setpoint", "user": "alice", "old": old}
    return Event(T_NS, "audit", "br-1.temp", {**body, "new": new, "result": "accepted"})


def test_audit_old_and_new_have_one_type_per_field() -> None:
    """`new` is a hash (text) in one audit record and a setpoint (number) in the next:
    InfluxDB refuses the second type of a field. Both are text, the number also `_num`."""
    seen: dict[str, type] = {}
    for record in (audit("9f2c1e0a7b3d"), audit(37.5, 37), audit(True), audit({"a": 1})):
        measurement, tags, fields, _ = parse_line(event_line("s1", record))
        assert measurement == "audit_events"
        assert tags == {"site": "s1", "key": "br-1.temp", "action": "setpoint", "user": "alice"}
        for key, value in fields.items():
            assert seen.setdefault(key, type(value)) is type(value), key
    _, _, fields, _ = parse_line(event_line("s1", audit(37.5, 37)))
    assert fields["new"] == "37.5" and fields["new_num"] == 37.5
    assert fields["old"] == "37" and fields["old_num"] == 37.0
    _, _, fields, _ = parse_line(event_line("s1", audit("9f2c1e0a7b3d")))
    assert fields["new"] == "9f2c1e0a7b3d" and "new_num" not in fields and "old" not in fields
    _, _, fields, _ = parse_line(event_line("s1", audit({"a": 1})))
    assert fields["new"] == '{"a":1}'
