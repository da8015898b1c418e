"""Generic OPC UA client driver: nodes as data, poll or subscribe, own reconnect.

asyncua's auto-reconnect only covers a connection that once worked, and re-creates the old
subscriptions with the old NodeIds even when a restarted server numbered its namespaces
anew. So this driver owns the session: any loss drops the client, and the next scan after
the backoff connects afresh, resolves the namespace index and every node again, and
re-creates the subscription. asyncua is imported inside functions only (~0.7 s), so a
site without OPC UA devices never loads it. Node config format: docs/devices/bioreactor.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import math
import random
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from drivers.backoff import Backoff
from drivers.opcua_config import NodeSpec, OpcUaConfig
from drivers.sample import Quality, Sample, utc_now_ns
from drivers.transitions import TransitionLog

if TYPE_CHECKING:
    from asyncua import ua
    from asyncua.client.client import Client
    from asyncua.common.node import Node

log = logging.getLogger(__name__)

NAN_REASON = "nan (device has no valid measurement)"
NODEID_PREFIXES = ("s=", "i=", "g=", "b=")
FLOAT32_MAX = 3.4028234663852886e38
_OPCUA_NULL_TIME = datetime.datetime(1601, 1, 1, tzinfo=datetime.UTC)  # DateTime 0: "no time"
INTEGER_RANGES: dict[str, tuple[int, int]] = {  # by ua.VariantType name
    "SByte": (-(2**7), 2**7 - 1),
    "Byte": (0, 2**8 - 1),
    "Int16": (-(2**15), 2**15 - 1),
    "UInt16": (0, 2**16 - 1),
    "Int32": (-(2**31), 2**31 - 1),
    "UInt32": (0, 2**32 - 1),
    "Int64": (-(2**63), 2**63 - 1),
    "UInt64": (0, 2**64 - 1),
}
NOISY_LOGGERS = (
    "asyncua.client.ua_session",
    "asyncua.client.ua_client",
    "asyncua.client.client",
    "asyncua.common.subscription",
    "asyncua.uaprotocol",
)


def quality_of(code: int) -> tuple[Quality, str | None]:
    """OPC UA StatusCode -> (quality, reason): the severity bits decide, the name explains."""
    from asyncua.ua.status_codes import get_name_and_doc  # noqa: PLC0415 - lazy, see module

    severity = code >> 30 & 3
    if severity == 0:
        return Quality.GOOD, None
    name = get_name_and_doc(code)[0]
    return (Quality.UNCERTAIN, name) if severity == 1 else (Quality.BAD, name)


def node_value(type_name: str, value: float) -> bool | int | float:
    """The value to encode for a node of VariantType `type_name`; ValueError if it cannot
    hold `value`. Integers round to nearest as the Modbus path does (37.9 -> 38, not 37);
    NaN, inf and out-of-range values are refused instead of escaping as OverflowError."""
    if type_name == "Boolean":
        return bool(value)
    if type_name in {"Double", "Float"}:
        if type_name == "Float" and math.isfinite(value) and abs(value) > FLOAT32_MAX:
            raise ValueError(f"{value:g} does not fit Float")
        return float(value)
    if not math.isfinite(value):  # integer types: asyncua answers BadTypeMismatch to a Double
        raise ValueError(f"{value} does not fit {type_name}")
    low, high = INTEGER_RANGES.get(type_name, (-math.inf, math.inf))
    if not low <= round(value) <= high:
        raise ValueError(f"{value:g} does not fit {type_name} ({low}..{high})")
    return round(value)


def datetime_ns(dt: datetime.datetime | None) -> int | None:
    """A tz-aware datetime as UTC ns; None when absent or OPC UA's null time.

    A DateTime of 0 (1601-01-01, OPC UA Part 6 §5.2.2.5: "not set") reaches us as that
    date; taken literally it would record a device time four centuries ago.
    """
    if dt is None or dt.replace(tzinfo=dt.tzinfo or datetime.UTC) <= _OPCUA_NULL_TIME:
        return None
    return int(dt.timestamp()) * 1_000_000_000 + int(dt.microsecond) * 1000


def sample_of(spec: NodeSpec, dv: ua.DataValue, t_receive_ns: int) -> Sample:
    """One DataValue as a Sample: status -> quality, NaN -> BAD, SourceTimestamp kept.

    A DataValue without a SourceTimestamp gets the ServerTimestamp as device time.
    """
    code = dv.StatusCode.value if dv.StatusCode is not None else 0
    quality, reason = quality_of(code)
    t_srv = datetime_ns(dv.ServerTimestamp)
    t_dev = datetime_ns(dv.SourceTimestamp) or t_srv
    raw = dv.Value.Value if dv.Value is not None else None
    if quality is Quality.BAD:
        return Sample(spec.tag, None, spec.unit, quality, t_receive_ns, reason, t_dev, t_srv)
    if isinstance(raw, bool | int | float):
        value = float(raw)
        if math.isnan(value):
            return Sample(
                spec.tag, None, spec.unit, Quality.BAD, t_receive_ns, NAN_REASON, t_dev, t_srv
            )
        if math.isinf(value):
            return Sample(
                spec.tag, None, spec.unit, Quality.BAD, t_receive_ns, "not finite", t_dev, t_srv
            )
        return Sample(spec.tag, value, spec.unit, quality, t_receive_ns, reason, t_dev, t_srv)
    reason = f"not a number: {type(raw).__name__}"
    return Sample(spec.tag, None, spec.unit, Quality.BAD, t_receive_ns, reason, t_dev, t_srv)


class _RateLimit(logging.Filter):
    """Lets one record per message template through per `period_s` (asyncua repeats its
    'Publish iteration crashed' traceback every second while a server is down)."""

    def __init__(self, period_s: float = 300.0) -> None:
        super().__init__()
        self._period = period_s
        self._last: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key, now = (record.name, str(record.msg)), time.monotonic()
        if now - self._last.get(key, -math.inf) < self._period:
            return False
        self._last[key] = now
        return True


def quiet_asyncua() -> None:
    """Rate-limit asyncua's per-second error spam; our TransitionLog reports the outage."""
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RateLimit) for f in logger.filters):
            logger.addFilter(_RateLimit())


class OpcUaDriver:
    """One OPC UA session to one device; `read()` returns one Sample per tag, every time."""

    def __init__(
        self,
        cfg: OpcUaConfig,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not cfg.nodes or cfg.namespace_uri is None:
            raise RuntimeError(f"device {cfg.id}: profile {cfg.profile!r} was not resolved")
        self._cfg = cfg
        self._specs = cfg.nodes
        self._by_tag = {s.tag: s for s in cfg.nodes}
        self._client: Client | None = None
        self._nodes: dict[str, Node] = {}
        self._unresolved: dict[str, str] = {}
        self._latest: dict[str, tuple[ua.DataValue, int, float]] = {}
        self._tag_of_handle: dict[int, str] = {}
        self._backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s, rng, clock)
        self._link = TransitionLog(log, f"device {cfg.id}")
        self._tags = TransitionLog(log, f"device {cfg.id} tag")
        self.sessions = 0  # sessions opened so far (tests: a restart made a new one)

    @property
    def tags(self) -> tuple[NodeSpec, ...]:
        """Tag name and unit of every value this driver produces."""
        return self._specs

    async def __aenter__(self) -> Self:
        quiet_asyncua()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._drop_client()

    async def read(self) -> list[Sample]:
        """One scan: every configured tag, with its quality."""
        down = await self._ensure_session()
        t_ns = utc_now_ns()
        if down is not None:
            return [Sample.bad(s.tag, s.unit, down, t_ns) for s in self._specs]
        if self._cfg.mode == "subscribe":
            samples = self._from_subscription(t_ns)
        else:
            samples = await self._poll()
        if self._answered():
            self._backoff.succeeded()
        for sample in samples:
            if sample.reason is None:
                self._tags.ok(sample.tag)
            else:
                self._tags.fail(sample.tag, sample.reason)
        return samples

    async def write(self, tag: str, value: float) -> None:
        """Write one value; raises ValueError (not writable, or a value the node's type cannot
        hold) or RuntimeError (refused, down)."""
        spec = self._by_tag.get(tag)
        if spec is None or not spec.writable:
            raise ValueError(f"device {self._cfg.id}: {tag!r} is not a writable tag")
        from asyncua import ua  # noqa: PLC0415 - lazy, see module
        from asyncua.ua.uaerrors import UaStatusCodeError  # noqa: PLC0415 - lazy, see module

        node = self._nodes.get(tag)
        if self._client is None or node is None:
            raise RuntimeError(f"device {self._cfg.id}: not connected")
        timeout = self._cfg.timeout_s
        try:
            vtype = await asyncio.wait_for(node.read_data_type_as_variant_type(), timeout)
            variant = ua.Variant(self._node_value(tag, vtype.name, value), vtype)
            await asyncio.wait_for(node.write_value(ua.DataValue(variant)), timeout)
        except UaStatusCodeError as exc:
            name = ua.StatusCode(ua.UInt32(exc.code)).name
            raise RuntimeError(
                f"device {self._cfg.id}: write {tag}={value} refused: {name}"
            ) from None
        except (ConnectionError, OSError, TimeoutError) as exc:
            raise RuntimeError(f"device {self._cfg.id}: write {tag} failed: {exc!r}") from None

    def _node_value(self, tag: str, type_name: str, value: float) -> bool | int | float:
        try:
            return node_value(type_name, value)
        except ValueError as exc:
            raise ValueError(f"device {self._cfg.id}: cannot write {tag}: {exc}") from None

    async def _ensure_session(self) -> str | None:
        """None with a live session, or the reason why there is none right now."""
        from asyncua.client.ua_client import UaClientState  # noqa: PLC0415 - lazy

        if self._client is not None and self._client.uaclient.state is UaClientState.CONNECTED:
            return None
        if self._client is not None:
            await self._drop_client()
            self._lost("connection lost")
        if not self._backoff.ready():
            return f"disconnected (next connect in {self._backoff.remaining_s():.1f} s)"
        try:
            await asyncio.wait_for(self._open_session(), self._cfg.connect_timeout_s)
        except asyncio.CancelledError:
            await self._drop_client()
            raise
        except Exception as exc:  # any connect failure is a BAD scan, not a crash
            await self._drop_client()
            reason = f"connect to {self._cfg.url} failed: {_describe(exc)}"
            wait = self._lost(reason)
            return f"disconnected: {reason} (retry in {wait:.1f} s)"
        self._link.ok("link")  # the backoff resets on the first data, not here: see _answered
        return None

    def _answered(self) -> bool:
        """True once the session delivered data: a poll that read values, a notification.

        Only that resets the reconnect backoff; a server that opens sessions but never
        answers a read would otherwise be reconnected every `reconnect_min_s`, forever.
        """
        if self._client is None:  # the poll failed and dropped the session
            return False
        return self._cfg.mode != "subscribe" or bool(self._latest)

    def _lost(self, reason: str) -> float:
        self._link.fail("link", reason)
        return self._backoff.failed()

    async def _open_session(self) -> None:
        """Connect, resolve namespace and nodes, and (subscribe mode) subscribe."""
        from asyncua.client.client import Client  # noqa: PLC0415 - lazy, see module

        cfg = self._cfg
        client = Client(cfg.url, timeout=cfg.timeout_s, watchdog_intervall=1.0)
        client.session_timeout = 60_000
        client.application_uri = cfg.application_uri
        if cfg.username is not None and cfg.password_file is not None:
            client.set_user(cfg.username)
            client.set_password(cfg.password_file.read_text().strip())
        await self._secure(client)
        self._client = client
        await client.connect()
        self.sessions += 1
        assert cfg.namespace_uri is not None  # checked in __init__; for mypy
        ns = await client.get_namespace_index(cfg.namespace_uri)
        self._nodes, self._unresolved = {}, {}
        for spec in self._specs:
            await self._resolve(client, spec, ns)
        self._latest.clear()
        if cfg.mode == "subscribe":
            await self._subscribe(client)

    async def _secure(self, client: Client) -> None:
        cfg = self._cfg
        if cfg.security_policy == "None":
            return
        from asyncua import ua  # noqa: PLC0415 - lazy, see module
        from asyncua.crypto.security_policies import (  # noqa: PLC0415 - lazy, see module
            SecurityPolicyBasic256Sha256,
        )

        mode = getattr(ua.MessageSecurityMode, cfg.security_mode)
        server_cert = str(cfg.server_certificate_file) if cfg.server_certificate_file else None
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            str(cfg.certificate_file),
            str(cfg.private_key_file),
            server_certificate=server_cert,
            mode=mode,
        )

    async def _resolve(self, client: Client, spec: NodeSpec, ns: int) -> None:
        from asyncua import ua  # noqa: PLC0415 - lazy, see module
        from asyncua.ua.uaerrors import UaStatusCodeError  # noqa: PLC0415 - lazy, see module

        if spec.node.startswith(NODEID_PREFIXES):
            self._nodes[spec.tag] = client.get_node(f"ns={ns};{spec.node}")
            return
        path = [f"{ns}:{part}" for part in spec.node.strip("/").split("/")]
        try:
            self._nodes[spec.tag] = await client.nodes.objects.get_child(path)
        except UaStatusCodeError as exc:
            name = ua.StatusCode(ua.UInt32(exc.code)).name
            self._unresolved[spec.tag] = f"node {spec.node!r}: {name}"

    async def _subscribe(self, client: Client) -> None:
        """One subscription for all nodes; a new timestamp alone notifies (trigger SVT)."""
        from asyncua import ua  # noqa: PLC0415 - lazy, see module
        from asyncua.ua.attribute_ids import AttributeIds  # noqa: PLC0415 - lazy, see module

        cfg = self._cfg
        sub = await client.create_subscription(cfg.publishing_interval_ms, self)
        tags = list(self._nodes)
        self._tag_of_handle = {}
        requests = []
        trigger = ua.DataChangeTrigger.StatusValueTimestamp
        for handle, tag in enumerate(tags, start=1):
            params = ua.MonitoringParameters(
                ClientHandle=handle,
                SamplingInterval=cfg.sampling_interval_ms,
                Filter=ua.DataChangeFilter(Trigger=trigger),
                QueueSize=1,
                DiscardOldest=True,
            )
            item = ua.ReadValueId(NodeId=self._nodes[tag].nodeid, AttributeId=AttributeIds.Value)
            requests.append(
                ua.MonitoredItemCreateRequest(item, ua.MonitoringMode.Reporting, params)
            )
            self._tag_of_handle[handle] = tag
        results = await sub.create_monitored_items(requests)
        for tag, result in zip(tags, results, strict=True):
            if isinstance(result, ua.StatusCode):
                self._unresolved[tag] = f"subscribe: {result.name}"

    def datachange_notification(self, node: Node, val: object, data: Any) -> None:
        """asyncua's callback: keep the latest DataValue of each tag with its arrival time."""
        tag = self._tag_of_handle.get(data.monitored_item.ClientHandle)
        if tag is not None:
            self._latest[tag] = (data.monitored_item.Value, utc_now_ns(), time.monotonic())

    def status_change_notification(self, status: object) -> None:
        """asyncua's callback: the subscription ended; the session check handles it."""
        log.debug("device %s: subscription status %s", self._cfg.id, status)

    async def _poll(self) -> list[Sample]:
        from asyncua.ua.uaerrors import UaError  # noqa: PLC0415 - lazy, see module

        assert self._client is not None  # _ensure_session just opened it
        tags = list(self._nodes)
        try:
            dvs = await asyncio.wait_for(
                self._client.read_attributes([self._nodes[t] for t in tags]), self._cfg.timeout_s
            )
        except (ConnectionError, OSError, TimeoutError, UaError) as exc:
            await self._drop_client()
            reason = f"read failed: {_describe(exc)}"
            self._lost(reason)
            t_ns = utc_now_ns()
            return [Sample.bad(s.tag, s.unit, reason, t_ns) for s in self._specs]
        t_ns = utc_now_ns()
        if len(dvs) != len(tags):  # a non-compliant server: do not guess which is which
            await self._drop_client()
            reason = f"read failed: server returned {len(dvs)} values for {len(tags)} nodes"
            self._lost(reason)
            return [Sample.bad(s.tag, s.unit, reason, t_ns) for s in self._specs]
        got = dict(zip(tags, dvs, strict=True))
        return [self._sample(spec, got.get(spec.tag), t_ns) for spec in self._specs]

    def _sample(self, spec: NodeSpec, dv: ua.DataValue | None, t_ns: int) -> Sample:
        if dv is None:
            return Sample.bad(spec.tag, spec.unit, self._unresolved.get(spec.tag, "not read"), t_ns)
        return sample_of(spec, dv, t_ns)

    def _from_subscription(self, t_ns: int) -> list[Sample]:
        out = []
        now, stale = time.monotonic(), self._cfg.stale_after_s
        for spec in self._specs:
            latest = self._latest.get(spec.tag)
            if spec.tag in self._unresolved or latest is None:
                reason = self._unresolved.get(spec.tag, "no notification yet")
                out.append(Sample.bad(spec.tag, spec.unit, reason, t_ns))
            elif stale is not None and now - latest[2] > stale:
                reason = f"stale: no notification for {now - latest[2]:.0f} s"
                out.append(Sample.bad(spec.tag, spec.unit, reason, t_ns))
            else:
                out.append(sample_of(spec, latest[0], latest[1]))
        return out

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        self._nodes = {}
        if client is not None:
            with contextlib.suppress(Exception):  # the link may be gone already
                await asyncio.wait_for(client.disconnect(), self._cfg.timeout_s)


def _describe(exc: BaseException) -> str:
    """A short reason for a failure: the StatusCode name, or the exception's type and text."""
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        from asyncua import ua  # noqa: PLC0415 - lazy, see module

        return ua.StatusCode(ua.UInt32(code)).name
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
