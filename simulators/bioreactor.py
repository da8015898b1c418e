"""Physics of a rocking-bag expansion bioreactor (Xuri W25-like): pure, seeded, simulated time.

No I/O and no wall clock: `step()` advances `cfg.step_s` of simulated time, so one seed and
one number of steps give one trajectory. Models after shared/domain.md §2.3: logistic growth
with death, an oxygen balance whose kLa rises with the rocking rate, pH from CO2/bicarbonate
and lactate, temperature as first order plus dead time. The device's own PI loops drive the
heater, the CO2 and the O2 flows while their `*_auto` switch is on; switched off, a client
writes those outputs itself (so a later control loop of ours can close the loop).
Equations and defaults: docs/devices/bioreactor.md.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from drivers.registermap import Frozen
from simulators.config import FaultSpec
from simulators.incubator import pi_step, relax

PKA = 6.1  # apparent pKa of CO2/bicarbonate
ALPHA_MM_PER_MMHG = 0.0307  # CO2 solubility at 37 degC
DRY_GAS_MMHG = 713.0  # 760 mmHg minus water vapour at 37 degC
O2_AIR = 0.2095
C_STAR_AIR_MM = 0.20  # dissolved O2 at air saturation, 37 degC
MEDIUM_DENSITY_KG_L = 1.007
MIN_PCO2_MMHG = 5.0  # metabolic CO2 of the culture
MIN_HCO3_MM = 0.5  # buffer exhausted: pH ~6.6

# Writable names: (low, high) limits; a write outside them is refused, never clamped.
WRITE_LIMITS: dict[str, tuple[float, float]] = {
    "temperature_sp": (20.0, 40.0),
    "heater_output": (0.0, 100.0),
    "temperature_auto": (0.0, 1.0),
    "ph_sp": (6.5, 7.8),
    "co2_flow": (0.0, 0.05),
    "ph_auto": (0.0, 1.0),
    "do_sp": (0.0, 100.0),
    "o2_flow": (0.0, 0.1),
    "do_auto": (0.0, 1.0),
    "air_flow_sp": (0.0, 1.0),
    "rock_rate_sp": (0.0, 40.0),
    "rock_angle_sp": (0.0, 12.0),
    "perfusion_rate_sp": (0.0, 10.0),
}
MANUAL_OUTPUTS = {"heater_output": "temperature_auto", "co2_flow": "ph_auto", "o2_flow": "do_auto"}


class WriteRejected(ValueError):
    """A client's write the device refuses; `status` is the OPC UA StatusCode name to answer."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class BadStatusSpec(Frozen):
    """A node that reports a Bad StatusCode (no value) during a wall-clock window."""

    kind: Literal["bad_status"] = "bad_status"
    tag: str = Field(min_length=1, description="model name, e.g. 'do'")
    status: str = Field(default="BadDeviceFailure", pattern=r"^Bad[A-Za-z]+$")
    start_s: float = Field(ge=0.0)
    duration_s: float = Field(gt=0.0)


class BioreactorSimConfig(Frozen):
    """A rocking-bag bioreactor with a T-cell culture, served over OPC UA."""

    model: Literal["bioreactor"] = "bioreactor"
    seed: int = 0
    time_scale: float = Field(default=1.0, gt=0.0, le=100000.0, description="sim s per wall s")
    step_s: float = Field(default=10.0, gt=0.0, le=60.0, description="physics step, sim time")
    ambient_degC: float = Field(default=22.0, ge=-10.0, le=45.0)
    temperature_sp_degC: float = Field(default=37.0, ge=20.0, le=40.0)
    ph_sp: float = Field(default=7.2, ge=6.5, le=7.8)
    do_sp_pct: float = Field(default=40.0, ge=0.0, le=100.0)
    rock_rate_rpm: float = Field(default=10.0, ge=0.0, le=40.0)
    rock_angle_deg: float = Field(default=6.0, ge=0.0, le=12.0)
    air_flow_L_min: float = Field(default=0.2, ge=0.0, le=1.0)
    perfusion_L_day: float = Field(default=0.0, ge=0.0, le=10.0)
    volume_L: float = Field(default=1.0, gt=0.0, le=25.0)
    seed_density_e6_mL: float = Field(default=0.5, gt=0.0, le=50.0)
    seed_viability_pct: float = Field(default=95.0, gt=0.0, le=100.0)
    bicarbonate_mM: float = Field(default=24.0, gt=0.0, le=50.0)
    initial_degC: float | None = Field(default=None, description="default: at set point")
    faults: tuple[FaultSpec, ...] = ()
    bad_status: tuple[BadStatusSpec, ...] = ()

    @model_validator(mode="after")
    def _opcua_faults(self) -> BioreactorSimConfig:
        for fault in self.faults:
            if fault.kind not in {"nan", "disconnect"}:
                raise ValueError(f"fault {fault.kind!r} has no OPC UA meaning (nan, disconnect)")
        return self


@dataclass(frozen=True, slots=True)
class Physics:
    """Culture, bag and controller constants (domain.md §2.3; documented choices)."""

    doubling_time_s: float = 2.0 * 86400.0  # activated T cells, ~30-fold in 10 days
    x_max_e6_mL: float = 15.0
    k_death_per_s: float = 0.02 / 86400.0
    k_stress_per_s: float = 0.5 / 86400.0  # extra death while pH or DO is out of range
    k_o2_mM: float = 0.005  # Monod constant of growth on dissolved O2
    q_o2_mmol_per_e6_s: float = 30e-15 * 1e9  # 30 amol/cell/s (in mmol) x 10^9 cells/L
    q_lac_mmol_per_e6_s: float = 0.05e-9 / 3600.0 * 1e9  # 0.05 pmol/cell/h (in mmol)
    tau_thermal_s: float = 1200.0  # tray + bag
    dead_time_s: float = 40.0
    heater_span_degC: float = 25.0  # steady rise over ambient at 100 % heater
    tau_gas_s: float = 300.0  # headspace exchange
    temp_kp: float = 12.0
    temp_ti_s: float = 1500.0
    ph_kp: float = 400.0  # % CO2 valve per pH unit above set point
    ph_ti_s: float = 3600.0
    do_kp: float = 3.0  # % O2 valve per % air saturation below set point
    do_ti_s: float = 1800.0
    bag_tare_kg: float = 0.35
    noise_temp_degC: float = 0.02
    noise_ph: float = 0.005
    noise_do_pct: float = 0.3
    noise_weight_kg: float = 0.002


def kla_per_h(rate_rpm: float, angle_deg: float) -> float:
    """Oxygen transfer coefficient: ~3.5 /h by surface aeration up to 20 rpm, wave
    entrainment above that, up to 65 /h at 40 rpm and 12 degrees (Bai et al. 2019)."""
    surface = 0.5 + 3.0 * min(rate_rpm, 20.0) / 20.0
    waves = 61.5 * (max(rate_rpm - 20.0, 0.0) / 20.0) ** 2 * min(angle_deg, 12.0) / 12.0
    return surface + waves


def ph_of(bicarbonate_mM: float, pco2_mmHg: float) -> float:
    """Henderson-Hasselbalch for the CO2/bicarbonate buffer.

    The cells' own CO2 keeps pCO2 at MIN_PCO2_MMHG or more even without CO2 in the gas.
    """
    pco2 = max(pco2_mmHg, MIN_PCO2_MMHG)
    return PKA + math.log10(max(bicarbonate_mM, MIN_HCO3_MM) / (ALPHA_MM_PER_MMHG * pco2))


class BioreactorModel:
    """True state of bag and culture, the device's own loops and its (noisy) sensors."""

    def __init__(self, cfg: BioreactorSimConfig, physics: Physics | None = None) -> None:
        self.cfg = cfg
        self.physics = p = physics or Physics()
        self._rng = random.Random(cfg.seed)
        self.steps = 0
        self.settings: dict[str, float] = {
            "temperature_sp": cfg.temperature_sp_degC,
            "temperature_auto": 1.0,
            "ph_sp": cfg.ph_sp,
            "ph_auto": 1.0,
            "do_sp": cfg.do_sp_pct,
            "do_auto": 1.0,
            "air_flow_sp": cfg.air_flow_L_min,
            "rock_rate_sp": cfg.rock_rate_rpm,
            "rock_angle_sp": cfg.rock_angle_deg,
            "perfusion_rate_sp": cfg.perfusion_L_day,
        }
        self.temp_degC = cfg.temperature_sp_degC if cfg.initial_degC is None else cfg.initial_degC
        heat_ss = 100.0 * (cfg.temperature_sp_degC - cfg.ambient_degC) / p.heater_span_degC
        self.heater_pct = min(100.0, max(0.0, heat_ss))
        self._heat_i = self.heater_pct
        self._heat_line: deque[float] = deque(
            [self.heater_pct] * max(1, round(p.dead_time_s / cfg.step_s))
        )
        self.co2_flow = 0.05 * cfg.air_flow_L_min / 0.95 if cfg.air_flow_L_min > 0 else 0.0
        self._co2_i = 100.0 * self.co2_flow / WRITE_LIMITS["co2_flow"][1]
        self.o2_flow = 0.0
        self._o2_i = 0.0
        self.x_co2, self.x_o2 = self._feed_gas()
        self.do_mM = C_STAR_AIR_MM * self.x_o2 / O2_AIR
        self.xv = cfg.seed_density_e6_mL
        self.xd = self.xv * (100.0 / cfg.seed_viability_pct - 1.0)
        self.lactate_mM = 0.0
        self.hco3_mM = cfg.bicarbonate_mM
        self.volume_L = cfg.volume_L
        self._noise = self._draw_noise()

    @property
    def t_s(self) -> float:
        """Simulated seconds since inoculation."""
        return self.steps * self.cfg.step_s

    @property
    def kla_per_h(self) -> float:
        """kLa now, from the rocker's set rate and angle."""
        return kla_per_h(self.settings["rock_rate_sp"], self.settings["rock_angle_sp"])

    @property
    def ph(self) -> float:
        """True pH of the medium."""
        return ph_of(self.hco3_mM, self.x_co2 * DRY_GAS_MMHG)

    @property
    def do_pct(self) -> float:
        """True dissolved O2 in % air saturation."""
        return 100.0 * self.do_mM / C_STAR_AIR_MM

    @property
    def viability_pct(self) -> float:
        """Viable share of all cells."""
        return 100.0 * self.xv / (self.xv + self.xd)

    def write(self, name: str, value: float) -> None:
        """Take a client's write; raises WriteRejected (out of range, or output in auto)."""
        if name not in WRITE_LIMITS:
            raise WriteRejected("BadNotWritable", f"{name!r} is not writable")
        low, high = WRITE_LIMITS[name]
        if not low <= value <= high:  # also refuses NaN
            raise WriteRejected("BadOutOfRange", f"{name} {value} outside {low}..{high}")
        if name in MANUAL_OUTPUTS:
            if self.settings[MANUAL_OUTPUTS[name]] >= 0.5:
                raise WriteRejected("BadInvalidState", f"{name}: switch off {MANUAL_OUTPUTS[name]}")
            setattr(self, {"heater_output": "heater_pct"}.get(name, name), value)
            return
        if name.endswith("_auto"):
            value = 1.0 if value >= 0.5 else 0.0
            self._bumpless(name)
        self.settings[name] = value

    def run(self, n: int) -> None:
        """Advance `n` steps."""
        for _ in range(n):
            self.step()

    def step(self) -> None:
        """One step: the device's loops, then gas, oxygen, culture, pH and temperature."""
        dt = self.cfg.step_s
        self._controllers(dt)
        self._gas_and_oxygen(dt)
        self._culture(dt)
        self._temperature(dt)
        self.steps += 1
        self._noise = self._draw_noise()

    @property
    def state(self) -> dict[str, float]:
        """What the device reports now, by model name."""
        p, s = self.physics, self.settings
        n_t, n_ph, n_do, n_w = self._noise
        return {
            **s,
            "temperature": self.temp_degC + n_t,
            "heater_output": self.heater_pct,
            "ph": self.ph + n_ph,
            "co2_flow": self.co2_flow,
            "do": max(0.0, self.do_pct + n_do),
            "o2_flow": self.o2_flow,
            "air_flow": s["air_flow_sp"],
            "rock_rate": s["rock_rate_sp"],
            "rock_angle": s["rock_angle_sp"],
            "perfusion_rate": s["perfusion_rate_sp"],
            "volume": self.volume_L,
            "weight": p.bag_tare_kg + self.volume_L * MEDIUM_DENSITY_KG_L + n_w,
            "vcd": self.xv,
            "viability": self.viability_pct,
            "lactate": self.lactate_mM,
            "kla": self.kla_per_h,
        }

    def _controllers(self, dt: float) -> None:
        p, s = self.physics, self.settings
        if s["temperature_auto"]:
            err = s["temperature_sp"] - self.temp_degC
            self.heater_pct, self._heat_i = pi_step(err, self._heat_i, p.temp_kp, p.temp_ti_s, dt)
        if s["ph_auto"]:
            err = self.ph - s["ph_sp"]
            pct, self._co2_i = pi_step(err, self._co2_i, p.ph_kp, p.ph_ti_s, dt)
            self.co2_flow = WRITE_LIMITS["co2_flow"][1] * pct / 100.0
        if s["do_auto"]:
            err = s["do_sp"] - self.do_pct
            pct, self._o2_i = pi_step(err, self._o2_i, p.do_kp, p.do_ti_s, dt)
            self.o2_flow = WRITE_LIMITS["o2_flow"][1] * pct / 100.0

    def _bumpless(self, switch: str) -> None:
        """Start a loop switched back to auto from the output it had in manual."""
        if switch == "temperature_auto":
            self._heat_i = self.heater_pct
        elif switch == "ph_auto":
            self._co2_i = 100.0 * self.co2_flow / WRITE_LIMITS["co2_flow"][1]
        else:
            self._o2_i = 100.0 * self.o2_flow / WRITE_LIMITS["o2_flow"][1]

    def _feed_gas(self) -> tuple[float, float]:
        """(CO2, O2) mole fractions of the gas fed to the headspace."""
        air = self.settings["air_flow_sp"]
        total = air + self.co2_flow + self.o2_flow
        if total <= 0.0:
            return 0.0004, O2_AIR
        return self.co2_flow / total, (O2_AIR * air + self.o2_flow) / total

    def _gas_and_oxygen(self, dt: float) -> None:
        p = self.physics
        feed_co2, feed_o2 = self._feed_gas()
        self.x_co2 = relax(self.x_co2, feed_co2, 1.0 / p.tau_gas_s, dt)
        self.x_o2 = relax(self.x_o2, feed_o2, 1.0 / p.tau_gas_s, dt)
        kla = self.kla_per_h / 3600.0
        c_star = C_STAR_AIR_MM * self.x_o2 / O2_AIR
        uptake = p.q_o2_mmol_per_e6_s * self.xv
        self.do_mM = max(0.0, relax(self.do_mM, c_star - uptake / kla, kla, dt))

    def _culture(self, dt: float) -> None:
        p, s = self.physics, self.settings
        mu = math.log(2.0) / p.doubling_time_s * self.do_mM / (self.do_mM + p.k_o2_mM)
        stressed = not 6.8 <= self.ph <= 7.6 or self.do_pct < 5.0
        kd = p.k_death_per_s + (p.k_stress_per_s if stressed else 0.0)
        growth = mu * self.xv * max(0.0, 1.0 - self.xv / p.x_max_e6_mL) * dt
        dead = self.xv * (1.0 - math.exp(-kd * dt))
        self.xv = min(p.x_max_e6_mL, self.xv + growth - dead)
        self.xd += dead  # perfusion retains cells (retention filter), dead ones included
        dilution = s["perfusion_rate_sp"] / 86400.0 / self.volume_L
        produced = p.q_lac_mmol_per_e6_s * self.xv * dt
        wash = 1.0 - math.exp(-dilution * dt)
        self.lactate_mM += produced - self.lactate_mM * wash
        self.hco3_mM += (self.cfg.bicarbonate_mM - self.hco3_mM) * wash - produced
        self.hco3_mM = max(MIN_HCO3_MM, self.hco3_mM)

    def _temperature(self, dt: float) -> None:
        p = self.physics
        self._heat_line.append(self.heater_pct)
        delayed = self._heat_line.popleft()
        target = self.cfg.ambient_degC + p.heater_span_degC * delayed / 100.0
        self.temp_degC = relax(self.temp_degC, target, 1.0 / p.tau_thermal_s, dt)

    def _draw_noise(self) -> tuple[float, float, float, float]:
        p, g = self.physics, self._rng.gauss
        return (
            g(0.0, p.noise_temp_degC),
            g(0.0, p.noise_ph),
            g(0.0, p.noise_do_pct),
            g(0.0, p.noise_weight_kg),
        )
