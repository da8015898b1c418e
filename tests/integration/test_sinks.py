"""The InfluxDB and MQTT sinks against real mosquitto and VictoriaMetrics, outages included."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.journal import Journal
from controller.sinks.influx import InfluxSink
from controller.sinks.mqtt import Endpoint, MqttSink
from controller.spool import Spool
from controller.spool_budget import Gap
from controller.spool_events import Event
from drivers.sample import Scan, utc_now_ns
from tests.servers import (
    HOST,
    Mosquitto,
    MosquittoSub,
    MqttCollector,
    Received,
    TcpProxy,
    VictoriaMetrics,
    async_wait_until,
    free_port,
    make_tls_files,
    require_binary,
)
from tests.sink_fixtures import AREA, FAST, FAST_INFLUX, make_scan, site, site_dict
from tests.unit.test_spool import failing_db

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ISO_NS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """One broker for the tests that do not stop it."""
    binary = require_binary("mosquitto")
    with Mosquitto(binary, tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker


@pytest.fixture(scope="session")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    """One VictoriaMetrics for the tests that do not stop it."""
    binary = require_binary("victoria-metrics")
    with VictoriaMetrics(binary, tmp_path_factory.mktemp("vm")) as server:
        yield server


def series(rows: list[dict[str, Any]], name: str) -> dict[int, float]:
    """timestamp ms -> value of the one series called `name`; duplicates fail the test."""
    found = [r for r in rows if r["metric"]["__name__"] == name]
    assert len(found) == 1, f"{name}: {len(found)} series"
    stamps = found[0]["timestamps"]
    assert len(stamps) == len(set(stamps)), f"{name}: duplicate timestamps {Counter(stamps)}"
    return dict(zip(stamps, found[0]["values"], strict=True))


def is_state(state: str) -> Callable[[Received], bool]:
    return lambda m: bool(m.json()["state"] == state)


async def test_scans_reach_victoriametrics_and_mqtt_alike(
    mosquitto: Mosquitto, vm: VictoriaMetrics
) -> None:
    """Every scan lands once in VM (exact values, ms timestamps, quality) and once on MQTT."""
    cfg = site(
        "both",
        "incubator_both",
        mqtt={"url": mosquitto.url, **FAST},
        influx={"url": vm.url, **FAST_INFLUX},
    )
    ignored, invalid = vm.rows_ignored(), vm.rows_invalid()
    journal = Journal(1000)
    influx, mqtt = (
        InfluxSink(cfg, journal.cursor("influx")),
        MqttSink(cfg, journal.cursor("mqtt"), "9.9"),
    )
    sub_bin = require_binary("mosquitto_sub")
    async with MosquittoSub(sub_bin, HOST, mosquitto.port, "cellfab/both/telemetry/#") as sub:
        tasks = [asyncio.create_task(s.run()) for s in (influx, mqtt)]
        t0 = utc_now_ns() - 60_000_000_000
        scans = [make_scan(i, t0) for i in range(30)]
        for s in scans:
            journal.append(s)
        received = await sub.messages(len(scans), timeout_s=20)
        journal.close()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)

    ms = [s.t_scan_ns // 1_000_000 for s in scans]
    rows = vm.wait_export('{__name__=~"incubator_both_.*"}', lambda r: len(r) == 6)
    assert series(rows, "incubator_both_chamber_temp") == {
        t: round(36.6 + i * 0.01, 2) for i, t in enumerate(ms)
    }
    assert series(rows, "incubator_both_co2") == {t: 5.0 for i, t in enumerate(ms) if i % 3}
    assert series(rows, "incubator_both_co2_quality") == {
        t: 0.0 if i % 3 else 2.0 for i, t in enumerate(ms)
    }
    assert series(rows, "incubator_both_rh_quality") == {
        t: 1.0 if i % 4 == 1 else 0.0 for i, t in enumerate(ms)
    }
    assert {r["metric"]["area"] for r in rows} == {AREA}
    assert {(r["metric"]["site"], r["metric"]["device"]) for r in rows} == {("both", "inc1")}
    assert (vm.rows_ignored(), vm.rows_invalid()) == (ignored, invalid)
    assert influx.stats.lines_written == len(scans) and influx.lag == 0

    assert [t for t, _ in received] == ["cellfab/both/telemetry/inc1"] * len(scans)
    msgs = [json.loads(p) for _, p in received]
    assert [m["seq"] for m in msgs] == list(range(1, len(scans) + 1))
    assert [m["ts_ns"] // 1_000_000 for m in msgs] == ms
    for i, (scan, m) in enumerate(zip(scans, msgs, strict=True)):
        assert m["ts_ns"] == scan.t_scan_ns
        assert ISO_NS.match(m["ts"]) and m["ts"].endswith(f".{scan.t_scan_ns % 10**9:09d}Z")
        assert (m["device"], m["device_class"], m["area"]) == ("inc1", "incubator_both", AREA)
        assert m["values"] == {
            "chamber_temp": round(36.6 + i * 0.01, 2),
            "co2": None if i % 3 == 0 else 5.0,
            "rh": 40.0 + i,
        }
        assert m["quality"]["co2"] == ("bad" if i % 3 == 0 else "good")
        assert m["quality"]["rh"] == ("uncertain" if i % 4 == 1 else "good")
        assert m["reasons"] == {
            **({"co2": "timeout"} if i % 3 == 0 else {}),
            **({"rh": "probe warming up"} if i % 4 == 1 else {}),
        }
        assert m["units"] == {"chamber_temp": "degC", "co2": "%", "rh": "%RH"}
    assert mqtt.stats.telemetry_published == len(scans) and mqtt.lag == 0


async def test_status_is_retained_online_then_offline(mosquitto: Mosquitto) -> None:
    """`status` says online (retained) while running and offline (retained) after shutdown."""
    cfg = site("status1", mqtt={"url": mosquitto.url, **FAST})
    topic = "cellfab/status1/status"
    async with MqttCollector(HOST, mosquitto.port, topic) as live:
        journal = Journal(100)
        task = asyncio.create_task(MqttSink(cfg, journal.cursor("mqtt"), "1.2.3").run())
        online = (await live.wait_for(is_state("online"))).json()
        assert online["site"] == "status1" and online["version"] == "1.2.3"
        assert ISO_NS.match(online["ts"])
        async with MqttCollector(HOST, mosquitto.port, topic) as late:
            retained = await late.wait_for(lambda m: m.retain)
            assert retained.json()["state"] == "online"
        journal.close()
        await asyncio.wait_for(task, 10)
        await live.wait_for(is_state("offline"))
        assert [m.json()["state"] for m in live.messages] == ["online", "offline"]
    async with MqttCollector(HOST, mosquitto.port, topic) as after:
        retained = await after.wait_for(lambda m: m.retain)
        assert retained.json()["state"] == "offline"


SINK_MAIN = """
import asyncio, sys
from controller.config import SiteConfig
from controller.journal import Journal
from controller.sinks.mqtt import MqttSink

async def main() -> None:
    cfg = SiteConfig.model_validate_json(sys.argv[1])
    await MqttSink(cfg, Journal(100).cursor("mqtt"), "will-test").run()

asyncio.run(main())
"""


async def test_will_reports_lost_when_the_daemon_dies(mosquitto: Mosquitto) -> None:
    """A sink process killed with SIGKILL leaves `lost` (retained) through its will."""
    raw = site_dict("will1", mqtt={"url": mosquitto.url, **FAST})
    topic = "cellfab/will1/status"
    async with MqttCollector(HOST, mosquitto.port, topic) as live:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SINK_MAIN, json.dumps(raw), cwd=REPO, start_new_session=True
        )
        try:
            await live.wait_for(is_state("online"), timeout_s=30)
            since = len(live.messages)
            proc.kill()
            assert await asyncio.wait_for(proc.wait(), 10) == -9
            lost = (await live.wait_for(is_state("lost"), since=since)).json()
            assert (lost["site"], lost["version"]) == ("will1", "will-test")
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    async with MqttCollector(HOST, mosquitto.port, topic) as after:
        assert (await after.wait_for(lambda m: m.retain)).json()["state"] == "lost"


async def test_cancelled_sink_reports_lost(mosquitto: Mosquitto) -> None:
    """Cancelled before the journal drained, the sink says `lost`, not `offline`."""
    cfg = site("cancel1", mqtt={"url": mosquitto.url, **FAST})
    async with MqttCollector(HOST, mosquitto.port, "cellfab/cancel1/status") as live:
        task = asyncio.create_task(MqttSink(cfg, Journal(100).cursor("mqtt"), "x").run())
        await live.wait_for(is_state("online"))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await live.wait_for(is_state("lost"))


async def test_broker_restart_resends_backlog_once(tmp_path: Path) -> None:
    """Scans kept while the broker is down arrive after it is back; none arrives twice."""
    broker = Mosquitto(require_binary("mosquitto"), tmp_path)
    await asyncio.to_thread(broker.start)
    try:
        cfg = site("restart1", mqtt={"url": broker.url, **FAST})
        journal = Journal(1000)
        sink = MqttSink(cfg, journal.cursor("mqtt"), "x")
        t0 = utc_now_ns()
        filt = "cellfab/restart1/telemetry/#"
        async with MqttCollector(HOST, broker.port, filt, persistent=True) as coll:
            task = asyncio.create_task(sink.run())
            for i in range(10):
                journal.append(make_scan(i, t0))
            await coll.wait_count(lambda m: True, 10)
            await async_wait_until(lambda: sink.lag == 0, 10, "PUBACKs before the outage")
            await coll.flush()  # else the broker itself redelivers to us after its restart

            await asyncio.to_thread(broker.stop)
            await async_wait_until(lambda: not sink.stats.connected, 10, "the sink to notice")
            for i in range(10, 20):
                journal.append(make_scan(i, t0))
            await asyncio.to_thread(broker.start)
            await coll.wait_count(lambda m: True, 20, timeout_s=30)
            for i in range(20, 30):
                journal.append(make_scan(i, t0))
            await coll.wait_count(lambda m: True, 30, timeout_s=30)
            journal.close()
            await asyncio.wait_for(task, 10)
            seqs = [m.json()["seq"] for m in coll.messages]
    finally:
        await asyncio.to_thread(broker.stop)
    assert sorted(seqs) == list(range(1, 31)), Counter(seqs).most_common(3)
    assert (sink.stats.connects, sink.stats.connection_losses) == (2, 1)
    assert sink.stats.telemetry_published == 30


async def test_link_cut_mid_publish_resends_only_from_the_journal(mosquitto: Mosquitto) -> None:
    """Publishes lost with a cut link are re-sent once from the journal; the will says lost.

    The frozen proxy drops them, so the broker never saw them: a second copy could only
    come from a client that kept them queued across the reconnect (the ghost publish).
    """
    async with TcpProxy(mosquitto.port) as proxy:
        cfg = site("cut1", mqtt={"url": f"mqtt://{HOST}:{proxy.port}", **FAST})
        journal = Journal(1000)
        sink = MqttSink(cfg, journal.cursor("mqtt"), "x")
        t0 = utc_now_ns()
        async with (
            MqttCollector(HOST, mosquitto.port, "cellfab/cut1/telemetry/#") as telemetry,
            MqttCollector(HOST, mosquitto.port, "cellfab/cut1/status") as status,
        ):
            task = asyncio.create_task(sink.run())
            for i in range(10):
                journal.append(make_scan(i, t0))
            await telemetry.wait_count(lambda m: True, 10)
            await async_wait_until(lambda: sink.lag == 0, 10, "PUBACKs before the cut")

            proxy.freeze()
            for i in range(10, 15):
                journal.append(make_scan(i, t0))
            await proxy.wait_dropped(b'"seq":15,')
            assert sink.lag == 5  # sent, never acknowledged
            proxy.cut()
            await status.wait_for(is_state("lost"))  # the broker published the will
            await telemetry.wait_count(lambda m: True, 15, timeout_s=20)
            for i in range(15, 20):
                journal.append(make_scan(i, t0))
            await telemetry.wait_count(lambda m: True, 20, timeout_s=20)
            journal.close()
            await asyncio.wait_for(task, 10)
            await status.wait_for(is_state("offline"))
    seqs = [m.json()["seq"] for m in telemetry.messages]
    assert sorted(seqs) == list(range(1, 21)), Counter(seqs).most_common(3)
    assert [m.json()["state"] for m in status.messages] == ["online", "lost", "online", "offline"]
    assert (sink.stats.connects, sink.stats.connection_losses, proxy.links) == (2, 1, 2)


async def test_vm_restart_every_scan_arrives_once(tmp_path: Path) -> None:
    """VM stopped and restarted while scans keep coming: each lands exactly once."""
    server = VictoriaMetrics(require_binary("victoria-metrics"), tmp_path)
    await asyncio.to_thread(server.start)
    try:
        cfg = site("vmout", "incubator_vmout", influx={"url": server.url, **FAST_INFLUX})
        journal = Journal(10_000)
        sink = InfluxSink(cfg, journal.cursor("influx"))
        task = asyncio.create_task(sink.run())
        t0 = utc_now_ns() - 60_000_000_000
        produced: list[Scan] = []
        stop = asyncio.Event()

        async def produce() -> None:
            while not stop.is_set():
                produced.append(make_scan(len(produced), t0))
                journal.append(produced[-1])
                await asyncio.sleep(0.005)  # pace of the poller, not synchronisation

        producer = asyncio.create_task(produce())
        await async_wait_until(lambda: sink.stats.lines_written >= 20, 10, "writes before")
        await asyncio.to_thread(server.stop)
        failures = sink.stats.failures
        await async_wait_until(lambda: sink.stats.failures >= failures + 2, 10, "failed writes")
        during = len(produced)
        await asyncio.to_thread(server.start)
        await async_wait_until(lambda: sink.stats.lines_written > during, 20, "writes after")
        stop.set()
        await producer
        journal.close()
        await asyncio.wait_for(task, 20)
        rows = server.wait_export(
            "incubator_vmout_chamber_temp",
            lambda r: len(r) == 1 and len(r[0]["timestamps"]) >= len(produced),
        )
    finally:
        await asyncio.to_thread(server.stop)
    want = {s.t_scan_ns // 1_000_000: round(36.6 + i * 0.01, 2) for i, s in enumerate(produced)}
    assert series(rows, "incubator_vmout_chamber_temp") == want
    assert sink.stats.lines_written == len(produced) and sink.stats.rejected_lines == 0


async def test_sinks_give_up_at_the_drain_deadline() -> None:
    """With the peers unreachable at shutdown, both sinks stop after their drain deadline."""
    port = free_port()  # nothing listens there
    cfg = site(
        "drain1",
        mqtt={"url": f"mqtt://{HOST}:{port}", **FAST},
        influx={"url": f"http://{HOST}:{port}", **FAST_INFLUX},
    )
    journal = Journal(100)
    influx = InfluxSink(cfg, journal.cursor("influx"), drain_timeout_s=0.3)
    mqtt = MqttSink(cfg, journal.cursor("mqtt"), "x", drain_timeout_s=0.3)
    for i in range(3):
        journal.append(make_scan(i, utc_now_ns()))
    tasks = [asyncio.create_task(s.run()) for s in (influx, mqtt)]
    await async_wait_until(
        lambda: influx.stats.failures > 0 and mqtt.stats.connect_failures > 0, 10, "failures"
    )
    journal.close()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert (influx.lag, mqtt.lag) == (3, 3)


async def test_mqtts_verifies_the_broker_against_the_configured_ca(tmp_path: Path) -> None:
    """`mqtts://` with `tls_ca_file` connects; without our CA the broker is not trusted."""
    tls = make_tls_files(tmp_path / "pki")
    broker = Mosquitto(require_binary("mosquitto"), tmp_path, tls=tls)
    await asyncio.to_thread(broker.start)
    try:
        trusted = site("tls1", mqtt={"url": broker.tls_url, "tls_ca_file": str(tls.ca), **FAST})
        async with MqttCollector(HOST, broker.port, "cellfab/tls1/status") as live:
            journal = Journal(100)
            task = asyncio.create_task(MqttSink(trusted, journal.cursor("mqtt"), "x").run())
            await live.wait_for(is_state("online"))
            journal.close()
            await asyncio.wait_for(task, 10)
            await live.wait_for(is_state("offline"))

        untrusted = site("tls2", mqtt={"url": broker.tls_url, **FAST})
        journal = Journal(100)
        sink = MqttSink(untrusted, journal.cursor("mqtt"), "x", drain_timeout_s=0.2)
        task = asyncio.create_task(sink.run())
        await async_wait_until(lambda: sink.stats.connect_failures > 0, 10, "a refused connect")
        journal.close()
        await asyncio.wait_for(task, 10)
    finally:
        await asyncio.to_thread(broker.stop)
    assert sink.stats.connects == 0
    assert "certificate verify failed" in (sink.stats.last_error or "")


def test_endpoint_takes_credentials_from_the_url_first() -> None:
    """`CELLFAB_MQTT_URL` may carry user and password; otherwise the config keys apply."""
    url = "mqtt://us%40er:p%3Ass@broker.example:1999"
    ep = Endpoint.from_config(site("ep", mqtt={"url": url, "username": "cfg", "password": "pw"}))
    assert (ep.host, ep.port, ep.tls, ep.username, ep.password) == (
        "broker.example",
        1999,
        False,
        "us@er",
        "p:ss",
    )
    ep = Endpoint.from_config(
        site("ep", mqtt={"url": "mqtts://b", "username": "u", "password": "p"})
    )
    assert (ep.port, ep.tls, ep.username, ep.password) == (8883, True, "u", "p")


async def test_mqtt_publishes_the_live_end_ahead_of_a_backlog(mosquitto: Mosquitto) -> None:
    """After an outage the newest window goes first, then the backlog in order; each scan is
    published once (the backlog pass skips what went ahead) and everything is acked."""
    mqtt = {"url": mosquitto.url, **FAST, "backlog_max_msgs_per_s": 100_000}
    cfg = site("livemq", mqtt=mqtt)
    topic = "cellfab/livemq/telemetry/#"
    async with MqttCollector(HOST, mosquitto.port, topic) as seen:
        journal = Journal(1000)
        sink = MqttSink(cfg, journal.cursor("mqtt"), "x", window=100)
        t0 = utc_now_ns()
        for i in range(350):  # the backlog an outage leaves: 3.5 windows
            journal.append(make_scan(i, t0))
        journal.close()
        await asyncio.wait_for(sink.run(), 20)
        got = await seen.wait_count(lambda m: True, 350, timeout_s=20)
    seqs = [m.json()["seq"] for m in got]
    assert sorted(seqs) == list(range(1, 351))  # every scan, once
    assert set(seqs[:100]) == set(range(251, 351))  # the live end first
    assert seqs[100:] == list(range(1, 251))  # then the backlog, in order
    assert sink.lag == 0


async def test_mqtt_a_refused_publish_is_kept_and_sent_again(tmp_path: Path) -> None:
    """An MQTT 5 PUBACK with a failure reason code (an ACL's 0x87 Not authorized) is not a
    delivery: nothing is acked, the scans stay in the spool, the outage is recorded once
    with the broker's reason, and everything arrives once the broker takes it. (aiomqtt
    2.5 ignores the reason code: the cursor moved, the spool deleted the scans, lag 0.)"""
    acl = tmp_path / "acl"
    prefix = "cellfab/refuse1"
    acl.write_text(
        f"topic readwrite {prefix}/status\ntopic readwrite {prefix}/events/#\n"
        f"topic read {prefix}/telemetry/#\n"
    )
    broker = Mosquitto(require_binary("mosquitto"), tmp_path)
    broker.config_path.write_text(f"acl_file {acl}\n{broker.config_path.read_text()}")
    await asyncio.to_thread(broker.start)
    spool = Spool(tmp_path / "spool.sqlite", budget_bytes=1 << 30)
    flusher = asyncio.create_task(spool.run(0.01, 0.5))
    try:
        cfg = site("refuse1", mqtt={"url": broker.url, **FAST})
        cursor = spool.cursor("mqtt")
        sink = MqttSink(cfg, cursor, "x", on_outage=spool.record_gap, outages=spool)
        t0 = utc_now_ns()
        async with MqttCollector(HOST, broker.port, f"{prefix}/telemetry/#") as coll:
            for i in range(5):
                spool.append(make_scan(i, t0))
            spool.commit()
            task = asyncio.create_task(sink.run())
            await async_wait_until(
                lambda: sink.stats.connects >= 3 or cursor.lag == 0, 10, "two refused sessions"
            )
            assert (cursor.acked, cursor.lag, sink.stats.telemetry_published) == (0, 5, 0)
            assert sink.stats.publishes_refused >= 2
            spool.commit()
            assert len(spool.items_after(0, 100)) == 5  # none deleted
            span = spool.open_outage("mqtt")
            assert span is not None and "Not authorized (reason code 135)" in span.reason
            assert spool.gaps() == []  # a reconnect is no delivery: the outage goes on

            acl.write_text(f"topic readwrite {prefix}/#\n")  # the ACL is fixed and reloaded
            assert broker._proc is not None  # a SIGHUP: no restart, no session to lose
            broker._proc.send_signal(signal.SIGHUP)
            everything = {1, 2, 3, 4, 5}
            seen = lambda: {m.json()["seq"] for m in coll.messages} == everything  # noqa: E731
            await async_wait_until(lambda: seen() and cursor.lag == 0, 10, "delivery")
            spool.close()
            await asyncio.wait_for(task, 10)
            seqs = sorted(m.json()["seq"] for m in coll.messages)
            gaps = spool.gaps()
    finally:
        await asyncio.to_thread(broker.stop)
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
        spool.shutdown()
    # all of them; twice where the reload fell inside a window (at least once, by `seq`)
    assert set(seqs) == everything
    # one span from the first refusal to the delivery (its reason: the last failure seen)
    assert [g.start_ns for g in gaps if "delivered late" in g.cause] == [span.since_ns], gaps


async def test_mqtt_waits_out_a_failed_spool_read(mosquitto: Mosquitto, tmp_path: Path) -> None:
    """The spool cannot read its file for a while (a corrupt page): the MQTT sink gets
    nothing for now, stays connected and tries again; then scans, gaps and events arrive."""
    spool = Spool(tmp_path / "spool.sqlite", budget_bytes=1 << 30, cache_scans=1)
    try:
        cfg = site("readfail1", mqtt={"url": mosquitto.url, **FAST})
        cursor = spool.cursor("mqtt")
        sink = MqttSink(cfg, cursor, "x")
        t0 = utc_now_ns()
        for i in range(3):
            spool.append(make_scan(i, t0))
        spool.record_gap(Gap(t0, t0 + 1, "daemon down", ("inc1",)))
        spool.record_event(Event(t0, "alarm", "inc1.hi", {"to": "unack"}))
        spool.commit()
        broken = failing_db(spool)
        broken.failing = ("SELECT",)
        async with MqttCollector(HOST, mosquitto.port, "cellfab/readfail1/#") as coll:
            task = asyncio.create_task(sink.run())
            await async_wait_until(
                lambda: broken.tried_all_reads() or task.done(), 10, "failed reads"
            )
            assert not task.done(), task.exception()
            broken.failing = ()
            await async_wait_until(
                lambda: (cursor.lag, cursor.gap_lag, cursor.event_lag) == (0, 0, 0) or task.done(),
                10,
                "delivery",
            )
            spool.close()
            await asyncio.wait_for(task, 10)
            topics = Counter(m.topic.rsplit("/", 1)[0] for m in coll.messages)
    finally:
        spool.shutdown()
    assert topics["cellfab/readfail1/telemetry"] == 3
    assert topics["cellfab/readfail1/events"] == 2  # the gap and the alarm
