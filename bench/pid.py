"""PID core: µs per tick for N loops, ours with every feature on vs simple-pid, same run.

Every loop of ours has set-point weighting, a filtered derivative, output and rate limits,
a set-point ramp, a safe timer, and the tick mixes modes: 5 % of loops in manual, 1 % of
samples bad, a few loops stale long enough to be in their safe state, a measured dt that
jitters. simple-pid (one `PID` object per loop, `pid(pv, dt=dt)`) does P, I, D on
measurement and output limits. A third loop, a bare numpy PID (P + I + D + limits, in place),
shows what the features cost. `full_core_healthy` is the same core and settings on a fleet
with every loop in auto and every sample good: the fault paths configured but not taken.
Inputs are generated before timing; the loops take turns
`--rounds` times and each reports its best round. Time is the benchmarking thread's CPU time
(`time.thread_time`), for both sides alike: on a shared machine, wall time also counts the
slices other processes take. Ours returns its terms as views into the state (no `out=`
copies), which is how the loop runner will record them.
Usage: python bench/pid.py [--n 1 10 100 1000 10000] [--rounds R] [--ticks T]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
from simple_pid import PID

from controller import pid
from controller.pid_settings import LoopSettings, build

F64 = npt.NDArray[np.float64]
_clock = time.thread_time  # CPU time of this thread: preemption by other processes is excluded


def settings(n: int, rng: np.random.Generator, manual: bool = True) -> list[LoopSettings]:
    """N loops with every feature switched on; 5 % of them in manual unless `manual` is off."""
    return [
        LoopSettings(
            kp=float(rng.uniform(0.5, 5.0)),
            ki_per_s=float(rng.uniform(0.01, 0.5)),
            kd_s=float(rng.uniform(0.1, 2.0)),
            action="reverse" if k % 2 else "direct",
            sp_weight_p=0.7,
            d_filter_s=0.5,
            out_min=0.0,
            out_max=100.0,
            out_rate_per_s=20.0,
            sp_rate_per_s=0.5,
            safe_after_s=5.0,
            safe_output=0.0,
            setpoint=float(rng.uniform(20, 40)),
            auto=not manual or k % 20 != 0,
            initial_output=10.0,
        )
        for k in range(n)
    ]


class Inputs:
    """Precomputed ticks: pv random walks, set-point steps, bad samples, jittered dt.

    The set points are one array until the step half-way, then another, as the loop runner
    passes its commanded set points (one array, changed in place by commands); simple-pid's
    `setpoint` is changed at the same tick.
    """

    def __init__(self, n: int, ticks: int, rng: np.random.Generator, faults: bool = True) -> None:
        self.pv = 30.0 + np.cumsum(rng.normal(0, 0.05, (ticks, n)), axis=0)
        before = rng.uniform(20, 40, n)
        self.step_tick = ticks // 2  # a set-point step half-way: ramps are active
        self.sp_after = before + 1.0
        self.sp = [before] * self.step_tick + [self.sp_after] * (ticks - self.step_tick)
        self.ok = rng.random((ticks, n)) > (0.01 if faults else -1.0)
        if faults:  # stale loops: they reach their safe state
            self.ok[:, : max(1, n // 200)] = False
        self.pv[~self.ok] = np.nan
        self.dt = (0.1 + rng.uniform(-0.002, 0.002, ticks)).tolist()
        self.pv_lists = [row.tolist() for row in self.pv]


def run_ours(n: int, inp: Inputs, rng: np.random.Generator, manual: bool = True) -> float:
    params, state = build(settings(n, rng, manual), dt_min_s=0.01, dt_max_s=1.0)
    pv, sp, ok, dt = inp.pv, inp.sp, inp.ok, inp.dt
    t0 = _clock()
    for k in range(len(dt)):
        pid.update(state, params, pv[k], sp[k], dt[k], ok[k])
    return (_clock() - t0) / len(dt)


def run_bare(n: int, inp: Inputs, rng: np.random.Generator) -> float:
    """P + I + D on measurement + output clip, preallocated and in place: the numpy floor."""
    kp, ki, kd = rng.uniform(0.5, 5.0, n), rng.uniform(0.01, 0.5, n), rng.uniform(0.1, 2.0, n)
    i, d, u, e, last = (np.zeros(n) for _ in range(5))
    last[:] = inp.sp[0]
    pv, sp, dt = np.nan_to_num(inp.pv, nan=30.0), inp.sp, inp.dt
    t0 = _clock()
    for k in range(len(dt)):
        np.subtract(sp[k], pv[k], out=e)
        np.subtract(last, pv[k], out=d)
        np.multiply(d, kd, out=d)
        np.divide(d, dt[k], out=d)
        np.multiply(e, kp, out=u)
        np.multiply(e, ki, out=e)
        np.multiply(e, dt[k], out=e)
        np.add(i, e, out=i)
        np.add(u, i, out=u)
        np.add(u, d, out=u)
        np.clip(u, 0.0, 100.0, out=u)
        np.copyto(last, pv[k])
    return (_clock() - t0) / len(dt)


def run_simple_pid(n: int, inp: Inputs, ticks: int, rng: np.random.Generator) -> float:
    loops = [
        PID(
            float(kp),
            float(ki),
            float(kd),
            setpoint=float(sp),
            output_limits=(0.0, 100.0),
            sample_time=None,
            differential_on_measurement=True,
        )
        for kp, ki, kd, sp in zip(
            rng.uniform(0.5, 5.0, n),
            rng.uniform(0.01, 0.5, n),
            rng.uniform(0.1, 2.0, n),
            inp.sp[0],
            strict=True,
        )
    ]
    rows = [[30.0 if math.isnan(v) else v for v in row] for row in inp.pv_lists[:ticks]]
    targets = inp.sp_after.tolist()
    t0 = _clock()
    for k in range(ticks):
        dt, row = inp.dt[k], rows[k]
        if k == inp.step_tick:
            for loop, target in zip(loops, targets, strict=True):
                loop.setpoint = target
        for loop, value in zip(loops, row, strict=True):
            loop(value, dt=dt)
    return (_clock() - t0) / ticks


def best(runs: int, fn: Callable[[], float]) -> list[float]:
    return [fn() for _ in range(runs)]


def line(case: str, n: int, ours: float, baseline: float, **extra: float) -> str:
    record: dict[str, object] = {
        "bench": "pid",
        "case": case,
        "n": n,
        "ours": round(ours, 2),
        "baseline": round(baseline, 2),
        "unit": "us/tick",
        "ratio": round(baseline / ours, 1),
    }
    record.update({k: round(v, 2) for k, v in extra.items()})
    return json.dumps(record)


def bench(n: int, rounds: int, ticks: int) -> None:
    """Interleave ours, the bare numpy PID and simple-pid `rounds` times; best round each."""
    rng = np.random.default_rng(n)
    inp = Inputs(n, ticks, rng)
    sp_ticks = max(5, min(ticks, 200_000 // n))
    healthy = Inputs(n, ticks, np.random.default_rng(n), faults=False)
    times: dict[str, list[float]] = {"ours": [], "healthy": [], "bare": [], "simple": []}
    for _ in range(rounds):
        times["ours"].append(run_ours(n, inp, np.random.default_rng(1)))
        times["healthy"].append(run_ours(n, healthy, np.random.default_rng(1), manual=False))
        times["bare"].append(run_bare(n, inp, np.random.default_rng(1)))
        times["simple"].append(run_simple_pid(n, inp, sp_ticks, np.random.default_rng(1)))
    us = {k: min(v) * 1e6 for k, v in times.items()}
    print(line("full_core", n, us["ours"], us["simple"]))
    print(line("full_core_healthy", n, us["healthy"], us["simple"]))
    print(line("bare_numpy", n, us["bare"], us["simple"], full_over_bare=us["ours"] / us["bare"]))
    print(flush=True, end="")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, nargs="*", default=[1, 10, 100, 1000, 10000])
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds per case")
    parser.add_argument("--ticks", type=int, default=200, help="ticks per round (numpy)")
    args = parser.parse_args()
    cfg = np.show_config(mode="dicts")
    simd = cfg["SIMD Extensions"] if isinstance(cfg, dict) else {}
    print(f"# numpy {np.__version__}, SIMD {simd}", flush=True)
    for n in args.n:
        bench(n, args.rounds, args.ticks)


if __name__ == "__main__":
    main()
