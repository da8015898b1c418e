"""Physics of a room pressure cascade seen by Huba 699M ΔP transmitters: pure, seeded.

Each simulated transmitter measures one room against the corridor. Rooms form a cascade by
set point (Grade B +45 Pa > C +30 Pa > D +15 Pa > corridor 0 Pa): a door opening short-
circuits a room to its next lower room, the supply-air controller winds up while it is open,
and after it closes the room recovers through an overshoot. No I/O and no wall clock:
`step()` advances `step_s` of simulated time, so one seed gives one trajectory everywhere.
The equations and their defaults are written out in docs/devices/dp-transmitter.md.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from drivers.registermap import Frozen
from simulators.config import FaultSpec

RELIABILITY_OK = 0  # 699M reliability register: 0 = value reliable (see the device page)
AVERAGE_WINDOWS_S = {"dp_avg_500ms": 0.5, "dp_avg_1s": 1.0, "dp_avg_4s": 4.0, "dp_avg_16s": 16.0}
TYPE_CODES = (9710, 9720, 9750, 9770, 9711, 9722, 9777)  # domain.md §3.7


class SensorFaultSpec(Frozen):
    """A window in which the transmitter reports its ΔP1 value as unreliable.

    Integer registers cannot carry NaN; the 699M says so in the reliability register that
    precedes each value (and in its error code), which is what this fault sets.
    """

    kind: Literal["sensor_fault"] = "sensor_fault"
    start_s: float = Field(ge=0.0, description="wall seconds after the simulator started")
    duration_s: float = Field(gt=0.0)
    reliability_code: int = Field(default=2, ge=1, le=65535, description="≠ 0 = unreliable")
    error_code: int = Field(default=1, ge=0, le=65535)


class DpTransmitterSimConfig(Frozen):
    """One simulated 699M: the room it watches and the faults it shows."""

    model: Literal["dp_transmitter"] = "dp_transmitter"
    seed: int = 0
    setpoint_pa: float = Field(default=15.0, ge=-500.0, le=1250.0, description="vs corridor")
    type_code: int = Field(default=9710, description="4x0001, e.g. 9710 = 1 x 1250 Pa")
    noise_pa: float = Field(default=0.4, ge=0.0, le=50.0, description="σ of the sensor noise")
    door_period_s: float = Field(default=600.0, gt=0.0, description="sim s between openings")
    door_open_s: float = Field(default=20.0, ge=0.0, description="0 keeps the door shut")
    faults: tuple[FaultSpec, ...] = ()
    sensor_faults: tuple[SensorFaultSpec, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> DpTransmitterSimConfig:
        if self.door_open_s >= self.door_period_s:
            raise ValueError("door_open_s must be shorter than door_period_s")
        for fault in self.faults:
            if fault.kind == "nan":
                raise ValueError("nan does not apply to integer registers: use sensor_faults")
            if fault.kind == "disconnect":
                raise ValueError("disconnect is a fault of the whole bus: put it on the bus")
            if fault.kind in ("garbage", "short_frame", "slow"):
                raise ValueError(f"{fault.kind} is not implemented on the RTU bus simulator")
        return self


class RtuBusSimConfig(Frozen):
    """The simulated RS-485 line: its clock and its bus-wide faults (disconnect only)."""

    model: Literal["rtu_bus"] = "rtu_bus"
    time_scale: float = Field(default=1.0, gt=0.0, le=10000.0, description="sim s per wall s")
    step_s: float = Field(default=0.1, gt=0.0, le=10.0, description="physics step, sim time")
    faults: tuple[FaultSpec, ...] = ()

    @model_validator(mode="after")
    def _bus_faults(self) -> RtuBusSimConfig:
        wrong = sorted({f.kind for f in self.faults} - {"disconnect"})
        if wrong:
            raise ValueError(f"bus faults are 'disconnect' only; per-slave faults: {wrong}")
        return self


@dataclass(frozen=True, slots=True)
class Physics:
    """Constants of a small GMP suite's supply-air pressure control."""

    tau_room_s: float = 1.5  # room pressure follows the damper within a couple of seconds
    tau_ctrl_s: float = 8.0  # the damper controller is slow on purpose (no hunting)
    door_leak: float = 0.12  # share of the differential left across an open door
    windup: float = 0.2  # the controller pushes up to +20 % while the door is open
    door_jitter: float = 0.1  # door times vary by ±10 %


def relax(x: float, x_eq: float, tau_s: float, dt: float) -> float:
    """Exact step of dx/dt = (x_eq - x)/tau over dt (stable for any dt)."""
    return x_eq + (x - x_eq) * math.exp(-dt / tau_s)


class Room:
    """One room: its true pressure, its damper command and its door."""

    def __init__(self, unit: int, cfg: DpTransmitterSimConfig, physics: Physics) -> None:
        self.unit, self.cfg, self._p = unit, cfg, physics
        self._rng = random.Random(cfg.seed)
        self.pressure_pa = cfg.setpoint_pa
        self.command_pa = cfg.setpoint_pa
        self.door_open = False
        self.door_open_count = 0
        self.measured_pa = cfg.setpoint_pa
        self.averages = dict.fromkeys(AVERAGE_WINDOWS_S, cfg.setpoint_pa)
        self._door_next_s = self._door_interval(open_now=False)

    def step(self, t_s: float, dt: float, outer_pa: float) -> None:
        """Advance `dt` simulated seconds; `outer_pa` is the next lower room's pressure."""
        if t_s >= self._door_next_s:
            self.door_open = not self.door_open
            self.door_open_count += self.door_open
            self._door_next_s = t_s + self._door_interval(open_now=self.door_open)
        p, sp = self._p, self.cfg.setpoint_pa
        target = sp * (1.0 + p.windup) if self.door_open else sp
        self.command_pa = relax(self.command_pa, target, p.tau_ctrl_s, dt)
        p_eq = self.command_pa
        if self.door_open:
            p_eq = outer_pa + p.door_leak * (self.command_pa - outer_pa)
        self.pressure_pa = relax(self.pressure_pa, p_eq, p.tau_room_s, dt)
        self.measured_pa = self.pressure_pa + self._rng.gauss(0.0, self.cfg.noise_pa)
        for tag, window in AVERAGE_WINDOWS_S.items():
            self.averages[tag] = relax(self.averages[tag], self.measured_pa, window, dt)

    def _door_interval(self, open_now: bool) -> float:
        cfg = self.cfg
        if cfg.door_open_s == 0.0:
            return math.inf
        nominal = cfg.door_open_s if open_now else cfg.door_period_s - cfg.door_open_s
        return nominal * (1.0 + self._rng.uniform(-self._p.door_jitter, self._p.door_jitter))


class CascadeModel:
    """All rooms watched by one bus, coupled through their doors, stepped together."""

    def __init__(
        self,
        rooms: Sequence[tuple[int, DpTransmitterSimConfig]],
        step_s: float,
        physics: Physics | None = None,
    ) -> None:
        physics = physics or Physics()
        self.step_s = step_s
        self.steps = 0
        # highest set point first; each room's door leads to the next one down
        ordered = sorted(rooms, key=lambda r: r[1].setpoint_pa, reverse=True)
        self.rooms = {unit: Room(unit, cfg, physics) for unit, cfg in ordered}
        units = list(self.rooms)
        self._outer = {
            u: (units[i + 1] if i + 1 < len(units) else None) for i, u in enumerate(units)
        }

    @property
    def t_s(self) -> float:
        """Simulated seconds since start (steps × step_s, no drift from summing)."""
        return self.steps * self.step_s

    def run(self, n: int) -> None:
        """Advance `n` steps."""
        for _ in range(n):
            self.step()

    def step(self) -> None:
        """Advance every room one step, against the outer rooms' previous pressures."""
        outer_pa = {
            u: (0.0 if o is None else self.rooms[o].pressure_pa) for u, o in self._outer.items()
        }
        t_s = self.t_s
        for unit, room in self.rooms.items():
            room.step(t_s, self.step_s, outer_pa[unit])
        self.steps += 1

    def state(self, unit: int) -> dict[str, float]:
        """What the transmitter of `unit` reports now, by profile tag (sensor healthy)."""
        room = self.rooms[unit]
        return {
            "type_code": float(room.cfg.type_code),
            "error_code": 0.0,
            "dp1_reliability": float(RELIABILITY_OK),
            "dp1": room.measured_pa,
            "dp_pa": room.measured_pa,
            **room.averages,
        }
