"""SIGHUP reloads the site file: a bad file changes nothing, a good one changes only what changed.

The daemon runs as `cellfab run` for the signal path (a real process, a real SIGHUP), and
in-process where the test must see that an unchanged device kept its very task and
connection, which is what "keeps polling without a gap" means.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from controller.alarm_service import SYSTEM
from controller.app import Daemon
from controller.audit import read_lines, trail_path
from controller.configload import load_site
from controller.daemon_parts import ConfigSource
from drivers.sample import utc_now_ns
from simulators.runner import serve_devices
from tests.servers import HOST, Mosquitto, MqttCollector, free_port, require_binary

pytestmark = pytest.mark.integration

HEAD = """
[site]
id = "{site}"
[state]
dir = "{state}"
[mqtt]
url = "{mqtt}"
"""
DEVICE = """
[[devices]]
id = "{id}"
device_class = "co2_incubator"
area = "suite-1"
driver = "modbus_tcp"
host = "127.0.0.1"
port = {port}
profile = "co2-incubator"
poll_period_s = 0.2
timeout_s = 0.5
[devices.simulator]
seed = {seed}
probe_warmup_s = 0.0
"""
WRITABLE = """
[[command_tags]]
tag = "inc-1.temp_setpoint"
min = 30.0
max = 39.0
"""


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    with Mosquitto(require_binary("mosquitto"), tmp_path_factory.mktemp("mosq")) as server:
        yield server


def site_file(tmp_path: Path, broker: Mosquitto, ports: list[int]) -> tuple[Path, str]:
    """A site file for a site id of its own (its MQTT topics are the test's alone)."""
    site = f"hup-{free_port()}"
    path = tmp_path / "site.toml"
    path.write_text(site_text(tmp_path, broker, ports, site))
    return path, site


def site_text(tmp_path: Path, broker: Mosquitto, ports: list[int], site: str) -> str:
    text = HEAD.format(site=site, state=tmp_path / "state", mqtt=broker.url)
    for i, port in enumerate(ports):
        text += DEVICE.format(id=f"inc-{i + 1}", port=port, seed=i + 1)
    return text + WRITABLE


class LogLines:
    """The daemon's log, line by line as it writes it, awaitable."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self._stream = stream
        self.lines: list[str] = []

    async def wait_for(self, pattern: str, timeout_s: float = 20.0) -> str:
        async with asyncio.timeout(timeout_s):
            while True:
                raw = await self._stream.readline()
                if not raw:
                    raise AssertionError(f"log ended before {pattern!r}: {self.lines[-5:]}")
                line = raw.decode(errors="replace").rstrip()
                self.lines.append(line)
                if re.search(pattern, line):
                    return line


@pytest_asyncio.fixture(loop_scope="session")
async def sims(tmp_path: Path) -> AsyncIterator[list[int]]:
    """Two simulated incubators, served in-process."""
    ports = [free_port(), free_port()]
    text = '[site]\nid = "sims"\n' + "".join(
        DEVICE.format(id=f"inc-{i + 1}", port=p, seed=i + 1) for i, p in enumerate(ports)
    )
    path = tmp_path / "sims.toml"
    path.write_text(text)
    async with serve_devices(load_site(path).devices):
        yield ports


async def test_bad_config_on_sighup_leaves_the_old_one_running(
    tmp_path: Path, broker: Mosquitto, sims: list[int]
) -> None:
    path, site = site_file(tmp_path, broker, sims[:1])
    topic = f"cellfab/{site}/telemetry/inc-1"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller.cli", "run", "-c", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    log = LogLines(proc.stdout)
    try:
        async with MqttCollector(HOST, broker.port, topic) as telemetry:
            await log.wait_for(r"ready: 1 devices")
            await telemetry.wait_for(lambda m: True)
            path.write_text(path.read_text().replace("poll_period_s = 0.2", 'poll_period_s = "x"'))
            proc.send_signal(signal.SIGHUP)
            refused = await log.wait_for(r"reload refused")
            assert "devices.0.poll_period_s" in refused + "\n".join(log.lines)
            seen = len(telemetry.messages)
            await telemetry.wait_count(lambda m: True, seen + 5)  # still polling
    finally:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(log.wait_for(r"stopped$"), 20)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    records = [ln.record for ln in read_lines(trail_path(tmp_path / "state")) if ln.record]
    assert [r.action for r in records] == ["config_load", "config_reload"]
    assert records[1].result.startswith("refused: ")
    assert "poll_period_s" in records[1].result


@contextlib.asynccontextmanager
async def running(path: Path) -> AsyncIterator[Daemon]:
    """A daemon on `path`, in-process, ready; stopped (and drained) on exit."""
    daemon = Daemon(load_site(path), source=ConfigSource(str(path), "0" * 64))
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        async with asyncio.timeout(20):
            await daemon.ready.wait()
        yield daemon
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def reload(daemon: Daemon) -> str | None:
    """SIGHUP's path in-process: one reload, awaited; what it said."""
    done = daemon.reloaded
    daemon.request_reload()
    await asyncio.wait_for(done.wait(), 20)
    return daemon.last_reload


async def test_reload_adds_a_device_and_leaves_the_others_untouched(
    tmp_path: Path, broker: Mosquitto, sims: list[int]
) -> None:
    path, site = site_file(tmp_path, broker, sims[:1])
    async with running(path) as daemon:
        before = daemon.devices["inc-1"]
        scans_before = before.poller.stats.scans
        path.write_text(site_text(tmp_path, broker, sims, site))
        assert await reload(daemon) == "accepted: devices +inc-2"
        assert daemon.devices["inc-1"] is before  # same driver, connection and schedule
        assert before.task is not None
        assert not before.task.done()
        async with asyncio.timeout(20):
            while not (
                daemon.devices["inc-2"].poller.stats.scans
                and before.poller.stats.scans > scans_before + 2
            ):
                await daemon.journal.changed()
        assert before.poller.stats.skipped == 0
        assert ("inc-2", "chamber_temp") in daemon.store.index
        # the same file again: nothing to do, still audited
        assert await reload(daemon) == "accepted: no change"
    records = [ln.record for ln in read_lines(trail_path(tmp_path / "state")) if ln.record]
    assert [r.action for r in records] == ["config_load", "config_reload", "config_reload"]
    assert records[1].result == "accepted: devices +inc-2"


async def self_report_after(daemon: Daemon, t_ns: int) -> None:
    """Until the daemon's own stream (which also checks device gaps) reports after `t_ns`."""
    async with asyncio.timeout(20):
        while True:
            sl = daemon.store.device_slice(SYSTEM)
            if sl is not None and int(daemon.store.t_receive_ns[sl].max()) > t_ns:
                return
            await daemon.journal.changed()


async def test_a_device_added_by_reload_is_watched_for_gaps_and_removed_once_its_batch_ends(
    tmp_path: Path, broker: Mosquitto, sims: list[int]
) -> None:
    path, site = site_file(tmp_path, broker, sims[:1])
    async with running(path) as daemon:
        dead = free_port()  # nothing listens: inc-2 never gives a good reading
        path.write_text(site_text(tmp_path, broker, [sims[0], dead], site))
        assert await reload(daemon) == "accepted: devices +inc-2"
        async with asyncio.timeout(20):
            while not daemon.devices["inc-2"].poller.stats.scans:
                await daemon.journal.changed()
        await self_report_after(daemon, utc_now_ns())  # inc-2's gap is open now
        path.write_text(site_text(tmp_path, broker, sims[:1], site))
        assert daemon.batches is not None
        daemon.batches.start("inc-2", "LOT-42", "TIL", "expansion", user="qa", known={"inc-2"})
        assert await reload(daemon) == (  # a running batch keeps its device
            "refused: inc-2 runs batch LOT-42: end the batch before removing the device"
        )
        assert "inc-2" in daemon.devices
        daemon.batches.end("inc-2", "LOT-42", user="qa")
        removing_ns = utc_now_ns()
        assert await reload(daemon) == "accepted: devices -inc-2"
        async with asyncio.timeout(20):  # recorded while the daemon runs, not at its shutdown
            while not (gaps := [g for g in daemon.journal.gaps() if g.devices == ("inc-2",)]):
                await daemon.journal.changed()
        seen_ns = utc_now_ns()
    (gap,) = gaps
    assert gap.cause.startswith("device unreachable: ")
    assert removing_ns <= gap.end_ns <= seen_ns  # it ends when inc-2 left the config


async def test_a_user_whose_key_file_is_unsafe_is_refused_and_the_daemon_runs_on(
    tmp_path: Path, broker: Mosquitto, sims: list[int]
) -> None:
    path, _site = site_file(tmp_path, broker, sims[:1])
    key = tmp_path / "eve.key"
    key.write_text("00" * 32)
    key.chmod(0o644)  # readable by everyone: not a secret any more
    async with running(path) as daemon:
        path.write_text(
            path.read_text()
            + '[[roles]]\nname = "operator"\n'
            + f'[[users]]\nid = "eve"\nrole = "operator"\nkey_file = "{key}"\n'
        )
        why = await reload(daemon)
        assert why is not None
        assert why.startswith("refused: users.0.key_file: ")
        assert "eve.key" in why
        scans = daemon.devices["inc-1"].poller.stats.scans
        async with asyncio.timeout(20):  # still polling
            while daemon.devices["inc-1"].poller.stats.scans < scans + 2:
                await daemon.journal.changed()


async def test_reload_that_needs_a_restart_changes_nothing(
    tmp_path: Path, broker: Mosquitto, sims: list[int]
) -> None:
    path, site = site_file(tmp_path, broker, sims[:1])
    async with running(path) as daemon:
        path.write_text(site_text(tmp_path, broker, sims, "another-site"))
        assert await reload(daemon) == "refused: needs a restart: [site] changed"
        assert list(daemon.devices) == ["inc-1"]
        assert daemon.cfg.site.id == site
