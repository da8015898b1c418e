"""The demo's closed loops exercised on the simulators' models: set-point steps, door openings.

Each scenario builds the device's physics model from its `[devices.simulator]` table in
config/demo.toml (same seed, same physics; `time_scale` plays no part on simulated time),
takes the device's loops over with the shipped tuning (tests/closed_loop_sim.LOOPS_PATH),
runs them and measures what the issue asks for. The numbers are asserted in
tests/unit/test_closed_loop_tuning.py and plotted by docs/step_responses.py.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simulators.bioreactor import BioreactorModel, BioreactorSimConfig
from simulators.config import IncubatorSimConfig
from simulators.incubator import IncubatorModel
from tests.closed_loop_sim import (
    DEMO_PATH,
    LOOPS_PATH,
    Group,
    Loop,
    SpStep,
    Trace,
    load_loops,
    overshoot,
    reversals,
    run_group,
    settling_time,
    simulator_tables,
    tag_of,
    window,
)

# --- the acceptance numbers and the hunting criterion ------------------------------
TEMP_BAND = 0.1  # degC: the temperature step settles within +-0.1 degC ...
TEMP_MAX_OVERSHOOT = 0.3  # ... with less than 0.3 degC overshoot
CO2_BAND = 0.3  # %: the door opening recovers CO2 to +-0.3 % ...
# ... without hunting: over one door cycle (opening to the next opening) the output may
# turn back by more than HUNT_FRACTION of its span at most MAX_REVERSALS times. A clean
# recovery turns once (up while the door is open, back down once CO2/temperature is back);
# one more allows a single damped correction; a limit cycle turns every period.
HUNT_FRACTION = 0.05
MAX_REVERSALS = 2

# Bioreactor scenario: a culture grown for WARMUP_DAYS under the device's own loops (so that
# the DO loop has oxygen demand to work against), then cellfab takes over and steps each
# set point in turn. (loop suffix, from, to, at_s, settle band, window_s)
WARMUP_DAYS = 5.0
BR_STEPS: tuple[tuple[str, float, float, float, float, float], ...] = (
    ("temp", 36.0, 37.0, 600.0, TEMP_BAND, 6600.0),
    ("ph", 7.2, 7.1, 7200.0, 0.03, 7200.0),
    ("do", 40.0, 50.0, 14400.0, 2.0, 7200.0),
)
BR_DURATION_S = 21600.0

# Incubator scenario: the demo's own door schedule (jittered, seeded), loops taken over
# once the CO2 probe is warm, DOOR_CYCLES door periods recorded.
DOOR_CYCLES = 3
# The demand registers read 0 until written; the actuators report themselves here:
INCUBATOR_READBACK = {"heater_demand": "heater_output", "co2_valve_demand": "co2_valve_output"}
DEMAND_RESOLUTION = 0.1  # the demand registers are s16 x 0.1 %
VALVE_READBACK = "co2_valve_output"  # recorded: the door switch closes the valve


class BioreactorPlant:
    """A BioreactorModel seen through the xuri-like-bioreactor profile's tags."""

    def __init__(self, model: BioreactorModel) -> None:
        self.model = model

    @property
    def step_s(self) -> float:
        return self.model.cfg.step_s

    @property
    def t_s(self) -> float:
        return self.model.t_s

    def step(self) -> None:
        self.model.step()

    def read(self, tags: Sequence[str]) -> list[float]:
        state = self.model.state
        return [state[tag] for tag in tags]

    def write(self, tag: str, value: float) -> None:
        self.model.write(tag, value)


class IncubatorPlant:
    """An IncubatorModel seen through the co2-incubator profile's tags."""

    def __init__(self, model: IncubatorModel) -> None:
        self.model = model

    @property
    def step_s(self) -> float:
        return self.model.cfg.step_s

    @property
    def t_s(self) -> float:
        return self.model.t_s

    def step(self) -> None:
        self.model.step()

    def read(self, tags: Sequence[str]) -> list[float]:
        state = self.model.state
        return [state[tag] for tag in tags]

    def write(self, tag: str, value: float) -> None:
        if tag in INCUBATOR_READBACK:  # what the s16 register can hold
            value = round(value / DEMAND_RESOLUTION) * DEMAND_RESOLUTION
        self.model.set_setpoint(tag, value)


def device_loops(device: str, loops_path: Path = LOOPS_PATH) -> tuple[Group, tuple[Loop, ...]]:
    """The group and loops whose measurements come from `device`, in file order."""
    groups, loops = load_loops(loops_path)
    mine = tuple(lp for lp in loops if lp.device == device)
    if not mine:
        raise LookupError(f"no loop reads from {device} in {loops_path}")
    return groups[mine[0].group], mine


def loop_named(loops: Sequence[Loop], suffix: str) -> Loop:
    """The loop whose id ends in `.suffix` (e.g. "temp")."""
    return next(lp for lp in loops if lp.id.endswith("." + suffix))


def bioreactor_steps(
    device: str,
    loops: Sequence[Loop] | None = None,
    loops_path: Path = LOOPS_PATH,
    demo_path: Path = DEMO_PATH,
) -> tuple[Trace, tuple[Loop, ...]]:
    """BR_STEPS in turn (temperature, pH, DO), all three loops closed, as one trace."""
    group, shipped = device_loops(device, loops_path)
    chosen = tuple(shipped if loops is None else loops)
    first = BR_STEPS[0]
    table = simulator_tables(demo_path)[device] | {"temperature_sp_degC": first[1]}
    model = BioreactorModel(BioreactorSimConfig.model_validate(table))
    model.run(round(WARMUP_DAYS * 86400.0 / model.cfg.step_s))
    temp = loop_named(chosen, first[0])
    start = dataclasses.replace(
        temp, settings=temp.settings.model_copy(update={"setpoint": first[1]})
    )
    chosen = tuple(start if lp is temp else lp for lp in chosen)
    steps = [SpStep(at, loop_named(chosen, name).id, to) for name, _, to, at, _, _ in BR_STEPS]
    return run_group(BioreactorPlant(model), group, chosen, BR_DURATION_S, steps=steps), chosen


def incubator_doors(
    device: str,
    loops: Sequence[Loop] | None = None,
    loops_path: Path = LOOPS_PATH,
    demo_path: Path = DEMO_PATH,
) -> tuple[Trace, tuple[Loop, ...]]:
    """The incubator under cellfab's loops through DOOR_CYCLES of its demo door schedule."""
    group, shipped = device_loops(device, loops_path)
    chosen = tuple(shipped if loops is None else loops)
    cfg = IncubatorSimConfig.model_validate(simulator_tables(demo_path)[device])
    model = IncubatorModel(cfg)
    model.run(math.ceil((cfg.probe_warmup_s + 10.0) / cfg.step_s))
    duration = (DOOR_CYCLES + 0.5) * cfg.door_period_s
    trace = run_group(
        IncubatorPlant(model),
        group,
        chosen,
        duration,
        probes=("door_open", VALVE_READBACK),
        prime_from=INCUBATOR_READBACK,
    )
    return trace, chosen


# --- what the scenarios measure ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DoorEvent:
    """One door opening in a trace: when it opened, closed, and the next one opened."""

    opened_s: float
    closed_s: float
    next_open_s: float


def door_events(trace: Trace) -> list[DoorEvent]:
    """Every opening that closed inside the trace; the last one runs to the trace's end."""
    door = trace.extra["door_open"] > 0.5
    edges = np.flatnonzero(np.diff(door.astype(np.int8))) + 1
    opens = [float(trace.t[i]) for i in edges if door[i]]
    closes = [float(trace.t[i]) for i in edges if not door[i]]
    end = float(trace.t[-1] + (trace.t[1] - trace.t[0]))
    events = []
    for k, t_open in enumerate(opens):
        t_close = next((t for t in closes if t > t_open), None)
        if t_close is not None:
            events.append(DoorEvent(t_open, t_close, opens[k + 1] if k + 1 < len(opens) else end))
    return events


def span(loop: Loop) -> float:
    """The loop's output range."""
    return loop.settings.out_max - loop.settings.out_min


def step_metrics(trace: Trace, loops: Sequence[Loop]) -> list[dict[str, Any]]:
    """Overshoot, settling time and output reversals of every step of BR_STEPS."""
    rows = []
    for name, sp_from, sp_to, at, band, length in BR_STEPS:
        loop = loop_named(loops, name)
        c, m = trace.col(loop.id), window(trace, at, at + length)
        pv, u = trace.pv[m, c], trace.out[m, c]
        rows.append(
            {
                "scenario": "sp_step",
                "loop": loop.id,
                "pv": tag_of(loop.pv),
                "sp_from": sp_from,
                "sp_to": sp_to,
                "overshoot": round(overshoot(pv, sp_from, sp_to), 4),
                "band": band,
                "settling_time_s": settling_time(trace.t[m], pv, sp_to, band, at),
                "output_min": float(u.min()),
                "output_max": float(u.max()),
                "output_reversals": reversals(u, HUNT_FRACTION * span(loop)),
            }
        )
    return rows


def door_metrics(trace: Trace, loops: Sequence[Loop]) -> list[dict[str, Any]]:
    """Per door opening: CO2 and temperature dip and recovery, output reversals."""
    co2, temp = loop_named(loops, "co2"), loop_named(loops, "temp")
    cc, ct = trace.col(co2.id), trace.col(temp.id)
    rows = []
    for ev in door_events(trace):
        cycle = window(trace, ev.opened_s, ev.next_open_s)
        after = window(trace, ev.closed_s, ev.next_open_s)
        t = trace.t[after]
        co2_sp, temp_sp = co2.settings.setpoint, temp.settings.setpoint
        rows.append(
            {
                "scenario": "door",
                "device": co2.device,
                "opened_s": ev.opened_s,
                "open_for_s": ev.closed_s - ev.opened_s,
                "co2_min": round(float(trace.pv[cycle, cc].min()), 3),
                "co2_overshoot": round(overshoot(trace.pv[after, cc], 0.0, co2_sp), 3),
                "co2_band": CO2_BAND,
                "co2_recovery_s": settling_time(
                    t, trace.pv[after, cc], co2_sp, CO2_BAND, ev.closed_s
                ),
                "temp_min": round(float(trace.pv[cycle, ct].min()), 3),
                "temp_band": TEMP_BAND,
                "temp_recovery_s": settling_time(
                    t, trace.pv[after, ct], temp_sp, TEMP_BAND, ev.closed_s
                ),
                "valve_reversals": reversals(trace.out[cycle, cc], HUNT_FRACTION * span(co2)),
                "heater_reversals": reversals(trace.out[cycle, ct], HUNT_FRACTION * span(temp)),
                "cycle_s": ev.next_open_s - ev.opened_s,
            }
        )
    return rows
