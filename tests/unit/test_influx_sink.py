"""The InfluxDB sink against a fake /api/v2/write that behaves like InfluxDB where VM does not:
one type per field, 400/422 for lines it refuses, a proxy's HTML page for a 502."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from controller.config import SiteConfig
from controller.sinks.influx import InfluxSink
from controller.spool import Spool
from controller.spool_budget import Gap
from controller.spool_events import JSON, Event
from drivers.sample import Sample, Scan
from tests.servers import HOST, async_wait_until
from tests.sink_fixtures import ScriptedInflux
from tests.unit.test_lineproto import parse_line
from tests.unit.test_spool import failing_db

NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
T0 = 1_795_000_000_000_000_000


class FakeInflux(ScriptedInflux):
    """InfluxDB's write rules: a line it cannot parse is a 400, a field whose type differs
    from the type it was first written with is a 422 (field type conflict), and a request
    with any refused line stores none of it. `answer` may script other replies first."""

    def __init__(
        self, answer: Callable[[int, str], web.Response | None] = lambda _n, _body: None
    ) -> None:
        super().__init__()
        self._script = answer
        self.lines: list[str] = []  # every line stored
        self.types: dict[tuple[str, str], type] = {}

    def stored(self, measurement: str) -> list[tuple[dict[str, str], dict[str, Any], int]]:
        out = []
        for line in self.lines:
            name, tags, fields, t_ns = parse_line(line)
            if name == measurement:
                out.append((tags, fields, t_ns))
        return out

    def reply(self, n: int, body: str) -> web.Response:
        scripted = self._script(n, body)
        if scripted is not None:
            return scripted
        types = dict(self.types)
        for line in body.split("\n"):
            try:
                name, _, fields, _ = parse_line(line)
            except (IndexError, ValueError):
                return _refuse(400, f"unable to parse '{line}'")
            for key, value in fields.items():
                first = types.setdefault((name, key), type(value))
                if first is not type(value):
                    return _refuse(
                        422,
                        f"partial write: field type conflict: input field {key!r} on "
                        f"measurement {name!r} is type {type(value).__name__}, already "
                        f"exists as type {first.__name__} dropped=1",
                    )
        self.types = types
        self.lines += body.split("\n")
        return web.Response(status=204)


def _refuse(status: int, message: str) -> web.Response:
    return web.json_response({"code": "invalid", "message": message}, status=status)


def site(url: str) -> SiteConfig:
    regmap = {"name": "m", "registers": [{"tag": "t", "address": 0, "type": "u16"}]}
    device = {"driver": "modbus_tcp", "host": HOST, "register_map": regmap}
    return SiteConfig.model_validate(
        {
            "site": {"id": "s"},
            "devices": [{"id": "inc1", "device_class": "inc", "area": "a", **device}],
            "influx": {
                "url": url,
                "retry_min_s": 0.01,
                "retry_max_s": 0.05,
                "flush_interval_s": 0.01,
            },
        }
    )


def scan(i: int) -> Scan:
    t = T0 + i * 1_000_000_000
    return Scan("inc1", t, (Sample.good("t", float(i), "degC", t),))


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    with Spool(tmp_path / "spool.sqlite", budget_bytes=1 << 30, cache_scans=1) as s:
        yield s


Step = tuple[Callable[[], bool], Callable[[], None]]


async def run_until(sink: InfluxSink, spool: Spool, done: Callable[[], bool], *steps: Step) -> None:
    """Run the flusher and the sink; for each step wait for its condition and act; then wait
    until `done`, close and let the sink drain. A task that dies fails the test at once."""
    tasks = [asyncio.create_task(spool.run(0.01, 0.5)), asyncio.create_task(sink.run())]

    def alive_and(condition: Callable[[], bool]) -> Callable[[], bool]:
        def check() -> bool:
            for task in tasks:
                if task.done():
                    task.result()  # raises what killed it
            return condition()

        return check

    try:
        for condition, action in steps:
            await async_wait_until(alive_and(condition), 10, "a step")
            action()
        await async_wait_until(alive_and(done), 10, "the sink to deliver")
        spool.close()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_proxy_502_page_leaves_a_writable_gap_and_the_sink_running(
    spool: Spool,
) -> None:
    """A reverse proxy answers 502 with an HTML page (line breaks) while InfluxDB is down.
    The outage's gap quotes it: the cause is one line, the gap is written, the sink lives.
    (A ValueError from line protocol used to kill the sink, and again after each restart.)"""

    def html(n: int, _: str) -> web.Response | None:
        if n > 2:
            return None
        return web.Response(status=502, body=NGINX_502, content_type="text/html")

    async with FakeInflux(html) as fake:
        cfg = site(fake.url)
        sink = InfluxSink(cfg, spool.cursor("influx"), on_outage=spool.record_gap, outages=spool)
        spool.append(scan(0))
        await run_until(sink, spool, lambda: bool(fake.stored("gap")))
    gaps = fake.stored("gap")  # one line per stream of the site: inc1 and the daemon's own
    assert sorted(tags["device"] for tags, _, _ in gaps) == ["cellfab", "inc1"]
    for tags, fields, _ in gaps:
        assert tags["cause"] == "InfluxDB unreachable, delivered late: HTTP 502: 502 Bad Gateway"
        assert fields["scans"] == 0
    assert sink.stats.last_error == "HTTP 502: 502 Bad Gateway"
    assert [t for _, _, t in fake.stored("inc")] == [T0]


def event(i: int, kind: str, body: dict[str, JSON]) -> Event:
    return Event(T0 + i, kind, f"k{i}", body)


async def test_a_refused_event_or_gap_is_set_aside_without_a_false_outage(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    """InfluxDB refuses an event (a field's type changed) and a gap (a line it cannot
    parse): each is bisected out, logged at ERROR and set aside; the records around it land
    and no outage is recorded. It used to be retried for ever, a false outage gap a round."""

    def poison(_: int, body: str) -> web.Response | None:
        return _refuse(400, "unable to parse: poison") if "cause=poison" in body else None

    async with FakeInflux(poison) as fake:
        outages: list[Gap] = []
        cur = spool.cursor("influx")
        sink = InfluxSink(site(fake.url), cur, on_outage=outages.append, outages=spool)
        spool.record_event(event(1, "note", {"x": "text"}))
        spool.record_event(event(2, "note", {"x": 2.5}))  # type conflict: refused
        spool.record_event(event(3, "alarm", {"to": "unack", "value": 39.1}))
        spool.record_gap(Gap(T0, T0 + 1, "daemon down", ("inc1",)))
        spool.record_gap(Gap(T0 + 5, T0 + 6, "poison", ("inc1",)))
        spool.record_gap(Gap(T0 + 7, T0 + 8, "spool full", ("inc1",), 1))
        with caplog.at_level(logging.ERROR):
            await run_until(sink, spool, lambda: cur.event_lag == 0 and cur.gap_lag == 0)
    assert [tags["key"] for tags, _, _ in fake.stored("note")] == ["k1"]
    assert [tags["key"] for tags, _, _ in fake.stored("alarm_events")] == ["k3"]
    assert [tags["cause"] for tags, _, _ in fake.stored("gap")] == ["daemon down", "spool full"]
    assert outages == [] and sink.stats.failures == 0
    assert (sink.stats.rejected_events, sink.stats.rejected_gaps) == (1, 1)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("event 2 given up" in e and "field type conflict" in e for e in errors), errors
    assert any("gap" in e and "poison" in e for e in errors), errors


def audit(i: int, new: JSON) -> Event:
    """The body shape of command_service.audit_event: `new` a hash, a mode, a setpoint …"""
    body: dict[str, JSON] = {"v": 1, "seq": i, "user": "alice", "action": "setpoint"}
    return Event(T0 + i, "audit", "br-1.temp", {**body, "old": None, "new": new, "hash": "ab"})


async def test_audit_records_of_any_value_type_are_all_accepted(spool: Spool) -> None:
    """`new` as text in one audit record and as a number in the next: InfluxDB would refuse
    the second (field type conflict) if `new` took the value's type; it is text always."""
    async with FakeInflux() as fake:
        cur = spool.cursor("influx")
        sink = InfluxSink(site(fake.url), cur)
        for i, new in enumerate(["9f2c1e0a7b3d", 37.5, "auto", 38, True, None]):
            spool.record_event(audit(i, new))
        await run_until(sink, spool, lambda: cur.event_lag == 0)
    stored = fake.stored("audit_events")
    texts = ["9f2c1e0a7b3d", "37.5", "auto", "38", "true", None]
    assert [f.get("new") for _, f, _ in stored] == texts
    assert [f.get("new_num") for _, f, _ in stored] == [None, 37.5, None, 38.0, None, None]
    assert sink.stats.rejected_events == 0 and sink.stats.failures == 0


async def test_a_failed_spool_read_is_retried_not_fatal(spool: Spool) -> None:
    """The spool cannot read its file (a corrupt page): the sink gets nothing for now and
    tries again later; once reads work, scans, gaps and events all arrive."""
    async with FakeInflux() as fake:
        cur = spool.cursor("influx")
        sink = InfluxSink(site(fake.url), cur)
        for i in range(3):
            spool.append(scan(i))
        spool.record_gap(Gap(T0, T0 + 1, "daemon down", ("inc1",)))
        spool.record_event(audit(1, 37.5))
        spool.commit()
        broken = failing_db(spool)
        broken.failing = ("SELECT",)

        def heal() -> None:
            broken.failing = ()

        caught_up = lambda: (cur.lag, cur.gap_lag, cur.event_lag) == (0, 0, 0)  # noqa: E731
        await run_until(sink, spool, caught_up, (broken.tried_all_reads, heal))
    assert [t for _, _, t in fake.stored("inc")] == [scan(i).t_scan_ns for i in range(3)]
    assert len(fake.stored("gap")) == 1 and len(fake.stored("audit_events")) == 1
