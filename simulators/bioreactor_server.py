"""Serve one bioreactor model over a real asyncua OPC UA server, LADS-style, with faults.

Address space (docs/devices/bioreactor.md): Objects/Bioreactor/<FunctionalUnit>/<Variable>,
string NodeIds "Bioreactor.<FunctionalUnit>.<Variable>" in namespace
`urn:cellfab:sim:bioreactor`. A set point is a functional unit's TargetValue (writable), the
measurement its CurrentValue (read-only), after LADS AnalogControlFunctionType.

Client writes reach the model through a value setter on each writable node, so an
out-of-range write is refused with a StatusCode instead of being stored. A `disconnect`
fault stops the server; coming back builds a NEW server on the same port, as a restarted
device would (new session ids, subscriptions gone): the case clients most often get wrong.
"""

from __future__ import annotations

import asyncio
import datetime
import hmac
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

from simulators.base import steps_due
from simulators.bioreactor import BioreactorModel, BioreactorSimConfig, WriteRejected

if TYPE_CHECKING:
    from asyncua import ua
    from asyncua.server.server import Server

    from drivers.opcua_config import OpcUaConfig

log = logging.getLogger(__name__)

NAMESPACE_URI = "urn:cellfab:sim:bioreactor"
FAULT_KINDS = ("nan", "disconnect", "bad_status")

# (functional unit, variable, model name, writable, boolean)
NODES: tuple[tuple[str, str, str, bool, bool], ...] = (
    ("TemperatureController", "TargetValue", "temperature_sp", True, False),
    ("TemperatureController", "CurrentValue", "temperature", False, False),
    ("TemperatureController", "Output", "heater_output", True, False),
    ("TemperatureController", "AutoMode", "temperature_auto", True, True),
    ("PhController", "TargetValue", "ph_sp", True, False),
    ("PhController", "CurrentValue", "ph", False, False),
    ("PhController", "Output", "co2_flow", True, False),
    ("PhController", "AutoMode", "ph_auto", True, True),
    ("DoController", "TargetValue", "do_sp", True, False),
    ("DoController", "CurrentValue", "do", False, False),
    ("DoController", "Output", "o2_flow", True, False),
    ("DoController", "AutoMode", "do_auto", True, True),
    ("GasMixer", "TargetValue", "air_flow_sp", True, False),
    ("GasMixer", "CurrentValue", "air_flow", False, False),
    ("Rocker", "TargetValue", "rock_rate_sp", True, False),
    ("Rocker", "CurrentValue", "rock_rate", False, False),
    ("Rocker", "AngleTargetValue", "rock_angle_sp", True, False),
    ("Rocker", "AngleCurrentValue", "rock_angle", False, False),
    ("PerfusionPump", "TargetValue", "perfusion_rate_sp", True, False),
    ("PerfusionPump", "CurrentValue", "perfusion_rate", False, False),
    ("Bag", "Weight", "weight", False, False),
    ("Bag", "Volume", "volume", False, False),
    ("CellCulture", "ViableCellDensity", "vcd", False, False),
    ("CellCulture", "Viability", "viability", False, False),
    ("CellCulture", "Lactate", "lactate", False, False),
    ("CellCulture", "KLa", "kla", False, False),
)
NAN_SENSORS = {"ph": None, "do": "BadSensorFailure"}  # None: NaN with a Good status


def node_id(unit: str, variable: str) -> str:
    """The string identifier of a variable (namespace `NAMESPACE_URI`)."""
    return f"Bioreactor.{unit}.{variable}"


def active_windows(specs: Iterable[Any], elapsed_s: float) -> list[Any]:
    """The specs whose window [start, start + duration) holds `elapsed_s`."""
    return [s for s in specs if s.start_s <= elapsed_s < s.start_s + s.duration_s]


@dataclass(frozen=True)
class ServerSecurity:
    """Basic256Sha256 SignAndEncrypt only; clients must have a cert in `trusted_dir`.

    Without a certificate validator asyncua accepts any client certificate
    (shared/libraries.md §2.5), so the trust directory is not optional.
    """

    certificate_file: Path  # DER
    private_key_file: Path  # PEM
    trusted_dir: Path  # client certificates (DER) this server trusts


class BioreactorSimulator:
    """One bioreactor on one OPC UA endpoint; `inject()` switches faults for tests."""

    def __init__(
        self,
        cfg: BioreactorSimConfig,
        host: str = "127.0.0.1",
        port: int = 4840,
        security: ServerSecurity | None = None,
        path: str = "/cellfab/bioreactor/",
        *,
        users: Mapping[str, str] | None = None,
    ) -> None:
        self.model = BioreactorModel(cfg)
        unknown = sorted({b.tag for b in cfg.bad_status} - set(self.model.state))
        if unknown:
            raise ValueError(f"bad_status names no node of the bioreactor: {unknown}")
        self._security = security
        self._users = dict(users) if users else None  # name -> password; None: anonymous
        self._path = path
        self._cfg = cfg
        self._host, self._port = host, port
        self._server: Server | None = None
        self._nodes: dict[str, ua.NodeId] = {}
        self._manual: set[str] = set()
        self._manual_bad: dict[str, str] = {}
        self._scheduled: set[str] = set()
        self._scheduled_bad: dict[str, str] = {}
        self._wanted = False
        self._publishing = False
        self._lock = asyncio.Lock()
        self._listening = asyncio.Event()

    @classmethod
    def from_device(cls, dev: OpcUaConfig) -> BioreactorSimulator:
        """The simulator of one configured device, at the host, port and path of its url."""
        if dev.simulator is None:
            raise ValueError(f"device {dev.id} has no simulator")
        url = urlsplit(dev.url)
        host, port = url.hostname or "127.0.0.1", url.port or 4840
        return cls(dev.simulator, host, port, path=url.path or "/")

    @property
    def url(self) -> str:
        """The endpoint URL clients connect to."""
        return f"opc.tcp://{self._host}:{self._port}{self._path}"

    @property
    def where(self) -> str:
        """The endpoint URL, for logs."""
        return self.url

    @property
    def tick_s(self) -> float:
        """One model step in wall time, within 0.05..1 s."""
        return min(1.0, max(0.05, self._cfg.step_s / self._cfg.time_scale))

    @property
    def active_faults(self) -> frozenset[str]:
        """Fault kinds in force now, injected or scheduled."""
        bad = self._manual_bad or self._scheduled_bad
        return frozenset(self._manual | self._scheduled | ({"bad_status"} if bad else set()))

    async def wait_listening(self) -> None:
        """Return once clients can connect."""
        await self._listening.wait()

    async def __aenter__(self) -> Self:
        async with self._lock:
            self._wanted = True
            await self._reconcile()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        async with self._lock:
            self._wanted = False
            await self._reconcile()

    async def inject(self, kind: str, active: bool, tag: str = "do", status: str = "") -> None:
        """Switch a fault on or off now; `tag`/`status` name the node of a bad_status."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        async with self._lock:
            if kind == "bad_status":
                if active:
                    self._manual_bad[tag] = status or "BadDeviceFailure"
                else:
                    self._manual_bad.pop(tag, None)
            elif active:
                self._manual.add(kind)
            else:
                self._manual.discard(kind)
            await self._reconcile()
            await self._publish()

    async def advance(self, elapsed_s: float) -> None:
        """Step the model to `elapsed_s` wall seconds (scaled), apply faults, publish."""
        due = steps_due(elapsed_s, self._cfg.time_scale, self._cfg.step_s)
        stepped = due > self.model.steps
        self.model.run(due - self.model.steps)
        async with self._lock:
            before = (self.active_faults, dict(self._scheduled_bad))
            self._scheduled = {f.kind for f in active_windows(self._cfg.faults, elapsed_s)}
            bad = active_windows(self._cfg.bad_status, elapsed_s)
            self._scheduled_bad = {b.tag: b.status for b in bad}
            for kind in sorted(self.active_faults ^ before[0]):
                log.info("simulator %s: fault %s %s", self.url, kind, self._onoff(kind))
            await self._reconcile()
            # Publish only what changed: a new SourceTimestamp on every node at every runner
            # tick would be a notification storm no real device sends.
            if stepped or (self.active_faults, self._scheduled_bad) != before:
                await self._publish()

    def _onoff(self, kind: str) -> str:
        return "on" if kind in self.active_faults else "off"

    async def _reconcile(self) -> None:
        """Bring the server up or down to match `_wanted` and the disconnect fault."""
        up = self._wanted and "disconnect" not in self.active_faults
        if up and self._server is None:
            self._server = await self._build()
            try:
                await asyncio.wait_for(self._server.start(), timeout=10.0)
            except BaseException:
                self._server = None
                raise
            self._listening.set()
        elif not up and self._server is not None:
            server, self._server = self._server, None
            self._listening.clear()
            await asyncio.wait_for(server.stop(), timeout=10.0)

    async def _build(self) -> Server:
        """A new server with the model's current values (init loads ~1.6 s of nodes)."""
        from asyncua import ua  # noqa: PLC0415 - heavy import, only for OPC UA sites
        from asyncua.server.server import Server  # noqa: PLC0415 - heavy import

        server = Server(user_manager=_passwords(self._users) if self._users else None)
        await server.init()
        if self._users:  # user name and password only: no anonymous access
            server.set_identity_tokens([ua.UserNameIdentityToken])
        server.set_endpoint(self.url)
        server.set_server_name("cellfab simulated bioreactor")
        if self._security is not None:
            await self._secure(server)
        else:  # say so, instead of asyncua warning about endpoints it cannot offer
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace(NAMESPACE_URI)
        device = await server.nodes.objects.add_object(
            ua.NodeId(ua.String("Bioreactor"), ua.Int16(idx)), f"{idx}:Bioreactor"
        )
        units: dict[str, Any] = {}
        state = self.model.state
        for unit, variable, name, writable, boolean in NODES:
            if unit not in units:
                nid = ua.NodeId(ua.String(f"Bioreactor.{unit}"), ua.Int16(idx))
                units[unit] = await device.add_object(nid, f"{idx}:{unit}")
            vtype = ua.VariantType.Boolean if boolean else ua.VariantType.Double
            value: Any = bool(state[name]) if boolean else float(state[name])
            nid = ua.NodeId(ua.String(node_id(unit, variable)), ua.Int16(idx))
            var = await units[unit].add_variable(nid, f"{idx}:{variable}", value, varianttype=vtype)
            if writable:
                await var.set_writable()
                server.set_attribute_value_setter(var.nodeid, self._setter_for(name))
            self._nodes[name] = var.nodeid
        return server

    async def _secure(self, server: Server) -> None:
        from asyncua import ua  # noqa: PLC0415 - heavy import, only for OPC UA sites
        from asyncua.crypto.truststore import TrustStore  # noqa: PLC0415 - heavy import
        from asyncua.crypto.validator import (  # noqa: PLC0415 - heavy import
            CertificateValidator,
            CertificateValidatorOptions,
        )

        sec = self._security
        assert sec is not None  # the caller checked; for mypy
        server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
        await server.load_certificate(str(sec.certificate_file))
        await server.load_private_key(str(sec.private_key_file))
        store = TrustStore([sec.trusted_dir], [])
        await store.load()
        options = CertificateValidatorOptions.TRUSTED_VALIDATION
        options |= CertificateValidatorOptions.PEER_CLIENT
        server.set_certificate_validator(CertificateValidator(options, store))

    def _setter_for(self, name: str) -> Any:
        from asyncua.ua.status_codes import StatusCodes  # noqa: PLC0415 - heavy import
        from asyncua.ua.uaerrors import UaStatusCodeError  # noqa: PLC0415 - heavy import

        def setter(node: Any, attr: Any, value: ua.DataValue) -> None:
            if not self._publishing:
                raw = value.Value.Value if value.Value is not None else None
                if not isinstance(raw, bool | int | float):
                    raise UaStatusCodeError(StatusCodes.BadTypeMismatch)  # type: ignore[no-untyped-call]
                try:
                    self.model.write(name, float(raw))
                except WriteRejected as exc:
                    log.info("simulator %s: write refused: %s", self.url, exc)
                    code = getattr(StatusCodes, exc.status)
                    raise UaStatusCodeError(code) from None  # type: ignore[no-untyped-call]
            node.attributes[attr].value = value

        return setter

    async def _publish(self) -> None:
        """Write every value with the model's time as SourceTimestamp."""
        if self._server is None:
            return
        from asyncua import ua  # noqa: PLC0415 - heavy import, only for OPC UA sites
        from asyncua.ua.status_codes import StatusCodes  # noqa: PLC0415 - heavy import

        now = ua.DateTime.now(datetime.UTC)
        bad = {**self._scheduled_bad, **self._manual_bad}
        nan = "nan" in self.active_faults
        state = self.model.state
        booleans = {name for _, _, name, _, b in NODES if b}
        self._publishing = True
        try:
            for name, nid in self._nodes.items():
                status = bad.get(name) or (NAN_SENSORS.get(name) if nan else None)
                if status is not None:
                    code = ua.StatusCode(getattr(StatusCodes, status))
                    variant = ua.Variant(None, ua.VariantType.Null)
                    dv = ua.DataValue(variant, code, SourceTimestamp=now, ServerTimestamp=now)
                else:
                    value = state[name]
                    if nan and name in NAN_SENSORS:
                        value = math.nan
                    variant = (
                        ua.Variant(bool(value), ua.VariantType.Boolean)
                        if name in booleans
                        else ua.Variant(float(value), ua.VariantType.Double)
                    )
                    dv = ua.DataValue(variant, SourceTimestamp=now, ServerTimestamp=now)
                await self._server.write_attribute_value(nid, dv)
        finally:
            self._publishing = False


def _passwords(users: Mapping[str, str]) -> Any:
    """An asyncua user manager accepting exactly `users` (name -> password)."""
    from asyncua.crypto.permission_rules import User, UserRole  # noqa: PLC0415 - heavy import

    class Passwords:
        def get_user(
            self,
            iserver: Any,
            username: str | None = None,
            password: str | None = None,
            certificate: Any = None,
        ) -> Any:
            expected = users.get(username or "")
            if expected is None or password is None:
                return None
            if not hmac.compare_digest(expected.encode(), password.encode()):
                return None
            return User(role=UserRole.User)

    return Passwords()
