"""Loops closed on a simulated bioreactor over OPC UA, commanded over a real mosquitto.

The daemon runs in-process with its real drivers and sinks; the bioreactor simulator is
the asyncua server of `cellfab simulate`, at 100x time so a 20-minute thermal time
constant passes in 12 s. Gains are the real-time tuning scaled to that clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import pytest_asyncio

from controller.access_config import UserKey, load_keys
from controller.app import Daemon
from controller.audit import read_lines, trail_path
from controller.audit_chain import verify_trail
from controller.cmd_client import new_nonce, reply_verified, send_to_broker, sign_request
from controller.config import SiteConfig
from controller.configload import load_site_text
from controller.daemon_parts import ConfigSource
from simulators.runner import Simulation, serve_devices
from tests.servers import HOST, Mosquitto, MqttCollector, free_port, require_binary

pytestmark = pytest.mark.integration

SITE = """
[site]
id = "{site}"
[state]
dir = "{state}"
[mqtt]
url = "{mqtt}"
health_period_s = 1.0

[[devices]]
id = "br-1"
device_class = "bioreactor"
area = "suite1-grade-c"
driver = "opcua"
url = "opc.tcp://127.0.0.1:{port}/cellfab/bioreactor/"
profile = "xuri-like-bioreactor"
mode = "poll"
poll_period_s = 0.1
timeout_s = 2.0
[devices.simulator]
model = "bioreactor"
seed = 7
time_scale = 100.0
step_s = 5.0

[[loop_groups]]
id = "br-1"
period_s = 0.1
stale_after_s = 1.0

[[loops]]
id = "br-1.temp"
group = "br-1"
pv = "br-1.temperature"
output = "br-1.heater_output"
takeover = {{ tag = "br-1.temperature_auto", remote = 0.0, local = 1.0 }}
sp_min = 30.0
sp_max = 39.0
sp_max_step = 2.0
setpoint = 37.0
kp = 12.0
ki_per_s = 0.8
out_min = 0.0
out_max = 100.0
safe_after_s = 1.0
safe_output = 5.0

[[command_tags]]
tag = "br-1.rock_rate_sp"
min = 0.0
max = 30.0
max_step = 10.0

[[users]]
id = "alice"
role = "operator"
key_file = "alice.key"

[[users]]
id = "victor"
role = "viewer"
key_file = "victor.key"

[[roles]]
name = "operator"
allow = [
  {{ verbs = ["setpoint", "mode", "write"], objects = ["br-1.*"] }},
  {{ verbs = ["batch/start", "batch/end"], objects = ["br-*"] }},
]

[[roles]]
name = "viewer"
"""


@dataclass
class Floor:
    """A running daemon and simulator, and what a client needs to command them."""

    cfg: SiteConfig
    daemon: Daemon
    sim: Simulation
    keys: dict[str, UserKey]
    broker: Mosquitto
    path: Path

    @property
    def prefix(self) -> str:
        return self.cfg.topic_prefix

    def value(self, device: str, tag: str) -> float:
        return float(self.daemon.store.value[self.daemon.store.index[(device, tag)]])

    async def send(self, request: dict[str, Any]) -> dict[str, Any]:
        return await send_to_broker(HOST, self.broker.port, self.prefix, request)

    def request(self, user: str, verb: str, body: dict[str, Any], **kw: Any) -> dict[str, Any]:
        key = self.keys[user].secret if user in self.keys else secrets.token_bytes(32)
        kw.setdefault("now", datetime.now(UTC))
        kw.setdefault("nonce", new_nonce())
        kw.setdefault("reason", "integration test")
        kw.setdefault("site", self.cfg.site.id)
        return sign_request(user, key, verb, body, **kw)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(require_binary("mosquitto"), tmp_path_factory.mktemp("mosq")) as server:
        yield server


def write_key(path: Path) -> None:
    path.write_text(secrets.token_hex(32))
    path.chmod(0o600)


@pytest_asyncio.fixture(loop_scope="session")
async def floor(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[Floor]:
    """A fresh floor for a test that changes the process."""
    async with running_floor(tmp_path, broker) as f:
        yield f


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def shared_floor(
    tmp_path_factory: pytest.TempPathFactory, broker: Mosquitto
) -> AsyncIterator[Floor]:
    """One floor for the tests whose commands are all refused (nothing changes)."""
    async with running_floor(tmp_path_factory.mktemp("shared"), broker) as f:
        yield f


@contextlib.asynccontextmanager
async def running_floor(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[Floor]:
    site = f"ctl-{free_port()}"
    text = SITE.format(site=site, state=tmp_path / "state", mqtt=broker.url, port=free_port())
    path = tmp_path / "site.toml"
    path.write_text(text)
    for user in ("alice", "victor"):
        write_key(tmp_path / f"{user}.key")
    cfg = load_site_text(text, path)
    keys = load_keys(cfg.users, tmp_path)
    stop = asyncio.Event()
    async with serve_devices(cfg.devices) as sim:
        daemon = Daemon(cfg, keys, ConfigSource(str(path), "0" * 64))
        task = asyncio.create_task(daemon.run(stop))
        try:
            async with asyncio.timeout(20):
                await daemon.ready.wait()
            f = Floor(cfg, daemon, sim, keys, broker, path)
            await until(f, lambda: daemon.loop_groups[0].ticks > 0, 10, "the first loop tick")
            yield f
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)


async def until(floor: Floor, condition: Any, timeout_s: float, what: str) -> None:
    """Wait for a condition on the daemon's state, re-checked after every scan it records."""
    try:
        async with asyncio.timeout(timeout_s):
            while not condition():
                await floor.daemon.journal.changed()
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}") from None


async def test_setpoint_command_moves_the_bioreactor_temperature(floor: Floor) -> None:
    """A signed set-point step is accepted, the loop drives the heater, the PV follows."""
    topic = f"{floor.prefix}/telemetry/br-1.temp"
    async with MqttCollector(HOST, floor.broker.port, topic) as loop_data:
        await until(floor, lambda: floor.value("br-1", "temperature_auto") == 0.0, 10, "takeover")
        reply = await floor.send(
            floor.request("alice", "setpoint", {"loop": "br-1.temp", "value": 38.0})
        )
        assert reply["ok"] is True, reply
        await until(
            floor, lambda: floor.value("br-1.temp", "sp_target") == 38.0, 5, "new set point"
        )

        def settled(m: Any) -> bool:
            v = m.json()["values"]
            return v["sp_target"] == 38.0 and abs(v["pv"] - 38.0) < 0.15

        settled_msg = await loop_data.wait_for(settled, timeout_s=90)
        rows = [m.json()["values"] for m in loop_data.messages]
    assert settled_msg.json()["quality"]["output"] == "good"
    assert all(0.0 <= r["output"] <= 100.0 for r in rows)
    assert all(r["write_ok"] == 1.0 for r in rows)
    # auto throughout, after the first tick (manual at the heater's present output: prime)
    assert [r["mode"] for r in rows[1:]] == [1.0] * (len(rows) - 1)


async def test_bad_measurement_puts_the_loop_in_its_safe_state(floor: Floor) -> None:
    """A Bad status on the PV node: the loop holds, then writes its safe output."""
    await until(floor, lambda: floor.value("br-1.temp", "mode") == 1.0, 10, "auto")
    await floor.sim.sims["br-1"].inject("bad_status", True, tag="temperature")  # type: ignore[attr-defined]
    await until(floor, lambda: floor.value("br-1.temp", "mode") == 3.0, 15, "safe state")
    await until(
        floor, lambda: floor.value("br-1", "heater_output") == 5.0, 10, "safe output written"
    )
    await floor.sim.sims["br-1"].inject("bad_status", False, tag="temperature")  # type: ignore[attr-defined]
    await until(floor, lambda: floor.value("br-1.temp", "mode") == 1.0, 15, "back to auto")


async def test_manual_mode_and_tag_write(floor: Floor) -> None:
    """Manual at a fixed output reaches the heater; a commandable tag is written."""
    reply = await floor.send(
        floor.request(
            "alice", "mode", {"loop": "br-1.temp", "mode": "manual", "manual_output": 20.0}
        )
    )
    assert reply["ok"] is True, reply
    assert reply_verified(floor.keys["alice"].secret, reply)  # the daemon's, signed for alice
    await until(floor, lambda: floor.value("br-1", "heater_output") == 20.0, 10, "manual output")
    reply = await floor.send(
        floor.request("alice", "write", {"tag": "br-1.rock_rate_sp", "value": 12.0})
    )
    assert reply["ok"] is True, reply
    await until(floor, lambda: floor.value("br-1", "rock_rate_sp") == 12.0, 10, "rock rate")
    reply = await floor.send(floor.request("alice", "mode", {"loop": "br-1.temp", "mode": "auto"}))
    assert reply["ok"] is True, reply


def _tampered(floor: Floor) -> dict[str, Any]:
    request = floor.request("alice", "setpoint", {"loop": "br-1.temp", "value": 37.5})
    request["value"] = 38.5
    return request


REFUSALS: list[tuple[str, Any]] = [
    (
        "unknown_user",
        lambda f: f.request("mallory", "setpoint", {"loop": "br-1.temp", "value": 37.5}),
    ),
    ("bad_signature", _tampered),
    (
        "stale_timestamp",
        lambda f: f.request(
            "alice",
            "setpoint",
            {"loop": "br-1.temp", "value": 37.5},
            now=datetime.now(UTC) - timedelta(seconds=300),
        ),
    ),
    (
        "future_timestamp",
        lambda f: f.request(
            "alice",
            "setpoint",
            {"loop": "br-1.temp", "value": 37.5},
            now=datetime.now(UTC) + timedelta(seconds=300),
        ),
    ),
    (
        "not_allowed",
        lambda f: f.request("victor", "setpoint", {"loop": "br-1.temp", "value": 37.5}),
    ),
    (
        "out_of_limits",
        lambda f: f.request("alice", "setpoint", {"loop": "br-1.temp", "value": 45.0}),
    ),
    (
        "step_too_large",
        lambda f: f.request("alice", "setpoint", {"loop": "br-1.temp", "value": 32.0}),
    ),
    ("unknown_object", lambda f: f.request("alice", "setpoint", {"loop": "br-1.ph", "value": 7.0})),
    (
        "unknown_object",
        lambda f: f.request("alice", "write", {"tag": "br-1.heater_output", "value": 1}),
    ),
]


@pytest.mark.parametrize(
    ("code", "make"), REFUSALS, ids=[f"{c}-{i}" for i, (c, _) in enumerate(REFUSALS)]
)
async def test_refused_commands_are_answered_and_audited(
    shared_floor: Floor, code: str, make: Any
) -> None:
    """Each refusal gets a reply with its code and a human reason, and an audit record."""
    floor = shared_floor
    sp_before = floor.value("br-1.temp", "sp_target")
    reply = await floor.send(make(floor))
    assert reply["ok"] is False
    assert reply["code"] == code, reply
    assert reply["message"]
    assert floor.value("br-1.temp", "sp_target") == sp_before
    trail = trail_path(floor.cfg.state.dir)
    last = list(read_lines(trail))[-1].record
    assert last is not None
    assert last.result.startswith(f"refused ({code})")


async def test_replayed_request_is_refused(shared_floor: Floor) -> None:
    """The same signed request twice: carried out once, the replay refused."""
    floor = shared_floor
    request = floor.request("alice", "setpoint", {"loop": "br-1.temp", "value": 37.0})
    assert (await floor.send(request))["ok"] is True
    again = await floor.send(request)
    assert again["ok"] is False
    assert again["code"] == "replayed_nonce"


async def test_malformed_json_is_audited_without_a_reply(shared_floor: Floor) -> None:
    """Nothing to reply to, but the attempt is in the trail and on the audit topic."""
    floor = shared_floor
    events = f"{floor.prefix}/events/audit"
    async with MqttCollector(HOST, floor.broker.port, events) as audit:
        async with aiomqtt.Client(HOST, floor.broker.port) as client:
            await client.publish(f"{floor.prefix}/cmd/setpoint", b"{not json", qos=1)
        event = await audit.wait_for(lambda m: "malformed_json" in m.json()["result"])
    assert event.json()["role"] == "(unauthenticated)"
    assert verify_trail(trail_path(floor.cfg.state.dir)).intact


async def cellfab_cmd(floor: Floor, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller.cli", "cmd", "-c", str(floor.path),
        "--user", "alice", "--key-file", str(floor.path.parent / "alice.key"), *args,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode()


async def test_cellfab_cmd_signs_sends_and_prints_the_reply(shared_floor: Floor) -> None:
    """The shell tool: accepted -> exit 0 and the reply; refused -> exit 1 and the reason."""
    floor = shared_floor
    code, out = await cellfab_cmd(
        floor, "--reason", "from the shell", "setpoint", "br-1.temp", "37"
    )
    assert code == 0, out
    assert json.loads(out)["ok"] is True
    code, out = await cellfab_cmd(floor, "--reason", "too far", "setpoint", "br-1.temp", "31")
    assert code == 1
    assert json.loads(out)["code"] == "step_too_large"
    trail = [ln.record for ln in read_lines(trail_path(floor.cfg.state.dir)) if ln.record]
    assert any(r.reason == "from the shell" and r.client.startswith("cellfab-cmd") for r in trail)


async def test_reload_keeps_the_commanded_set_point_and_control(floor: Floor) -> None:
    """A reload that retunes a loop: the new group carries on, nothing is handed back."""
    reply = await floor.send(
        floor.request("alice", "setpoint", {"loop": "br-1.temp", "value": 37.5})
    )
    assert reply["ok"] is True, reply
    old_group = floor.daemon.loop_groups[0]
    floor.path.write_text(floor.path.read_text().replace("kp = 12.0", "kp = 10.0"))
    done = floor.daemon.reloaded
    floor.daemon.request_reload()
    await asyncio.wait_for(done.wait(), 20)
    assert floor.daemon.last_reload == "accepted: loops/command tags changed"
    new_group = floor.daemon.loop_groups[0]
    assert new_group is not old_group
    assert float(new_group.params.kp[0]) == 10.0
    assert old_group.keep == {"br-1.temp"}  # the old group did not hand control back
    await until(floor, lambda: new_group.ticks > 3, 10, "the new group ticking")
    assert floor.value("br-1.temp", "sp_target") == 37.5
    assert floor.value("br-1", "temperature_auto") == 0.0  # never handed back
    reply = await floor.send(
        floor.request("alice", "setpoint", {"loop": "br-1.temp", "value": 37.0})
    )
    assert reply["ok"] is True, reply  # commands reach the new group
    await until(floor, lambda: floor.value("br-1.temp", "sp_target") == 37.0, 5, "new sp")


async def test_batch_context_is_stamped_on_every_reading(floor: Floor) -> None:
    """batch/start: the device's and its loop's telemetry carry the batch; batch/end stops it."""
    start = {"device": "br-1", "batch": "LOT-2026-0042", "product": "CAR-T", "phase": "expansion"}
    topic = f"{floor.prefix}/telemetry/#"
    async with MqttCollector(HOST, floor.broker.port, topic) as telemetry:
        reply = await floor.send(floor.request("alice", "batch/start", start))
        assert reply["ok"] is True, reply
        since = len(telemetry.messages)
        dev = await telemetry.wait_for(lambda m: m.topic.endswith("/br-1"), since=since + 2)
        loop = await telemetry.wait_for(lambda m: m.topic.endswith("/br-1.temp"), since=since + 2)
        assert dev.json()["batch"] == loop.json()["batch"] == "LOT-2026-0042"
        again = await floor.send(floor.request("alice", "batch/start", start | {"batch": "LOT-9"}))
        assert again["code"] == "batch_running"
        wrong = await floor.send(
            floor.request("alice", "batch/end", {"device": "br-1", "batch": "LOT-9"})
        )
        assert wrong["code"] == "no_such_batch"
        end = {"device": "br-1", "batch": "LOT-2026-0042"}
        assert (await floor.send(floor.request("alice", "batch/end", end)))["ok"] is True
        since = len(telemetry.messages)
        after = await telemetry.wait_for(lambda m: m.topic.endswith("/br-1"), since=since + 2)
        assert "batch" not in after.json()
    name = await floor.send(floor.request("alice", "batch/start", start | {"batch": "Jane Doe"}))
    assert name["code"] == "bad_field"  # a lot id, never a patient's name
    await asyncio.to_thread(floor.daemon.archive.commit)  # type: ignore[union-attr]
    out = floor.path.parent / "report"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller.cli", "report", "-c", str(floor.path),
        "--batch", "LOT-2026-0042", "--out", str(out), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    printed, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, printed
    html = (out / "report.html").read_text()
    assert "LOT-2026-0042" in html
    assert "br-1.temp" in html  # the loop's data were recorded under the batch too
    assert (out / "SHA256SUMS").read_text().count("report.") >= 2
    history = [ln.record for ln in read_lines(trail_path(floor.cfg.state.dir)) if ln.record]
    actions = [r.action for r in history if r.action.startswith("cmd.batch")]
    assert actions == [
        "cmd.batch/start",
        "cmd.batch/start",
        "cmd.batch/end",
        "cmd.batch/end",
        "cmd.batch/start",
    ]


async def test_health_is_retained_on_mqtt(shared_floor: Floor) -> None:
    """`<prefix>/health`: per device last good time and counters, sinks, loops, nothing stuck."""
    floor = shared_floor
    topic = f"{floor.prefix}/health"

    def complete(m: Any) -> bool:
        return m.json()["devices"]["br-1"]["scans"] > 0

    async with MqttCollector(HOST, floor.broker.port, topic) as late_subscriber:
        await late_subscriber.wait_for(lambda m: m.retain, timeout_s=10)  # a retained copy
        doc = (await late_subscriber.wait_for(complete, timeout_s=10)).json()
    assert doc["site"] == floor.cfg.site.id
    assert set(doc["devices"]) == {"br-1"}
    assert doc["devices"]["br-1"]["scans"] > 0
    assert doc["devices"]["br-1"]["failed_scans"] == 0
    assert doc["loops"]["br-1.temp"]["write_error"] is None
    assert "lag" in doc["sinks"]["mqtt"]
    assert doc["stuck"] == []
    assert 0.0 <= doc["spool"]["usage_fraction"] < 0.8
    assert doc["spool"]["file_bytes"] > 0
    assert doc["devices"]["br-1"]["last_good"].endswith("Z")


async def test_an_unreachable_device_is_recorded_as_a_gap(floor: Floor) -> None:
    """The bioreactor's server goes away and comes back: one gap record on events/gap."""
    sim = floor.sim.sims["br-1"]
    async with MqttCollector(HOST, floor.broker.port, f"{floor.prefix}/events/gap") as gaps:
        await sim.inject("disconnect", True)  # type: ignore[attr-defined]
        await until(floor, lambda: floor.value("br-1.temp", "mode") >= 2.0, 30, "the loop holding")
        await sim.inject("disconnect", False)  # type: ignore[attr-defined]
        gap = await gaps.wait_for(
            lambda m: m.json()["cause"].startswith("device unreachable"), timeout_s=60
        )
    doc = gap.json()
    assert doc["devices"] == ["br-1"]
    assert doc["duration_s"] > 0
