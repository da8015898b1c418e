"""Step responses of the demo's closed loops, as PNG plots and JSON-line metrics.

Runs every bioreactor and incubator loop of the shipped tuning closed, in-process, on the
simulator's own physics model (seeded noise, simulated time: a few seconds for hours of
process) with the daemon's PID core, `controller.pid.update`, ticking at the loop group's
period. Bioreactors: temperature 36 -> 37 degC, pH 7.2 -> 7.1, DO 40 -> 50 %. Incubators:
the demo's door schedule. Prints one JSON line per step or door opening (overshoot,
settling/recovery time into the band, output reversals) and writes the plots that
docs/control.md shows. Needs matplotlib (the `docs` extra); the tests do not.

Usage: python docs/step_responses.py [--config FILE] [--demo FILE] [--out docs/img]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tests/ holds the closed-loop harness and is not installed
    sys.path.insert(0, str(ROOT))

import matplotlib as mpl  # noqa: E402 - after the path set-up above

mpl.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import numpy.typing as npt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

from tests.closed_loop_scenarios import (  # noqa: E402
    BR_STEPS,
    CO2_BAND,
    TEMP_BAND,
    VALVE_READBACK,
    DoorEvent,
    bioreactor_steps,
    door_events,
    door_metrics,
    incubator_doors,
    loop_named,
    step_metrics,
)
from tests.closed_loop_sim import (  # noqa: E402
    DEMO_PATH,
    LOOPS_PATH,
    Loop,
    Trace,
    load_loops,
    simulator_tables,
    tag_of,
    window,
)

Mask = npt.NDArray[np.bool_]
PV_LABELS = {
    "temperature": "temperature [°C]",
    "ph": "pH",
    "do": "DO [% air sat.]",
    "chamber_temp": "temperature [°C]",
    "co2": "CO2 [%]",
}
OUT_LABELS = {
    "heater_output": "heater [%]",
    "co2_flow": "CO2 flow [L/min]",
    "o2_flow": "O2 flow [L/min]",
    "heater_demand": "heater [%]",
    "co2_valve_demand": "CO2 valve [%]",
}
PLOT_S = {"temp": 2400.0, "ph": 2400.0, "do": 4800.0}  # how much of each step to show


def _pv_axes(ax: Axes, trace: Trace, m: Mask, loop: Loop, *, t0: float, band: float) -> None:
    """PV and working SP against minutes since t0, with the ±band around the set point."""
    c = trace.col(loop.id)
    minutes = (trace.t[m] - t0) / 60.0
    sp = trace.sp[m, c]
    ax.fill_between(
        minutes, sp - band, sp + band, color="tab:green", alpha=0.15, lw=0, label=f"SP ± {band:g}"
    )
    ax.plot(minutes, trace.pv[m, c], color="tab:blue", lw=0.8, label="PV (measured)")
    ax.plot(minutes, sp, color="tab:green", lw=1.0, ls="--", label="SP (working)")
    ax.set_ylabel(PV_LABELS.get(tag_of(loop.pv), tag_of(loop.pv)))
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)


def _out_axes(ax: Axes, trace: Trace, m: Mask, loop: Loop, *, t0: float, color: str) -> None:
    c = trace.col(loop.id)
    minutes = (trace.t[m] - t0) / 60.0
    ax.plot(minutes, trace.out[m, c], color=color, lw=0.8, label=f"{tag_of(loop.output)} (PID)")
    ax.set_ylabel(OUT_LABELS.get(tag_of(loop.output), tag_of(loop.output)))
    ax.grid(alpha=0.3)


def plot_steps(trace: Trace, loops: tuple[Loop, ...], out: Path) -> list[Path]:
    """One figure per set-point step of BR_STEPS: PV/SP with band over output."""
    paths = []
    for name, sp_from, sp_to, at, band, _ in BR_STEPS:
        loop = loop_named(loops, name)
        t0 = at - 300.0
        m = window(trace, t0, at + PLOT_S[name])
        fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(8, 5.5), height_ratios=(2, 1))
        _pv_axes(top, trace, m, loop, t0=t0, band=band)
        _out_axes(bottom, trace, m, loop, t0=t0, color="tab:red")
        bottom.set_xlabel("minutes")
        top.set_title(f"{loop.id}: set point {sp_from:g} → {sp_to:g} (step at 5 min)")
        fig.tight_layout()
        path = out / f"{loop.device}_{name}_step.png"
        fig.savefig(path, dpi=100, metadata={"Software": None})
        plt.close(fig)
        paths.append(path)
    return paths


def plot_door(trace: Trace, loops: tuple[Loop, ...], ev: DoorEvent, out: Path) -> Path:
    """CO2 and temperature with their bands, and valve and heater demands, round one door."""
    co2, temp = loop_named(loops, "co2"), loop_named(loops, "temp")
    t0 = ev.opened_s - 120.0
    m = window(trace, t0, min(ev.next_open_s, ev.opened_s + 900.0))
    fig, axes = plt.subplots(4, 1, sharex=True, figsize=(8, 8), height_ratios=(2, 2, 1, 1))
    _pv_axes(axes[0], trace, m, co2, t0=t0, band=CO2_BAND)
    _pv_axes(axes[1], trace, m, temp, t0=t0, band=TEMP_BAND)
    _out_axes(axes[2], trace, m, co2, t0=t0, color="tab:purple")
    valve = trace.extra[VALVE_READBACK][m]
    axes[2].plot((trace.t[m] - t0) / 60.0, valve, color="k", lw=0.8, ls=":", label="valve")
    axes[2].legend(loc="best", fontsize=8)
    _out_axes(axes[3], trace, m, temp, t0=t0, color="tab:red")
    for ax in axes:
        ax.axvspan((ev.opened_s - t0) / 60, (ev.closed_s - t0) / 60, color="0.8", alpha=0.5)
    axes[0].set_title(f"{co2.device}: door open {ev.closed_s - ev.opened_s:.0f} s (grey)")
    axes[-1].set_xlabel("minutes")
    fig.tight_layout()
    path = out / f"{co2.device}_door.png"
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Run every loop group of the tuning file whose device is a bioreactor or incubator."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=LOOPS_PATH, help="file with the loops")
    ap.add_argument("--demo", type=Path, default=DEMO_PATH, help="site file with simulators")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    models = {dev: table.get("model") for dev, table in simulator_tables(args.demo).items()}
    _, loops = load_loops(args.config)
    plotted: set[str] = set()
    for device in dict.fromkeys(lp.device for lp in loops):
        kind = models.get(device)
        if kind == "bioreactor":
            trace, used = bioreactor_steps(device, loops_path=args.config, demo_path=args.demo)
            rows = step_metrics(trace, used)
            if kind not in plotted:
                plot_steps(trace, used, args.out)
        elif kind == "co2_incubator":
            trace, used = incubator_doors(device, loops_path=args.config, demo_path=args.demo)
            rows = door_metrics(trace, used)
            if kind not in plotted:
                plot_door(trace, used, door_events(trace)[0], args.out)
        else:
            continue
        plotted.add(kind)
        for row in rows:
            print(json.dumps({"device": device, **row}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
