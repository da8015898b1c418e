"""Every device family as a user runs it: `cellfab simulate` and `cellfab run` as two separate
processes on one site file (serial devices through the pty the simulator links at `port`),
with telemetry observed on a real mosquitto."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import HOST, Mosquitto, MqttCollector, free_port, require_binary

pytestmark = pytest.mark.integration

FLEET = """
[site]
id = "{site}"
[state]
dir = "{state}"
[mqtt]
url = "{mqtt}"

[[devices]]
id = "inc-1"
device_class = "co2_incubator"
area = "suite-grade-c"
driver = "modbus_tcp"
host = "127.0.0.1"
port = {inc_port}
profile = "co2-incubator"
poll_period_s = 0.25
[devices.simulator]
model = "co2_incubator"
probe_warmup_s = 0.0

[[devices]]
id = "pc-1"
device_class = "particle_counter"
area = "suite-grade-b"
driver = "lighthouse_remote"
host = "127.0.0.1"
port = {pc_port}
sample_time_s = 60
poll_period_s = 0.25
[devices.simulator]
model = "lighthouse_remote"
grade = "B"
time_scale = 120.0

[[devices]]
id = "br-1"
device_class = "bioreactor"
area = "suite-grade-c"
driver = "opcua"
url = "opc.tcp://127.0.0.1:{br_port}/cellfab/bioreactor/"
profile = "xuri-like-bioreactor"
mode = "subscribe"
poll_period_s = 0.25
timeout_s = 2.0
[devices.simulator]
model = "bioreactor"
time_scale = 100.0

[[buses]]
id = "rs485-1"
port = "{bus_link}"
[buses.simulator]
time_scale = 10.0

[[devices]]
id = "dp-b"
device_class = "room_dp"
area = "suite-grade-b"
driver = "modbus_rtu"
bus = "rs485-1"
unit_id = 41
profile = "huba-699m"
max_gap_registers = 3
poll_period_s = 0.25
[devices.simulator]
setpoint_pa = 45.0

[[devices]]
id = "dp-c"
device_class = "room_dp"
area = "suite-grade-c"
driver = "modbus_rtu"
bus = "rs485-1"
unit_id = 42
profile = "huba-699m"
max_gap_registers = 3
poll_period_s = 0.25
[devices.simulator]
setpoint_pa = 30.0

[[devices]]
id = "cc-1"
device_class = "cell_counter"
area = "qc-lab"
driver = "cell_counter_serial"
port = "{cc_link}"
poll_period_s = 0.25
[devices.simulator]
model = "cell_counter"
time_scale = 600.0
period_s = 300.0
"""


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(require_binary("mosquitto"), tmp_path_factory.mktemp("mosq")) as server:
        yield server


def cellfab(*args: str) -> list[str]:
    return [sys.executable, "-m", "controller.cli", *args]


async def stop(proc: asyncio.subprocess.Process) -> int:
    proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), 30)


async def test_every_family_runs_as_simulate_plus_run(tmp_path: Path, broker: Mosquitto) -> None:
    """Each device's telemetry reaches MQTT with every tag good, from two separate processes."""
    site = f"fleet-{free_port()}"
    path = tmp_path / "site.toml"
    path.write_text(
        FLEET.format(
            site=site,
            state=tmp_path / "state",
            mqtt=broker.url,
            inc_port=free_port(),
            pc_port=free_port(),
            cc_link=tmp_path / "cc-1",
            bus_link=tmp_path / "rs485-1",
            br_port=free_port(),
        )
    )
    sim_log, run_log = tmp_path / "simulate.log", tmp_path / "run.log"
    with sim_log.open("wb") as fh:
        sim = await asyncio.create_subprocess_exec(
            *cellfab("simulate", "-c", str(path)), stdout=fh, stderr=fh
        )
    try:
        async with MqttCollector(HOST, broker.port, f"cellfab/{site}/telemetry/#") as mqtt:
            with run_log.open("wb") as fh:
                daemon = await asyncio.create_subprocess_exec(
                    *cellfab("run", "-c", str(path)), stdout=fh, stderr=fh
                )
            try:
                for device in ("inc-1", "br-1", "pc-1", "dp-b", "dp-c", "cc-1"):
                    topic = f"cellfab/{site}/telemetry/{device}"
                    msg = await mqtt.wait_for(
                        lambda m, t=topic: (
                            m.topic == t and set(m.json()["quality"].values()) == {"good"}
                        ),
                        timeout_s=60,
                    )
                    assert msg.json()["values"], device
            finally:
                assert await stop(daemon) == 0, run_log.read_text()
    finally:
        assert await stop(sim) == 0, sim_log.read_text()
    for link in ("cc-1", "rs485-1"):
        assert not (tmp_path / link).exists(), "the simulator removes its pty links on exit"
