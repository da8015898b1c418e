"""Nothing lost (issue #6): `cellfab run` against real mosquitto and VictoriaMetrics while
they, or the daemon itself, go away and come back.

What the daemon published on MQTT (every scan, with `seq` and `ts_ns`) is the list of what
was taken; VictoriaMetrics' export is what was stored. Outages end on conditions (a log
line, a scan time, a message), never on a sleep.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from controller.spool import Spool
from controller.spool_budget import Gap
from drivers.sample import utc_now_ns
from tests.integration.noloss import (
    COMMAND_TAG,
    DEVICES,
    DaemonProcess,
    assert_seqs_once,
    assert_stored_exactly_once,
    cellfab,
    gap_events,
    ns_of,
    persisted_ack,
    seq_of,
    serve_incubators,
    site_id,
    stop_cleanly,
    telemetry,
    wait_committed,
    write_site,
)
from tests.servers import (
    HOST,
    Mosquitto,
    MqttCollector,
    Received,
    VictoriaMetrics,
    free_port,
    require_binary,
)

pytestmark = pytest.mark.integration

# every stream a gap covers: the devices and the daemon's own (`cellfab`)
STREAMS = sorted([*DEVICES, "cellfab"])

OUTAGE_NS = 30_000_000_000  # the outage length (scan time), not a limit on our code


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(require_binary("mosquitto"), tmp_path_factory.mktemp("mosq")) as server:
        yield server


@pytest.fixture
def vm(tmp_path: Path) -> Iterator[VictoriaMetrics]:
    """A VictoriaMetrics of this test's own: the tests stop and restart it."""
    server = VictoriaMetrics(require_binary("victoria-metrics"), tmp_path / "vm-dir")
    server.workdir.mkdir()
    with server:
        yield server


@pytest_asyncio.fixture(loop_scope="session")
async def ports(tmp_path: Path) -> AsyncIterator[list[int]]:
    """Two simulated incubators served in-process (they outlive every daemon restart)."""
    async with serve_incubators(tmp_path) as served:
        yield served


async def test_vm_outage_of_30_s_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, broker: Mosquitto, vm: VictoriaMetrics, ports: list[int]
) -> None:
    """VictoriaMetrics stopped for 30 s of scans and restarted on its data dir: every scan
    taken meanwhile is stored once, at its own timestamp, like all the others."""
    path, prefix = write_site(tmp_path, ports, mqtt=broker.url, influx=vm.url)
    daemon = DaemonProcess(path)
    try:
        async with MqttCollector(HOST, broker.port, f"{prefix}/#") as mqtt:
            await daemon.start()
            await daemon.wait_log(r"ready: 2 devices")
            await asyncio.to_thread(  # writing works before the outage (off the loop:
                vm.wait_export,  # the simulators run on it)
                f'{{__name__="co2_incubator_chamber_temp",site="{site_id(prefix)}"}}',
                lambda rows: sum(len(r["timestamps"]) for r in rows) >= 4,
            )
            mark = len(daemon.lines)
            down_ns = utc_now_ns()
            await asyncio.to_thread(vm.stop)
            await daemon.wait_log(rf"InfluxDB {re.escape(vm.url)}", since=mark)  # it noticed
            await mqtt.wait_for(
                lambda m: (
                    m.topic == f"{prefix}/telemetry/inc-1"
                    and m.json()["ts_ns"] >= down_ns + OUTAGE_NS
                ),
                timeout_s=OUTAGE_NS / 1e9 + 30,
            )
            up_ns = utc_now_ns()
            await asyncio.to_thread(vm.start)  # same port, same data dir
            await daemon.wait_log(rf"InfluxDB {re.escape(vm.url)}: recovered after", since=mark)
            since = len(mqtt.messages)
            top = await stop_cleanly(daemon)
            await mqtt.wait_for(is_offline(prefix), since=since)  # the last it published
            messages = list(mqtt.messages)
    finally:
        await daemon.close()

    sent = telemetry(messages, prefix)  # the devices and the daemon's own stream
    assert set(DEVICES) <= sent.keys()
    assert_seqs_once([s for scans in sent.values() for s in scans], top)
    during = [s for d in DEVICES for s in sent[d] if down_ns <= s["ts_ns"] <= up_ns]
    assert during, "no scan was taken during the outage"
    for stream, scans in sent.items():
        await asyncio.to_thread(assert_stored_exactly_once, vm, site_id(prefix), stream, scans)
    # the outage itself is on record, as data delivered late (controller/sinks/outage.py)
    (late,) = gap_events(messages, prefix)
    assert late["cause"].startswith("InfluxDB unreachable, delivered late"), late
    assert sorted(late["devices"]) == STREAMS
    assert down_ns <= ns_of(late["start"]) and up_ns <= ns_of(late["end"]), (late, down_ns, up_ns)


async def test_sigkill_and_restart_stores_every_published_reading_and_records_the_gap(
    tmp_path: Path, broker: Mosquitto, vm: VictoriaMetrics, ports: list[int]
) -> None:
    """Killed with a backlog for the store (VM was down), restarted on the same state dir:
    every reading seen on MQTT before the kill is stored once, the downtime is a `daemon
    down` gap on MQTT and in the store, and the audit trail verifies."""
    path, prefix = write_site(tmp_path, ports, mqtt=broker.url, influx=vm.url, extra=COMMAND_TAG)
    site = site_id(prefix)
    daemon = DaemonProcess(path)
    try:
        async with MqttCollector(HOST, broker.port, f"{prefix}/#") as mqtt:
            await daemon.start()
            await daemon.wait_log(r"ready: 2 devices")
            daemon.send_sighup()  # one more audit record before the kill
            await daemon.wait_log(r"reloaded .*: no change")
            await asyncio.to_thread(
                vm.wait_export,
                f'{{__name__="co2_incubator_chamber_temp",site="{site}"}}',
                lambda rows: sum(len(r["timestamps"]) for r in rows) >= 4,
            )
            # VM down: from now on the published scans are only in the spool
            await asyncio.to_thread(vm.stop)
            await daemon.wait_log(rf"InfluxDB {re.escape(vm.url)}")
            since = len(mqtt.messages)
            await mqtt.wait_count(lambda m: m.topic.startswith(f"{prefix}/telemetry/"), since + 8)
            assert await daemon.kill() == -9
            killed_ns = utc_now_ns()
            lost = f"{prefix}/status"  # the will: everything it published came before it
            await mqtt.wait_for(lambda m: m.topic == lost and m.json()["state"] == "lost", 30)
            before = telemetry(list(mqtt.messages), prefix)
            unstored = telemetry(list(mqtt.messages)[since:], prefix)

            await asyncio.to_thread(vm.start)
            restart_ns = utc_now_ns()
            await daemon.start()
            await daemon.wait_log(r"data gap: daemon was down")
            gap = (await mqtt.wait_for(is_daemon_down(prefix), 30)).json()
            await daemon.wait_log(r"ready: 2 devices")
            since = len(mqtt.messages)
            await stop_cleanly(daemon)
            await mqtt.wait_for(is_offline(prefix), since=since)  # the last it published
            messages = list(mqtt.messages)
    finally:
        await daemon.close()

    assert set(DEVICES) <= unstored.keys(), "the kill found nothing that only the spool held"
    sent = telemetry(messages, prefix)
    for stream, scans in sent.items():  # MQTT is at least once across a kill: a seq per scan
        once = {s["seq"]: s for s in scans}
        assert all(once[s["seq"]] == s for s in scans), "a seq came back different"
        await asyncio.to_thread(
            assert_stored_exactly_once, vm, site, stream, sorted(once.values(), key=seq_of)
        )
    unique = list({s["seq"]: s for scans in sent.values() for s in scans}.values())
    assert_seqs_once(unique, max(map(seq_of, unique)))  # seq goes on across the restart

    last_before = max(s["ts_ns"] for scans in before.values() for s in scans)
    first_after = min(s["ts_ns"] for d in DEVICES for s in sent[d] if s["ts_ns"] > killed_ns)
    assert sorted(gap["devices"]) == STREAMS
    start, end = ns_of(gap["start"]), ns_of(gap["end"])
    assert last_before <= start <= killed_ns, "the gap starts at the last commit before death"
    assert restart_ns <= end <= first_after, "the gap ends when the new run starts"
    assert [g for g in gap_events(messages, prefix) if g["cause"] == "daemon down"] == [gap]
    rows = await asyncio.to_thread(
        vm.wait_export,
        f'{{__name__="gap_duration_s",site="{site}",cause="daemon down"}}',
        lambda r: len(r) == len(STREAMS),
    )
    assert sorted(r["metric"]["device"] for r in rows) == STREAMS
    for row in rows:
        assert row["timestamps"] == [start // 1_000_000]
        assert row["values"] == [pytest.approx(gap["duration_s"])]

    verify = await asyncio.create_subprocess_exec(
        *cellfab("audit", "verify", "-c", str(path)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out = (await asyncio.wait_for(verify.communicate(), 30))[0].decode()
    assert verify.returncode == 0, out  # 4 (a torn last line) would be a record lost
    records = re.search(r": (\d+) records", out)
    assert records is not None and int(records[1]) >= 3, out  # load, reload, load again
    assert "INTACT" in out, out


async def test_a_restart_on_a_file_without_a_device_still_delivers_its_spooled_scans(
    tmp_path: Path, vm: VictoriaMetrics, ports: list[int]
) -> None:
    """inc-2's scans are still in the spool (VM down) when the site file drops inc-2: the
    next run forwards them under device class `unconfigured`, rather than dying on them
    at every start (a crash loop that would leave the floor unmonitored)."""
    await asyncio.to_thread(vm.stop)
    path, prefix = write_site(tmp_path, ports, mqtt=None, influx=vm.url)
    spool = tmp_path / "state" / "spool.sqlite"
    daemon = DaemonProcess(path)
    try:
        await daemon.start()
        await daemon.wait_log(r"ready: 2 devices")
        await wait_committed(spool, above=8)  # both devices' scans, kept for the store
        await stop_cleanly(daemon)
        text = path.read_text()
        path.write_text(text[: text.index('[[devices]]\nid = "inc-2"')])
        await asyncio.to_thread(vm.start)
        await daemon.start()
        await daemon.wait_log(r"ready: 1 devices")
        await daemon.wait_log(r"scans of 'inc-2', which the site file does not name")
        rows = await asyncio.to_thread(
            vm.wait_export,
            f'{{__name__="unconfigured_chamber_temp",site="{site_id(prefix)}"}}',
            lambda r: sum(len(x["timestamps"]) for x in r) >= 2,
        )
        assert {r["metric"]["device"] for r in rows} == {"inc-2"}
        await stop_cleanly(daemon)
    finally:
        await daemon.close()


async def test_sigkill_between_a_write_and_its_persisted_ack_stores_nothing_twice(
    tmp_path: Path, broker: Mosquitto, vm: VictoriaMetrics, ports: list[int]
) -> None:
    """Killed after the store took a batch but before the spool persisted the ack: the
    batch is written again after the restart, with its original series and timestamps, so
    the store (InfluxDB semantics: same series + timestamp overwrites; the test VM
    deduplicates the same way) holds every reading once.

    A 10 s `flush_interval_s` (the longest allowed) holds the ack in memory long enough to
    kill inside that window every time; with the default 0.2 s the window is the same
    thing, only hit by chance. The restart runs a changed site file (another `config` tag):
    a re-sent point must keep the tags it was first written with.
    """
    slow = "[spool]\nflush_interval_s = 10.0\n"
    path, prefix = write_site(tmp_path, ports, mqtt=broker.url, influx=vm.url, extra=slow)
    site = site_id(prefix)
    daemon = DaemonProcess(path)
    try:
        async with MqttCollector(HOST, broker.port, f"{prefix}/#") as mqtt:
            await daemon.start()
            await asyncio.to_thread(  # the first commit's batch is in the store
                vm.wait_export,
                f'{{__name__="co2_incubator_chamber_temp",site="{site}"}}',
                lambda rows: sum(len(r["timestamps"]) for r in rows) > 0,
            )
            assert await daemon.kill() == -9  # its ack waits for the next commit, 10 s on
            acked = persisted_ack(tmp_path / "state" / "spool.sqlite", "influx")
            rows = await asyncio.to_thread(vm.export, f'{{__name__=~".+",site="{site}"}}')
            in_store = {(r["metric"]["device"], t) for r in rows for t in r["timestamps"]}
            unacked = [  # in the store, but the spool will hand them out again
                s
                for s in (m.json() for m in mqtt.messages if "/telemetry/" in m.topic)
                if s["seq"] > acked and (s["device"], s["ts_ns"] // 1_000_000) in in_store
            ]
            path.write_text(path.read_text().replace(slow, ""))
            await daemon.start()
            await daemon.wait_log(r"ready: 2 devices")
            since = len(mqtt.messages)
            await stop_cleanly(daemon)
            await mqtt.wait_for(is_offline(prefix), since=since)
            messages = list(mqtt.messages)
    finally:
        await daemon.close()

    sent = telemetry(messages, prefix)
    for stream, scans in sent.items():  # MQTT is at least once across a kill: a seq per scan
        once = sorted({s["seq"]: s for s in scans}.values(), key=seq_of)
        await asyncio.to_thread(assert_stored_exactly_once, vm, site, stream, once)
    assert unacked, "the kill missed the window: every stored scan's ack was on disk"


async def test_spool_budget_drops_oldest_non_gmp_scans_first_and_says_so(
    tmp_path: Path, broker: Mosquitto, ports: list[int]
) -> None:
    """A tiny budget, InfluxDB unreachable (nothing acked): the oldest scans of the non-GMP
    device are dropped, the GMP device's never, the drop is a `spool budget` gap on MQTT,
    and the daemon keeps polling and reporting its health."""
    spool = '[spool]\nbudget_mb = 0.05\ngmp_devices = ["inc-1"]\n'
    closed = f"http://{HOST}:{free_port()}"  # nothing listens: InfluxDB acks nothing
    path, prefix = write_site(
        tmp_path, ports, mqtt=broker.url, influx=closed, extra=spool, periods=(1.0, 0.1)
    )
    daemon = DaemonProcess(path)
    try:
        async with MqttCollector(HOST, broker.port, f"{prefix}/#") as mqtt:
            await daemon.start()
            gap_msg = await mqtt.wait_for(lambda m: m.topic == f"{prefix}/events/gap", 60)
            after_gap = mqtt.messages.index(gap_msg)
            await daemon.wait_log(r"spool at \d+ % of its disk budget")  # the 80 % alarm
            alarm = await mqtt.wait_for(  # the built-in ISA-18.2 alarm on the daemon's stream
                lambda m: (
                    m.topic == f"{prefix}/alarms/cellfab.spool_usage"
                    and m.json()["state"] == "unacknowledged"
                ),
                timeout_s=30,
            )
            assert alarm.json()["priority"] == "high"
            await daemon.wait_log(r"over budget: dropped the oldest")
            health = await mqtt.wait_for(  # still alive and counting, after the drop
                lambda m: m.topic == f"{prefix}/health" and m.json()["spool"]["dropped"] > 0,
                timeout_s=30,
                since=after_gap,
            )
            for device in DEVICES:  # both devices keep being polled and published
                topic = f"{prefix}/telemetry/{device}"
                await mqtt.wait_for(is_topic(topic), since=mqtt.messages.index(health) + 1)
            assert daemon.returncode is None, daemon.tail()
            messages = list(mqtt.messages)
        # InfluxDB is unreachable, so an orderly stop would only wait out its drain deadline;
        # the spool's content is the same after SIGKILL (see the test above)
        assert await daemon.kill() == -9
    finally:
        await daemon.close()

    gap = gap_msg.json()
    assert gap["cause"] == "spool budget"
    assert "inc-1" not in gap["devices"], "a GMP device's scans were dropped"
    assert "inc-2" in gap["devices"]
    assert gap["scans"] > 0
    assert all(g["cause"] == "spool budget" for g in gap_events(messages, prefix)), (
        "the GMP data alone filled the spool: make the test stop sooner"
    )
    assert health.json()["spool"]["dropped"] >= gap["scans"]

    sent = telemetry(messages, prefix)
    held, gaps = read_spool(tmp_path / "state" / "spool.sqlite")
    budget_gaps = [g for g in gaps if g.cause == "spool budget"]
    assert "inc-1" not in {d for g in budget_gaps for d in g.devices}
    gmp_lost = [s["seq"] for s in sent["inc-1"] if s["seq"] not in held]
    assert not gmp_lost, f"GMP scans dropped: {gmp_lost}"
    # every other stream (inc-2, and the daemon's own) is non-GMP: oldest first, by seq
    other = sorted((s for d, ss in sent.items() if d != "inc-1" for s in ss), key=seq_of)
    dropped = [s for s in other if s["seq"] not in held]
    assert dropped == other[: len(dropped)], "not the oldest non-GMP scans that went"
    assert len(dropped) == sum(g.scans for g in budget_gaps)
    assert ns_of(gap["start"]) == min(s["ts_ns"] for s in dropped[: gap["scans"]])
    for scan in dropped:
        assert any(g.start_ns <= scan["ts_ns"] <= g.end_ns for g in budget_gaps), scan["seq"]
    oldest_gmp = min(s["ts_ns"] for s in sent["inc-1"])
    assert oldest_gmp < dropped[-1]["ts_ns"], "the kept GMP scan is older than a dropped one"


def is_topic(topic: str) -> Callable[[Received], bool]:
    return lambda m: m.topic == topic


def is_offline(prefix: str) -> Callable[[Received], bool]:
    """The live (not retained) `offline` status: a drained sink's last message."""
    topic = f"{prefix}/status"
    return lambda m: m.topic == topic and not m.retain and m.json()["state"] == "offline"


def is_daemon_down(prefix: str) -> Callable[[Received], bool]:
    """A `daemon down` gap on `<prefix>/events/gap`."""
    topic = f"{prefix}/events/gap"
    return lambda m: m.topic == topic and m.json()["cause"] == "daemon down"


def read_spool(path: Path) -> tuple[set[int], list[Gap]]:
    """The seqs still in the spool and its gaps (the daemon is gone, its lock with it)."""
    with Spool(path, budget_bytes=1 << 30) as spool:
        held = {seq for seq, _ in spool.items_after(0, 1_000_000)}
        return held, spool.gaps()
