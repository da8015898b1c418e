"""A sink outage becomes one gap record, reported when delivery works again."""

from __future__ import annotations

from controller.sinks.outage import Outage
from controller.spool_budget import Gap


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
