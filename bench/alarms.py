"""Alarm engine: µs per tick for N configured alarms, ours vs a per-alarm Python engine.

A realistic mix of kinds (50 % high/low and high-high/low-low limits with deadbands, 10 %
each deviation, rate of change, discrete, quality and 2-of-3 N-of-M), some with on/off
delays, latching or a suppression condition. Each alarm's condition toggles with
probability `--change` per tick (default 1 %), so about that share of alarms changes state
per tick (the measured share is printed as `changed`). The baseline is
tests/unit/alarm_reference.py: the same semantics written alarm by alarm in plain Python,
the implementation the tests hold ours equal to. Inputs are generated before timing (Python
lists for the baseline, numpy rows for ours); the two take turns `--rounds` times and each
reports its best round. `quiet` is the same fleet with no condition changing.
Usage: python bench/alarms.py [--n 100 1000 10000] [--rounds R] [--ticks T] [--change P]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.unit.alarm_reference

from controller.alarms import AlarmConfig, AlarmEngine
from tests.unit.alarm_reference import RefEngine

F64 = npt.NDArray[np.float64]
MIX = ["high", "low", "high_high", "low_low", "high", "deviation", "roc", "discrete"]
MIX += ["quality", "n_of_m"]


def config(j: int, rng: np.random.Generator) -> AlarmConfig:
    """Alarm j of the mix; limits near 0 (rates 30/min), delays on one alarm in five."""
    kind = MIX[j % len(MIX)]
    c: dict[str, Any] = {"id": f"a{j}", "tag": f"dev{j // 20}.t{j % 20}", "kind": kind}
    c["priority"] = ["low", "low", "low", "medium", "high"][j % 5]
    c["latch"] = j % 7 == 0
    if j % 11 == 0:
        c["suppress_when"] = {"tag": "br.state", "equals": 0.0}
    slow = j % 5 == 0
    if kind == "discrete":
        return AlarmConfig.model_validate(c | {"state": 1.0, "for_s": 2.0 if slow else 0.0})
    if kind == "quality":
        return AlarmConfig.model_validate(c | {"stale_after_s": 2.0 if slow else 0.0})
    c |= {"on_delay_s": 2.0 if slow else 0.0, "off_delay_s": 1.0 if slow else 0.0}
    if kind == "n_of_m":
        return AlarmConfig.model_validate(c | {"limit": 0.0, "window_n": 2, "window_m": 3})
    c["deadband"] = 0.2
    if kind == "roc":
        return AlarmConfig.model_validate(c | {"rate_per_min": 30.0})
    if kind == "deviation":  # ±1.5 from the set point when abnormal, 0.1 otherwise
        return AlarmConfig.model_validate(c | {"limit": 1.0, "setpoint_tag": "loop.sp"})
    return AlarmConfig.model_validate(c | {"limit": float(rng.normal(0.0, 0.01))})


class Inputs:
    """Precomputed ticks for the engine's packed order; dt = 1 s."""

    def __init__(self, eng: AlarmEngine, ticks: int, change: float, seed: int) -> None:
        rng = np.random.default_rng(seed)
        n, g = eng.table.n, eng.table.groups
        cond = (np.cumsum(rng.random((ticks, n)) < change, axis=0) % 2).astype(bool)
        away = np.where(cond, 1.0, -1.0) + rng.normal(0.0, 0.05, (ticks, n))  # ±1 from limit
        self.value = away * eng.table.sign  # level kinds: sign folds low into high
        self.sp = rng.normal(20.0, 0.05, (ticks, n))
        dev = g["deviation"]
        self.value[:, dev] = self.sp[:, dev] + np.where(cond[:, dev], 1.5, 0.1)
        roc = g["roc"]  # 1 unit per s (60/min) while abnormal, 0.01 per s otherwise
        self.value[:, roc] = np.cumsum(np.where(cond[:, roc], 1.0, 0.01), axis=0)
        self.value[:, g["discrete"]] = cond[:, g["discrete"]]
        self.good = np.ones((ticks, n), dtype=bool)
        self.good[:, g["quality"]] = ~cond[:, g["quality"]]
        self.suppress = np.zeros((ticks, n), dtype=bool)
        self.now = np.arange(1.0, ticks + 1.0)
        self.t_ns = (1_700_000_000 + np.arange(ticks)) * 1_000_000_000
        self.rows = [
            (self.value[k].tolist(), self.good[k].tolist(), self.sp[k].tolist())
            for k in range(ticks)
        ]
        self.false = [False] * n
        self.true = [True] * n


def run_ours(eng: AlarmEngine, inp: Inputs, ticks: int) -> tuple[float, int]:
    events = 0
    t0 = time.perf_counter()
    for k in range(ticks):
        events += len(
            eng.tick(
                float(inp.now[k]),
                int(inp.t_ns[k]),
                inp.value[k],
                inp.good[k],
                inp.sp[k],
                inp.suppress[k],
            )
        )
    return (time.perf_counter() - t0) / ticks, events


def run_reference(ref: RefEngine, inp: Inputs, ticks: int) -> float:
    t0 = time.perf_counter()
    for k in range(ticks):
        value, good, sp = inp.rows[k]
        ref.tick(float(inp.now[k]), int(inp.t_ns[k]), value, good, sp, inp.false, inp.true)
    return (time.perf_counter() - t0) / ticks


def line(case: str, n: int, ours: float, baseline: float, **extra: float) -> str:
    record: dict[str, object] = {
        "bench": "alarms",
        "case": case,
        "n": n,
        "ours": round(ours, 2),
        "baseline": round(baseline, 2),
        "unit": "us.tick",
        "ratio": round(baseline / ours, 1),
    }
    record.update({k: round(v, 4) for k, v in extra.items()})
    return json.dumps(record)


def bench(n: int, rounds: int, ticks: int, change: float, case: str) -> None:
    """Fresh engines every round (same inputs); best round of each."""
    rng = np.random.default_rng(n)
    configs = [config(j, rng) for j in range(n)]
    ref_ticks = max(5, min(ticks, 200_000 // n))
    inp = Inputs(AlarmEngine(configs), ticks, change, seed=n)
    ours, base, changed = [], [], 0.0
    for _ in range(rounds):
        eng = AlarmEngine(configs)
        t, events = run_ours(eng, inp, ticks)
        ours.append(t)
        changed = events / ticks / n
        base.append(run_reference(RefEngine(eng.table.configs), inp, ref_ticks))
    print(line(case, n, min(ours) * 1e6, min(base) * 1e6, changed=changed), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, nargs="*", default=[100, 1000, 10000])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per case")
    parser.add_argument("--ticks", type=int, default=300, help="ticks per round (ours)")
    parser.add_argument("--change", type=float, default=0.01, help="toggle probability")
    args = parser.parse_args()
    print(f"# numpy {np.__version__}, python {sys.version.split()[0]}", flush=True)
    for n in args.n:
        bench(n, args.rounds, args.ticks, args.change, "tick_1pct_changing")
        bench(n, args.rounds, args.ticks, 0.0, "tick_quiet")


if __name__ == "__main__":
    main()
