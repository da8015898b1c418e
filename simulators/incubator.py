"""Physics of a CO2 incubator and its Vaisala GMP251 probe: pure, seeded, on simulated time.

No I/O and no wall clock: `step()` advances `cfg.step_s` of simulated time, so one seed and
one number of steps give one trajectory on every machine (tests, demo, CI). Each first-order
process is integrated exactly over a step (x_eq + (x - x_eq)·e^(-a·dt)), so a long step or a
short door time constant cannot make the model unstable. The equations and their defaults
are written out in docs/devices/co2-incubator.md.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from simulators.config import IncubatorSimConfig

AMBIENT_CO2_PCT = 0.04
WATER_PAN_RH_PCT = 93.0
PROBE_COMP_TEMP_DEGC = 37.0  # GMP251 compensation temperature, set once at commissioning
CO2_STATUS_OK = 0
CO2_STATUS_NOT_READY = 256  # GMP251 register 0x0801 during start-up (domain.md §3.5)

SETPOINT_LIMITS: dict[str, tuple[float, float]] = {
    "temp_setpoint": (20.0, 50.0),
    "co2_setpoint": (0.0, 20.0),
    "temp_alarm_high": (20.0, 55.0),
    "temp_alarm_low": (0.0, 50.0),
    "co2_alarm_high": (0.0, 20.0),
    "co2_alarm_low": (0.0, 20.0),
    "temp_local_auto": (0.0, 1.0),
    "heater_demand": (0.0, 100.0),
    "co2_local_auto": (0.0, 1.0),
    "co2_valve_demand": (0.0, 100.0),
}
SWITCHES = frozenset({"temp_local_auto", "co2_local_auto"})  # 0 remote, 1 local auto only
# The incubator's own alarm limits (its on-board over/under-temperature and CO2 alarms),
# as deviations from the set points at power-up; writable like the set points.
DEFAULT_ALARM_BAND = {"temp": 1.0, "co2": 1.0}
ALARM_BITS = {
    "temp_high": 0,
    "temp_low": 1,
    "co2_high": 2,
    "co2_low": 3,
    "door_open": 4,
    "remote_lost": 5,  # an output went back to local auto: its demand was not refreshed
}


@dataclass(frozen=True, slots=True)
class Physics:
    """Plant, on-board controller and sensor constants of a typical 150-200 L incubator."""

    tau_thermal_s: float = 900.0  # chamber time constant, door closed
    heater_span_degC: float = 40.0  # steady rise over ambient at 100 % heater
    tau_door_thermal_s: float = 1800.0  # extra loss to the room while the door is open
    tau_co2_leak_s: float = 3600.0  # CO2 leaks toward ambient through gaskets and ports
    co2_inject_pct_per_s: float = 0.05  # CO2 rise rate at 100 % valve
    tau_door_co2_s: float = 30.0  # open door: chamber air mixes with the room quickly
    tau_rh_s: float = 900.0  # water pan brings RH back slowly
    tau_door_rh_s: float = 60.0
    room_rh_pct: float = 40.0
    temp_kp: float = 7.5  # %/K: lambda tuning, closed loop ~ 300 s
    temp_ti_s: float = 900.0
    co2_kp: float = 16.7  # %/%CO2: lambda tuning, closed loop ~ 120 s
    co2_ti_s: float = 3600.0
    door_jitter: float = 0.1  # door times vary by up to +-10 %
    probe_offset_degC: float = 0.1  # probe sits a little warmer than the air sensor
    noise_temp_degC: float = 0.02
    noise_rh_pct: float = 0.2
    noise_co2_pct: float = 0.01


def check_setpoint(tag: str, value: float) -> None:
    """Raise ValueError unless `tag` is a set point and `value` within its limits (not NaN)."""
    if tag not in SETPOINT_LIMITS:
        raise ValueError(f"{tag!r} is not a set point")
    low, high = SETPOINT_LIMITS[tag]
    if not low <= value <= high:  # also rejects NaN
        raise ValueError(f"{tag} {value} outside {low}..{high}")
    if tag in SWITCHES and value not in {0.0, 1.0}:
        raise ValueError(f"{tag} {value}: 0 (remote) or 1 (local auto) only")


def relax(x: float, x_eq: float, rate_per_s: float, dt: float) -> float:
    """Exact step of dx/dt = rate·(x_eq - x) over dt (stable for any dt)."""
    return x_eq + (x - x_eq) * math.exp(-rate_per_s * dt)


def pi_step(
    error: float, integral: float, kp: float, ti_s: float, dt: float
) -> tuple[float, float]:
    """(output % within 0..100, new integral) of a PI with conditional-integration anti-windup.

    While the output is saturated and the error pushes further out, the integral holds, so a
    cold start or a long door opening does not leave a wound-up integral to overshoot with.
    """
    unclamped = kp * error + integral
    if not ((unclamped >= 100.0 and error > 0.0) or (unclamped <= 0.0 and error < 0.0)):
        integral = min(100.0, max(0.0, integral + kp * error * dt / ti_s))
    return min(100.0, max(0.0, kp * error + integral)), integral


def track(output: float, error: float, kp: float) -> float:
    """The PI integral that gives `output` at `error`: bumpless return to local auto."""
    return min(100.0, max(0.0, output - kp * error))


class IncubatorModel:
    """The incubator's true state, its own thermostat and CO2 controller, and its sensors.

    `state` gives what the device would report, by the profile's tag names; the true
    values are attributes so tests can reason about physics without measurement noise.
    """

    def __init__(self, cfg: IncubatorSimConfig, physics: Physics | None = None) -> None:
        self.cfg = cfg
        self.physics = p = physics or Physics()
        self._rng = random.Random(cfg.seed)
        self.steps = 0
        self.temp_setpoint_degC = cfg.setpoint_degC
        self.co2_setpoint_pct = cfg.co2_setpoint_pct
        self.alarm_limits = {
            "temp_alarm_high": cfg.setpoint_degC + DEFAULT_ALARM_BAND["temp"],
            "temp_alarm_low": cfg.setpoint_degC - DEFAULT_ALARM_BAND["temp"],
            "co2_alarm_high": cfg.co2_setpoint_pct + DEFAULT_ALARM_BAND["co2"],
            "co2_alarm_low": max(0.0, cfg.co2_setpoint_pct - DEFAULT_ALARM_BAND["co2"]),
        }
        self.temp_degC = cfg.setpoint_degC if cfg.initial_degC is None else cfg.initial_degC
        self.co2_pct = cfg.co2_setpoint_pct
        self.rh_pct = WATER_PAN_RH_PCT
        self.door_open = False
        self.door_open_count = 0
        self._door_next_s = self._door_interval(open_now=False)
        # integrals start at the steady-state outputs, so a model at its set point stays there
        self._heat_i = min(
            100.0,
            max(0.0, 100.0 * (self.temp_setpoint_degC - cfg.ambient_degC) / p.heater_span_degC),
        )
        self._co2_i = min(100.0, max(0.0, self._co2_valve_ss()))
        self.heater_pct = self._heat_i
        self.valve_pct = self._co2_i
        # remote control by cellfab's own loops (docs/devices/co2-incubator.md)
        self.heater_local_auto = True
        self.co2_local_auto = True
        self.heater_demand_pct = 0.0
        self.valve_demand_pct = 0.0
        self.heater_remote_lost = False  # latched until temp_local_auto is written
        self.co2_remote_lost = False
        self._heater_fed_s = 0.0  # sim time of the last demand (or switch) write
        self._co2_fed_s = 0.0
        self._noise = self._draw_noise()

    @property
    def t_s(self) -> float:
        """Simulated seconds since power-up (steps × step_s, so no drift from summing)."""
        return self.steps * self.cfg.step_s

    @property
    def probe_ready(self) -> bool:
        """False while the GMP251 warms up and answers NaN with status 256."""
        return self.t_s >= self.cfg.probe_warmup_s

    def set_setpoint(self, tag: str, value: float) -> None:
        """Take a client's write of a SETPOINT_LIMITS tag; see `check_setpoint` for what raises.

        A write of a demand, or of `*_local_auto`, feeds that output's remote watchdog;
        writing `*_local_auto` (either value) also clears its latched "remote lost".
        """
        check_setpoint(tag, value)
        if tag == "temp_setpoint":
            self.temp_setpoint_degC = value
        elif tag == "co2_setpoint":
            self.co2_setpoint_pct = value
        elif tag in {"temp_local_auto", "heater_demand"}:
            self._heater_fed_s = self.t_s
            if tag == "heater_demand":
                self.heater_demand_pct = value
            else:
                self.heater_local_auto, self.heater_remote_lost = value == 1.0, False
        elif tag in {"co2_local_auto", "co2_valve_demand"}:
            self._co2_fed_s = self.t_s
            if tag == "co2_valve_demand":
                self.valve_demand_pct = value
            else:
                self.co2_local_auto, self.co2_remote_lost = value == 1.0, False
        else:
            self.alarm_limits[tag] = value

    @property
    def alarm_word(self) -> int:
        """The on-board alarm status bits (ALARM_BITS), as the controller reports them."""
        lim = self.alarm_limits
        active = {
            "temp_high": self.temp_degC > lim["temp_alarm_high"],
            "temp_low": self.temp_degC < lim["temp_alarm_low"],
            "co2_high": self.probe_ready and self.co2_pct > lim["co2_alarm_high"],
            "co2_low": self.probe_ready and self.co2_pct < lim["co2_alarm_low"],
            "door_open": self.door_open,
            "remote_lost": self.heater_remote_lost or self.co2_remote_lost,
        }
        return sum(1 << ALARM_BITS[name] for name, on in active.items() if on)

    def run(self, n: int) -> None:
        """Advance `n` steps."""
        for _ in range(n):
            self.step()

    def step(self) -> None:
        """Advance one step: door schedule, watchdog, controllers, then the plant."""
        dt = self.cfg.step_s
        if self.t_s >= self._door_next_s:
            self._toggle_door()
        door = 1.0 if self.door_open else 0.0
        self._watchdog()
        p = self.physics
        temp_error = self.temp_setpoint_degC - self.temp_degC
        if self.heater_local_auto:
            self.heater_pct, self._heat_i = pi_step(
                temp_error, self._heat_i, p.temp_kp, p.temp_ti_s, dt
            )
        else:
            self.heater_pct = self.heater_demand_pct
            self._heat_i = track(self.heater_pct, temp_error, p.temp_kp)
        co2_error = self.co2_setpoint_pct - self.co2_pct
        if not self.co2_local_auto:
            self._co2_i = track(self.valve_demand_pct, co2_error, p.co2_kp)
            self.valve_pct = 0.0 if self.door_open else self.valve_demand_pct
        elif self.door_open:
            self.valve_pct = 0.0  # the door switch inhibits injection, as real incubators do
        else:
            self.valve_pct, self._co2_i = pi_step(co2_error, self._co2_i, p.co2_kp, p.co2_ti_s, dt)
        self._integrate(door, dt)
        self.steps += 1
        self._noise = self._draw_noise()

    def _watchdog(self) -> None:
        """Loss of the supervisor: an output whose demand went stale goes back to local."""
        t, limit = self.t_s, self.cfg.remote_timeout_s
        if not self.heater_local_auto and t - self._heater_fed_s >= limit:
            self.heater_local_auto, self.heater_remote_lost = True, True
        if not self.co2_local_auto and t - self._co2_fed_s >= limit:
            self.co2_local_auto, self.co2_remote_lost = True, True

    @property
    def state(self) -> dict[str, float]:
        """What the device reports now, by profile tag (CO2 is NaN during probe warm-up)."""
        p = self.physics
        n_temp, n_rh, n_co2, n_probe = self._noise
        ready = self.probe_ready
        return {
            "chamber_temp": self.temp_degC + n_temp,
            "chamber_rh": min(100.0, max(0.0, self.rh_pct + n_rh)),
            "door_open": 1.0 if self.door_open else 0.0,
            "heater_output": self.heater_pct,
            "co2_valve_output": self.valve_pct,
            "door_open_count": float(self.door_open_count),
            "alarm_word": float(self.alarm_word),
            "operating_hours": float(int(self.cfg.operating_hours_h + self.t_s / 3600.0)),
            "temp_setpoint": self.temp_setpoint_degC,
            "co2_setpoint": self.co2_setpoint_pct,
            **self.alarm_limits,
            "temp_local_auto": 1.0 if self.heater_local_auto else 0.0,
            "heater_demand": self.heater_demand_pct,
            "co2_local_auto": 1.0 if self.co2_local_auto else 0.0,
            "co2_valve_demand": self.valve_demand_pct,
            "co2": max(0.0, self.co2_pct + n_co2) if ready else math.nan,
            "probe_comp_temp": PROBE_COMP_TEMP_DEGC,
            "probe_temp": self.temp_degC + p.probe_offset_degC + n_probe,
            "probe_device_status": 0.0,
            "probe_co2_status": float(CO2_STATUS_OK if ready else CO2_STATUS_NOT_READY),
        }

    def _integrate(self, door: float, dt: float) -> None:
        p, amb = self.physics, self.cfg.ambient_degC
        a_t = 1.0 / p.tau_thermal_s + door / p.tau_door_thermal_s
        heat = p.heater_span_degC / p.tau_thermal_s * self.heater_pct / 100.0
        self.temp_degC = relax(self.temp_degC, amb + heat / a_t, a_t, dt)
        a_c = 1.0 / p.tau_co2_leak_s + door / p.tau_door_co2_s
        inject = p.co2_inject_pct_per_s * self.valve_pct / 100.0
        self.co2_pct = relax(self.co2_pct, AMBIENT_CO2_PCT + inject / a_c, a_c, dt)
        a_h = 1.0 / p.tau_rh_s + door / p.tau_door_rh_s
        rh_eq = (WATER_PAN_RH_PCT / p.tau_rh_s + door * p.room_rh_pct / p.tau_door_rh_s) / a_h
        self.rh_pct = relax(self.rh_pct, rh_eq, a_h, dt)

    def _toggle_door(self) -> None:
        self.door_open = not self.door_open
        if self.door_open:
            self.door_open_count += 1
        self._door_next_s = self.t_s + self._door_interval(open_now=self.door_open)

    def _door_interval(self, open_now: bool) -> float:
        """Seconds until the door's next move; a door_open_s of 0 means it never opens."""
        cfg = self.cfg
        if cfg.door_open_s == 0.0:
            return math.inf
        nominal = cfg.door_open_s if open_now else cfg.door_period_s - cfg.door_open_s
        jitter = self.physics.door_jitter
        return nominal * (1.0 + self._rng.uniform(-jitter, jitter))

    def _co2_valve_ss(self) -> float:
        p = self.physics
        leak = (self.co2_setpoint_pct - AMBIENT_CO2_PCT) / p.tau_co2_leak_s
        return 100.0 * leak / p.co2_inject_pct_per_s

    def _draw_noise(self) -> tuple[float, float, float, float]:
        p, g = self.physics, self._rng.gauss
        return (
            g(0.0, p.noise_temp_degC),
            g(0.0, p.noise_rh_pct),
            g(0.0, p.noise_co2_pct),
            g(0.0, p.noise_temp_degC),
        )
