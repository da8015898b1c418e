"""Modbus RTU devices on a shared RS-485 line: a register map as data, read through the bus.

The device does not own a connection: its `RtuBus` (one per line) does, serialises the
requests of every slave on it and backs off a silent slave. This driver only plans its
reads, asks the bus whether its slave may be asked now, and decodes with the same code
as Modbus TCP (drivers/modbus_reader.py).
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Annotated, Any, Literal, Self

from pydantic import Discriminator, Field, Tag, model_validator

from drivers.base import DeviceBase
from drivers.modbus_reader import MapScanner
from drivers.modbus_writer import RegisterWriter
from drivers.registermap import RegisterMap, RegisterSpec
from drivers.rtubus import RtuBus
from drivers.sample import Sample
from simulators.config import IncubatorSimConfig
from simulators.dp_cascade import DpTransmitterSimConfig

log = logging.getLogger(__name__)

RTU_INCUBATOR_FAULTS = frozenset({"nan", "no_response", "exception"})  # per slave on a pty


def _sim_model(value: Any) -> str:
    """The simulator table's `model`; ΔP transmitter when omitted (older configs)."""
    if isinstance(value, dict):
        return str(value.get("model", "dp_transmitter"))
    return str(getattr(value, "model", "dp_transmitter"))


RtuSimConfig = Annotated[
    Annotated[DpTransmitterSimConfig, Tag("dp_transmitter")]
    | Annotated[IncubatorSimConfig, Tag("co2_incubator")],
    Discriminator(_sim_model),
]


class ModbusRtuConfig(DeviceBase):
    """A slave on an RS-485 line (`bus` names a `[[buses]]` entry), described by a map.

    The map's own `device_id`s are ignored: every register is read from `unit_id`, so one
    profile serves every transmitter of a family whatever its address.
    """

    driver: Literal["modbus_rtu"]
    bus: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="id of a [[buses]] entry")
    unit_id: int = Field(ge=1, le=247, description="Modbus slave address on the line")
    profile: str | None = Field(
        default=None, description="profile name in config/profiles, or a path to a TOML map"
    )
    register_map: RegisterMap | None = Field(default=None, description="inline map")
    max_gap_registers: int = Field(default=0, ge=0, le=124)
    simulator: RtuSimConfig | None = Field(
        default=None,
        description="served by the simulator of its bus (`cellfab simulate`); `model` "
        "dp_transmitter (the default) or co2_incubator",
    )

    @model_validator(mode="after")
    def _has_map(self) -> ModbusRtuConfig:
        if self.profile is None and self.register_map is None:
            raise ValueError("give either `profile` or an inline `register_map`")
        if self.register_map is not None:
            units = {r.device_id for r in self.register_map.registers}
            if len(units) > 1:
                raise ValueError(f"an RTU map describes one slave; it names units {sorted(units)}")
        if isinstance(self.simulator, IncubatorSimConfig):
            wrong = sorted({f.kind for f in self.simulator.faults} - RTU_INCUBATOR_FAULTS)
            if wrong:
                raise ValueError(f"faults {wrong} are not simulated on an RS-485 line")
        return self

    @property
    def registers(self) -> tuple[RegisterSpec, ...]:
        """The tags of this device, addressed to `unit_id` (profile resolved by the loader)."""
        if self.register_map is None:
            raise RuntimeError(f"device {self.id}: profile {self.profile!r} was not resolved")
        return tuple(
            r.model_copy(update={"device_id": self.unit_id}) for r in self.register_map.registers
        )


class ModbusRtuDriver:
    """One slave on a shared bus; `read()` returns one Sample per tag, every time."""

    def __init__(self, cfg: ModbusRtuConfig, bus: RtuBus) -> None:
        if cfg.bus != bus.cfg.id:
            raise ValueError(f"device {cfg.id} is on bus {cfg.bus!r}, not {bus.cfg.id!r}")
        self._cfg = cfg
        self._bus = bus
        self._map = MapScanner(cfg.registers, cfg.max_gap_registers, log, f"device {cfg.id}")
        self._writer = RegisterWriter(cfg.registers, f"device {cfg.id}")
        self._view = bus.view(cfg.unit_id)

    @property
    def tags(self) -> tuple[RegisterSpec, ...]:
        """Tag name and unit of every value this driver produces."""
        return self._map.specs

    @property
    def request_count(self) -> int:
        """Modbus requests per scan after coalescing."""
        return len(self._map.plan)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Nothing to close: the bus owns the port and outlives its devices."""

    async def read(self) -> list[Sample]:
        """One scan: every tag of the map, with its quality."""
        refused = self._bus.unavailable(self._cfg.unit_id)
        if refused is not None:
            return self._map.all_bad(refused)
        # A timeout ends the scan (read_plan marks the rest), so a dead slave costs one
        # timeout per backoff period; the bus logs the slave's and the port's transitions.
        samples, _ = await self._map.scan(self._view, self._bus.cfg.timeout_s)
        return samples

    async def write(self, tag: str, value: float) -> None:
        """Write one holding register tag (FC 6/16), in turn with every request on the line.

        ValueError: not a writable tag, or a value its register cannot hold;
        RuntimeError: slave backed off, port not open, no reply, or a Modbus exception
        reply (named). A write never opens the port: the poll path does.
        """
        spec, registers = self._writer.prepare(tag, value)
        bus = self._bus
        await self._writer.write(
            self._view,
            spec,
            registers,
            value=value,
            timeout_s=bus.cfg.timeout_s,
            queued=bus.queue_depth,
        )
