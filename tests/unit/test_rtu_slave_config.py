"""Which simulator serves an RTU slave: chosen by the `model` key, ΔP transmitter by default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from controller.configload import load_profile
from drivers.modbus_rtu import ModbusRtuConfig
from drivers.rtubus import RtuBusConfig
from simulators.config import IncubatorSimConfig
from simulators.dp_cascade import DpTransmitterSimConfig
from simulators.rtu_server import RtuBusSimulator


def rtu(
    simulator: dict[str, Any], profile: str = "co2-incubator-rtu", **kw: Any
) -> ModbusRtuConfig:
    base = {
        "id": "slave",
        "device_class": "x",
        "area": "suite",
        "driver": "modbus_rtu",
        "bus": "rs485-1",
        "unit_id": 5,
        "register_map": load_profile(profile, Path()),
        "simulator": simulator,
    }
    return ModbusRtuConfig.model_validate(base | kw)


def test_model_key_selects_the_simulator_and_defaults_to_a_transmitter() -> None:
    """No `model` is a ΔP transmitter (older configs); `co2_incubator` is an incubator."""
    assert isinstance(rtu({"seed": 1}, "huba-699m").simulator, DpTransmitterSimConfig)
    inc = rtu({"model": "co2_incubator", "seed": 1})
    assert isinstance(inc.simulator, IncubatorSimConfig)
    again = ModbusRtuConfig.model_validate_json(inc.model_dump_json())  # a second process
    assert again == inc


@pytest.mark.parametrize(
    ("simulator", "message"),
    [
        ({"model": "fridge"}, "does not match any of the expected tags"),
        ({"model": "co2_incubator", "setpoint_pa": 10}, "simulator.co2_incubator.setpoint_pa"),
        ({"setpoint_degC": 37.0}, "simulator.dp_transmitter.setpoint_degC"),
        (
            {"model": "co2_incubator", "faults": [{"kind": "slow", "start_s": 0, "duration_s": 1}]},
            r"faults \['slow'\] are not simulated on an RS-485 line",
        ),
    ],
)
def test_wrong_simulator_tables_are_errors(simulator: dict[str, Any], message: str) -> None:
    """An unknown model, another model's key or a TCP-only fault is a config error."""
    with pytest.raises(ValidationError, match=message):
        rtu(simulator)


def test_bus_simulator_hosts_incubators_next_to_transmitters() -> None:
    """Incubator slaves get a model of their own; only transmitters are cascade rooms."""
    bus = RtuBusConfig(id="rs485-1", port="/dev/null-bus")
    devices = [
        rtu({"model": "co2_incubator"}),
        rtu({"setpoint_pa": 30.0}, "huba-699m", id="dp", unit_id=41),
    ]
    sim = RtuBusSimulator(bus, devices)
    assert sorted(sim.incubators) == [5]
    assert sorted(sim.model.rooms) == [41]


def test_incubator_profile_must_match_the_model() -> None:
    """A ΔP profile on an incubator slave names tags the incubator model lacks: an error."""
    bus = RtuBusConfig(id="rs485-1", port="/dev/null-bus")
    with pytest.raises(ValueError, match="without a value in the incubator model"):
        RtuBusSimulator(bus, [rtu({"model": "co2_incubator"}, "huba-699m")])
