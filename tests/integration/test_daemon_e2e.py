"""The whole spine as a user runs it: `cellfab simulate` + `cellfab run` as processes, a real
mosquitto and a real VictoriaMetrics. Every scan must reach both, with the same timestamps."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

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

DEVICE = """
[[devices]]
id = "{id}"
device_class = "co2_incubator"
area = "suite9-grade-c"
driver = "modbus_tcp"
host = "127.0.0.1"
port = {port}
profile = "co2-incubator"
poll_period_s = 0.25
timeout_s = 0.5
[devices.simulator]
seed = {seed}
time_scale = 10.0
probe_warmup_s = 0.0
door_period_s = 60.0
door_open_s = 10.0
"""


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(require_binary("mosquitto"), tmp_path_factory.mktemp("mosq")) as server:
        yield server


@pytest.fixture(scope="module")
def tsdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    binary = require_binary("victoria-metrics")
    with VictoriaMetrics(binary, tmp_path_factory.mktemp("vm")) as server:
        yield server


def cellfab(*args: str) -> list[str]:
    return [sys.executable, "-m", "controller.cli", *args]


async def wait_port(port: int, timeout_s: float = 20.0) -> None:
    """The simulator subprocess listens (a process offers nothing else to await)."""
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                _, writer = await asyncio.open_connection(HOST, port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            return


@pytest_asyncio.fixture(loop_scope="session")
async def site(
    tmp_path: Path, broker: Mosquitto, tsdb: VictoriaMetrics
) -> AsyncIterator[tuple[Path, str]]:
    """A site file for two simulated incubators, their simulator process running."""
    site_id = f"e2e-{free_port()}"
    state = tmp_path / "state"
    text = f'[site]\nid = "{site_id}"\n[state]\ndir = "{state}"\n'
    text += f'[mqtt]\nurl = "{broker.url}"\n'
    text += f'[influx]\nurl = "{tsdb.url}"\ntoken = "test-token"\nflush_interval_s = 0.2\n'
    ports = [free_port(), free_port()]
    for i, port in enumerate(ports):
        text += DEVICE.format(id=f"inc-{i + 1}", port=port, seed=i + 1)
    path = tmp_path / "site.toml"
    path.write_text(text)
    sim = await asyncio.create_subprocess_exec(*cellfab("simulate", "-c", str(path)))
    try:
        for port in ports:
            await wait_port(port)
        yield path, site_id
    finally:
        sim.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(sim.wait(), 20) == 0


async def start_daemon(path: Path) -> tuple[asyncio.subprocess.Process, Path]:
    log = path.with_suffix(".log")
    with log.open("wb") as fh:
        proc = await asyncio.create_subprocess_exec(
            *cellfab("run", "-c", str(path)), stdout=fh, stderr=asyncio.subprocess.STDOUT
        )
    return proc, log


def is_status(site_id: str, state: str) -> Any:
    topic = f"cellfab/{site_id}/status"
    return lambda m: m.topic == topic and m.json()["state"] == state


def telemetry(messages: list[Received], site_id: str, device: str) -> list[dict[str, Any]]:
    topic = f"cellfab/{site_id}/telemetry/{device}"
    return [m.json() for m in messages if m.topic == topic]


async def test_every_scan_reaches_mqtt_and_tsdb_with_the_same_timestamp(
    site: tuple[Path, str], broker: Mosquitto, tsdb: VictoriaMetrics
) -> None:
    """Scans counted by the daemon = telemetry messages = TSDB points, per device, same ts."""
    path, site_id = site
    ignored_before = tsdb.rows_ignored()
    async with MqttCollector(HOST, broker.port, f"cellfab/{site_id}/#") as mqtt:
        daemon, log = await start_daemon(path)
        await mqtt.wait_for(is_status(site_id, "online"), timeout_s=30)
        for device in ("inc-1", "inc-2"):
            topic = f"cellfab/{site_id}/telemetry/{device}"
            await mqtt.wait_count(lambda m, t=topic: m.topic == t, 12, timeout_s=30)
        daemon.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(daemon.wait(), 30) == 0, log.read_text()
        await mqtt.wait_for(is_status(site_id, "offline"), timeout_s=10)
        messages = list(mqtt.messages)

    assert "event loop: uvloop" in log.read_text()  # what the unit runs on (eventloop.py)
    stopped = re.search(r"pollers stopped after (\d+) scans", log.read_text())
    assert stopped is not None, log.read_text()
    sent = {d: telemetry(messages, site_id, d) for d in ("inc-1", "inc-2")}
    everything = [m.json() for m in messages if m.topic.startswith(f"cellfab/{site_id}/telemetry/")]
    assert len(everything) == int(stopped[1])  # the devices' and the daemon's own stream
    all_seq = sorted(t["seq"] for t in everything)
    assert all_seq == list(range(1, int(stopped[1]) + 1))  # none lost, none twice

    for device, scans in sent.items():
        selector = f'{{__name__="co2_incubator_chamber_temp",site="{site_id}",device="{device}"}}'
        want = len(scans)
        (series,) = tsdb.wait_export(
            selector, lambda rows, n=want: sum(len(r["timestamps"]) for r in rows) >= n
        )
        assert series["metric"]["area"] == "suite9-grade-c"
        stored = dict(zip(series["timestamps"], series["values"], strict=True))
        published = {t["ts_ns"] // 1_000_000: t["values"]["chamber_temp"] for t in scans}
        assert stored.keys() == published.keys()
        for ts_ms, value in published.items():
            assert stored[ts_ms] == pytest.approx(value, rel=1e-9)
        for t in scans:
            assert 30.0 < t["values"]["chamber_temp"] < 40.0
            assert 0.0 <= t["values"]["co2"] < 10.0
            assert 0.0 < t["values"]["chamber_rh"] <= 100.0
            assert set(t["quality"].values()) == {"good"}
            assert t["units"]["chamber_temp"] == "degC"
    assert tsdb.rows_ignored() == ignored_before


async def test_status_is_lost_when_the_daemon_is_killed(
    site: tuple[Path, str], broker: Mosquitto
) -> None:
    """SIGKILL leaves no chance to say goodbye: the broker's will sets status to `lost`."""
    path, site_id = site
    async with MqttCollector(HOST, broker.port, f"cellfab/{site_id}/status") as mqtt:
        daemon, _ = await start_daemon(path)
        online = await mqtt.wait_for(is_status(site_id, "online"), timeout_s=30)
        daemon.send_signal(signal.SIGKILL)
        await daemon.wait()
        await mqtt.wait_for(is_status(site_id, "lost"), timeout_s=30)
    assert online.json()["site"] == site_id
    async with MqttCollector(HOST, broker.port, f"cellfab/{site_id}/status") as late:
        retained = await late.wait_for(is_status(site_id, "lost"), timeout_s=10)
    assert retained.retain, "a dashboard that connects later must see `lost` too"
