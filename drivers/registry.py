"""The explicit table of drivers: one line per driver, no folder scans, no import magic."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any

from pydantic import Field

from drivers.base import Driver
from drivers.cell_counter import CellCounterConfig, CellCounterDriver
from drivers.modbus_rtu import ModbusRtuConfig, ModbusRtuDriver
from drivers.modbus_tcp import ModbusTcpConfig, ModbusTcpDriver
from drivers.opcua_config import OpcUaConfig
from drivers.particle_counter import ParticleCounterConfig, ParticleCounterDriver
from drivers.rtubus import RtuBus

AnyDeviceConfig = (
    ModbusTcpConfig | ModbusRtuConfig | OpcUaConfig | ParticleCounterConfig | CellCounterConfig
)
DeviceConfig = Annotated[AnyDeviceConfig, Field(discriminator="driver")]


def _opcua_driver(cfg: OpcUaConfig) -> Driver:
    """Imported on use: asyncua costs ~0.7 s of start-up, paid only by OPC UA sites."""
    from drivers.opcua import OpcUaDriver  # noqa: PLC0415

    return OpcUaDriver(cfg)


# Drivers that own their connection; RTU slaves share their bus's session instead.
DRIVERS: dict[str, Callable[[Any], Driver]] = {
    "modbus_tcp": ModbusTcpDriver,
    "lighthouse_remote": ParticleCounterDriver,
    "cell_counter_serial": CellCounterDriver,
    "opcua": _opcua_driver,
}
BUS_DRIVERS: dict[str, Callable[[Any, RtuBus], Driver]] = {
    "modbus_rtu": ModbusRtuDriver,
}
DRIVER_NAMES = (*DRIVERS, *BUS_DRIVERS)


def make_driver(cfg: AnyDeviceConfig, buses: Mapping[str, RtuBus]) -> Driver:
    """The driver instance for one configured device (RTU slaves get their bus session)."""
    if isinstance(cfg, ModbusRtuConfig):
        return BUS_DRIVERS[cfg.driver](cfg, buses[cfg.bus])
    return DRIVERS[cfg.driver](cfg)
