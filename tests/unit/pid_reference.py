"""The PID algorithm of controller/pid.py written plainly, one loop at a time, in floats.

Used only by tests: the vectorised core must produce the same numbers. Each line here is one
equation of docs/control.md, in the order the core evaluates them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from controller.pid_settings import LoopSettings
from controller.pid_state import NEVER_S


@dataclass
class Terms:
    output: float
    p: float
    i: float
    d: float
    sp: float
    sat_high: bool
    sat_low: bool
    mode: int


class RefLoop:
    """One loop's state and its update."""

    def __init__(self, cfg: LoopSettings, dt_min_s: float, dt_max_s: float) -> None:
        sign = 1.0 if cfg.action == "reverse" else -1.0
        self.kp, self.ki, self.kd = sign * cfg.kp, sign * cfg.ki_per_s, sign * cfg.kd_s
        self.b, self.tf = cfg.sp_weight_p, cfg.d_filter_s
        self.lo_lim, self.hi_lim = cfg.out_min, cfg.out_max
        self.rate_u, self.rate_sp = cfg.out_rate_per_s, cfg.sp_rate_per_s
        self.safe_after, self.safe_out = cfg.safe_after_s, cfg.safe_output
        self.dt_min, self.dt_max = dt_min_s, dt_max_s
        start = cfg.safe_output if cfg.initial_output is None else cfg.initial_output
        self.u = min(max(start, self.lo_lim), self.hi_lim)
        self.spw = cfg.setpoint
        self.i, self.d = self.u, 0.0
        self.pv_last = cfg.setpoint
        self.bad_s = NEVER_S
        self.auto = cfg.auto
        self.manual_output = self.u

    def set_mode(self, auto: bool, manual_output: float | None = None) -> None:
        if not auto:
            self.manual_output = self.u if manual_output is None else manual_output
        self.auto = auto

    def step(self, pv: float, sp: float, dt: float, ok: bool) -> Terms:
        h = self.dt_min if not dt >= self.dt_min else min(dt, self.dt_max)
        good = ok and math.isfinite(pv)
        tsg = self.bad_s + h
        x = pv if good else self.pv_last
        self.bad_s = 0.0 if good else tsg
        hold = self.auto and not good
        safe = hold and self.bad_s >= self.safe_after
        if safe:
            self.u = self.safe_out
        step_u = 0.0 if hold else self.rate_u * h
        step_sp = self.rate_sp * h
        lo = max(self.u - step_u, self.lo_lim)
        hi = min(self.u + step_u, self.hi_lim)
        self.spw = min(max(sp, self.spw - step_sp), self.spw + step_sp)
        p = (self.b * self.spw - x) * self.kp
        e = (self.spw - x) * self.ki * h if good else 0.0
        self.d = (self.d * self.tf + (self.pv_last - x) * self.kd) / (self.tf + tsg)
        pd = p + self.d
        v0 = pd + self.i  # the output before this tick's integral step
        if not self.auto:
            e = self.manual_output - v0
        e = min(max(e, min(0.0, lo - v0)), max(0.0, hi - v0))
        self.i = self.i + e
        self.u = min(max(v0 + e, lo), hi)
        self.pv_last = x
        sat_low, sat_high = self.u <= lo, self.u >= hi
        if hold:
            sat_high = sat_low = False
        mode = int(self.auto) + int(hold) + int(safe)
        return Terms(self.u, p, self.i, self.d, self.spw, sat_high, sat_low, mode)
