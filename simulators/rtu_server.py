"""Serve every simulated slave of one RS-485 line from one pymodbus RTU server.

The slaves are ΔP transmitters (one cascade model for the line) and CO2 incubators (the
RS-485 variant: one `IncubatorModel` each, with the register handling of the TCP simulator
in simulators/incubator_registers.py). The line is a pair of cross-connected ptys (a Python
null modem, shared/libraries.md §1.5): the server owns one end, and the other end is
symlinked at the bus's `port`, so a driver in this process or in another (`cellfab
simulate` + `cellfab run`) opens it like a USB adapter. One `ModbusSerialServer` with one
`SimDevice` per slave is one line with several slaves. Faults act per slave (no reply,
exception, sensor fault: unreliable ΔP, or the incubator's probe not ready) through the
SimDevice `action` hook and the published image, and per line (`disconnect`: the pty goes
away and the symlink with it, then a new pty is linked at the same path).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tty
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimAction, SimData, SimDevice

from drivers import codec
from drivers.modbus_rtu import ModbusRtuConfig
from drivers.registermap import RegisterSpec
from drivers.rtubus import RtuBusConfig
from simulators.base import steps_due
from simulators.config import IncubatorSimConfig
from simulators.dp_cascade import (
    CascadeModel,
    DpTransmitterSimConfig,
    RtuBusSimConfig,
    SensorFaultSpec,
)
from simulators.incubator import CO2_STATUS_NOT_READY, IncubatorModel
from simulators.incubator_registers import IncubatorRegisters, fault_reply, own_publish

log = logging.getLogger(__name__)

SlaveFault = Literal["no_response", "exception", "sensor_fault"]
SLAVE_FAULTS: tuple[SlaveFault, ...] = ("no_response", "exception", "sensor_fault")
MEMORY_REGISTERS = 100  # 4x0001-4x0100 answer (zeros where the profile names nothing)
BUS_CONFIG_ADDRESS = 763  # 4x0764-4x0768: address, baud, format mirrors, address, command
BAUD_CODES = {9600: 0, 19200: 1, 38400: 2, 57600: 3}
FORMAT_CODES = {("E", 1): 0, ("O", 1): 1, ("N", 1): 2, ("N", 2): 3}
SLAVE_FAULT_OF: dict[str, SlaveFault] = {"exception": "exception", "nan": "sensor_fault"}


class PtyPair:
    """Two ptys whose masters the event loop cross-connects: a null-modem cable."""

    def __init__(self) -> None:
        self._ma, sa = os.openpty()
        self._mb, sb = os.openpty()
        for fd in (sa, sb):
            tty.setraw(fd)  # no echo, no CR/LF mangling before pyserial opens it
        self.path_a, self.path_b = os.ttyname(sa), os.ttyname(sb)
        self._slaves = (sa, sb)  # held open, else a master read() gets EIO
        for fd in (self._ma, self._mb):
            os.set_blocking(fd, False)
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Start pumping bytes both ways on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._ma, self._pump, self._ma, self._mb)
        self._loop.add_reader(self._mb, self._pump, self._mb, self._ma)

    def close(self) -> None:
        """Stop pumping and close every fd: both ends see a hang-up."""
        if self._loop is not None:
            self._loop.remove_reader(self._ma)
            self._loop.remove_reader(self._mb)
        for fd in (self._ma, self._mb, *self._slaves):
            with contextlib.suppress(OSError):
                os.close(fd)

    @staticmethod
    def _pump(src: int, dst: int) -> None:
        with contextlib.suppress(OSError):  # the other end went away: the bytes are lost
            os.write(dst, os.read(src, 4096))


class RtuBusSimulator:
    """One line: the cascade model and the incubators, one RTU server on a pty, the client
    end at `port`.

    ΔP transmitters step on the bus's clock (`[buses.simulator]`); each incubator on its own
    `time_scale` / `step_s`, as its TCP variant does.
    """

    def __init__(self, bus_cfg: RtuBusConfig, devices: Sequence[ModbusRtuConfig]) -> None:
        if "://" in bus_cfg.port:
            raise ValueError(f"bus {bus_cfg.id}: a simulator needs a file path, not {bus_cfg.port}")
        self._bus = bus_cfg
        self._cfg = bus_cfg.simulator or RtuBusSimConfig()
        sims: dict[int, DpTransmitterSimConfig | IncubatorSimConfig] = {}
        specs: dict[int, tuple[RegisterSpec, ...]] = {}
        for dev in devices:
            if dev.bus != bus_cfg.id or dev.simulator is None:
                continue
            if dev.unit_id in sims:
                raise ValueError(f"bus {bus_cfg.id}: unit {dev.unit_id} is simulated twice")
            sims[dev.unit_id] = dev.simulator
            specs[dev.unit_id] = dev.registers
        if not sims:
            raise ValueError(f"bus {bus_cfg.id}: no simulated device on it")
        dp = {u: c for u, c in sims.items() if isinstance(c, DpTransmitterSimConfig)}
        self.model = CascadeModel(list(dp.items()), self._cfg.step_s)
        self._specs = {u: specs[u] for u in dp}
        self._incubators = {
            u: IncubatorRegisters(specs[u], IncubatorModel(c))
            for u, c in sims.items()
            if isinstance(c, IncubatorSimConfig)
        }
        self._sims = sims
        for unit, unit_specs in self._specs.items():
            missing = sorted({s.tag for s in unit_specs} - set(self.model.state(unit)))
            if missing:
                raise ValueError(f"unit {unit}: profile tags the ΔP model does not know: {missing}")
        self._link = Path(bus_cfg.port)
        self._manual: dict[tuple[int, SlaveFault], int] = {}
        self._bus_down_manual = False
        self._elapsed_s = 0.0
        self._pair: PtyPair | None = None
        self._server: ModbusSerialServer | None = None
        self._wanted = False
        self._lock = asyncio.Lock()
        self._listening = asyncio.Event()

    @property
    def bus_id(self) -> str:
        """The `[[buses]]` id this simulator serves."""
        return self._bus.id

    @property
    def where(self) -> str:
        """The symlink clients open."""
        return str(self._link)

    @property
    def incubators(self) -> dict[int, IncubatorModel]:
        """The incubator model of each incubator slave, by unit id."""
        return {unit: regs.model for unit, regs in self._incubators.items()}

    @property
    def tick_s(self) -> float:
        """The shortest model step on the line in wall time, within 0.05..0.5 s."""
        clocks = [(self._cfg.step_s, self._cfg.time_scale)]
        clocks += [(r.model.cfg.step_s, r.model.cfg.time_scale) for r in self._incubators.values()]
        return min(0.5, max(0.05, min(step / scale for step, scale in clocks)))

    @property
    def listening(self) -> bool:
        """True while the pty is linked and served."""
        return self._server is not None

    async def wait_listening(self) -> None:
        """Return once the pty is linked at `port` and served."""
        await self._listening.wait()

    async def __aenter__(self) -> Self:
        async with self._lock:
            self._wanted = True
            await self._reconcile()
            await self._publish()
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

    async def advance(self, elapsed_s: float) -> None:
        """Step the cascade to `elapsed_s` wall seconds (scaled), apply faults, publish."""
        due = steps_due(elapsed_s, self._cfg.time_scale, self._cfg.step_s)
        self.model.run(due - self.model.steps)
        for regs in self._incubators.values():
            model = regs.model
            model.run(steps_due(elapsed_s, model.cfg.time_scale, model.cfg.step_s) - model.steps)
        async with self._lock:
            self._elapsed_s = elapsed_s
            await self._reconcile()
            await self._publish()

    async def inject(
        self,
        kind: SlaveFault | Literal["disconnect"],
        active: bool,
        unit: int | None = None,
        code: int = 6,
    ) -> None:
        """Switch a fault on or off now; in force when this returns.

        `disconnect` is the whole line (no unit); the others need the slave's `unit`.
        `code` is the exception code, or the reliability code for `sensor_fault`.
        """
        async with self._lock:
            if kind == "disconnect":
                self._bus_down_manual = active
            else:
                if unit not in self._sims:
                    raise ValueError(f"no simulated slave {unit} on bus {self._bus.id}")
                if kind == "exception" and code not in {int(c) for c in ExcCodes}:
                    raise ValueError(f"{code} is not a Modbus exception code")
                if active:
                    self._manual[unit, kind] = code
                else:
                    self._manual.pop((unit, kind), None)
            log.info("simulator %s: fault %s %s on unit %s", self.where, kind, active, unit)
            await self._reconcile()
            await self._publish()

    def active_faults(self, unit: int) -> dict[SlaveFault, int]:
        """Faults of one slave in force now (injected or scheduled), with their code."""
        out: dict[SlaveFault, int] = {}
        cfg, t = self._sims[unit], self._elapsed_s
        for fault in cfg.faults:  # config allows exception, no_response (and nan: incubators)
            if fault.start_s <= t < fault.start_s + fault.duration_s:
                kind = SLAVE_FAULT_OF.get(fault.kind, "no_response")
                out[kind] = CO2_STATUS_NOT_READY if kind == "sensor_fault" else fault.exception_code
        for sensor in self._sensor_faults(unit):
            if sensor.start_s <= t < sensor.start_s + sensor.duration_s:
                out["sensor_fault"] = sensor.reliability_code
        for (u, kind), code in self._manual.items():
            if u == unit:
                out[kind] = code
        return out

    def _bus_down(self) -> bool:
        t = self._elapsed_s
        scheduled = any(f.start_s <= t < f.start_s + f.duration_s for f in self._cfg.faults)
        return self._bus_down_manual or scheduled

    async def _reconcile(self) -> None:
        """Bring the pty, the server and the symlink up or down to match the wanted state."""
        up = self._wanted and not self._bus_down()
        if up and self._server is None:
            pair = PtyPair()
            pair.start()
            server = ModbusSerialServer(
                self._devices(),
                framer=FramerType.RTU,
                port=pair.path_a,
                baudrate=self._bus.baudrate,
                parity=self._bus.parity,
                stopbits=self._bus.stopbits,
                bytesize=self._bus.bytesize,
            )
            await server.serve_forever(background=True)
            self._pair, self._server = pair, server
            self._make_link(pair.path_b)
            self._listening.set()
            log.info("simulator bus %s: serving %s at %s", self._bus.id, pair.path_a, self._link)
        elif not up and self._server is not None:
            server, self._server = self._server, None
            self._listening.clear()
            self._remove_link()
            await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus unannotated
            if self._pair is not None:
                self._pair.close()
                self._pair = None
            log.info("simulator bus %s: line down", self._bus.id)

    def _make_link(self, target: str) -> None:
        """Point `port` at the client end, replacing a stale link of an earlier run."""
        if self._link.exists() and not self._link.is_symlink():
            raise FileExistsError(f"{self._link} exists and is not a symlink: not replacing it")
        self._link.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._link.with_name(f".{self._link.name}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target)
        tmp.replace(self._link)  # atomic: a client never sees a missing or half-made link

    def _remove_link(self) -> None:
        ours = self._pair is not None and self._link.is_symlink()
        if ours and self._pair is not None and str(self._link.readlink()) == self._pair.path_b:
            self._link.unlink()

    async def _publish(self) -> None:
        """Write every slave's current image (no await yields: no torn reads)."""
        if self._server is None:
            return
        for unit, image in self._images().items():
            for spec, regs in image.items():
                await self._server.async_setValues(unit, spec.function, spec.address, regs)

    def _images(self) -> dict[int, dict[RegisterSpec, list[int]]]:
        out = {
            unit: regs.image(probe_nan="sensor_fault" in self.active_faults(unit))
            for unit, regs in self._incubators.items()
        }
        for unit, specs in self._specs.items():
            state = self.model.state(unit)
            fault_code = self.active_faults(unit).get("sensor_fault")
            if fault_code is not None:
                state = dict.fromkeys(state, 0.0) | {
                    "type_code": state["type_code"],
                    "dp1_reliability": float(fault_code),
                    "error_code": float(self._error_code(unit)),
                }
            out[unit] = {spec: _encode(spec, state[spec.tag]) for spec in specs}
        return out

    def _sensor_faults(self, unit: int) -> tuple[SensorFaultSpec, ...]:
        cfg = self._sims[unit]
        return cfg.sensor_faults if isinstance(cfg, DpTransmitterSimConfig) else ()

    def _error_code(self, unit: int) -> int:
        """The scheduled sensor fault's error code, or 1 for an injected one."""
        t = self._elapsed_s
        for sensor in self._sensor_faults(unit):
            if sensor.start_s <= t < sensor.start_s + sensor.duration_s:
                return sensor.error_code
        return 1

    def _devices(self) -> list[SimDevice]:
        bus = self._bus
        mirrors = [
            BAUD_CODES.get(bus.baudrate, 1),
            FORMAT_CODES.get((bus.parity, bus.stopbits), 2),
        ]
        transmitters = {
            unit: [
                SimData(0, count=MEMORY_REGISTERS, values=0, datatype=DataType.REGISTERS),
                SimData(
                    BUS_CONFIG_ADDRESS,
                    values=[unit, *mirrors, unit, 0],
                    datatype=DataType.REGISTERS,
                ),
            ]
            for unit in self._specs
        }
        incubators = {
            unit: regs.blocks(probe_nan="sensor_fault" in self.active_faults(unit))[unit]
            for unit, regs in self._incubators.items()
        }
        return [
            SimDevice(id=unit, simdata=data, action=self._action_for(unit))
            for unit, data in sorted((transmitters | incubators).items())
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
            if own_publish(fc, set_values):
                return None
            faults = self.active_faults(unit)
            # no_response cancels only this request's task: the other slaves keep answering
            reply = fault_reply("no_response" in faults, faults.get("exception"))
            if reply is not None:
                return reply
            incubator = self._incubators.get(unit)
            if incubator is not None:
                return incubator.access(
                    unit,
                    fc=fc,
                    start=start,
                    addr=addr,
                    count=count,
                    regs=regs,
                    set_values=set_values,
                )
            if set_values is not None:
                return ExcCodes.ILLEGAL_ADDRESS  # transmitter configuration writes: not simulated
            return None

        return action


def _encode(spec: RegisterSpec, value: float) -> list[int]:
    """Registers for a value, clipped to what the register type can hold."""
    if spec.words == 1:
        low, high = (-32768, 32767) if spec.type == "s16" else (0, 65535)
        value = min(high * spec.scale, max(low * spec.scale, value))
    return codec.encode(spec, value)


def bus_simulators(
    buses: Sequence[RtuBusConfig], devices: Sequence[object]
) -> list[RtuBusSimulator]:
    """One simulator per bus that has a simulated `modbus_rtu` device (for the runner)."""
    rtu = [d for d in devices if isinstance(d, ModbusRtuConfig) and d.simulator is not None]
    return [RtuBusSimulator(bus, rtu) for bus in buses if any(d.bus == bus.id for d in rtu)]
