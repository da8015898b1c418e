"""Shared parts of the no-loss tests: a site file, `cellfab run` as a process, read-backs.

The daemon runs as a real process (so SIGKILL is a real kill), its log lines are read as it
writes them and awaited; what it published on MQTT is the list of what was taken, and
VictoriaMetrics' export is what was stored. Nothing here sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import re
import signal
import sqlite3
import sys
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from controller.configload import load_site
from simulators.runner import serve_devices
from tests.servers import MqttCollector, Received, VictoriaMetrics, free_port, wait_until

DEVICES = ("inc-1", "inc-2")
HEAD = """
[site]
id = "{site}"
[state]
dir = "{state}"
"""
MQTT = """
[mqtt]
url = "{url}"
reconnect_min_s = 0.05
reconnect_max_s = 0.3
health_period_s = 1.0
"""
INFLUX = """
[influx]
url = "{url}"
token = "test-token"
flush_interval_s = 0.2
retry_min_s = 0.05
retry_max_s = 0.5
timeout_s = 2.0
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
poll_period_s = {period}
timeout_s = 0.5
[devices.simulator]
seed = {seed}
probe_warmup_s = 0.0
"""
# a writable tag makes the daemon keep an audit trail (commands change the process)
COMMAND_TAG = """
[[command_tags]]
tag = "inc-1.temp_setpoint"
min = 30.0
max = 39.0
"""


def device_block(dev_id: str, port: int, seed: int, period_s: float = 0.25) -> str:
    """One simulated CO2 incubator polled every `period_s`."""
    return DEVICE.format(id=dev_id, port=port, seed=seed, period=period_s)


@contextlib.asynccontextmanager
async def serve_incubators(tmp_path: Path) -> AsyncIterator[list[int]]:
    """The two incubators of DEVICES, simulated in-process; yields their ports."""
    ports = [free_port(), free_port()]
    text = '[site]\nid = "sims"\n' + "".join(
        device_block(dev, port, seed)
        for seed, (dev, port) in enumerate(zip(DEVICES, ports, strict=True), 1)
    )
    path = tmp_path / "sims.toml"
    path.write_text(text)
    async with serve_devices(load_site(path).devices):
        yield ports


def seq_of(scan: dict[str, Any]) -> int:
    """A telemetry payload's sequence number."""
    return int(scan["seq"])


def cellfab(*args: str) -> list[str]:
    """argv of the `cellfab` command line in this venv."""
    return [sys.executable, "-m", "controller.cli", *args]


def write_site(
    tmp_path: Path,
    ports: list[int],
    *,
    mqtt: str | None,
    influx: str | None,
    extra: str = "",
    periods: tuple[float, float] = (0.25, 0.25),
) -> tuple[Path, str]:
    """A site file for the two incubators; returns it and its MQTT topic prefix."""
    site = f"nl-{free_port()}"
    text = HEAD.format(site=site, state=tmp_path / "state")
    if mqtt:
        text += MQTT.format(url=mqtt)
    if influx:
        text += INFLUX.format(url=influx)
    text += extra
    for seed, (dev, port, period) in enumerate(zip(DEVICES, ports, periods, strict=True), 1):
        text += device_block(dev, port, seed, period)
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path, f"cellfab/{site}"


def site_id(prefix: str) -> str:
    return prefix.rsplit("/", 1)[1]


async def stop_cleanly(daemon: DaemonProcess) -> int:
    """SIGTERM, exit 0, and the number of scans the daemon says it took."""
    code = await daemon.terminate()
    assert code == 0, daemon.tail()
    line = await daemon.wait_log(r"pollers stopped after (\d+) scans")
    match = re.search(r"after (\d+) scans", line)
    assert match is not None
    return int(match[1])


class DaemonProcess:
    """`cellfab run -c SITE` as a child process whose log lines can be awaited.

    A reader task drains its output all the time (a full pipe would stall the daemon) and
    keeps every line, so a wait can look at lines written before it started.
    """

    def __init__(self, site: Path) -> None:
        self.site = site
        self.lines: list[str] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    async def start(self) -> None:
        self.lines = []
        self._changed = asyncio.Event()
        self._proc = await asyncio.create_subprocess_exec(
            *cellfab("run", "-c", str(self.site)),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = asyncio.create_task(self._read(), name="daemon log")

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        while raw := await self._proc.stdout.readline():
            self.lines.append(raw.decode(errors="replace").rstrip())
            self._changed.set()
            self._changed = asyncio.Event()
        self._changed.set()

    async def wait_log(self, pattern: str, timeout_s: float = 30.0, since: int = 0) -> str:
        """The first line from index `since` on matching `pattern`; fails if the log ends."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    changed = self._changed
                    for line in self.lines[since:]:
                        if re.search(pattern, line):
                            return line
                    if self._reader is not None and self._reader.done():
                        raise AssertionError(f"log ended before {pattern!r}:\n{self.tail()}")
                    await changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"no log line {pattern!r} in {timeout_s} s:\n{self.tail()}"
            ) from None

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.lines[-n:])

    def send_sighup(self) -> None:
        """Ask for a reload of the site file."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGHUP)

    async def terminate(self, timeout_s: float = 30.0) -> int:
        """SIGTERM: the orderly stop (sinks drain); returns the exit code."""
        return await self._end(signal.SIGTERM, timeout_s)

    async def kill(self) -> int:
        """SIGKILL: the abrupt death of the process."""
        return await self._end(signal.SIGKILL, 10.0)

    async def _end(self, sig: signal.Signals, timeout_s: float) -> int:
        proc = self._proc
        assert proc is not None
        if proc.returncode is None:
            proc.send_signal(sig)
        try:
            code = await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"daemon did not stop on {sig.name}:\n{self.tail()}") from None
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 10)
        return code

    async def close(self) -> None:
        """Leave nothing running (for `finally`)."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


def telemetry(messages: list[Received], prefix: str) -> dict[str, list[dict[str, Any]]]:
    """device -> its telemetry payloads, in arrival order."""
    out: dict[str, list[dict[str, Any]]] = {}
    head = f"{prefix}/telemetry/"
    for m in messages:
        if m.topic.startswith(head):
            out.setdefault(m.topic.removeprefix(head), []).append(m.json())
    return out


def gap_events(messages: list[Received], prefix: str) -> list[dict[str, Any]]:
    """Payloads of `<prefix>/events/gap`, in arrival order."""
    return [m.json() for m in messages if m.topic == f"{prefix}/events/gap"]


def ns_of(iso: str) -> int:
    """`2026-11-22T07:50:42.123456789Z` (mqtt.iso_utc) back to ns since the epoch."""
    whole, frac = iso.rstrip("Z").split(".")
    seconds = int(datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp())
    return seconds * 1_000_000_000 + int(frac)


def expected_series(scans: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """What the store must hold for these scans: field -> {timestamp ms: value}.

    Every tag has `<tag>_quality` on every scan; the value field exists when it has a value.
    """
    want: dict[str, dict[int, float]] = {}
    for scan in scans:
        ts_ms = scan["ts_ns"] // 1_000_000
        for tag, value in scan["values"].items():
            want.setdefault(f"{tag}_quality", {})[ts_ms] = float(
                {"good": 0, "uncertain": 1, "bad": 2}[scan["quality"][tag]]
            )
            if value is not None:
                want.setdefault(tag, {})[ts_ms] = float(value)
    return want


def stored_series(
    vm: VictoriaMetrics, site: str, device: str, want: dict[str, dict[int, float]], klass: str
) -> tuple[dict[str, dict[int, float]], dict[str, list[int]]]:
    """VM's series of one device once it holds at least `want`'s points: field -> {ms: value},
    and field -> timestamps stored more than once."""
    selector = f'{{__name__=~"{klass}_.*",site="{site}",device="{device}"}}'
    total = sum(len(v) for v in want.values())
    rows: list[dict[str, Any]] = []

    def complete() -> bool:
        nonlocal rows
        rows = vm.export(selector)
        return sum(len(x["timestamps"]) for x in rows) >= total

    with contextlib.suppress(AssertionError):  # still short: the comparison says what lacks
        wait_until(complete, 30.0, f"{total} points of {device}")
    wait_until(lambda: settled(vm), 30.0, "VictoriaMetrics to store what it took")
    rows = vm.export(selector)  # now with any second copy that came in meanwhile
    got: dict[str, dict[int, float]] = {}
    counts: dict[str, Counter[int]] = {}
    for row in rows:  # one field may span series (e.g. a new `config` tag after a restart)
        field = row["metric"]["__name__"].removeprefix(f"{klass}_")
        counts.setdefault(field, Counter()).update(row["timestamps"])
        got.setdefault(field, {}).update(zip(row["timestamps"], row["values"], strict=True))
    dupes = {f: sorted(t for t, n in c.items() if n > 1) for f, c in counts.items()}
    return got, {f: d for f, d in dupes.items() if d}


def settled(vm: VictoriaMetrics) -> bool:
    """Every row VM has taken in is in its storage, hence in an export after a force_flush.

    Without this, an export can show a point before its second copy, written a moment
    later, becomes visible: a duplicate would pass unseen.
    """
    pending = vm_metrics(vm, "vm_pending_rows{")
    return bool(pending) and all(value == 0 for value in pending)


def vm_metrics(vm: VictoriaMetrics, prefix: str) -> list[float]:
    """The values of VM's own metrics whose line starts with `prefix`."""
    with urllib.request.urlopen(f"{vm.url}/metrics", timeout=5) as resp:  # noqa: S310 (ours)
        text = resp.read().decode()
    return [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)]


def assert_stored_exactly_once(
    vm: VictoriaMetrics, site: str, device: str, scans: list[dict[str, Any]]
) -> None:
    """Every field of every scan is in VM once, at the scan's own timestamp, same value."""
    want = expected_series(scans)
    (klass,) = {s["device_class"] for s in scans}
    got, dupes = stored_series(vm, site, device, want, klass)
    assert not dupes, f"{device}: stored more than once (field: timestamps ms): {dupes}"
    assert got.keys() == want.keys(), f"{device}: fields {sorted(got)} != {sorted(want)}"
    for field, points in want.items():
        missing = sorted(points.keys() - got[field].keys())
        extra = sorted(got[field].keys() - points.keys())
        assert not missing, f"{device}.{field}: {len(missing)} scans missing, first {missing[:5]}"
        assert not extra, f"{device}.{field}: {len(extra)} points never published: {extra[:5]}"
        for ts_ms, value in points.items():
            stored = got[field][ts_ms]
            assert math.isclose(stored, value, rel_tol=1e-9), (
                f"{device}.{field} at {ts_ms}: stored {stored}, published {value}"
            )


def assert_seqs_once(scans: list[dict[str, Any]], top: int, first: int = 1) -> None:
    """Sequence numbers `first..top` each exactly once."""
    counts = Counter(s["seq"] for s in scans)
    twice = sorted(seq for seq, n in counts.items() if n > 1)
    missing = sorted(set(range(first, top + 1)) - counts.keys())
    assert not twice, f"seqs published more than once: {twice[:10]}"
    assert not missing, f"seqs never published: {missing[:10]} ({len(missing)} in all)"
    assert max(counts) == top, f"published up to seq {max(counts)}, the daemon took {top}"


class _RecordingClient(aiomqtt.Client):
    """aiomqtt's client, also noting each PUBLISH's packet id and DUP flag as it arrives."""

    def __init__(self, sink: list[tuple[str, int, bool]], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sink = sink

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self._sink.append((str(message.topic), int(message.mid), bool(message.dup)))
        super()._on_message(client, userdata, message)


class DupAwareCollector(MqttCollector):
    """An MqttCollector that also records, per message, whether the broker marked it DUP: a
    broker re-sending us a message whose PUBACK it lost (its restart) is the broker's QoS 1,
    not the daemon publishing twice, and the tests must tell one from the other."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.packets: list[tuple[str, int, bool]] = []  # (topic, packet id, DUP) per message

    def _client(self) -> aiomqtt.Client:  # MqttCollector._client, with the recording class
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if self._persistent:
            properties.SessionExpiryInterval = 600
        return _RecordingClient(
            self.packets,
            self._host,
            self._port,
            identifier=self._identifier,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=not self._persistent,
            properties=properties,
            timeout=5,
        )


def _spool_row(spool_path: Path, sql: str, params: tuple[object, ...] = ()) -> Any:
    """The first row of a query on the daemon's spool (read-only: WAL lets us read along)."""
    db = sqlite3.connect(f"file:{spool_path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute(sql, params).fetchone()
    finally:
        db.close()


def committed_seq(spool_path: Path) -> int:
    """The last seq the daemon committed to its spool."""
    row = _spool_row(spool_path, "SELECT value FROM meta WHERE key = 'last_seq'")
    return int(row[0]) if row else 0


def committed_events(spool_path: Path, kind: str, since_ns: int) -> int:
    """How many `kind` events from `since_ns` on the spool holds (committed, not yet retired)."""
    sql = "SELECT count(*) FROM events WHERE kind = ? AND t_ns >= ?"
    return int(_spool_row(spool_path, sql, (kind, since_ns))[0])


def persisted_ack(spool_path: Path, cursor: str) -> int:
    """Up to which seq the spool has `cursor`'s ack on disk."""
    row = _spool_row(spool_path, "SELECT acked FROM cursors WHERE name = ?", (cursor,))
    return int(row[0]) if row else 0


def open_outage_since(spool_path: Path, sink: str) -> int | None:
    """When `sink`'s open outage began, as the spool has it on disk (None: none open)."""
    sql = "SELECT outage_since_ns FROM cursors WHERE name = ?"
    row = _spool_row(spool_path, sql, (sink,))
    return int(row[0]) if row and row[0] is not None else None


async def _poll_spool(
    read: Callable[[], Any], done: Callable[[Any], bool], timeout_s: float
) -> Any:
    """`read()` in a thread (the collectors keep the loop) until `done(value)`; the value."""
    async with asyncio.timeout(timeout_s):
        while True:
            value = await asyncio.to_thread(read)
            if done(value):
                return value
            await asyncio.sleep(0.05)  # poll cadence: a file offers nothing to await


async def wait_open_outage(spool_path: Path, sink: str, timeout_s: float = 30.0) -> int:
    """Return `sink`'s outage start once the daemon has committed it."""
    read = functools.partial(open_outage_since, spool_path, sink)
    return int(await _poll_spool(read, lambda since: since is not None, timeout_s))


async def wait_committed(spool_path: Path, above: int, timeout_s: float = 30.0) -> int:
    """Return once the daemon has committed a seq above `above` (scans it took meanwhile,
    when nothing else can show them: its broker is down)."""
    read = functools.partial(committed_seq, spool_path)
    return int(await _poll_spool(read, lambda seq: seq > above, timeout_s))


async def wait_events(spool_path: Path, kind: str, since_ns: int, timeout_s: float = 30.0) -> None:
    """Return once the daemon has committed a `kind` event from `since_ns` on."""
    read = functools.partial(committed_events, spool_path, kind, since_ns)
    await _poll_spool(read, lambda count: count > 0, timeout_s)
