"""MQTT sink: telemetry per scan, a retained status with a will, our own reconnect loop.

aiomqtt has no reconnect, and a reused Client re-sends on reconnect what it queued while
down (the "ghost publish", shared/libraries.md §3), so every connection gets a fresh Client
and the journal cursor alone keeps the backlog: a scan is acked only after its PUBACK.
Topics and payloads are a contract, documented in docs/mqtt.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from controller.cancel import cancel_and_wait
from controller.command_service import CommandService
from controller.config import SiteConfig
from controller.lineproto import unconfigured
from controller.sinks.drain import DrainDeadline
from controller.sinks.outage import Outage, OutageMemory
from controller.spool_budget import Gap, one_line
from controller.stream import StreamCursor as Cursor
from controller.watchdog import Heart, Liveness
from drivers.backoff import Backoff
from drivers.sample import Quality, Scan, utc_now_ns
from drivers.transitions import TransitionLog

log = logging.getLogger(__name__)

QUALITY_NAMES = {Quality.GOOD: "good", Quality.UNCERTAIN: "uncertain", Quality.BAD: "bad"}
# Telemetry is small and every QoS 1 publish waits for its PUBACK: Nagle's algorithm would
# hold a packet back until the previous one is acked, adding up to a delayed-ACK (40 ms).
NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


_T = TypeVar("_T")


class PublishRefused(aiomqtt.MqttCodeError):
    """The broker answered a publish with a failure reason code (an MQTT 5 PUBACK of 0x80 or
    more: not authorized, quota exceeded, …): it did not take the message."""

    def __str__(self) -> str:
        code = self.rc.value if isinstance(self.rc, ReasonCode) else self.rc
        return f"publish refused by the broker: {self.rc} (reason code {code})"


class RefusalAwareClient(aiomqtt.Client):
    """aiomqtt's client, except that a publish the broker refuses raises PublishRefused.

    aiomqtt 2.5 completes a publish on any PUBACK and drops its reason code, so a refusal
    (an ACL's "not authorized", "quota exceeded") looked like delivery: the cursor moved and
    the spool deleted the scans. paho hands the code to `_on_publish` with the message id,
    and `publish` waits for that id's PUBACK inside `_pending_call`, where we raise.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused: dict[int, ReasonCode] = {}

    def _on_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        if reason_code.is_failure and mid in self._pending_publishes:
            self._refused[mid] = reason_code
        super()._on_publish(client, userdata, mid, reason_code, properties)

    @contextlib.contextmanager
    def _pending_call(self, mid: int, value: _T, pending_dict: dict[int, _T]) -> Iterator[None]:
        try:
            with super()._pending_call(mid, value, pending_dict):
                yield
        finally:
            refused = self._refused.pop(mid, None)  # never left for a later use of the id
        if refused is not None:
            raise PublishRefused(refused)


def iso_utc(t_ns: int) -> str:
    """`2026-11-22T07:50:42.123456789Z`: UTC with all nine digits of the ns timestamp."""
    seconds, nanos = divmod(int(t_ns), 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"


def _dumps(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def _number(value: float | None) -> float | None:
    if value is None:
        return None
    number = float(value)  # numpy scalars are not JSON serialisable
    return number if math.isfinite(number) else None


def telemetry_payload(seq: int, scan: Scan, device_class: str, area: str) -> bytes:
    """The JSON of one scan on `<prefix>/telemetry/<device>`."""
    values: dict[str, float | None] = {}
    quality: dict[str, str] = {}
    reasons: dict[str, str] = {}
    units: dict[str, str] = {}
    for s in scan.samples:
        values[s.tag] = _number(s.value)
        quality[s.tag] = QUALITY_NAMES[s.quality]
        units[s.tag] = s.unit
        if s.quality is not Quality.GOOD and s.reason:
            reasons[s.tag] = s.reason
    message: dict[str, object] = {
        "ts": iso_utc(scan.t_scan_ns),
        "ts_ns": int(scan.t_scan_ns),
        "seq": seq,
        "device": scan.device,
        "device_class": device_class,
        "area": area,
        "values": values,
        "quality": quality,
        "reasons": reasons,
        "units": units,
    }
    if scan.backfill:
        message["backfill"] = True  # read back from the device's buffer after an outage
    if scan.batch:
        message["batch"] = scan.batch
    if scan.config:
        message["config"] = scan.config
    return _dumps(message)


def status_payload(state: str, site: str, version: str, t_ns: int | None = None) -> bytes:
    """The JSON on `<prefix>/status`: online, offline or lost."""
    ts = iso_utc(utc_now_ns() if t_ns is None else t_ns)
    return _dumps({"state": state, "ts": ts, "site": site, "version": version})


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to connect, from `mqtt.url` (userinfo wins over the config keys)."""

    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None

    @classmethod
    def from_config(cls, cfg: SiteConfig) -> Endpoint:
        """Parse `mqtt://[user[:pass]@]host[:port]` or `mqtts://…`; raises ValueError."""
        mq = cfg.mqtt
        if mq.url is None:
            raise ValueError("mqtt.url is not set: the MQTT sink is off")
        parts = urlsplit(mq.url)
        if not parts.hostname:
            raise ValueError(f"mqtt.url {mq.url!r} names no host")
        tls = parts.scheme == "mqtts"
        password = mq.password.get_secret_value() if mq.password else None
        return cls(
            host=parts.hostname,
            port=parts.port or (8883 if tls else 1883),
            tls=tls,
            username=unquote(parts.username) if parts.username else mq.username,
            password=unquote(parts.password) if parts.password else password,
        )


@dataclass
class MqttStats:
    """Counters for health reporting; `lag` lives on the sink (it is the cursor's)."""

    connected: bool = False
    connects: int = 0
    connect_failures: int = 0
    connection_losses: int = 0
    telemetry_published: int = 0
    events_published: int = 0
    status_published: int = 0
    publishes_refused: int = 0  # sessions ended by a refused data publish (data kept)
    last_error: str | None = None


class MqttSink:
    """Publishes every journal scan as telemetry and keeps `<prefix>/status` truthful."""

    def __init__(
        self,
        cfg: SiteConfig,
        cursor: Cursor,
        version: str,
        *,
        drain_timeout_s: float = 10.0,
        window: int = 100,
        rng: random.Random | None = None,
        commands: CommandService | None = None,
        liveness: Liveness | None = None,
        on_outage: Callable[[Gap], None] | None = None,
        outages: OutageMemory | None = None,
    ) -> None:
        self._heart = Heart(liveness, "sink:mqtt")
        self._outage = Outage(
            "MQTT broker", tuple(cfg.streams()), on_outage, memory=outages, key="mqtt"
        )
        self._states: dict[str, bytes] = {}  # topic -> latest retained state to publish
        self._live_sent: set[int] = set()  # published ahead of a backlog, not yet acked
        self._live_seq = 0
        self._states_changed = asyncio.Event()
        self._cfg = cfg
        self._commands = commands
        self._endpoint = Endpoint.from_config(cfg)
        self._cursor = cursor
        self._version = version
        self._prefix = cfg.topic_prefix
        self._status_topic = f"{self._prefix}/status"
        self._devices = cfg.streams()
        self._drain = DrainDeadline(cursor, drain_timeout_s)
        self._window = window
        self._backoff = Backoff(cfg.mqtt.reconnect_min_s, cfg.mqtt.reconnect_max_s, rng)
        self._where = f"{self._endpoint.host}:{self._endpoint.port}"
        self._link = TransitionLog(log, "MQTT broker")
        self._tls: ssl.SSLContext | None = None
        self._refusing = False  # the open outage is the broker refusing our data
        self._refused_topics: set[str] = set()  # status, states, replies: logged once each
        self._read_backoff = Backoff(cfg.mqtt.reconnect_min_s, cfg.mqtt.reconnect_max_s, rng)
        self.stats = MqttStats()

    @property
    def lag(self) -> int:
        """Scans not yet acknowledged by the broker."""
        return self._cursor.lag

    def health(self) -> dict[str, object]:
        """Counters and lag as one flat mapping."""
        return {**asdict(self.stats), "lag": self.lag}

    def add_streams(self, cfg: SiteConfig) -> None:
        """Publish the devices and loops of a reloaded config too (old ones stay known)."""
        self._devices = {**self._devices, **cfg.streams()}
        self._outage.follow(tuple(cfg.streams()))

    def set_state(self, suffix: str, payload: bytes) -> None:
        """Publish `payload` retained on `<prefix>/<suffix>` soon; only the latest counts."""
        self._states[f"{self._prefix}/{suffix}"] = payload
        self._states_changed.set()

    async def _publish_states(self, client: aiomqtt.Client) -> None:
        """Retained state topics (health): the latest of each, whenever it changes."""
        timeout_s = self._cfg.mqtt.publish_timeout_s
        sent: dict[str, bytes] = {}
        while True:
            self._states_changed.clear()
            for topic, payload in list(self._states.items()):
                if sent.get(topic) is not payload:
                    await self._publish_aside(client, topic, payload, timeout_s, retain=True)
                    sent[topic] = payload
            await self._states_changed.wait()

    async def run(self) -> None:
        """Forward until the journal is closed and drained (or the drain deadline passes)."""
        if self._endpoint.tls:
            self._tls = await asyncio.to_thread(self._tls_context)
        while True:
            try:
                await self._session()
            except* aiomqtt.MqttError as group:
                self._session_failed(group)
            else:
                self._heart.idle()
                return
            wait = self._backoff.failed()
            self._heart.busy(wait + self._cfg.mqtt.publish_timeout_s * 3 + 30.0)
            if not await self._drain.pause(wait):
                log.error(
                    "MQTT: giving up at shutdown, broker %s unreachable: %d scans not published",
                    self._where,
                    self.lag,
                )
                return

    def _tls_context(self) -> ssl.SSLContext:
        ca = self._cfg.mqtt.tls_ca_file
        return ssl.create_default_context(cafile=str(ca) if ca else None)

    def _new_client(self) -> aiomqtt.Client:
        """A fresh client for one connection: nothing queued in an old one can resurface."""
        mq = self._cfg.mqtt
        lost = status_payload("lost", self._cfg.site.id, self._version)
        client = RefusalAwareClient(
            self._endpoint.host,
            self._endpoint.port,
            username=self._endpoint.username,
            password=self._endpoint.password,
            identifier=mq.client_id or f"cellfab-{self._cfg.site.id}",
            protocol=aiomqtt.ProtocolVersion.V5,
            will=aiomqtt.Will(self._status_topic, lost, qos=1, retain=True),
            clean_start=mq.session_expiry_s == 0,
            properties=self._connect_properties(),
            keepalive=mq.keepalive_s,
            timeout=mq.publish_timeout_s,
            tls_context=self._tls,
            socket_options=NODELAY,
        )
        client.pending_calls_threshold = self._window + 10  # a full window is normal
        return client

    def _connect_properties(self) -> Properties | None:
        """A persistent session: the broker keeps our subscriptions (commands, QoS 1) for
        `session_expiry_s` across a reconnect. Outgoing data never rely on it: the spool
        cursor re-sends what the broker did not acknowledge."""
        expiry = self._cfg.mqtt.session_expiry_s
        if expiry == 0:
            return None
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = expiry
        return props

    async def _session(self) -> None:
        """One connection: status online, forward telemetry, then offline once drained."""
        async with self._new_client() as client:
            self._connected()
            try:
                await self._publish_status(client, "online")
                async with asyncio.TaskGroup() as tg:
                    inbound = tg.create_task(self._inbound(client), name="mqtt-inbound")
                    states = tg.create_task(self._publish_states(client), name="mqtt-states")
                    drained = await self._forward(client)
                    await cancel_and_wait(states)
                    await self._publish_status(client, "offline" if drained else "lost")
                    await cancel_and_wait(inbound)
            except asyncio.CancelledError:
                with contextlib.suppress(aiomqtt.MqttError):
                    await self._publish_status(client, "lost")
                raise

    async def _inbound(self, client: aiomqtt.Client) -> None:
        """Commands in, replies out; the iterator raises MqttError as soon as the link drops,
        which is also how an idle session notices a lost broker.

        Subscribed after each connect (the session is clean). Commands are handled one at a
        time, in arrival order, so two commands on one loop apply in the order sent.
        """
        commands = self._commands
        timeout_s = self._cfg.mqtt.publish_timeout_s
        if commands is not None:
            await client.subscribe(commands.subscription, qos=1, timeout=timeout_s)
        async for message in client.messages:
            if commands is None:
                log.warning("MQTT: message on %s although nothing is subscribed", message.topic)
                continue
            payload = message.payload
            if not isinstance(payload, bytes):
                payload = b"" if payload is None else str(payload).encode()
            for out in await commands.handle(str(message.topic), payload):
                await self._publish_aside(client, out.topic, out.payload, timeout_s)

    async def _forward(self, client: aiomqtt.Client) -> bool:
        """Publish pending scans a window at a time; False if the drain deadline passed."""
        qos = self._cfg.mqtt.telemetry_qos
        timeout_s = self._cfg.mqtt.publish_timeout_s
        while True:
            self._heart.idle()  # waiting for scans is not hanging
            if not await self._cursor.wait():
                break
            self._heart.busy(timeout_s * 3 + 30.0)  # a window of publishes, each timed out
            if self._cursor.gap_lag:
                await self._publish_gaps(client)
            if self._cursor.event_lag:
                await self._publish_events(client)
            if self._drain.expired():
                log.error("MQTT: drain deadline passed: %d scans not published", self.lag)
                return False
            backlog = self._cursor.lag > self._window
            if backlog:  # after an outage: the newest scans first, then the backlog in order
                live = self._live_window()
                await self._publish(client, live, qos, timeout_s)
                if live:  # only once every PUBACK is in: else the backlog pass sends them
                    self._live_seq = live[-1][0]
                    self._live_sent.update(seq for seq, _ in live)
            batch = self._cursor.peek(self._window)
            if not batch:  # woken for gaps or events only, or the spool could not read
                if self._cursor.lag:
                    await self._nothing_read()
                continue
            fresh = [(seq, scan) for seq, scan in batch if seq not in self._live_sent]
            self._live_sent.difference_update(seq for seq, _ in batch)
            await self._publish(client, fresh, qos, timeout_s)
            self._cursor.ack(batch[-1][0])  # every publish of the window got its PUBACK
            self._delivered()
            if backlog:  # drain at a bounded rate: live data keep their place
                await self._drain.pause(len(batch) / self._cfg.mqtt.backlog_max_msgs_per_s)
        return True

    def _live_window(self) -> list[tuple[int, Scan]]:
        """The newest scans not yet published ahead of the backlog (not acked: the backlog
        pass acks them in order and does not publish them again)."""
        head = self._cursor.acked + self._cursor.lag
        return self._cursor.peek_after(max(self._live_seq, head - self._window), self._window)

    async def _publish(
        self, client: aiomqtt.Client, scans: list[tuple[int, Scan]], qos: int, timeout_s: float
    ) -> None:
        """Telemetry for `scans`, concurrently; returns once every PUBACK is in."""
        async with asyncio.TaskGroup() as tg:
            for seq, scan in scans:
                topic = f"{self._prefix}/telemetry/{scan.device}"
                payload = self._payload(seq, scan)
                tg.create_task(client.publish(topic, payload, qos=qos, timeout=timeout_s))
        self.stats.telemetry_published += len(scans)

    async def _publish_events(self, client: aiomqtt.Client) -> None:
        """Events on `<prefix>/events/<kind>` (QoS 1), acked after their PUBACKs, in order."""
        timeout_s = self._cfg.mqtt.publish_timeout_s
        events = self._cursor.peek_events(100)
        if not events:  # pending, but the spool could not read them (it says why)
            await self._nothing_read()
            return
        for _, ev in events:
            body = {"ts": iso_utc(ev.t_ns), "key": ev.key, **ev.body}
            topic = f"{self._prefix}/events/{ev.kind}"
            await client.publish(topic, _dumps(body), qos=1, timeout=timeout_s)
        self.stats.events_published += len(events)
        self._cursor.ack_event(events[-1][0])
        self._delivered()

    async def _publish_gaps(self, client: aiomqtt.Client) -> None:
        """Recorded gaps on `<prefix>/events/gap` (QoS 1), acked after their PUBACKs."""
        timeout_s = self._cfg.mqtt.publish_timeout_s
        gaps = self._cursor.peek_gaps(100)
        if not gaps:  # pending, but the spool could not read them (it says why)
            await self._nothing_read()
            return
        for _, gap in gaps:
            body = {
                "start": iso_utc(gap.start_ns),
                "end": iso_utc(gap.end_ns),
                "duration_s": (gap.end_ns - gap.start_ns) / 1e9,
                "cause": gap.cause,
                "devices": list(gap.devices),
                "scans": gap.scans,
            }
            await client.publish(
                f"{self._prefix}/events/gap", _dumps(body), qos=1, timeout=timeout_s
            )
        self._cursor.ack_gap(gaps[-1][0])
        self._delivered()

    def _delivered(self) -> None:
        """The broker took data: an outage of refusals ends here (not at the connect)."""
        self._read_backoff.succeeded()
        if self._refusing:
            self._refusing = False
            self._outage.delivered()
            self._backoff.succeeded()
            self._link.ok(self._where)

    async def _nothing_read(self) -> None:
        """Something is pending but the spool gave nothing (it could not read its file, and
        logs why): wait, then retry; the session stays up."""
        wait = self._read_backoff.failed()
        self._heart.busy(wait + 30.0)
        await self._drain.pause(wait)

    async def _publish_aside(
        self,
        client: aiomqtt.Client,
        topic: str,
        payload: bytes,
        timeout_s: float,
        *,
        retain: bool = False,
    ) -> bool:
        """A QoS 1 publish that is not data (status, retained state, command reply): a
        refusal is logged once per topic and does not end the session, which would hold
        every scan back for a topic no consumer of the data needs."""
        try:
            await client.publish(topic, payload, qos=1, retain=retain, timeout=timeout_s)
        except PublishRefused as exc:
            if topic not in self._refused_topics:
                self._refused_topics.add(topic)
                log.error("MQTT: %s on %s; data publishing goes on", exc, topic)  # noqa: TRY400
            return False
        self._refused_topics.discard(topic)
        return True

    def _payload(self, seq: int, scan: Scan) -> bytes:
        meta = self._devices.get(scan.device)
        if meta is None:
            meta = self._devices[scan.device] = unconfigured(scan.device)
        return telemetry_payload(seq, scan, *meta)

    async def _publish_status(
        self, client: aiomqtt.Client, state: str, timeout_s: float | None = None
    ) -> None:
        payload = status_payload(state, self._cfg.site.id, self._version)
        timeout = timeout_s or self._cfg.mqtt.publish_timeout_s
        if await self._publish_aside(client, self._status_topic, payload, timeout, retain=True):
            self.stats.status_published += 1

    def _connected(self) -> None:
        self.stats.connected = True
        self.stats.connects += 1
        if self._refusing:  # reachable, but its refusals end only when it takes data
            return  # so the outage, the backoff and the failure state go on
        self._outage.delivered()
        self._backoff.succeeded()
        if not self._link.failing(self._where):
            log.info("MQTT: connected to %s (status on %s)", self._where, self._status_topic)
        self._link.ok(self._where)

    def _session_failed(self, group: BaseExceptionGroup[aiomqtt.MqttError]) -> None:
        first = _first_leaf(group)
        reason = one_line(str(first) or type(first).__name__)
        if isinstance(first, PublishRefused):  # the data stay in the spool, not acked
            if not self._refusing:
                log.error(
                    "MQTT: broker %s refuses our data (%s): nothing is acked, the spool keeps "
                    "it and it is sent again after a reconnect",
                    self._where,
                    reason,
                )
            self._refusing = True
            self.stats.publishes_refused += 1
        elif self.stats.connected:
            self.stats.connection_losses += 1
            reason = f"connection lost: {reason}"
        else:
            self.stats.connect_failures += 1
        self.stats.connected = False
        self.stats.last_error = reason
        self._outage.failed(reason)
        self._link.fail(self._where, reason)


def _first_leaf(group: BaseExceptionGroup[aiomqtt.MqttError]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
