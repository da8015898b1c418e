"""Alarm latency end to end: an excursion at a known time to the retained MQTT alarm, p50/p99.

One simulated CO2 incubator (Modbus TCP, in-process, its physics not stepped so nothing
moves but what we move) is polled by the daemon, which evaluates a `high` alarm on
`chamber_temp` every `[alarm_engine] period_s` and publishes to a real mosquitto. Per
excursion we set the model's chamber temperature above the limit and publish it into the
server's registers at t0, then record (time.monotonic, same process) when the retained
`<prefix>/alarms/<alarm>` snapshot with state "unacknowledged" reaches a subscriber (ours),
and when the first `<prefix>/telemetry/<device>` message carrying the excursion arrives
(baseline: what a dashboard computing limits itself would see at best). Then the value steps
back and we wait for `rtn_unacknowledged`; the next excursion re-alarms from there (D → B).
A random pause between excursions spreads t0 over the poll and alarm phases.
`ratio` = baseline / ours: below 1 the alarm path is slower than the data path alone.
Usage: python bench/alarm_latency.py [--excursions N] [--poll-period S] [--alarm-period S]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.servers

from controller.app import Daemon
from controller.configload import load_site_text
from drivers.modbus_tcp import ModbusTcpConfig
from simulators.modbus_server import IncubatorSimulator
from tests.servers import HOST, Mosquitto, MqttCollector, free_port, require_binary

DEVICE = "inc-1"
ALARM = "inc-1.temp.high"
NORMAL_DEGC, EXCURSION_DEGC, LIMIT_DEGC = 37.0, 40.0, 38.5
SITE = """
[site]
id = "latency-{port}"
[state]
dir = "{state}"
[mqtt]
url = "{mqtt}"
[alarm_engine]
period_s = {alarm_period}

[[devices]]
id = "{device}"
device_class = "co2_incubator"
area = "bench"
driver = "modbus_tcp"
host = "127.0.0.1"
port = {port}
profile = "co2-incubator"
poll_period_s = {poll_period}
timeout_s = 0.5
[devices.simulator]
model = "co2_incubator"
seed = 1
probe_warmup_s = 0.0
door_period_s = 100000.0

[[alarms]]
id = "{alarm}"
tag = "{device}.chamber_temp"
kind = "high"
priority = "high"
limit = {limit}
deadband = 0.5
"""


class StampedCollector(MqttCollector):
    """An MqttCollector that also notes time.monotonic() as each message arrives."""

    def __init__(self, host: str, port: int, topic_filter: str) -> None:
        super().__init__(host, port, topic_filter)
        self.arrived: list[float] = []

    def _notify(self) -> None:
        now = time.monotonic()  # called once per appended message, before anyone wakes
        self.arrived.extend([now] * (len(self.messages) - len(self.arrived)))
        super()._notify()

    async def first_after(
        self, since: int, topic: str, fits: Callable[[Any], bool], timeout_s: float
    ) -> float:
        """Arrival time of the first message from index `since` on `topic` whose JSON fits."""
        async with asyncio.timeout(timeout_s):
            while True:
                for i in range(since, len(self.messages)):
                    m = self.messages[i]
                    if m.topic == topic and fits(m.json()):
                        return self.arrived[i]
                since = len(self.messages)
                await self.wait_for(lambda _: True, 3600.0, since)  # the next message


def state_is(state: str) -> Callable[[Any], bool]:
    """An alarm snapshot in `state`."""
    return lambda doc: bool(doc["state"] == state)


def alarm_raised(doc: Any) -> bool:
    """The alarm's transition into unacknowledged on `events/alarm`."""
    return bool(doc["key"] == ALARM and doc["to"] == "unacknowledged")


def excursion_seen(doc: Any) -> bool:
    """A telemetry message carrying the excursion."""
    return bool((doc["values"].get("chamber_temp") or 0.0) > LIMIT_DEGC)


async def step(sim: IncubatorSimulator, degc: float) -> float:
    """Put `degc` into the server's registers now; returns t0 (just before the write)."""
    sim.model.temp_degC = degc
    t0 = time.monotonic()
    await sim.update(0.0)  # publishes the model's image into the server's memory
    return t0


async def excursions(
    n: int, poll_s: float, alarm_s: float, folder: Path, broker: Mosquitto
) -> tuple[list[tuple[float, float, float]], float]:
    """(alarm, telemetry, alarm event) latencies in seconds for each of `n` excursions, and
    the spool's flush interval (the telemetry and event paths wait for its commits)."""
    text = SITE.format(
        port=free_port(),
        state=folder / "state",
        mqtt=broker.url,
        alarm_period=alarm_s,
        device=DEVICE,
        poll_period=poll_s,
        alarm=ALARM,
        limit=LIMIT_DEGC,
    )
    path = folder / "site.toml"
    path.write_text(text)
    cfg = load_site_text(text, path)
    dev = cfg.devices[0]
    if not isinstance(dev, ModbusTcpConfig) or dev.simulator is None:
        raise TypeError("the bench device must be a simulated Modbus TCP incubator")
    prefix = cfg.topic_prefix
    alarm_topic, telemetry_topic = f"{prefix}/alarms/{ALARM}", f"{prefix}/telemetry/{DEVICE}"
    event_topic = f"{prefix}/events/alarm"
    rng = random.Random(5)
    out: list[tuple[float, float, float]] = []
    async with IncubatorSimulator(dev.registers, dev.simulator, dev.host, dev.port) as sim:
        await step(sim, NORMAL_DEGC)
        daemon = Daemon(cfg)
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop), name="daemon")
        try:
            async with asyncio.timeout(30):
                await daemon.ready.wait()
            async with StampedCollector(HOST, broker.port, f"{prefix}/#") as seen:
                await seen.wait_for(lambda m: m.topic == telemetry_topic, 10.0)  # polling
                for _ in range(n):
                    await asyncio.sleep(rng.uniform(0.0, 2 * poll_s))  # a random phase
                    since = len(seen.messages)
                    t0 = await step(sim, EXCURSION_DEGC)
                    t_alarm = await seen.first_after(
                        since, alarm_topic, state_is("unacknowledged"), 10.0
                    )
                    t_data = await seen.first_after(since, telemetry_topic, excursion_seen, 10.0)
                    t_event = await seen.first_after(since, event_topic, alarm_raised, 10.0)
                    out.append((t_alarm - t0, t_data - t0, t_event - t0))
                    since = len(seen.messages)
                    await step(sim, NORMAL_DEGC)
                    await seen.first_after(since, alarm_topic, state_is("rtn_unacknowledged"), 10.0)
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
    return out, cfg.spool.flush_interval_s


def percentile(values: list[float], q: float) -> float:
    """Nearest rank (at N = 50, p99 is the largest value)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def line(case: str, n: int, ours: float, baseline: float, **extra: float) -> str:
    record: dict[str, object] = {
        "bench": "alarm_latency",
        "case": case,
        "n": n,
        "ours": round(ours, 1),
        "baseline": round(baseline, 1),
        "unit": "ms",
        "ratio": round(baseline / ours, 2) if ours else float("inf"),
    }
    record.update({k: round(v, 3) for k, v in extra.items()})
    return json.dumps(record)


def report(runs: list[tuple[float, float, float]], timing: dict[str, float]) -> None:
    """One JSON line per percentile. Extras: that percentile of the `events/alarm` latency
    and of (alarm − telemetry) per excursion, and the daemon's timing settings."""
    ours = [a * 1e3 for a, _, _ in runs]
    base = [d * 1e3 for _, d, _ in runs]
    event = [e * 1e3 for _, _, e in runs]
    added = [(a - d) * 1e3 for a, d, _ in runs]
    for case, q in (("p50", 0.5), ("p99", 0.99)):
        extra = {"event_ms": percentile(event, q), "alarm_minus_telemetry_ms": percentile(added, q)}
        print(line(case, len(runs), percentile(ours, q), percentile(base, q), **extra, **timing))
    print(
        f"# alarm {min(ours):.1f}–{max(ours):.1f} ms, telemetry {min(base):.1f}–{max(base):.1f}"
        f" ms, event {min(event):.1f}–{max(event):.1f} ms,"
        f" alarm − telemetry {min(added):.1f}–{max(added):.1f} ms",
        file=sys.stderr,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--excursions", type=int, default=50, help="excursions measured")
    parser.add_argument("--poll-period", type=float, default=0.2, help="device poll_period_s")
    parser.add_argument("--alarm-period", type=float, default=0.1, help="alarm period_s")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "mosq").mkdir()
        with Mosquitto(require_binary("mosquitto"), folder / "mosq") as broker:
            runs, flush_s = asyncio.run(
                excursions(args.excursions, args.poll_period, args.alarm_period, folder, broker)
            )
    timing = {"poll_period_s": args.poll_period, "alarm_period_s": args.alarm_period}
    report(runs, timing | {"spool_flush_s": flush_s})


if __name__ == "__main__":
    main()
