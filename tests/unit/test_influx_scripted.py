"""The InfluxDB sink against scripted answers VictoriaMetrics never gives: overload,
server and config errors (retried), a refused line (bisected), and the live end written
ahead of a backlog."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from controller.journal import Journal
from controller.sinks.influx import InfluxSink
from drivers.sample import utc_now_ns
from tests.sink_fixtures import FAST_INFLUX, ScriptedInflux, make_scan, site


@pytest.mark.parametrize(
    ("status", "headers"),
    [(503, {}), (429, {"Retry-After": "0"}), (500, {}), (401, {}), (404, {})],
)
async def test_influx_retries_transient_and_config_errors(
    status: int, headers: dict[str, str]
) -> None:
    """Overload, server errors and a wrong token/bucket keep the batch and retry it."""
    async with ScriptedInflux(lambda n, _: (status, headers) if n <= 2 else (204, {})) as fake:
        cfg = site("retry1", influx={"url": fake.url, **FAST_INFLUX})
        journal = Journal(100)
        sink = InfluxSink(cfg, journal.cursor("influx"))
        scans = [make_scan(i, utc_now_ns()) for i in range(5)]
        for s in scans:
            journal.append(s)
        journal.close()
        await asyncio.wait_for(sink.run(), 10)
    assert Counter(int(line.rsplit(" ", 1)[1]) for line in fake.accepted) == Counter(
        s.t_scan_ns for s in scans
    )
    assert (sink.stats.failures, sink.stats.rejected_lines, sink.lag) == (2, 0, 0)
    assert sink.stats.last_error is not None and f"HTTP {status}" in sink.stats.last_error


async def test_influx_bisects_a_refused_batch(caplog: pytest.LogCaptureFixture) -> None:
    """A 400 gives up only the bad line; the good lines around it land once each."""
    async with ScriptedInflux(
        lambda _, body: (400, {}) if "device=poison" in body else (204, {})
    ) as fake:
        cfg = site("bisect1", influx={"url": fake.url, **FAST_INFLUX})
        journal = Journal(100)
        sink = InfluxSink(cfg, journal.cursor("influx"))
        t0 = utc_now_ns()
        scans = [make_scan(i, t0, "poison" if i == 6 else "inc1") for i in range(10)]
        for s in scans:
            journal.append(s)
        journal.close()
        await asyncio.wait_for(sink.run(), 10)
    good = Counter(s.t_scan_ns for s in scans if s.device == "inc1")
    assert Counter(int(line.rsplit(" ", 1)[1]) for line in fake.accepted) == good
    assert (sink.stats.rejected_batches, sink.stats.rejected_lines, sink.lag) == (1, 1, 0)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("scripted 400 for 1" in e and "device=poison" in e for e in errors), errors


async def test_influx_writes_the_live_end_ahead_of_a_backlog() -> None:
    """After an outage the newest scans are written first; then the backlog drains in order
    (each of those written again, which InfluxDB, keying by series + timestamp, overwrites)."""
    async with ScriptedInflux(lambda _n, _body: (204, {})) as fake:
        influx = {"url": fake.url, **FAST_INFLUX, "batch_max_lines": 100}
        influx["backlog_max_lines_per_s"] = 1_000_000
        cfg = site("live1", influx=influx)
        journal = Journal(1000)
        sink = InfluxSink(cfg, journal.cursor("influx"))
        t0 = utc_now_ns()
        scans = [make_scan(i, t0) for i in range(350)]  # an outage's worth: 3.5 batches
        for s in scans:
            journal.append(s)
        journal.close()
        await asyncio.wait_for(sink.run(), 20)
    times = [int(line.rsplit(" ", 1)[1]) for line in fake.accepted]
    newest = [s.t_scan_ns for s in scans[-100:]]
    assert times[:100] == newest  # the first write is the live end
    assert set(times) == {s.t_scan_ns for s in scans}  # every scan written
    in_order = times[100:]
    assert sorted(set(in_order)) == [s.t_scan_ns for s in scans]  # the backlog, all of it
    assert sink.lag == 0
    assert sink.stats.live_lines_written >= 100
