"""Closed loops in-process: the project's PID core on a simulator's pure physics model.

No server, no wall clock: a loop group ticks every `period_s` of simulated time, and the
model is stepped in between exactly as the simulator's runner would step it (whole
`step_s` steps, measurement noise redrawn per step, seeded). Each tick reads, computes with
`controller.pid.update` and writes, in the daemon's order. Shared by
tests/unit/test_closed_loop_tuning.py and docs/step_responses.py; it knows nothing about a
particular device (tests/closed_loop_scenarios.py does).
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from controller import pid
from controller.loops import prime_outputs
from controller.pid_settings import LoopSettings, build

F64 = npt.NDArray[np.float64]
ROOT = Path(__file__).resolve().parents[1]
# Where the shipped tuning lives: the loops of the demo suite.
LOOPS_PATH = ROOT / "config" / "demo.toml"
DEMO_PATH = ROOT / "config" / "demo.toml"


@dataclass(frozen=True, slots=True)
class Loop:
    """One `[[loops]]` table: wiring (device.tag), engineering limits and the PID settings."""

    id: str
    group: str
    pv: str  # "device.tag"
    output: str
    settings: LoopSettings
    takeover: dict[str, Any] | None = None
    sp_min: float = -math.inf
    sp_max: float = math.inf

    @property
    def device(self) -> str:
        return self.pv.split(".", 1)[0]


@dataclass(frozen=True, slots=True)
class Group:
    """One `[[loop_groups]]` table."""

    id: str
    period_s: float
    stale_after_s: float

    @property
    def dt_bounds_s(self) -> tuple[float, float]:
        """The daemon clips the measured tick to this (controller/loops_config.py)."""
        return 0.1 * self.period_s, 10.0 * self.period_s


def tag_of(ref: str) -> str:
    """The tag part of "device.tag"."""
    return ref.split(".", 1)[1]


def load_loops(path: Path = LOOPS_PATH) -> tuple[dict[str, Group], list[Loop]]:
    """Groups and loops of a site file (or fragment), each loop's settings validated."""
    doc = tomllib.loads(path.read_text(encoding="utf-8"))
    groups = {
        g["id"]: Group(g["id"], float(g["period_s"]), float(g["stale_after_s"]))
        for g in doc.get("loop_groups", [])
    }
    loops = []
    for raw in doc.get("loops", []):
        settings = LoopSettings.model_validate(
            {k: v for k, v in raw.items() if k in LoopSettings.model_fields}
        )
        loops.append(
            Loop(
                id=raw["id"],
                group=raw["group"],
                pv=raw["pv"],
                output=raw["output"],
                settings=settings,
                takeover=raw.get("takeover"),
                sp_min=float(raw.get("sp_min", -math.inf)),
                sp_max=float(raw.get("sp_max", math.inf)),
            )
        )
    return groups, loops


def simulator_tables(path: Path = DEMO_PATH) -> dict[str, dict[str, Any]]:
    """The `[devices.simulator]` table of every simulated device of a site file, by device id."""
    doc = tomllib.loads(path.read_text(encoding="utf-8"))
    return {d["id"]: dict(d["simulator"]) for d in doc.get("devices", []) if "simulator" in d}


class Plant(Protocol):
    """A pure physics model seen through its device's tags."""

    @property
    def step_s(self) -> float: ...

    @property
    def t_s(self) -> float: ...

    def step(self) -> None: ...

    def read(self, tags: Sequence[str]) -> list[float]: ...

    def write(self, tag: str, value: float) -> None: ...


@dataclass
class Trace:
    """What a closed-loop run recorded, one row per tick (time in simulated seconds)."""

    loops: tuple[str, ...]
    t: F64
    pv: F64  # (ticks, loops), as measured (with noise)
    sp: F64  # the working set point
    out: F64
    extra: dict[str, F64] = field(default_factory=dict)

    def col(self, loop: str) -> int:
        return self.loops.index(loop)


@dataclass(frozen=True, slots=True)
class SpStep:
    """At `t_s`, the loop's target set point becomes `value` (as a command would set it)."""

    t_s: float
    loop: str
    value: float


def run_group(
    plant: Plant,
    group: Group,
    loops: Sequence[Loop],
    duration_s: float,
    *,
    steps: Sequence[SpStep] = (),
    probes: Sequence[str] = (),
    prime_from: Mapping[str, str] | None = None,
) -> Trace:
    """Take the loops over and run them for `duration_s`; the trace's time starts at 0.

    As the daemon does (controller/loops.py `LoopGroup.prime`, through `prime_outputs`):
    each loop is built at its configured initial output, then primed at the device's present
    output (output, manual output and integrator), read from the output tag or from
    `prime_from[output tag]` where the device reports the actuator under another tag; it
    holds that output in manual for the first tick and goes to auto after it.
    The takeover switch is written before the first output. `probes` are extra tags
    recorded every tick (e.g. door_open).
    """
    for loop in loops:
        if loop.takeover is not None:
            plant.write(tag_of(loop.takeover["tag"]), float(loop.takeover["remote"]))
    out_tags = [tag_of(loop.output) for loop in loops]
    pv_tags = [tag_of(loop.pv) for loop in loops]
    prime = prime_from or {}
    start = plant.read([prime.get(tag, tag) for tag in out_tags])
    params, state = build([lp.settings for lp in loops], *group.dt_bounds_s)
    primed = prime_outputs(state, params, range(len(loops)), start)
    sp = np.array([lp.settings.setpoint for lp in loops])
    index = {lp.id: i for i, lp in enumerate(loops)}
    pending = sorted(steps, key=lambda s: s.t_s)
    n = math.floor(duration_s / group.period_s) + 1
    t: F64 = np.arange(n, dtype=np.float64) * group.period_s
    rec = {k: np.zeros((n, len(loops))) for k in ("pv", "sp", "out")}
    extra = {tag: np.zeros(n) for tag in probes}
    t_start = plant.t_s
    for k, now in enumerate(t):
        while plant.t_s - t_start + plant.step_s <= now + 1e-9:
            plant.step()
        while pending and pending[0].t_s <= now:
            change = pending.pop(0)
            sp[index[change.loop]] = change.value
        pv = np.array(plant.read(pv_tags))
        terms = pid.update(state, params, pv, sp, group.period_s, np.isfinite(pv))
        for tag, u in zip(out_tags, terms.output, strict=True):
            plant.write(tag, float(u))
        if primed:  # the first tick held the present output: now auto, as `LoopGroup.run`
            pid.set_mode(state, params, primed, True)
            primed = []
        rec["pv"][k], rec["sp"][k], rec["out"][k] = pv, terms.sp, terms.output
        for tag, value in zip(probes, plant.read(probes), strict=True):
            extra[tag][k] = value
    return Trace(tuple(lp.id for lp in loops), t, rec["pv"], rec["sp"], rec["out"], extra)


# --- metrics ----------------------------------------------------------------------------


def overshoot(pv: F64, sp_from: float, sp_to: float) -> float:
    """How far the pv went beyond the new set point, in the step's direction (>= 0)."""
    sign = 1.0 if sp_to >= sp_from else -1.0
    return max(0.0, float(np.max(sign * (pv - sp_to))))


def settling_time(t: F64, pv: F64, sp: float, band: float, t0: float) -> float:
    """Seconds from t0 until pv enters sp ± band for good (inf if it ends outside)."""
    outside = np.flatnonzero(np.abs(pv - sp) > band)
    if outside.size == 0:
        return 0.0
    last = int(outside[-1])
    if last == pv.size - 1:
        return math.inf
    return float(t[last + 1] - t0)


def reversals(u: F64, threshold: float) -> int:
    """Direction changes of `u`, counting a turn only once u has moved back by > threshold.

    A zig-zag filter: small noise-driven wiggles never count, a swing of the actuator back
    and forth by more than `threshold` counts once per turn.
    """
    direction, extreme, turns = 0, float(u[0]), 0
    for value in u[1:]:
        move = float(value) - extreme
        if direction == 0:
            if abs(move) > threshold:
                direction, extreme = (1 if move > 0 else -1), float(value)
        elif move * direction > 0:
            extreme = float(value)
        elif abs(move) > threshold:
            direction, extreme, turns = -direction, float(value), turns + 1
    return turns


def window(trace: Trace, t0: float, t1: float) -> npt.NDArray[np.bool_]:
    """Mask of the ticks with t0 <= t < t1."""
    return (trace.t >= t0) & (trace.t < t1)
