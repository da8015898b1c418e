"""One loop group at run time: read every PV, compute every loop at once, write every output.

The order within a tick is fixed (read, compute, write, record) and ticks start on a
monotonic schedule. A PV that is not GOOD or older than `stale_after_s` is not used: the
PID core holds the loop, then puts it at its safe output. A write that fails is retried
within the tick and, if it still fails, reported in the loop's own data (`write_ok` 0,
the output BAD with the reason) and logged on the transition; the next tick writes again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from controller.cancel import wait_at_most
from controller.loops_config import LoopConfig, LoopGroupConfig, split
from controller.pid import (
    AUTO,
    HOLD,
    MANUAL,
    SAFE,
    PidParams,
    PidState,
    PidTerms,
    set_mode,
    update,
)
from controller.pid_settings import build
from controller.tagstore import TagStore
from controller.watchdog import Heart, Liveness
from drivers.sample import Quality, Sample, Scan, utc_now_ns
from drivers.transitions import TransitionLog

log = logging.getLogger(__name__)

MODE_NAMES = {MANUAL: "manual", AUTO: "auto", HOLD: "hold", SAFE: "safe"}


class Writer(Protocol):
    """A driver that can set a tag (OPC UA node, Modbus holding register)."""

    async def write(self, tag: str, value: float) -> None: ...


class Publisher(Protocol):
    """Where a tick's record goes (the hub)."""

    def publish(self, scan: Scan) -> int: ...


@dataclass(frozen=True, slots=True)
class LoopTag:
    """A tag of a loop's own data stream."""

    tag: str
    unit: str


def loop_tags(pv_unit: str, out_unit: str) -> tuple[LoopTag, ...]:
    """What a loop records every tick, in this order (docs/control.md)."""
    return (
        LoopTag("pv", pv_unit),
        LoopTag("sp", pv_unit),  # working set point (ramped)
        LoopTag("sp_target", pv_unit),  # the commanded set point
        LoopTag("output", out_unit),
        LoopTag("p", out_unit),
        LoopTag("i", out_unit),
        LoopTag("d", out_unit),
        LoopTag("mode", "code"),  # 0 manual, 1 auto, 2 hold, 3 safe
        LoopTag("saturated", "code"),  # -1 low, 0 no, 1 high
        LoopTag("write_ok", "bool"),
    )


class LoopGroup:
    """The loops of one `[[loop_groups]]` entry, as arrays for the PID core."""

    def __init__(
        self,
        group: LoopGroupConfig,
        loops: Sequence[LoopConfig],
        store: TagStore,
        writers: Mapping[str, Writer],
        units: Mapping[str, str],
    ) -> None:
        self.cfg = group
        self.loops = list(loops)
        self.index = {loop.id: i for i, loop in enumerate(self.loops)}
        self._store = store
        self._writers = writers
        self.params, self.state = build(self.loops, *group.dt_bounds_s)
        self.sp_target = np.array([loop.setpoint for loop in self.loops], dtype=np.float64)
        self._pv_idx = np.array([store.index[split(loop.pv)] for loop in self.loops], np.intp)
        self._terms = PidTerms.empty(len(self.loops))
        self.tags = {
            loop.id: loop_tags(units.get(loop.pv, ""), units.get(loop.output, ""))
            for loop in self.loops
        }
        self.write_errors: list[str | None] = [None] * len(self.loops)
        self._taken_over = [loop.takeover is None for loop in self.loops]
        self._links = [
            TransitionLog(log, f"loop {loop.id}", attempts="writes") for loop in self.loops
        ]
        self._last_s: float | None = None
        self.ticks = 0
        self.keep: set[str] = set()  # loops whose control continues in a successor (reload)
        self.primed: set[int] = set()  # in manual at the present output until the first tick
        self._carried: set[int] = set()  # controlled by a predecessor: not primed (reload)

    # --- one tick ---------------------------------------------------------------------
    def compute(self, now_s: float) -> PidTerms:
        """Read the PVs from the tag store and advance every loop to `now_s` (monotonic)."""
        dt = self.cfg.period_s if self._last_s is None else now_s - self._last_s
        self._last_s = now_s
        idx, store = self._pv_idx, self._store
        pv = store.value[idx]
        fresh = (now_s - store.t_stored_s[idx]) <= self.cfg.stale_after_s
        ok = (store.quality[idx] == Quality.GOOD) & fresh
        h = min(max(dt, self.params.dt_min_s), self.params.dt_max_s)
        if dt > h:  # a stalled tick: PID math takes the clipped dt, the safe timer wall time
            self.state.bad_s[~ok] += dt - h
        return update(self.state, self.params, pv, self.sp_target, dt, ok, out=self._terms)

    async def write(self, terms: PidTerms) -> None:
        """Write every loop's output, devices in parallel; failures end up in write_errors."""
        async with asyncio.TaskGroup() as tg:
            for i, loop in enumerate(self.loops):
                tg.create_task(self._write_loop(i, loop, float(terms.output[i])))

    def scans(self, terms: PidTerms, t_ns: int) -> list[Scan]:
        """The tick's record: one scan per loop, under the loop's id."""
        store, idx = self._store, self._pv_idx
        out = []
        for i, loop in enumerate(self.loops):
            tags = self.tags[loop.id]
            j = int(idx[i])
            pv_q = Quality(int(store.quality[j]))
            pv = float(store.value[j])
            err = self.write_errors[i]
            sat = 1.0 if terms.sat_high[i] else -1.0 if terms.sat_low[i] else 0.0
            values = (
                (pv if math.isfinite(pv) else None, pv_q, store.reasons[j]),
                (float(terms.sp[i]), Quality.GOOD, None),
                (float(self.sp_target[i]), Quality.GOOD, None),
                (float(terms.output[i]), Quality.BAD if err else Quality.GOOD, err),
                (float(terms.p[i]), Quality.GOOD, None),
                (float(terms.i[i]), Quality.GOOD, None),
                (float(terms.d[i]), Quality.GOOD, None),
                (float(terms.mode[i]), Quality.GOOD, None),
                (sat, Quality.GOOD, None),
                (0.0 if err else 1.0, Quality.GOOD, None),
            )
            samples = tuple(
                Sample(t.tag, v, t.unit, q, t_ns, r)
                for t, (v, q, r) in zip(tags, values, strict=True)
            )
            out.append(Scan(loop.id, t_ns, samples))
        return out

    def prime(self) -> list[int]:
        """Start each loop from its actuator's present output where the device reports it.

        Taking over a heater at 40 % from a device's own controller and writing 0 % first
        would be a bump. A loop whose actuator reports its output (`readback`, else the
        output tag itself) starts in manual at that output for its first tick and goes to
        auto after it, which the core makes bumpless. Loops carried over from a reload are
        not primed: they are already controlled, and the old group's state is authoritative.
        Returns the loops to switch back (also kept in `primed` for `run`).
        """
        store = self._store
        idx, values = [], []
        for i, loop in enumerate(self.loops):
            j = store.index.get(split(loop.readback or loop.output))
            if i in self._carried or j is None or store.quality[j] != Quality.GOOD:
                continue
            idx.append(i)
            values.append(float(store.value[j]))
        self.primed |= set(prime_outputs(self.state, self.params, idx, values))
        return sorted(self.primed)

    # --- schedule ---------------------------------------------------------------------
    async def run(
        self, stop: asyncio.Event, hub: Publisher, liveness: Liveness | None = None
    ) -> None:
        """Tick every `period_s` until `stop`; then hand outputs back to the devices.

        Call it once the loops' devices have been read once, so the first tick has PVs.
        """
        primed = self.prime()
        period = self.cfg.period_s
        heart = Heart(liveness, f"loops:{self.cfg.id}")
        tick_budget = self.cfg.write_timeout_s * (self.cfg.write_retries + 1) * 2 + 30.0
        due = time.monotonic()
        try:
            while not stop.is_set():
                heart.busy(2 * period + tick_budget)
                terms = self.compute(time.monotonic())
                await self.write(terms)
                for scan in self.scans(terms, utc_now_ns()):
                    hub.publish(scan)
                if primed:  # the first tick held the present output: now auto, bumplessly
                    # ... except loops a mode command changed meanwhile (they left `primed`)
                    back = sorted(self.primed.intersection(primed))
                    set_mode(self.state, self.params, back, True)
                    self.primed.clear()
                    primed = []
                self.ticks += 1
                due += period
                behind = time.monotonic() - due
                if behind > 0:  # overran: skip the missed slots rather than burst
                    due += math.ceil(behind / period) * period
                await wait_at_most(stop.wait(), due - time.monotonic())
        finally:
            heart.idle()
            await self.release()

    async def release(self) -> None:
        """Give control back to each device's own controller (best effort, logged).

        Loops in `keep` are left alone: a reloaded group carries on controlling them.
        """
        for i, loop in enumerate(self.loops):
            if loop.takeover is None or not self._taken_over[i] or loop.id in self.keep:
                continue
            error = await self._attempt(loop.takeover.tag, loop.takeover.local)
            if error is None:
                self._taken_over[i] = False
                log.info("loop %s: control handed back to %s", loop.id, loop.takeover.tag)
            else:
                log.error("loop %s: could not hand control back: %s", loop.id, error)

    def adopt(self, old: LoopGroup) -> set[str]:
        """Carry on from `old` (a config reload): set points, outputs, manual modes, takeovers.

        A commanded set point carries over unless the new file changed that loop's
        `setpoint`, clamped to the new `[sp_min, sp_max]`; the working set point carries
        over so a ramp goes on from where it is rather than restarting. Control carries over
        only if the new loop's takeover is the same: such a loop keeps the old state (output,
        integrator, mode and manual output) and is not primed again. A loop whose takeover
        changed (or went) is handed back by `old`, and the new one takes over afresh.
        Returns the ids carried over, which `old` must then not hand back.
        """
        kept = set()
        st, was = self.state, old.state
        for i, loop in enumerate(self.loops):
            j = old.index.get(loop.id)
            if j is None:
                continue
            before = old.loops[j]
            if before.setpoint == loop.setpoint:
                self.sp_target[i] = self._within_sp(loop, float(old.sp_target[j]))
            st.spw[i] = was.spw[j]
            manual = not was.auto[j]
            if before.takeover == loop.takeover:
                self._taken_over[i] = old._taken_over[j]
                self._carried.add(i)
                kept.add(loop.id)
                u = min(max(float(was.u[j]), loop.out_min), loop.out_max)
                st.i[i] = was.i[j] + (u - was.u[j])  # P + D + I still gives u
                st.u[i] = u
                if j in old.primed:  # reloaded before its first tick: still priming
                    self.primed.add(i)
            if manual:
                out = min(max(float(was.manual_output[j]), loop.out_min), loop.out_max)
                set_mode(st, self.params, [i], False, out)
        return kept

    @staticmethod
    def _within_sp(loop: LoopConfig, value: float) -> float:
        """`value` clamped to the loop's set-point limits; a reload may have narrowed them."""
        clamped = min(max(value, loop.sp_min), loop.sp_max)
        if clamped != value:
            why = "loop %s: set point %g outside the new limits [%g, %g], now %g"
            log.warning(why, loop.id, value, loop.sp_min, loop.sp_max, clamped)
        return clamped

    # --- commands ---------------------------------------------------------------------
    def set_setpoint(self, loop_id: str, value: float) -> None:
        """A new commanded set point (limits were checked by the command verifier)."""
        self.sp_target[self.index[loop_id]] = value

    def set_mode(self, loop_id: str, auto: bool, manual_output: float | None = None) -> None:
        """Auto, or manual at `manual_output` (None: keep the current output); bumpless.

        An operator's choice wins over priming: the loop is no longer switched to auto
        after its first tick.
        """
        i = self.index[loop_id]
        set_mode(self.state, self.params, [i], auto, manual_output)
        self.primed.discard(i)

    def mode(self, loop_id: str) -> str:
        """`auto` or `manual`: what an operator chose (hold/safe are auto with a bad PV)."""
        return "auto" if self.state.auto[self.index[loop_id]] else "manual"

    def output(self, loop_id: str) -> float:
        """The output the loop last computed."""
        return float(self.state.u[self.index[loop_id]])

    # --- writes -----------------------------------------------------------------------
    async def _write_loop(self, i: int, loop: LoopConfig, value: float) -> None:
        error = None
        if not self._taken_over[i] and loop.takeover is not None:
            error = await self._attempt(loop.takeover.tag, loop.takeover.remote)
            if error is None:
                self._taken_over[i] = True
                log.info("loop %s: took over from %s", loop.id, loop.takeover.tag)
            else:
                error = f"takeover {loop.takeover.tag}: {error}"
        if error is None:
            error = await self._attempt(loop.output, value)
        self.write_errors[i] = error
        if error is None:
            self._links[i].ok(loop.output)
        else:
            self._links[i].fail(loop.output, error)

    async def _attempt(self, name: str, value: float) -> str | None:
        """Write with the group's retries; None on success, else the last error in words."""
        cfg = self.cfg
        return await write_tag(
            self._writers, name, value, cfg.write_timeout_s, retries=cfg.write_retries
        )


def prime_outputs(
    state: PidState, params: PidParams, loops: Sequence[int], values: Sequence[float]
) -> list[int]:
    """Put `loops` at the actuators' present outputs `values` (clipped to the output limits).

    Output, manual output and integrator all start there, so the first tick holds the
    present output even with an output rate limit, and auto goes on from it. Loops in auto
    go to manual for that first tick; returns them, to be switched back to auto after it.
    """
    back = []
    for i, value in zip(loops, values, strict=True):
        u = min(max(value, float(params.out_min[i])), float(params.out_max[i]))
        state.u[i] = u
        state.i[i] = u
        if state.auto[i]:
            back.append(i)
        set_mode(state, params, [i], False, u)
    return back


async def write_tag(
    writers: Mapping[str, Writer], name: str, value: float, timeout_s: float, *, retries: int = 0
) -> str | None:
    """Write `device.tag`, retrying timeouts and device refusals; None on success, else why.

    A ValueError (our side refuses: not writable, does not fit) is not retried.
    """
    device, tag = split(name)
    writer = writers.get(device)
    if writer is None:
        return f"device {device} cannot be written"
    error = "not attempted"
    for _ in range(retries + 1):
        try:
            async with asyncio.timeout(timeout_s):  # not wait_for: controller/cancel.py
                await writer.write(tag, value)
        except ValueError as exc:  # refused by us: retrying cannot help
            return str(exc)
        except TimeoutError:
            error = f"write {name}={value:g} timed out after {timeout_s} s"
        except (RuntimeError, OSError) as exc:
            error = str(exc) or type(exc).__name__
        else:
            return None
    return error


def groups_of(
    groups: Sequence[LoopGroupConfig],
    loops: Sequence[LoopConfig],
    store: TagStore,
    writers: Mapping[str, Writer],
    units: Mapping[str, str],
) -> list[LoopGroup]:
    """One LoopGroup per configured group that has loops, in config order."""
    out = []
    for group in groups:
        members = [loop for loop in loops if loop.group == group.id]
        if members:
            out.append(LoopGroup(group, members, store, writers, units))
    return out
