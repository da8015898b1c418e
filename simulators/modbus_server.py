"""Serve one incubator model over a real pymodbus Modbus TCP server, with injectable faults.

Memory: one SimDevice per unit id of the profile, each with a shared block (FC 3 and FC 4
address the same registers) holding exactly the profile's addresses. Anything else gets the
answer a Vaisala probe gives: exception 2 for an address outside the map, 1 for a function
the unit has no register for. The SimDevice `action` hook, called on every access, is where
faults act and where a client's set-point write reaches the model; the model's values are
published with `server.async_setValues`.

A `disconnect` closes the listener and every connection; coming back builds a new server
on the same port, seeded with the current values, so nothing depends on pymodbus re-listening.
The wire faults (garbage, short_frame, slow) act on the reply bytes in the shared
`ModbusTcpEndpoint`, after the action hook has answered as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Self, get_args

from pymodbus.constants import ExcCodes
from pymodbus.simulator import SimAction, SimDevice

from drivers.registermap import RegisterSpec
from simulators.base import steps_due
from simulators.config import FaultKind, FaultSpec, IncubatorSimConfig
from simulators.incubator import IncubatorModel
from simulators.incubator_registers import (
    IncubatorRegisters,
    fault_reply,
    own_publish,
    registers_for,
)
from simulators.tcp_endpoint import ModbusTcpEndpoint, WireFaults

__all__ = [  # registers_for moved to simulators.incubator_registers; kept importable here
    "EXCEPTION_CODES",
    "FAULT_KINDS",
    "IncubatorSimulator",
    "free_port",
    "free_ports",
    "manual_fault",
    "registers_for",
    "scheduled_faults",
]

log = logging.getLogger(__name__)

FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)
EXCEPTION_CODES = frozenset(int(code) for code in ExcCodes)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS reports free now, for configs (they need a real port number).

    Another process may take it before it is used; tests accept that small race. Give an
    `IncubatorSimulator` port 0 instead where possible: it reports the bound port.
    """
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct free ports: all are held open while choosing, so none repeats."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def scheduled_faults(faults: Iterable[FaultSpec], elapsed_s: float) -> dict[FaultKind, FaultSpec]:
    """The configured faults whose window [start, start + duration) holds `elapsed_s`."""
    return {f.kind: f for f in faults if f.start_s <= elapsed_s < f.start_s + f.duration_s}


def manual_fault(kind: FaultKind, exception_code: int = 6, delay_s: float = 1.0) -> FaultSpec:
    """An injected fault as a spec without an end, so it carries its parameters."""
    extra = {"delay_s": delay_s} if kind == "slow" else {}
    return FaultSpec.model_validate(
        {"kind": kind, "start_s": 0.0, "duration_s": math.inf, "exception_code": exception_code}
        | extra
    )


class IncubatorSimulator:
    """One incubator (controller on unit 1, GMP251 on unit 240) on one Modbus TCP endpoint.

    Use as `async with IncubatorSimulator(...) as sim:`; the caller steps `sim.model` and
    calls `update()` (the runner does both). Faults come from `cfg.faults` by wall-clock
    time given to `update()`, and from `inject()` at run time; either one switches a fault on.
    """

    def __init__(
        self,
        specs: Sequence[RegisterSpec],
        cfg: IncubatorSimConfig,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.model = IncubatorModel(cfg)
        self._cfg = cfg
        self._registers = IncubatorRegisters(specs, self.model)
        self._net = ModbusTcpEndpoint(host, port, seed=cfg.seed)
        self._manual: dict[FaultKind, FaultSpec] = {}
        self._scheduled: dict[FaultKind, FaultSpec] = {}
        self._wanted = False
        self._lock = asyncio.Lock()

    @property
    def endpoint(self) -> tuple[str, int]:
        """(host, port) clients connect to; the bound port once started with port 0."""
        return self._net.host, self._net.port

    @property
    def listening(self) -> bool:
        """True while the server accepts connections (false during a disconnect)."""
        return self._net.listening

    @property
    def active_faults(self) -> frozenset[FaultKind]:
        """Faults in force now, injected or scheduled."""
        return frozenset(k for k in FAULT_KINDS if k in self._manual or k in self._scheduled)

    async def wait_listening(self) -> None:
        """Return once the server accepts connections."""
        await self._net.wait_listening()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen (unless a disconnect fault is in force) with the model's current values."""
        async with self._lock:
            self._wanted = True
            await self._reconcile()

    async def stop(self) -> None:
        """Close the listener and every connection."""
        async with self._lock:
            self._wanted = False
            await self._reconcile()

    async def inject(
        self, kind: FaultKind, active: bool, exception_code: int = 6, delay_s: float = 1.0
    ) -> None:
        """Switch a fault on or off now; it is in force when this returns.

        `exception_code` is for kind "exception", `delay_s` (reply delay) for kind "slow".
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}")
        if active and kind == "exception" and exception_code not in EXCEPTION_CODES:
            raise ValueError(f"{exception_code} is not a Modbus exception code")
        async with self._lock:
            before = self.active_faults
            if active:
                self._manual[kind] = manual_fault(kind, exception_code, delay_s)
            else:
                self._manual.pop(kind, None)
            await self._apply(before)

    @property
    def where(self) -> str:
        """host:port, for logs."""
        return self._net.where

    @property
    def tick_s(self) -> float:
        """One model step in wall time, within 0.05..0.5 s (faster only burns CPU)."""
        return min(0.5, max(0.05, self._cfg.step_s / self._cfg.time_scale))

    async def advance(self, elapsed_s: float) -> None:
        """Step the model to `elapsed_s` wall seconds (scaled), then publish and fault."""
        due = steps_due(elapsed_s, self._cfg.time_scale, self._cfg.step_s)
        self.model.run(due - self.model.steps)
        await self.update(elapsed_s)

    async def update(self, elapsed_s: float) -> None:
        """Apply the fault schedule at `elapsed_s` wall seconds and publish the model."""
        async with self._lock:
            before = self.active_faults
            self._scheduled = scheduled_faults(self._cfg.faults, elapsed_s)
            await self._apply(before)

    async def _apply(self, before: frozenset[FaultKind]) -> None:
        after = self.active_faults
        for kind in sorted(after - before):
            log.info("simulator %s: fault %s on", self.where, kind)
        for kind in sorted(before - after):
            log.info("simulator %s: fault %s off", self.where, kind)
        delay_s = self._fault("slow").delay_s if "slow" in after else 0.0
        self._net.wire = WireFaults.of(after, delay_s)  # garbage, short_frame, slow
        await self._reconcile()
        await self._publish()

    async def _reconcile(self) -> None:
        """Bring the server up or down to match `_wanted` and the disconnect fault."""
        up = self._wanted and "disconnect" not in self.active_faults
        if up and not self._net.listening:
            await self._net.up(self._devices())
        elif not up:
            await self._net.down()

    async def _publish(self) -> None:
        """Write the current image into the server's memory.

        No await in here yields to the loop (the action hook returns at once for our own
        writes), so a client never reads half of one publish and half of the next.
        """
        server = self._net.server
        if server is None:
            return
        for spec, regs in self._image().items():
            await server.async_setValues(spec.device_id, spec.function, spec.address, regs)

    def _image(self) -> dict[RegisterSpec, list[int]]:
        return self._registers.image(probe_nan="nan" in self.active_faults)

    def _devices(self) -> list[SimDevice]:
        blocks = self._registers.blocks(probe_nan="nan" in self.active_faults)
        return [
            SimDevice(id=unit, simdata=data, action=self._action_for(unit))
            for unit, data in blocks.items()
        ]

    def _action_for(self, unit: int) -> SimAction:
        async def action(  # noqa: PLR0917 - the signature pymodbus calls
            fc: int,
            start: int,
            addr: int,
            count: int,
            regs: list[int],
            set_values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            return self._on_access(
                unit, fc=fc, start=start, addr=addr, count=count, regs=regs, set_values=set_values
            )

        return action

    def _on_access(
        self,
        unit: int,
        *,
        fc: int,
        start: int,
        addr: int,
        count: int,
        regs: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """Every register access, ours or a client's: faults, then writes and the read map."""
        if own_publish(fc, set_values):
            return None
        active = self.active_faults
        code = self._fault("exception").exception_code if "exception" in active else None
        reply = fault_reply("no_response" in active, code)
        if reply is not None:
            return reply
        return self._registers.access(
            unit, fc=fc, start=start, addr=addr, count=count, regs=regs, set_values=set_values
        )

    def _fault(self, kind: FaultKind) -> FaultSpec:
        """The parameters of an active fault: injected ones win over scheduled ones."""
        return self._manual.get(kind) or self._scheduled[kind]
