"""The explicit table of drivers: one line per driver, no folder scans, no import magic."""

from __future__ import annotations

from collections.abc import Callable

from drivers.base import Driver
from drivers.modbus_tcp import ModbusTcpConfig, ModbusTcpDriver

DeviceConfig = ModbusTcpConfig  # becomes a discriminated union on `driver` as drivers arrive

DRIVERS: dict[str, Callable[[ModbusTcpConfig], Driver]] = {
    "modbus_tcp": ModbusTcpDriver,
}


def make_driver(cfg: DeviceConfig) -> Driver:
    """The driver instance for one configured device."""
    return DRIVERS[cfg.driver](cfg)
