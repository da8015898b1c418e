"""The explicit table of drivers: one line per driver, no folder scans, no import magic."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field

from drivers.base import Driver
from drivers.cell_counter import CellCounterConfig, CellCounterDriver
from drivers.modbus_tcp import ModbusTcpConfig, ModbusTcpDriver
from drivers.particle_counter import ParticleCounterConfig, ParticleCounterDriver

AnyDeviceConfig = ModbusTcpConfig | ParticleCounterConfig | CellCounterConfig
DeviceConfig = Annotated[AnyDeviceConfig, Field(discriminator="driver")]

DRIVERS: dict[str, Callable[[Any], Driver]] = {
    "modbus_tcp": ModbusTcpDriver,
    "lighthouse_remote": ParticleCounterDriver,
    "cell_counter_serial": CellCounterDriver,
}


def make_driver(cfg: AnyDeviceConfig) -> Driver:
    """The driver instance for one configured device."""
    return DRIVERS[cfg.driver](cfg)
