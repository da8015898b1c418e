"""Alarms end to end: simulators over their real protocols, the daemon, a real mosquitto.

A Grade A cabinet whose particle counter sees 5 µm excursions raises the critical action
alarm; a room whose door opens briefly rides through the ΔP on-delay while a room whose
door stays open longer alarms; retained alarm topics are there for a late subscriber;
operators act on alarms only through signed commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from controller.access_config import load_keys
from controller.app import Daemon
from controller.cmd_client import new_nonce, send_to_broker, sign_request
from controller.config import SiteConfig
from controller.configload import load_site_text
from controller.daemon_parts import ConfigSource
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

SITE = """
[site]
id = "{site}"
[state]
dir = "{state}"
[mqtt]
url = "{mqtt}"
[influx]
url = "{influx}"
token = "test-token"
flush_interval_s = 0.2
[alarm_engine]
period_s = 0.2

# one line per room: each transmitter is the lowest room of its own cascade, so an open
# door drops its room towards the corridor's 0 Pa
[[buses]]
id = "rs485-1"
port = "{link}-1"
[buses.simulator]
time_scale = 10.0

[[buses]]
id = "rs485-2"
port = "{link}-2"
[buses.simulator]
time_scale = 10.0

[[devices]]
id = "pc-a"
device_class = "particle_counter"
area = "cabinet-a"
driver = "lighthouse_remote"
host = "127.0.0.1"
port = {pc_port}
sample_time_s = 60
poll_period_s = 0.25
timeout_s = 0.5
[devices.simulator]
model = "lighthouse_remote"
grade = "A"
seed = 5
time_scale = 120.0
excursion_rate = 1.0        # every sample an excursion: far above the Grade A 5 µm limit
excursion_factor = 2000.0

[[devices]]
id = "dp-b"
driver = "modbus_rtu"
device_class = "room_dp"
area = "room-b"
bus = "rs485-1"
unit_id = 41
profile = "huba-699m"
poll_period_s = 0.2
[devices.simulator]
seed = 41
setpoint_pa = 45.0
door_period_s = 40.0        # the door opens for ~1 s of wall time: rides through the delay
door_open_s = 10.0

[[devices]]
id = "dp-c"
driver = "modbus_rtu"
device_class = "room_dp"
area = "room-c"
bus = "rs485-2"
unit_id = 42
profile = "huba-699m"
poll_period_s = 0.2
[devices.simulator]
seed = 42
setpoint_pa = 30.0
door_period_s = 200.0       # the door stays open ~10 s of wall time: longer than the delay
door_open_s = 100.0

[cleanroom]
unclassified_areas = ["corridor"]

[[cleanroom.rooms]]
id = "cab-a"
grade = "A"
p05_tag = "pc-a.conc_0_5um"
p50_tag = "pc-a.conc_5_0um"
alert_fraction = 0.7

[[cleanroom.pressure_links]]
high_room = "room-b"
low_room = "corridor"
tag = "dp-b.dp_pa"
on_delay_s = 4.0

[[cleanroom.pressure_links]]
high_room = "room-c"
low_room = "corridor"
tag = "dp-c.dp_pa"
on_delay_s = 4.0

[[cleanroom.rooms]]
id = "room-b"
grade = "B"
p05_tag = "pc-a.conc_0_5um"
p50_tag = "pc-a.conc_5_0um"
alert_fraction = 0.7

[[cleanroom.rooms]]
id = "room-c"
grade = "C"
p05_tag = "pc-a.conc_0_5um"
p50_tag = "pc-a.conc_5_0um"
alert_fraction = 0.7

[[users]]
id = "olga"
role = "operator"
key_file = "olga.key"

[[roles]]
name = "operator"
allow = [{{ verbs = ["ack", "shelve", "unshelve", "room_state"] }}]
"""

GRADE_A_5UM = "room.cab-a.in_operation.p50.action"


@dataclass
class Floor:
    cfg: SiteConfig
    daemon: Daemon
    broker: Mosquitto
    key: bytes
    tsdb: VictoriaMetrics
    stop: asyncio.Event
    task: asyncio.Task[None]

    @property
    def prefix(self) -> str:
        return self.cfg.topic_prefix

    async def command(self, verb: str, body: dict[str, Any], reason: str) -> dict[str, Any]:
        request = sign_request(
            "olga", self.key, verb, body, site=self.cfg.site.id, reason=reason,
            now=datetime.now(UTC), nonce=new_nonce(),
        )  # fmt: skip
        return await send_to_broker(HOST, self.broker.port, self.prefix, request)


@pytest.fixture(scope="module")
def tsdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    binary = require_binary("victoria-metrics")
    with VictoriaMetrics(binary, tmp_path_factory.mktemp("vm")) as server:
        yield server


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(require_binary("mosquitto"), tmp_path_factory.mktemp("mosq")) as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session")
async def floor(tmp_path: Path, broker: Mosquitto, tsdb: VictoriaMetrics) -> AsyncIterator[Floor]:
    from simulators.runner import serve_devices

    text = SITE.format(
        site=f"alarm-{free_port()}",
        state=tmp_path / "state",
        mqtt=broker.url,
        influx=tsdb.url,
        link=tmp_path / "rs485",
        pc_port=free_port(),
    )
    path = tmp_path / "site.toml"
    path.write_text(text)
    key_path = tmp_path / "olga.key"
    key_path.write_text(secrets.token_hex(32))
    key_path.chmod(0o600)
    cfg = load_site_text(text, path)
    keys = load_keys(cfg.users, tmp_path)
    stop = asyncio.Event()
    async with serve_devices(cfg.devices, cfg.buses):
        daemon = Daemon(cfg, keys, ConfigSource(str(path), "0" * 64))
        task = asyncio.create_task(daemon.run(stop))
        try:
            async with asyncio.timeout(30):
                await daemon.ready.wait()
            yield Floor(cfg, daemon, broker, keys["olga"].secret, tsdb, stop, task)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)


def state_of(alarm: str) -> Any:
    return lambda m: m.topic.endswith(f"/alarms/{alarm}") and m.json()["state"]


async def test_grade_a_excursion_raises_the_critical_alarm(floor: Floor) -> None:
    """5 µm counts far above the Grade A action limit: critical, unacknowledged, retained."""
    async with MqttCollector(HOST, floor.broker.port, f"{floor.prefix}/#") as seen:
        active = await seen.wait_for(
            lambda m: (
                m.topic.endswith(f"/alarms/{GRADE_A_5UM}") and m.json()["state"] == "unacknowledged"
            ),
            timeout_s=30,
        )
        event = await seen.wait_for(
            lambda m: (
                m.topic.endswith("/events/alarm")
                and m.json()["key"] == GRADE_A_5UM
                and m.json()["to"] == "unacknowledged"
            ),
            timeout_s=10,
        )
    doc = active.json()
    assert doc["priority"] == "critical"
    assert doc["value"] > doc["limit"]
    assert event.json()["priority"] == "critical"
    # a late subscriber gets it retained; the at-rest twin of the same limit is suppressed
    # by design while the room operates
    async with MqttCollector(HOST, floor.broker.port, f"{floor.prefix}/alarms/#") as late:
        kept = await late.wait_for(lambda m: m.topic.endswith(f"/{GRADE_A_5UM}"), timeout_s=10)
        twin = await late.wait_for(
            lambda m: m.topic.endswith("/alarms/room.cab-a.at_rest.p50.action"), timeout_s=10
        )
    assert kept.retain
    assert kept.json()["state"] == "unacknowledged"
    assert twin.json()["state"] == "suppressed"


async def test_retained_alarm_survives_a_subscriber_reconnect(floor: Floor) -> None:
    """A dashboard that connects late (or again) sees every alarm's current state at once."""
    topic = f"{floor.prefix}/alarms/#"
    first: list[Received] = []
    for _ in range(2):  # connect, disconnect, connect again
        async with MqttCollector(HOST, floor.broker.port, topic) as dashboard:
            n = len(floor.daemon.alarms.engine.ids)  # type: ignore[union-attr]
            got = await dashboard.wait_count(lambda m: m.retain, n, timeout_s=20)
            first.append(got[0])
    assert {m.topic.rsplit("/", 1)[1] for m in got} == set(floor.daemon.alarms.engine.ids)  # type: ignore[union-attr]


async def test_the_state_disk_is_recorded_and_alarmed(floor: Floor) -> None:
    """The daemon's own stream carries the state directory's free fraction, and the
    built-in `cellfab.disk_free` alarm (low, 10 %) is retained in its normal state."""
    prefix = floor.prefix
    topics = [f"{prefix}/telemetry/cellfab", f"{prefix}/alarms/cellfab.disk_free"]
    async with MqttCollector(HOST, floor.broker.port, f"{prefix}/#") as mqtt:
        alarm = await mqtt.wait_for(lambda m: m.topic == topics[1], timeout_s=10)
        own = await mqtt.wait_for(lambda m: m.topic == topics[0], timeout_s=20)
    assert alarm.retain and alarm.json()["state"] == "normal", alarm.json()
    assert alarm.json()["priority"] == "high"
    assert 0.0 < own.json()["values"]["state_disk_free"] <= 1.0
    assert own.json()["quality"]["state_disk_free"] == "good"
    assert own.json()["values"]["spool_failing"] == 0.0  # watched by cellfab.spool_failing


async def test_door_opening_rides_through_the_dp_delay(floor: Floor) -> None:
    """room-b's short openings never alarm; room-c's long opening alarms after the delay."""
    dp_b = "dp.room-b.corridor.action"
    dp_c = "dp.room-c.corridor.action"
    async with MqttCollector(HOST, floor.broker.port, f"{floor.prefix}/#") as seen:
        # wait until room-b's door has opened and closed at least once: ΔP dipped under 10 Pa
        def dipped(m: Received) -> bool:
            return m.topic.endswith("/telemetry/dp-b") and (m.json()["values"]["dp_pa"] or 99) < 10

        await seen.wait_for(dipped, timeout_s=30)
        await seen.wait_for(
            lambda m: m.topic.endswith("/telemetry/dp-b") and m.json()["values"]["dp_pa"] > 40,
            timeout_s=30,
        )
        c_alarm = await seen.wait_for(
            lambda m: m.topic.endswith(f"/alarms/{dp_c}") and m.json()["state"] == "unacknowledged",
            timeout_s=60,
        )
        b_moves = [
            m
            for m in seen.messages
            if m.topic.endswith("/events/alarm") and m.json()["key"] == dp_b
        ]
    assert b_moves == []  # the brief opening never reached the on-delay
    assert floor.daemon.alarms.state(dp_b) == "normal"  # type: ignore[union-attr]
    assert c_alarm.json()["priority"] == "high"


async def test_operator_acks_and_shelves_through_signed_commands(floor: Floor) -> None:
    """ack → acknowledged (who is recorded); shelve → shelved; a bad duration is refused."""
    async with MqttCollector(HOST, floor.broker.port, f"{floor.prefix}/alarms/{GRADE_A_5UM}") as a:
        await a.wait_for(lambda m: m.json()["state"] == "unacknowledged", timeout_s=30)
        reply = await floor.command("ack", {"alarm": GRADE_A_5UM}, "seen, investigating")
        assert reply["ok"] is True, reply
        acked = await a.wait_for(lambda m: m.json()["state"] == "acknowledged", timeout_s=10)
        assert "olga" in str(acked.json())
        again = await floor.command("ack", {"alarm": GRADE_A_5UM}, "twice")
        assert again["ok"] is False
        assert again["code"] == "not_allowed_now"
        too_long = await floor.command(
            "shelve", {"alarm": GRADE_A_5UM, "duration_s": 1e9}, "maintenance"
        )
        assert too_long["ok"] is False
        reply = await floor.command(
            "shelve", {"alarm": GRADE_A_5UM, "duration_s": 600}, "filter change"
        )
        assert reply["ok"] is True, reply
        await a.wait_for(lambda m: m.json()["state"] == "shelved", timeout_s=10)
        reply = await floor.command("unshelve", {"alarm": GRADE_A_5UM}, "done")
        assert reply["ok"] is True, reply
    unknown = await floor.command("ack", {"alarm": "no.such.alarm"}, "?")
    assert unknown["code"] == "unknown_object"


async def test_room_state_switches_the_limit_set(floor: Floor) -> None:
    """at_rest by command: the at-rest alarms come out of suppression, the others go in."""
    in_op = "room.cab-a.in_operation.p50.action"
    at_rest = "room.cab-a.at_rest.p50.action"
    reply = await floor.command("room_state", {"room": "cab-a", "state": "at_rest"}, "shift end")
    assert reply["ok"] is True, reply
    async with MqttCollector(HOST, floor.broker.port, f"{floor.prefix}/alarms/#") as a:
        await a.wait_for(
            lambda m: m.topic.endswith(f"/{in_op}") and m.json()["state"] == "suppressed",
            timeout_s=20,
        )
        await a.wait_for(
            lambda m: m.topic.endswith(f"/{at_rest}") and m.json()["state"] == "unacknowledged",
            timeout_s=30,
        )
    with contextlib.suppress(Exception):
        await floor.command("room_state", {"room": "cab-a", "state": "in_operation"}, "back")


async def test_alarm_transitions_are_events_in_the_tsdb(floor: Floor) -> None:
    """Every transition is a point of `alarm_events`, tagged with the alarm and its new state."""
    async with MqttCollector(HOST, floor.broker.port, f"{floor.prefix}/events/alarm") as seen:
        ev = await seen.wait_for(
            lambda m: m.json()["key"] == GRADE_A_5UM and m.json()["to"] == "unacknowledged",
            timeout_s=30,
        )
    selector = (
        f'{{__name__="alarm_events_value",site="{floor.cfg.site.id}",'
        f'key="{GRADE_A_5UM}",to="unacknowledged"}}'
    )
    rows = await asyncio.to_thread(floor.tsdb.wait_export, selector, bool, 30.0)
    (series,) = rows
    assert series["metric"]["priority"] == "critical"
    assert series["metric"]["cause"] == "alarm"
    assert ev.json()["ts_ns"] // 1_000_000 in series["timestamps"]


async def test_alarm_states_survive_a_restart(floor: Floor) -> None:
    """Acknowledged before a restart: still acknowledged, by the same person, after it."""
    async with MqttCollector(HOST, floor.broker.port, f"{floor.prefix}/alarms/{GRADE_A_5UM}") as a:
        await a.wait_for(lambda m: m.json()["state"] == "unacknowledged", timeout_s=30)
        reply = await floor.command("ack", {"alarm": GRADE_A_5UM}, "seen before the restart")
        assert reply["ok"] is True, reply
        await a.wait_for(lambda m: m.json()["state"] == "acknowledged", timeout_s=10)
    floor.stop.set()
    await asyncio.wait_for(floor.task, 30)
    again = Daemon(floor.cfg, {}, ConfigSource("(test)", "1" * 64))
    stop = asyncio.Event()
    task = asyncio.create_task(again.run(stop))
    try:
        async with asyncio.timeout(30):
            await again.ready.wait()
        assert again.alarms.state(GRADE_A_5UM) == "acknowledged"
        async with MqttCollector(
            HOST, floor.broker.port, f"{floor.prefix}/alarms/{GRADE_A_5UM}"
        ) as a:
            kept = await a.wait_for(lambda m: m.retain, timeout_s=10)
        assert kept.json()["state"] == "acknowledged"
        assert kept.json()["acknowledged_by"] == "olga"
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
