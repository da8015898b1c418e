"""Loops in the site file (`cellfab check`) and one loop group's tick, with a fake actuator."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from controller.cli import main
from controller.loops import LoopGroup
from controller.loops_config import LoopConfig, LoopGroupConfig, loop_tag_names
from controller.pid import AUTO, HOLD, SAFE
from controller.tagstore import TagStore
from drivers.sample import Quality, Sample, Scan
from tests.closed_loop_scenarios import door_events, incubator_doors, loop_named

DEVICE = """
[site]
id = "lab"
[[devices]]
id = "br-1"
device_class = "bioreactor"
area = "suite-1"
driver = "opcua"
url = "opc.tcp://127.0.0.1:4840/x/"
profile = "xuri-like-bioreactor"

[[loop_groups]]
id = "fast"
period_s = 1.0
"""

LOOP = """
[[loops]]
id = "br-1.temp"
group = "fast"
pv = "br-1.temperature"
output = "br-1.heater_output"
sp_min = 30.0
sp_max = 39.0
setpoint = 37.0
kp = 10.0
out_min = 0.0
out_max = 100.0
safe_output = 0.0
"""


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    path = tmp_path / "site.toml"
    path.write_text(text)
    code = main(["check", "-c", str(path)])
    return code, [line.removeprefix(f"{path}: ") for line in capsys.readouterr().err.splitlines()]


def test_a_valid_loop_passes_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert check(tmp_path, DEVICE + LOOP, capsys) == (0, [])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("br-1.temperature", "br-1.temprature"), "loops.0.pv: unknown tag br-1.temprature"),
        (
            ('output = "br-1.heater_output"', 'output = "br-1.vcd"'),
            "loops.0.output: br-1.vcd is not writable",
        ),
        (('group = "fast"', 'group = "slow"'), "loops.0.group: br-1.temp: no loop group 'slow'"),
        (("out_max = 100.0", "out_max = -1.0"), "loops.0: out_min 0.0 must be below"),
        (("sp_max = 39.0", "sp_max = 29.0"), "loops.0: sp_min 30.0 must be below"),
        (("setpoint = 37.0", "setpoint = 40.0"), "loops.0: setpoint 40.0 outside"),
        (('id = "br-1.temp"', 'id = "br-9.temp"'), "loops.0.id: br-9.temp: no device 'br-9'"),
        (("kp = 10.0", "kp = nan"), "loops.0.kp: "),
    ],
)
def test_loop_errors_name_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: tuple[str, str], expected: str
) -> None:
    code, err = check(tmp_path, DEVICE + LOOP.replace(*change), capsys)
    assert code == 2
    assert any(line.startswith(expected) for line in err), err


def test_two_loops_cannot_drive_one_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    second = LOOP.replace('"br-1.temp"', '"br-1.temp2"')
    code, err = check(tmp_path, DEVICE + LOOP + second, capsys)
    assert code == 2
    assert "loops.1.output: br-1.heater_output is already written by loop br-1.temp" in err


# --- run time ---------------------------------------------------------------------------


class FakeActuator:
    """Records writes; fails the first `fail` attempts with RuntimeError."""

    def __init__(self, fail: int = 0, refuse: bool = False) -> None:
        self.writes: list[tuple[str, float]] = []
        self.fail = fail
        self.refuse = refuse
        self.attempts = 0

    async def write(self, tag: str, value: float) -> None:
        self.attempts += 1
        if self.refuse:
            raise ValueError(f"{tag!r} is not a writable tag")
        if self.fail > 0:
            self.fail -= 1
            raise RuntimeError("device busy")
        self.writes.append((tag, value))


def loop_cfg(**kw: object) -> LoopConfig:
    base: dict[str, object] = {
        "id": "dev.temp",
        "group": "g",
        "pv": "dev.t",
        "output": "dev.heat",
        "sp_min": 0.0,
        "sp_max": 100.0,
        "setpoint": 37.0,
        "kp": 10.0,
        "ki_per_s": 0.1,
        "out_min": 0.0,
        "out_max": 100.0,
        "safe_output": 3.0,
        "safe_after_s": 2.0,
        "takeover": {"tag": "dev.auto", "remote": 0.0, "local": 1.0},
    }
    return LoopConfig.model_validate(base | kw)


class Tag:
    def __init__(self, tag: str, unit: str) -> None:
        self.tag, self.unit = tag, unit


def make_group(actuator: FakeActuator, retries: int = 2) -> tuple[LoopGroup, TagStore]:
    store = TagStore([("dev", [Tag("t", "degC"), Tag("heat", "%"), Tag("auto", "bool")])])
    group_cfg = LoopGroupConfig(id="g", period_s=1.0, stale_after_s=3.0, write_retries=retries)
    units = {"dev.t": "degC", "dev.heat": "%"}
    return LoopGroup(group_cfg, [loop_cfg()], store, {"dev": actuator}, units), store


def reading(store: TagStore, t: float, heat: float = 40.0, q: Quality = Quality.GOOD) -> None:
    samples = (
        Sample(
            "t", t if q is Quality.GOOD else None, "degC", q, 1, None if q is Quality.GOOD else "x"
        ),
        Sample("heat", heat, "%", Quality.GOOD, 1),
        Sample("auto", 1.0, "bool", Quality.GOOD, 1),
    )
    store.update(Scan("dev", 1, samples))


async def test_tick_takes_over_then_writes_the_output_in_order() -> None:
    actuator = FakeActuator()
    group, store = make_group(actuator)
    reading(store, 36.0, heat=40.0)
    assert group.prime() == [0]
    terms = group.compute(100.0)
    await group.write(terms)
    assert actuator.writes[0] == ("auto", 0.0)  # the device's own loop off first
    assert actuator.writes[1] == ("heat", 40.0)  # the first tick holds the present output
    group.set_mode("dev.temp", True)
    assert group.compute(101.0).output[0] > 40.0  # then auto from there: PV low, more heat
    await group.release()
    assert actuator.writes[-1] == ("auto", 1.0)  # handed back


async def test_failed_writes_are_retried_then_reported() -> None:
    actuator = FakeActuator(fail=2)
    group, store = make_group(actuator, retries=2)
    reading(store, 37.0)
    await group.write(group.compute(1.0))
    assert group.write_errors == [None]  # two failures, the third attempt went through
    actuator.fail = 10
    terms = group.compute(2.0)
    await group.write(terms)
    assert group.write_errors[0] == "device busy"
    (scan,) = group.scans(terms, 5)
    values = {s.tag: s for s in scan.samples}
    assert values["write_ok"].value == 0.0
    assert values["output"].quality is Quality.BAD
    assert values["output"].reason == "device busy"


async def test_a_refused_write_is_not_retried() -> None:
    actuator = FakeActuator(refuse=True)
    group, store = make_group(actuator, retries=5)
    reading(store, 37.0)
    await group.write(group.compute(1.0))
    assert actuator.attempts == 1
    assert group.write_errors[0] is not None


async def test_bad_then_stale_pv_holds_then_goes_safe() -> None:
    group, store = make_group(FakeActuator())
    reading(store, 36.0)
    now = store.t_stored_s[0]
    assert group.compute(now).mode[0] == AUTO
    held = float(group.compute(now + 0.5).output[0])
    reading(store, math.nan, q=Quality.BAD)
    terms = group.compute(now + 1.0)
    assert terms.mode[0] == HOLD
    assert terms.output[0] == held
    reading(store, 36.0)  # good again, but then nothing arrives for longer than stale_after_s
    t0 = store.t_stored_s[0]
    assert group.compute(t0 + 2.0).mode[0] == AUTO  # 2 s old: still fresh (limit 3 s)
    assert group.compute(t0 + 3.1).mode[0] == HOLD  # stale since 1.1 s: held
    terms = group.compute(t0 + 5.5)  # not good for 3.5 s > safe_after_s
    assert terms.mode[0] == SAFE
    assert terms.output[0] == 3.0


async def test_slow_ticks_reach_the_safe_state_after_safe_after_s_of_wall_time() -> None:
    """Ticks 15 s apart (write timeouts, a stalled loop) clip dt for the PID math to 10
    periods; the safe timer still counts the 15 s, so SAFE comes at safe_after_s."""
    group, store = make_group(FakeActuator())
    group.params.safe_after_s[:] = 25.0
    reading(store, 36.0)
    now = store.t_stored_s[0]
    assert group.compute(now).mode[0] == AUTO
    reading(store, math.nan, q=Quality.BAD)
    assert group.compute(now + 1.0).mode[0] == HOLD  # bad for 1 s
    assert group.compute(now + 16.0).mode[0] == HOLD  # 16 s (10 of them in the PID's dt)
    assert group.compute(now + 31.0).mode[0] == SAFE  # 31 s >= 25 (21 counted by dt alone)


async def test_run_ticks_until_stop_and_records_each_tick() -> None:
    actuator = FakeActuator()
    group, store = make_group(actuator)
    reading(store, 37.0)
    recorded: list[Scan] = []
    stop = asyncio.Event()

    class Hub:
        def publish(self, scan: Scan) -> int:
            recorded.append(scan)
            if len(recorded) == 3:
                stop.set()
            return len(recorded)

    group.cfg = group.cfg.model_copy(update={"period_s": 0.01, "stale_after_s": 10.0})
    await asyncio.wait_for(group.run(stop, Hub()), 10)
    assert [s.device for s in recorded] == ["dev.temp"] * 3
    assert [s.tag for s in recorded[0].samples][:4] == ["pv", "sp", "sp_target", "output"]
    assert actuator.writes[-1] == ("auto", 1.0)


# --- takeover and reload are bumpless ---------------------------------------------------


def group_of(store: TagStore, actuator: FakeActuator, **kw: object) -> LoopGroup:
    """A one-loop group whose PV does not go stale: ticks are simulated, not waited for."""
    group_cfg = LoopGroupConfig(id="g", period_s=1.0, stale_after_s=1e6)
    units = {"dev.t": "degC", "dev.heat": "%"}
    return LoopGroup(group_cfg, [loop_cfg(**kw)], store, {"dev": actuator}, units)


def dev_store() -> TagStore:
    return TagStore([("dev", [Tag("t", "degC"), Tag("heat", "%"), Tag("auto", "bool")])])


async def test_prime_holds_the_present_output_under_an_output_rate_limit() -> None:
    actuator, store = FakeActuator(), dev_store()
    group = group_of(store, actuator, out_rate_per_s=10.0, safe_output=0.0, safe_after_s=30.0)
    reading(store, 37.0, heat=40.0)  # at set point, the device's own loop at 40 %
    assert group.prime() == [0]
    now = float(store.t_stored_s[0])
    await group.write(group.compute(now))
    assert actuator.writes[1] == ("heat", 40.0)  # not safe_output + rate * dt = 10 %
    group.set_mode("dev.temp", True)
    terms = group.compute(now + 1.0)
    assert (terms.output[0], terms.i[0]) == (40.0, 40.0)  # auto goes on from 40 %


def test_a_reload_clamps_the_commanded_set_point_to_the_new_limits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store, actuator = dev_store(), FakeActuator()
    old = group_of(store, actuator, sp_min=30.0, sp_max=39.0)
    old.set_setpoint("dev.temp", 38.5)
    new = group_of(store, actuator, sp_min=30.0, sp_max=37.5)
    new.adopt(old)
    assert new.sp_target[0] == 37.5
    assert "loop dev.temp: set point 38.5 outside the new limits [30, 37.5], now 37.5" in (
        caplog.text
    )


async def test_a_reload_carries_the_ramp_and_the_output_and_does_not_prime_again() -> None:
    store, actuator = dev_store(), FakeActuator()
    ramp = {"sp_rate_per_s": 0.05, "out_rate_per_s": 10.0, "safe_output": 0.0}
    old = group_of(store, actuator, initial_output=40.0, **ramp)
    old.set_setpoint("dev.temp", 36.0)
    reading(store, 37.0, heat=40.0)
    now = float(store.t_stored_s[0])
    for k in range(10):  # the set point ramps down 0.05/s: 36.0 is 20 s away
        old.compute(now + k)
    spw, u, i = float(old.state.spw[0]), float(old.state.u[0]), float(old.state.i[0])
    new = group_of(store, actuator, **ramp)
    assert new.adopt(old) == {"dev.temp"}
    reading(store, 37.0, heat=0.0)  # a readback the carried loop must not be primed from
    assert new.prime() == []
    assert (float(new.state.u[0]), float(new.state.i[0])) == (u, i)
    terms = new.compute(now + 10.0)
    assert terms.sp[0] == pytest.approx(spw - 0.05)  # the ramp goes on, no step to 37 or 36
    assert terms.mode[0] == AUTO


async def test_a_reload_keeps_the_operators_manual_output() -> None:
    store, actuator = dev_store(), FakeActuator()
    slow = {"out_rate_per_s": 1.0, "safe_output": 0.0, "safe_after_s": 30.0}
    old = group_of(store, actuator, initial_output=20.0, **slow)
    old.set_mode("dev.temp", False, 80.0)  # the output ramps 1 %/s from 20 % to 80 %
    reading(store, 37.0, heat=20.0)
    now = float(store.t_stored_s[0])
    for k in range(5):
        old.compute(now + k)
    new = group_of(store, actuator, initial_output=20.0, **slow)
    new.adopt(old)
    reading(store, 37.0, heat=25.0)
    new.prime()
    assert new.mode("dev.temp") == "manual"
    assert new.state.manual_output[0] == 80.0
    assert new.compute(now + 5.0).output[0] == pytest.approx(26.0)  # still ramping to 80 %


async def test_a_mode_command_during_the_first_tick_is_not_undone() -> None:
    writing, proceed = asyncio.Event(), asyncio.Event()

    class Blocking(FakeActuator):
        async def write(self, tag: str, value: float) -> None:
            if tag == "heat" and not proceed.is_set():
                writing.set()
                await proceed.wait()
            await super().write(tag, value)

    actuator, store = Blocking(), dev_store()
    group = group_of(store, actuator)
    group.cfg = group.cfg.model_copy(update={"period_s": 0.01, "stale_after_s": 1e6})
    reading(store, 36.0, heat=40.0)
    stop = asyncio.Event()

    class Hub:
        def publish(self, scan: Scan) -> int:
            stop.set()  # one tick is enough
            return 0

    task = asyncio.create_task(group.run(stop, Hub()))
    await asyncio.wait_for(writing.wait(), 10)  # the first (primed) tick is writing
    group.set_mode("dev.temp", False, 20.0)  # an operator: manual 20 %
    proceed.set()
    await asyncio.wait_for(task, 10)
    assert group.mode("dev.temp") == "manual"
    assert group.state.manual_output[0] == 20.0


def test_an_incubator_takeover_holds_the_chamber_temperature() -> None:
    """Closed loop, primed as the daemon primes: the heater goes on from its present output.

    Restarting from the safe output at the heater's rate limit cools the chamber by ~1.3 °C.
    """
    trace, loops = incubator_doors("inc-1")
    doors = door_events(trace)
    before = trace.t < (doors[0].opened_s if doors else math.inf)
    temp = loop_named(loops, "temp")
    assert trace.pv[before, trace.col(temp.id)].min() > temp.settings.setpoint - 0.2


def test_a_reload_before_the_first_tick_still_goes_to_auto_after_it() -> None:
    store, actuator = dev_store(), FakeActuator()
    old = group_of(store, actuator)
    reading(store, 37.0, heat=40.0)
    assert old.prime() == [0]  # in manual at 40 % for its first tick, which never came
    new = group_of(store, actuator)
    new.adopt(old)
    assert new.prime() == [0]  # carried over, not primed again, but still to go to auto
    assert new.state.manual_output[0] == 40.0


def test_a_group_waits_for_every_device_a_loop_touches() -> None:
    """PV, output, readback and takeover switch: a readback not yet read would prime the
    loop from its safe output."""
    loop = loop_cfg(readback="rb.heat_fb", takeover={"tag": "sw.auto", "remote": 0, "local": 1})
    assert loop_tag_names(loop) == ["dev.t", "dev.heat", "rb.heat_fb", "sw.auto"]
