"""Config of the simulator that serves a device (the `[devices.simulator]` table)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from drivers.registermap import Frozen

FaultKind = Literal[
    "nan", "no_response", "exception", "disconnect", "garbage", "short_frame", "slow"
]


class FaultSpec(Frozen):
    """A communication fault the simulator shows during a window of wall-clock time.

    nan: the CO2 probe answers NaN (as a Vaisala probe does while not ready);
    no_response: requests are received but never answered (the master times out);
    exception: every request gets Modbus exception `exception_code` (6 = device busy);
    disconnect: the server closes its listener and connections, then comes back;
    garbage: every reply is a correctly framed MBAP frame holding random bytes (led by an
    exception-like function code that is not the request's);
    short_frame: read replies carry half the registers asked for (byte count to match);
    slow: every reply leaves `delay_s` late (beyond the master's timeout it is a timeout).
    """

    kind: FaultKind
    start_s: float = Field(ge=0.0, description="seconds after the simulator started")
    duration_s: float = Field(gt=0.0)
    exception_code: int = Field(default=6, ge=1, le=11)
    delay_s: float = Field(default=1.0, gt=0.0, le=60.0, description="slow: reply delay")

    @field_validator("exception_code")
    @classmethod
    def _defined_code(cls, code: int) -> int:
        if code == 9:  # Modbus defines 1-8, 10 and 11 only; pymodbus' ExcCodes has no 9
            raise ValueError("9 is not a Modbus exception code (use 1-8, 10 or 11)")
        return code

    @model_validator(mode="after")
    def _delay_for_slow(self) -> FaultSpec:
        if "delay_s" in self.model_fields_set and self.kind != "slow":
            raise ValueError(f"delay_s applies to kind 'slow' only, not {self.kind!r}")
        return self


class IncubatorSimConfig(Frozen):
    """A CO2 incubator: first-order thermal model, CO2 injection/decay, scheduled door."""

    model: Literal["co2_incubator"] = "co2_incubator"
    seed: int = 0
    time_scale: float = Field(default=1.0, gt=0.0, le=10000.0, description="sim s per wall s")
    step_s: float = Field(default=0.5, gt=0.0, le=60.0, description="physics step, sim time")
    ambient_degC: float = Field(default=22.0, ge=-10.0, le=45.0)
    setpoint_degC: float = Field(default=37.0, ge=20.0, le=50.0)
    co2_setpoint_pct: float = Field(default=5.0, ge=0.0, le=20.0)
    initial_degC: float | None = Field(default=None, description="default: at set point")
    door_period_s: float = Field(default=600.0, gt=0.0, description="sim s between openings")
    door_open_s: float = Field(default=20.0, ge=0.0)
    probe_warmup_s: float = Field(default=10.0, ge=0.0, description="probe sends NaN until then")
    operating_hours_h: float = Field(default=8760.0, ge=0.0, description="hours run at start")
    remote_timeout_s: float = Field(
        default=30.0,
        gt=0.0,
        le=86400.0,
        description="sim s without a demand write before an output goes back to local auto",
    )
    faults: tuple[FaultSpec, ...] = ()

    @model_validator(mode="after")
    def _door_fits(self) -> IncubatorSimConfig:
        if self.door_open_s >= self.door_period_s:
            raise ValueError("door_open_s must be shorter than door_period_s")
        return self


SimulatorConfig = IncubatorSimConfig
