"""Real peers for integration tests: mosquitto, VictoriaMetrics and MQTT subscribers.

Every server runs as our own subprocess on an OS-assigned loopback port with its own temp
directory, in its own session, and is stopped and reaped by pid: a shared broker or a VM on
:8428 that someone else runs is never touched. Readiness is polled against the real port or
/health with a deadline, because a subprocess offers nothing to await.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiomqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HOST = "127.0.0.1"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    """A loopback TCP port the OS just handed out (free unless someone races us for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def require_binary(name: str) -> str:
    """The path of `name`; skips the test without it, but FAILS under CI=true."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (`make system-deps` installs it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll a condition that offers no event to await (a subprocess, a port), with a deadline."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


async def async_wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """`wait_until` for code on the event loop, e.g. a sink's counters."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.01)


class _Server:
    """A subprocess on a fixed port: start, wait until ready, stop by pid, restart."""

    name = "server"

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.log_path = workdir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        atexit.register(self.kill)  # an interrupted session leaves no process behind

    def argv(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        """True while our process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the process and return once it serves; raises with its log if it died."""
        if self.running:
            raise RuntimeError(f"{self.name} is running already")
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.ready():
            if not self.running or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.name} did not start:\n{self.log_tail()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM (a clean shutdown that saves state), SIGKILL after a deadline; reaped."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: the abrupt death of the process."""
        self._signal(signal.SIGKILL)

    def restart(self) -> None:
        """Stop and start again on the same port with the same data directory."""
        self.stop()
        self.start()

    def _signal(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines the server wrote, for error messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throwaway CA and of a server certificate it signed."""

    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path, host: str = HOST) -> TlsFiles:
    """A CA and a server certificate for `host` (IP and localhost SANs), valid for a day."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cellfab test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


class Mosquitto(_Server):
    """Debian's mosquitto with persistence, anonymous access and TCP_NODELAY, as root too.

    With `tls`, a second listener on `tls_port` serves TLS with those files.
    """

    name = "mosquitto"

    def __init__(
        self, binary: str, workdir: Path, port: int | None = None, *, tls: TlsFiles | None = None
    ) -> None:
        super().__init__(workdir, port)
        self.binary = binary
        self.tls_port = free_port() if tls else None
        self.config_path = workdir / "mosquitto.conf"
        lines = [
            "user root",  # as root, 2.0 drops to `mosquitto`, which cannot write here
            "per_listener_settings false",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {workdir}/",
            "max_queued_messages 100000",
            "set_tcp_nodelay true",
            "log_dest stderr",
            "connection_messages true",
            f"listener {self.port} {HOST}",
        ]
        if tls:
            lines += [f"listener {self.tls_port} {HOST}", f"cafile {tls.ca}"]
            lines += [f"certfile {tls.cert}", f"keyfile {tls.key}"]
        self.config_path.write_text("\n".join([*lines, ""]))

    @property
    def url(self) -> str:
        """`mqtt://127.0.0.1:<port>`."""
        return f"mqtt://{HOST}:{self.port}"

    @property
    def tls_url(self) -> str:
        """`mqtts://127.0.0.1:<tls_port>` (only with `tls`)."""
        if self.tls_port is None:
            raise RuntimeError("this broker has no TLS listener")
        return f"mqtts://{HOST}:{self.tls_port}"

    def argv(self) -> list[str]:
        return [self.binary, "-c", str(self.config_path)]

    def ready(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5):
                return True
        except OSError:
            return False


class VictoriaMetrics(_Server):
    """VictoriaMetrics single-node; rows are read back because it answers 204 to anything."""

    name = "victoria-metrics"

    def __init__(self, binary: str, workdir: Path, port: int | None = None) -> None:
        super().__init__(workdir, port)
        self.binary = binary
        self.data_dir = workdir / "data"

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>`: give it to the InfluxDB sink as is."""
        return f"http://{HOST}:{self.port}"

    def argv(self) -> list[str]:
        return [
            self.binary,
            f"-storageDataPath={self.data_dir}",
            f"-httpListenAddr={HOST}:{self.port}",
            "-search.latencyOffset=0s",
            "-loggerLevel=ERROR",
            # InfluxDB keys a point by series + timestamp, so writing it twice (a retry after
            # a crash, a scan written ahead of a backlog) overwrites; VictoriaMetrics keeps
            # both unless it deduplicates: this makes the stand-in behave like the real thing
            "-dedup.minScrapeInterval=1ms",
        ]

    def ready(self) -> bool:
        try:
            return self._get("/health") == b"OK"
        except (OSError, urllib.error.URLError):
            return False

    def _get(self, path: str, query: dict[str, str] | None = None) -> bytes:
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (our own http URL)
            body: bytes = resp.read()
            return body

    def export(self, match: str) -> list[dict[str, Any]]:
        """All series matching the selector, after a force_flush, as export's JSON lines."""
        self._get("/internal/force_flush")
        body = self._get("/api/v1/export", {"match[]": match}).decode()
        # export writes +Inf/-Inf, which is not JSON
        body = re.sub(r"(?<=[\[,])([+-])Inf(?=[,\]])", r"\g<1>Infinity", body)
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def wait_export(
        self,
        match: str,
        predicate: Callable[[list[dict[str, Any]]], bool],
        timeout_s: float = 15.0,
    ) -> list[dict[str, Any]]:
        """Export until `predicate(rows)` holds: rows show up ~1 s after a write even after
        a force_flush (VM 1.79), so a single export right after the write can be empty."""
        rows: list[dict[str, Any]] = []

        def ok() -> bool:
            nonlocal rows
            rows = self.export(match)
            return predicate(rows)

        try:
            wait_until(ok, timeout_s, f"VictoriaMetrics rows for {match}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last export: {rows!r}") from None
        return rows

    def _metric_sum(self, name: str, label_filter: str = "") -> float:
        total = 0.0
        for line in self._get("/metrics").decode().splitlines():
            if line.startswith(name + "{") and label_filter in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def rows_ignored(self) -> float:
        """`vm_rows_ignored_total`, all reasons: rows dropped for bad timestamps."""
        return self._metric_sum("vm_rows_ignored_total")

    def rows_invalid(self) -> float:
        """`vm_rows_invalid_total{type="influx"}`: lines it could not parse (still a 204)."""
        return self._metric_sum("vm_rows_invalid_total", 'type="influx"')


class TcpProxy:
    """A loopback TCP proxy with a fault switch: `freeze()` silently drops everything from
    then on (a dead network), `cut()` aborts the links (RST); new links work as usual."""

    def __init__(self, target_port: int, target_host: str = HOST) -> None:
        self._target = (target_host, target_port)
        self.port = 0
        self.links = 0
        self.dropped = b""
        self._frozen = False
        self._changed = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._link, HOST, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def freeze(self) -> None:
        """From now on, bytes in either direction are dropped (kept in `dropped`)."""
        self._frozen = True

    def cut(self) -> None:
        """Abort every open link on both sides and end the freeze for new links."""
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        self._frozen = False

    async def wait_dropped(self, marker: bytes, timeout_s: float = 10.0) -> None:
        """Return once `marker` has been dropped: the client did send it into the void."""
        async with asyncio.timeout(timeout_s):
            while marker not in self.dropped:
                await self._changed.wait()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self.links += 1
        self._writers += [writer, up_writer]
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._pump(reader, up_writer))
            tg.create_task(self._pump(up_reader, writer))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if self._frozen:
                    self.dropped += data
                    self._changed.set()
                    self._changed = asyncio.Event()
                else:
                    writer.write(data)
        writer.transport.abort()


@dataclass(frozen=True)
class Received:
    """One MQTT message as a subscriber saw it."""

    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        """The payload parsed as JSON."""
        return json.loads(self.payload)


class MqttCollector:
    """Subscribes with aiomqtt and records every message in order; reconnects by itself.

    `persistent=True` keeps a v5 session (and its QoS 1 queue) across disconnects, so
    messages published while the collector was away, e.g. during a broker restart, arrive.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topic_filter: str,
        *,
        qos: int = 1,
        persistent: bool = False,
        identifier: str | None = None,
    ) -> None:
        self._host, self._port, self._filter, self._qos = host, port, topic_filter, qos
        self._persistent = persistent
        self._identifier = identifier or f"collector-{os.getpid()}-{id(self):x}"
        self.messages: list[Received] = []
        self.subscriptions = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client_now: aiomqtt.Client | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name=f"collector {self._filter}")
        await self._until(lambda: self.subscriptions > 0, 10.0, "the first SUBACK")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def flush(self, timeout_s: float = 10.0) -> None:
        """Return once the broker has processed our PUBACKs for everything received so far.

        The broker reads one connection in order, so the PUBACK of a QoS 1 publish of ours
        proves it. Without this, a broker stopped right after a delivery keeps the message
        as unacknowledged and delivers it again after its restart (mosquitto 2.0).
        """
        await self._until(lambda: self._client_now is not None, timeout_s, "a connection")
        assert self._client_now is not None
        topic = f"cellfab-test/collector/{self._identifier}"
        await self._client_now.publish(topic, b"flush", qos=1, timeout=timeout_s)

    async def wait_for(
        self, predicate: Callable[[Received], bool], timeout_s: float = 10.0, since: int = 0
    ) -> Received:
        """The first message from index `since` on that matches; AssertionError on timeout."""
        found: list[Received] = []

        def match() -> bool:
            found[:] = [m for m in self.messages[since:] if predicate(m)][:1]
            return bool(found)

        await self._until(match, timeout_s, "a matching message")
        return found[0]

    async def wait_count(
        self, predicate: Callable[[Received], bool], count: int, timeout_s: float = 10.0
    ) -> list[Received]:
        """All matching messages once there are at least `count` of them."""
        await self._until(
            lambda: sum(1 for m in self.messages if predicate(m)) >= count,
            timeout_s,
            f"{count} matching messages",
        )
        return [m for m in self.messages if predicate(m)]

    async def _until(self, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
        try:
            async with asyncio.timeout(timeout_s):
                while not condition():
                    if self._task is not None and self._task.done():
                        self._task.result()  # re-raise a crash of the collector
                    await self._changed.wait()
        except TimeoutError:
            topics = [m.topic for m in self.messages[-10:]]
            raise AssertionError(
                f"timed out after {timeout_s} s waiting for {what} on {self._filter}; "
                f"{len(self.messages)} messages, last topics {topics}"
            ) from None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _client(self) -> aiomqtt.Client:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if self._persistent:
            properties.SessionExpiryInterval = 600
        return aiomqtt.Client(
            self._host,
            self._port,
            identifier=self._identifier,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=not self._persistent,
            properties=properties,
            timeout=5,
        )

    async def _run(self) -> None:
        while True:
            try:
                async with self._client() as client:  # fresh client per connection
                    await client.subscribe(self._filter, qos=self._qos)
                    self._client_now = client
                    self.subscriptions += 1
                    self._notify()
                    async for message in client.messages:
                        payload = message.payload
                        data = payload if isinstance(payload, bytes) else str(payload).encode()
                        self.messages.append(Received(str(message.topic), data, message.retain))
                        self._notify()
            except aiomqtt.MqttError:
                self._client_now = None
                await asyncio.sleep(0.05)  # reconnect pace while the broker is down


class MosquittoSub:
    """Debian's `mosquitto_sub` as an independent subscriber: code we did not write."""

    def __init__(self, binary: str, host: str, port: int, topic_filter: str) -> None:
        # stdio buffers the -d lines in a pipe until a message arrives; stdbuf (coreutils)
        # makes them line-buffered, so the SUBACK line can serve as the readiness signal
        self._argv = [require_binary("stdbuf"), "-oL", binary]
        self._argv += ["-h", host, "-p", str(port), "-t", topic_filter]
        self._argv += ["-q", "1", "-V", "mqttv5", "-v", "-d"]
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Self:
        self._proc = await asyncio.create_subprocess_exec(
            *self._argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(10):  # -d prints the SUBACK: subscribed from here on
                while "received SUBACK" not in await self._line():
                    pass
        except BaseException:
            await self._stop()  # __aexit__ does not run when __aenter__ raises
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await self._proc.wait()
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()

    async def _line(self) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        raw = await self._proc.stdout.readline()
        if not raw:
            raise AssertionError(f"mosquitto_sub exited with {await self._proc.wait()}")
        return raw.decode().rstrip("\n")

    async def messages(self, count: int, timeout_s: float = 10.0) -> list[tuple[str, bytes]]:
        """The next `count` messages as (topic, payload); debug lines are skipped."""
        out: list[tuple[str, bytes]] = []
        async with asyncio.timeout(timeout_s):
            while len(out) < count:
                line = await self._line()
                if line.startswith(("Client ", "Subscribed ")):
                    continue
                topic, _, payload = line.partition(" ")
                out.append((topic, payload.encode()))
        return out
