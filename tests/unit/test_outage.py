"""A sink outage becomes one gap record, reported when delivery works again."""

from __future__ import annotations

from controller.sinks.outage import Outage
from controller.spool_budget import CAUSE_MAX, Gap
from controller.spool_outages import OpenOutage


def test_one_span_per_outage_with_the_last_reason() -> None:
    now = [100]
    gaps: list[Gap] = []
    outage = Outage("InfluxDB", ("inc-1", "br-1"), gaps.append, lambda: now[0])
    outage.delivered()  # nothing open: nothing to report
    outage.failed("connection refused")
    now[0] = 150
    outage.failed("HTTP 503: busy")  # the same outage, a new reason
    now[0] = 400
    outage.delivered()
    outage.delivered()
    assert gaps == [
        Gap(100, 400, "InfluxDB unreachable, delivered late: HTTP 503: busy", ("inc-1", "br-1"), 0)
    ]
    outage.failed("timeout")
    now[0] = 500
    outage.delivered()
    assert [(g.start_ns, g.end_ns) for g in gaps] == [(100, 400), (400, 500)]


def test_a_reload_during_an_outage_names_old_and_new_streams_then_only_the_new() -> None:
    gaps: list[Gap] = []
    outage = Outage("MQTT broker", ("inc-1", "inc-2"), gaps.append, lambda: 1)
    outage.follow(("inc-1", "inc-3"))  # no span open: just the new streams
    outage.failed("refused")
    outage.follow(("inc-1", "inc-4"))  # inc-3's data so far were delivered late too
    outage.delivered()
    outage.failed("refused")
    outage.delivered()
    assert [g.devices for g in gaps] == [("inc-1", "inc-3", "inc-4"), ("inc-1", "inc-4")]


class Memory:
    """The spool's two outage methods, in a dict (what a restart reads back)."""

    def __init__(self) -> None:
        self.spans: dict[str, OpenOutage] = {}

    def open_outage(self, sink: str) -> OpenOutage | None:
        return self.spans.get(sink)

    def set_outage(self, sink: str, span: OpenOutage | None) -> None:
        if span is None:
            self.spans.pop(sink, None)
        else:
            self.spans[sink] = span


def test_a_span_open_at_a_restart_is_reported_from_its_first_failure() -> None:
    """The daemon died during the outage: the next run's first delivery closes the span
    that began before the restart, with the reason saved then."""
    memory, now, gaps = Memory(), [100], []
    first = Outage(
        "MQTT broker", ("inc-1",), gaps.append, lambda: now[0], memory=memory, key="mqtt"
    )
    first.failed("connection refused")
    assert memory.spans == {"mqtt": OpenOutage(100, "connection refused")}
    now[0] = 700  # killed; started again
    second = Outage(
        "MQTT broker", ("inc-1",), gaps.append, lambda: now[0], memory=memory, key="mqtt"
    )
    second.delivered()
    assert gaps == [
        Gap(
            100,
            700,
            "MQTT broker unreachable, delivered late: connection refused",
            ("inc-1",),
            0,
        )
    ]
    assert memory.spans == {}  # closed with its gap


def test_a_multi_line_reason_becomes_one_bounded_line() -> None:
    """A proxy's HTML 502 page as the reason: the gap's cause (a line-protocol tag) and the
    span kept in the spool are one line of at most CAUSE_MAX characters."""
    memory, gaps = Memory(), []
    outage = Outage("InfluxDB", ("inc-1",), gaps.append, lambda: 5, memory=memory, key="influx")
    page = "HTTP 502: <html>\r\n<head><title>502 Bad Gateway</title></head>\r\n" + "y" * 400
    outage.failed(page)
    kept = memory.spans["influx"].reason
    assert "\n" not in kept and "\r" not in kept and len(kept) <= CAUSE_MAX
    outage.delivered()
    (gap,) = gaps
    assert gap.cause.startswith("InfluxDB unreachable, delivered late: HTTP 502: <html> <head>")
    assert "\n" not in gap.cause and "\r" not in gap.cause and len(gap.cause) == CAUSE_MAX
