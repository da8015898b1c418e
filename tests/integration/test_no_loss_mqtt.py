"""Nothing lost on MQTT (issue #6): mosquitto stopped and restarted under `cellfab run`.

A persistent-session QoS 1 subscriber must get every durable event and every scan. What
"exactly once" can mean over QoS 1 is spelled out in `assert_once_across_outages`: the
broker's own DUP re-sends to us are its QoS 1, not the daemon's; and a publish the broker
took but could not acknowledge before it died is re-sent by the daemon from its spool (the
unacknowledged tail, never anything else, never twice).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Hashable
from pathlib import Path

import pytest
import pytest_asyncio

from drivers.sample import utc_now_ns
from tests.integration.noloss import (
    DEVICES,
    DaemonProcess,
    DupAwareCollector,
    committed_seq,
    ns_of,
    open_outage_since,
    serve_incubators,
    stop_cleanly,
    wait_committed,
    wait_events,
    wait_open_outage,
    write_site,
)
from tests.servers import HOST, Mosquitto, Received, require_binary

pytestmark = pytest.mark.integration

# Events on the spool's durable path to `<prefix>/events/<kind>` (QoS 1): every check below
# covers each kind listed here. A new kind: add it, and make the site below produce one.
DURABLE_EVENTS = ("gap", "alarm")
# an alarm that is active from the first scan of each run: the run that starts into the
# broker outage raises it while nothing can be published
ALARM = """
[[alarms]]
id = "inc-1.warm"
tag = "inc-1.chamber_temp"
kind = "high"
limit = 0.0
priority = "low"
message = "test: active whenever the chamber is above 0 degC"
"""


@pytest_asyncio.fixture(loop_scope="session")
async def ports(tmp_path: Path) -> AsyncIterator[list[int]]:
    """Two simulated incubators served in-process (they outlive every daemon restart)."""
    async with serve_incubators(tmp_path) as served:
        yield served


def fresh(collector: DupAwareCollector) -> list[tuple[int, Received]]:
    """(arrival index, message) of everything but the broker's own DUP re-sends, each of
    which must repeat a message we already had."""
    assert len(collector.packets) == len(collector.messages)
    firsts: list[tuple[int, Received]] = []
    for i, (msg, (_, _, dup)) in enumerate(zip(collector.messages, collector.packets, strict=True)):
        if dup:
            assert any(m == msg for _, m in firsts), f"a DUP re-send of something new: {msg}"
        else:
            firsts.append((i, msg))
    return firsts


def assert_once_across_outages(
    items: list[tuple[int, Hashable, object]], cuts: list[int], what: str
) -> None:
    """Each key arrives once, or twice with the same content when the first copy came
    before a broker stop (`cuts`: arrival index at each stop) and the second after it, and
    the keys sent twice over a stop are the last ones that arrived before it (the window
    the daemon had published but not yet seen acknowledged)."""
    copies: dict[Hashable, list[tuple[int, object]]] = {}
    for index, key, content in items:
        copies.setdefault(key, []).append((index, content))
    resent: dict[int, set[Hashable]] = {cut: set() for cut in cuts}
    for key, got in copies.items():
        assert len(got) <= 2, f"{what} {key!r} arrived {len(got)} times"
        if len(got) == 2:
            (first, a), (second, b) = got
            assert a == b, f"{what} {key!r} came back different"
            cut = next((c for c in cuts if first < c), None)
            assert cut is not None and cut <= second, (
                f"{what} {key!r} twice without a broker restart in between ({first}, {second})"
            )
            resent[cut].add(key)
    for cut, keys in resent.items():
        arrived = sorted((got[0][0], key) for key, got in copies.items() if got[0][0] < cut)
        last = {key for _, key in arrived[len(arrived) - len(keys) :]}
        assert keys == last, f"{what}: re-sent after the stop at {cut}, not its last: {keys}"


def kinds(messages: list[tuple[int, Received]], prefix: str) -> dict[str, list[tuple[int, str]]]:
    """kind -> (arrival index, payload) on `<prefix>/events/<kind>`."""
    out: dict[str, list[tuple[int, str]]] = {kind: [] for kind in DURABLE_EVENTS}
    for index, m in messages:
        kind = m.topic.removeprefix(f"{prefix}/events/")
        if kind in out and not m.retain:
            out[kind].append((index, m.payload.decode()))
    return out


def is_topic(topic: str, state: str | None = None) -> Callable[[Received], bool]:
    if state is None:
        return lambda m: m.topic == topic
    return lambda m: m.topic == topic and not m.retain and m.json()["state"] == state


async def test_broker_restarts_lose_no_event_and_no_scan(tmp_path: Path, ports: list[int]) -> None:
    """Mosquitto down while the daemon starts (its `daemon down` gap is recorded into the
    outage) and again mid-run: a persistent QoS 1 subscriber gets every event and every
    scan seq, once (see the module docstring for what once means over QoS 1)."""
    (tmp_path / "mosq-dir").mkdir()
    broker = Mosquitto(require_binary("mosquitto"), tmp_path / "mosq-dir")
    await asyncio.to_thread(broker.start)
    path, prefix = write_site(tmp_path, ports, mqtt=broker.url, influx=None, extra=ALARM)
    spool = tmp_path / "state" / "spool.sqlite"
    link = rf"MQTT broker {HOST}:{broker.port}: "
    cuts: list[int] = []
    daemon = DaemonProcess(path)
    try:
        async with DupAwareCollector(HOST, broker.port, f"{prefix}/#", persistent=True) as mqtt:
            await daemon.start()  # a first run, so that the next start finds a downtime
            await daemon.wait_log(r"ready: 2 devices")
            await mqtt.wait_count(lambda m: m.topic.startswith(f"{prefix}/telemetry/"), 4)
            first_run = await stop_cleanly(daemon)
            stopped_ns = utc_now_ns()
            await mqtt.wait_for(is_topic(f"{prefix}/status", "offline"))
            await mqtt.flush()

            # outage 1: the daemon starts, records the downtime gap and polls, broker down
            await asyncio.to_thread(broker.stop)
            cuts.append(len(mqtt.messages))
            restart_ns = utc_now_ns()
            await daemon.start()
            await daemon.wait_log(r"data gap: daemon was down")
            await daemon.wait_log(link)
            await wait_committed(spool, first_run + 4)  # scans taken into the outage
            await wait_events(spool, "alarm", restart_ns)  # and the alarm raised into it
            back_ns = [utc_now_ns()]
            await asyncio.to_thread(broker.start)
            backlog = committed_seq(spool)
            await mqtt.wait_for(is_topic(f"{prefix}/events/gap"), 30)
            await mqtt.wait_for(  # the backlog is through: outage 2 meets the live flow
                lambda m: m.topic.startswith(f"{prefix}/telemetry/") and m.json()["seq"] > backlog,
                timeout_s=30,
            )
            await mqtt.flush()

            # outage 2: mid-run
            mark = len(daemon.lines)
            down_ns = utc_now_ns()
            await asyncio.to_thread(broker.stop)
            cuts.append(len(mqtt.messages))
            await daemon.wait_log(link + "connection lost", since=mark)
            await daemon.wait_log(link + "(?!connection lost)", since=mark)  # fails to reconnect
            await wait_committed(spool, committed_seq(spool) + 4)
            back_ns.append(up_ns := utc_now_ns())
            await asyncio.to_thread(broker.start)
            await daemon.wait_log(link + "recovered", since=mark)
            since = len(mqtt.messages)
            second_run = await stop_cleanly(daemon)
            await mqtt.wait_for(is_topic(f"{prefix}/status", "offline"), since=since)
            messages = fresh(mqtt)
    finally:
        await daemon.close()
        await asyncio.to_thread(broker.stop)

    scans = [
        (i, m.json())
        for i, m in messages
        if m.topic.startswith(f"{prefix}/telemetry/") and not m.retain
    ]
    assert set(DEVICES) <= {s["device"] for _, s in scans}  # and the daemon's own stream
    seqs = {s["seq"] for _, s in scans}
    assert seqs == set(range(1, first_run + second_run + 1)), "scans missing or made up"
    assert_once_across_outages([(i, s["seq"], s) for i, s in scans], cuts, "seq")
    assert any(restart_ns <= s["ts_ns"] and s["seq"] > first_run for _, s in scans)
    assert any(down_ns <= s["ts_ns"] <= up_ns for _, s in scans), "no scan during outage 2"

    events = kinds(messages, prefix)
    for kind, got in events.items():
        assert_once_across_outages([(i, p, p) for i, p in got], cuts, f"events/{kind}")
    raised = [json.loads(p) for _, p in events["alarm"]]
    raised = [a for a in raised if a["alarm"] == "inc-1.warm" and a["to"] == "unacknowledged"]
    assert any(restart_ns <= ns_of(a["ts"]) <= back_ns[0] for a in raised), (
        f"the alarm raised during outage 1 never arrived: {raised}"
    )
    gaps = list({p: json.loads(p) for _, p in events["gap"]}.values())
    down = [g for g in gaps if g["cause"] == "daemon down"]
    assert len(down) == 1, gaps
    gap = down[0]
    assert sorted(gap["devices"]) == sorted([*DEVICES, "cellfab"])
    first_run_ts = [s["ts_ns"] for _, s in scans if s["seq"] <= first_run]
    second_run_ts = [s["ts_ns"] for _, s in scans if s["seq"] > first_run]
    assert max(first_run_ts) <= ns_of(gap["start"]) <= stopped_ns
    assert restart_ns <= ns_of(gap["end"]) <= min(second_run_ts)
    # each broker outage is on record too, as data delivered late (controller/sinks/outage.py)
    late = [g for g in gaps if g["cause"].startswith("MQTT broker unreachable, delivered late")]
    assert len(late) == 2, gaps
    assert len(gaps) == 3, f"a gap nobody caused: {gaps}"
    for g, began_ns, ended_ns in zip(late, (restart_ns, down_ns), back_ns, strict=True):
        assert sorted(g["devices"]) == sorted([*DEVICES, "cellfab"])
        assert began_ns <= ns_of(g["start"]) and ended_ns <= ns_of(g["end"]), (g, began_ns)


async def test_an_outage_open_when_the_daemon_is_killed_is_still_recorded(
    tmp_path: Path, ports: list[int]
) -> None:
    """The broker is down from the start and the daemon is SIGKILLed during the outage: the
    next run, once the broker is back, records the span from the first failure of the
    killed run, as data delivered late (controller/spool_outages.py), next to the
    `daemon down` gap of the kill."""
    (tmp_path / "mosq-dir").mkdir()
    broker = Mosquitto(require_binary("mosquitto"), tmp_path / "mosq-dir")  # not started
    path, prefix = write_site(tmp_path, ports, mqtt=broker.url, influx=None)
    spool = tmp_path / "state" / "spool.sqlite"
    daemon = DaemonProcess(path)
    try:
        started_ns = utc_now_ns()
        await daemon.start()
        await daemon.wait_log(rf"MQTT broker {HOST}:{broker.port}: ")
        since_ns = await wait_open_outage(spool, "mqtt")
        await wait_committed(spool, 4)
        await daemon.kill()
        killed_ns = utc_now_ns()
        await asyncio.to_thread(broker.start)
        async with DupAwareCollector(HOST, broker.port, f"{prefix}/events/gap") as mqtt:
            await daemon.start()
            late = await mqtt.wait_for(
                lambda m: json.loads(m.payload)["cause"].startswith(
                    "MQTT broker unreachable, delivered late"
                ),
                timeout_s=30,
            )
            await mqtt.wait_for(lambda m: json.loads(m.payload)["cause"] == "daemon down")
        await stop_cleanly(daemon)
    finally:
        await daemon.close()
        await asyncio.to_thread(broker.stop)
    gap = json.loads(late.payload)
    assert started_ns <= since_ns <= killed_ns
    assert ns_of(gap["start"]) == since_ns  # the first failure of the killed run
    assert ns_of(gap["end"]) >= killed_ns
    assert "Connection refused" in gap["cause"], gap
    assert open_outage_since(spool, "mqtt") is None  # closed with its gap
