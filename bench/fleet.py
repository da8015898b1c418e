"""A mixed fleet (Modbus TCP, OPC UA, particle counters, RS-485, serial): ours vs naive.

`cellfab simulate` serves the fleet in its own process; each side (the daemon, or a naive
loop per device) runs in a fresh worker process of this script, so CPU (process_time) and
memory (maxrss, VmRSS) are that side's alone. Naive baselines: one request per register
(Modbus TCP and RTU, the particle counter's registers too), one asyncua read per node, a
blocking readline in a thread for the serial counter. A sample is a value handed to the
journal (a record device's records, not its live status). A last case compares an OPC UA
subscription with polling the same nodes (one read_attributes per scan).
Usage: python bench/fleet.py [--seconds S] [--rounds R] [--n 20 200] [--opcua 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import serial
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

from controller import eventloop
from controller.config import SiteConfig
from controller.configload import load_site
from drivers import lighthouse as lh

FAMILIES = ("incubator", "bioreactor", "particle", "dp", "cell_counter")
FAMILY_OF = {
    "modbus_tcp": "incubator",
    "opcua": "bioreactor",
    "lighthouse_remote": "particle",
    "modbus_rtu": "dp",
    "cell_counter_serial": "cell_counter",
}
# Shares of N per family (the rest: incubators). 10 % OPC UA made the simulator the bottleneck
# at N = 200 (20 asyncua servers: ~900 MB, 47 s to start, one core saturated): 5 % here.
SHARES = {"bioreactor": 0.05, "particle": 0.2, "dp": 0.3, "cell_counter": 0.15}
SLAVES_PER_BUS = 10  # 15 a line saturated the line's request cycle at 1 Hz under load
TEMPLATES = {
    "incubator": """
[[devices]]
id = "inc-{i}"
device_class = "co2_incubator"
area = "bench"
driver = "modbus_tcp"
host = "127.0.0.1"
port = {port}
profile = "co2-incubator"
timeout_s = 0.5
[devices.simulator]
model = "co2_incubator"
seed = {i}
probe_warmup_s = 0.0
door_period_s = 100000.0
""",
    "bioreactor": """
[[devices]]
id = "br-{i}"
device_class = "bioreactor"
area = "bench"
driver = "opcua"
url = "opc.tcp://127.0.0.1:{port}/cellfab/bioreactor/"
profile = "xuri-like-bioreactor"
mode = "{mode}"
timeout_s = 2.0
connect_timeout_s = 30.0
[devices.simulator]
model = "bioreactor"
seed = {i}
time_scale = 10.0
""",
    "particle": """
[[devices]]
id = "pc-{i}"
device_class = "particle_counter"
area = "bench"
driver = "lighthouse_remote"
host = "127.0.0.1"
port = {port}
sample_time_s = 60
timeout_s = 0.5
[devices.simulator]
model = "lighthouse_remote"
seed = {i}
time_scale = 60.0
""",
    "dp": """
[[devices]]
id = "dp-{i}"
device_class = "room_dp"
area = "bench"
driver = "modbus_rtu"
bus = "{bus}"
unit_id = {unit}
profile = "huba-699m"
max_gap_registers = 3
[devices.simulator]
seed = {i}
door_period_s = 100000.0
""",
    "cell_counter": """
[[devices]]
id = "cc-{i}"
device_class = "cell_counter"
area = "bench"
driver = "cell_counter_serial"
port = "{folder}/cc-{i}"
[devices.simulator]
model = "cell_counter"
seed = {i}
time_scale = 300.0
period_s = 300.0
""",
}
BUS = """
[[buses]]
id = "{bus}"
port = "{folder}/{bus}"
baudrate = 19200
[buses.simulator]
time_scale = 1.0
"""


def free_ports(n: int) -> list[int]:
    """`n` distinct OS-assigned free ports (held together so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def mix(n: int, shares: dict[str, float]) -> dict[str, int]:
    """Device count per family: `shares` of `n`, rounded, the remainder to incubators."""
    counts = {f: round(n * shares.get(f, 0.0)) for f in FAMILIES}
    counts["incubator"] += n - sum(counts.values())
    return counts


def write_config(counts: dict[str, int], folder: Path, name: str, mode: str) -> Path:
    """A site file with counts[family] devices of each family (RTU: SLAVES_PER_BUS a line)."""
    ports = iter(free_ports(sum(counts.values())))
    text = f'[site]\nid = "bench-{name}"\n[state]\ndir = "{folder}/state-{name}"\n'
    n_dp = counts["dp"]
    n_bus = math.ceil(n_dp / SLAVES_PER_BUS)
    for b in range(n_bus):
        text += BUS.format(bus=f"rs485-{b}", folder=folder)
    for family in FAMILIES:
        for i in range(counts[family]):
            bus, unit = f"rs485-{i % max(n_bus, 1)}", 1 + i // max(n_bus, 1)
            text += TEMPLATES[family].format(
                i=i, port=next(ports), mode=mode, bus=bus, unit=unit, folder=folder
            )
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def wait_ready(cfg: SiteConfig, sim: subprocess.Popen[bytes], deadline_s: float = 180.0) -> None:
    """Every TCP endpoint accepts and every pty link exists, or raise."""
    end = time.monotonic() + deadline_s
    bus_port = {b.id: Path(b.port) for b in cfg.buses}
    for dev in cfg.devices:
        while not ready(dev, bus_port):
            if sim.poll() is not None:
                raise RuntimeError(f"simulator exited with {sim.returncode}")
            if time.monotonic() > end:
                raise TimeoutError(f"simulator of {dev.id} not ready in {deadline_s} s")
            time.sleep(0.1)  # poll cadence inside the deadline


def ready(dev: Any, bus_port: dict[str, Path]) -> bool:
    """A serial device's pty link exists; a network device's port accepts a connection."""
    if dev.driver == "modbus_rtu":
        return bus_port[dev.bus].exists()
    if dev.driver == "cell_counter_serial":
        return Path(dev.port).exists()
    try:
        socket.create_connection(endpoint(dev), timeout=1).close()
    except OSError:
        return False
    return True


def endpoint(dev: Any) -> tuple[str, int]:
    if hasattr(dev, "url"):
        hostport = dev.url.split("//", 1)[1].split("/", 1)[0]
        host, port = hostport.rsplit(":", 1)
        return host, int(port)
    return dev.host, dev.port


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)] if ordered else 0.0


def rss_of(pid: int) -> float:
    """VmRSS of a process in MiB (current, not peak)."""
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) / 1024
    return math.nan


# --- worker side: one side per process ----------------------------------------------------
class Tally:
    """What one side did in the measured window: samples per family, CPU, lateness."""

    def __init__(self) -> None:
        self.samples: Counter[str] = Counter()
        self.notifications = 0
        self.errors = 0  # naive scans that failed (ours: skipped slots)
        self.bad = 0  # ours: tags not good at the end
        self.lateness: dict[str, list[float]] = {}
        self.on = False
        self.cpu_s = self.wall_s = 0.0

    def start(self) -> None:
        self.on, self.cpu_s, self.wall_s = True, time.process_time(), time.monotonic()

    def stop(self) -> None:
        self.on = False
        self.cpu_s = time.process_time() - self.cpu_s
        self.wall_s = time.monotonic() - self.wall_s

    def add(self, family: str, n: int) -> None:
        if self.on:
            self.samples[family] += n

    def late(self, family: str, seconds: float) -> None:
        if self.on:
            self.lateness.setdefault(family, []).append(seconds)

    def lateness_ms(self) -> dict[str, list[float]]:
        """p99 and max scan lateness in ms, over all devices ("all") and per family."""
        every = [x for xs in self.lateness.values() for x in xs]
        out = {f: [p99(xs) * 1e3, max(xs) * 1e3] for f, xs in self.lateness.items() if xs}
        return {"all": [p99(every) * 1e3, max(every, default=0.0) * 1e3], **out}


async def run_ours(cfg: SiteConfig, seconds: float, tally: Tally) -> str:
    """The daemon as `cellfab run` builds it, no sinks; journaled samples counted at the hub."""
    from controller.app import Daemon

    daemon = Daemon(cfg)
    family = {d.id: FAMILY_OF[d.driver] for d in cfg.devices}
    hub, publish, record = daemon.hub, daemon.hub.publish, daemon.hub.record

    def counted_publish(scan: Any) -> int:
        if scan.device in family:  # not the daemon's own `cellfab` stream: no device
            tally.add(family[scan.device], len(scan.samples))
        return publish(scan)

    def counted_record(scan: Any) -> int:
        if scan.device in family:
            tally.add(family[scan.device], len(scan.samples))
        return record(scan)

    hub.publish = counted_publish  # type: ignore[method-assign]
    hub.record = counted_record  # type: ignore[method-assign]
    for drv in daemon.drivers.values():
        if hasattr(drv, "datachange_notification"):  # OPC UA subscribe: count deliveries

            def counted(*args: Any, _original: Any = drv.datachange_notification) -> None:
                tally.notifications += tally.on
                _original(*args)

            drv.datachange_notification = counted  # type: ignore[attr-defined]
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    async with asyncio.timeout(120):
        await daemon.ready.wait()
    await asyncio.sleep(2.0)  # record devices past their first record, subscriptions flowing
    for poller in daemon.pollers:
        poller.stats.lateness_s.clear()
    skipped0 = sum(p.stats.skipped for p in daemon.pollers)
    tally.start()
    await asyncio.sleep(seconds)
    tally.stop()
    for poller in daemon.pollers:
        tally.lateness.setdefault(family[poller.device], []).extend(poller.stats.lateness_s)
    tally.errors = sum(p.stats.skipped for p in daemon.pollers) - skipped0
    tally.bad = sum(int(q) != 0 for q in daemon.store.quality)
    stop.set()
    await task
    n_tags = len(daemon.store.quality)
    return f"{tally.errors} skipped slots; {tally.bad} of {n_tags} tags not good at end"


async def every_second(
    family: str, scan: Callable[[], Coroutine[Any, Any, None]], stop: Any, tally: Tally
) -> None:
    """The naive schedule: scan, then sleep to the next whole period; errors counted."""
    due = time.monotonic()
    while not stop.is_set():
        tally.late(family, max(0.0, time.monotonic() - due))
        try:
            await asyncio.wait_for(scan(), 5.0)
        except (Exception, TimeoutError) as exc:  # a naive loop logs and carries on
            if not tally.errors and tally.on:
                print(f"# naive scan failed: {exc!r}", file=sys.stderr)
            tally.errors += tally.on
        due += 1.0
        await asyncio.sleep(max(0.0, due - time.monotonic()))


def decode(spec: Any, words: list[int]) -> float:
    """By hand, per register, as a naive integration decodes."""
    if spec.words == 1:
        raw = words[0] - (words[0] >> 15 << 16) if spec.type == "s16" else words[0]
        return float(raw) * spec.scale + spec.offset
    hi, lo = (words[0], words[1]) if spec.word_order == "big" else (words[1], words[0])
    fmt = {"u32": ">I", "s32": ">i", "float32": ">f"}[spec.type]
    return float(struct.unpack(fmt, struct.pack(">HH", hi, lo))[0]) * spec.scale + spec.offset


async def naive_modbus(client: Any, specs: Any, unit: int | None) -> int:
    """One request per register; returns the number of values decoded."""
    for spec in specs:
        read = client.read_holding_registers if spec.function == 3 else client.read_input_registers
        words = []
        for reg in range(spec.address, spec.address + spec.words):
            reply = await read(reg, count=1, device_id=spec.device_id if unit is None else unit)
            words.append(reply.registers[0])
        decode(spec, words)
    return len(specs)


async def connect(client: Any) -> None:
    """Connect, retrying for up to 10 s (many loops start at once on a busy machine)."""
    end = time.monotonic() + 10.0
    while not await client.connect():
        if time.monotonic() > end:
            raise ConnectionError(f"{client} did not connect")
        await asyncio.sleep(0.2)  # retry cadence inside the deadline


async def naive_incubator(dev: Any, stop: Any, tally: Tally) -> None:
    client = AsyncModbusTcpClient(dev.host, port=dev.port, timeout=0.5, retries=0)
    await connect(client)

    async def scan() -> None:
        tally.add("incubator", await naive_modbus(client, dev.registers, None))

    try:
        await every_second("incubator", scan, stop, tally)
    finally:
        client.close()


async def naive_particle(dev: Any, stop: Any, tally: Tally) -> None:
    """Status word each second; on NEW DATA the record's fields, one register at a time."""
    client = AsyncModbusTcpClient(dev.host, port=dev.port, timeout=0.5, retries=0)
    await connect(client)
    u = dev.unit_id
    channels = [lh.IR_CHANNELS + 2 * dev.channel_sizes_um.index(s) for s in dev.channels_um]
    fields = [lh.IR_TIMESTAMP, lh.IR_DATA_STATUS, *channels]

    async def word(read: Any, address: int) -> int:
        return int((await read(address, count=1, device_id=u)).registers[0])

    async def scan() -> None:
        status = await word(client.read_holding_registers, lh.HR_STATUS)
        if not status & lh.DeviceStatus.RUNNING:
            await client.write_register(lh.HR_COMMAND, lh.Command.INSTRUMENT_START, device_id=u)
            return
        if not status & lh.DeviceStatus.NEW_DATA:
            return
        await word(client.read_holding_registers, lh.HR_FLOW)
        await client.write_register(lh.HR_RECORD_INDEX, lh.LATEST_RECORD, device_id=u)
        for address in fields:
            hi = await word(client.read_input_registers, address)
            lo = await word(client.read_input_registers, address + 1)
            float(hi << 16 | lo)
        tally.add("particle", len(fields) - 1)  # as ours journals: channels + data status

    try:
        await every_second("particle", scan, stop, tally)
    finally:
        client.close()


async def naive_bioreactor(dev: Any, stop: Any, tally: Tally) -> None:
    """One asyncua read per node per scan."""
    from asyncua import Client  # lazy: ~0.7 s, OPC UA workers only

    client = Client(dev.url, timeout=2.0)
    await asyncio.wait_for(client.connect(), 30.0)
    ns = await client.get_namespace_index(dev.namespace_uri)
    nodes = [client.get_node(f"ns={ns};{n.node}") for n in dev.nodes]

    async def scan() -> None:
        for node in nodes:
            dv = await node.read_data_value()
            float(dv.Value.Value)
        tally.add("bioreactor", len(nodes))

    try:
        await every_second("bioreactor", scan, stop, tally)
    finally:
        await asyncio.wait_for(client.disconnect(), 5.0)


async def naive_bus(bus: Any, slaves: list[Any], stop: Any, tally: Tally) -> None:
    """One client per RS-485 line, every slave in turn, one request per register."""
    client = AsyncModbusSerialClient(bus.port, baudrate=bus.baudrate, timeout=0.3, retries=0)
    await connect(client)

    async def scan() -> None:
        for dev in slaves:
            tally.add("dp", await naive_modbus(client, dev.registers, dev.unit_id))

    try:
        await every_second("dp", scan, stop, tally)
    finally:
        client.close()


def naive_cell_counter(dev: Any, stop: threading.Event, tally: Tally) -> None:
    """A thread per port doing blocking readline, as most serial integrations do."""
    with serial.Serial(dev.port, dev.baudrate, timeout=0.5) as port:
        while not stop.is_set():
            line = port.readline()
            if line.startswith(b"$CC,"):
                values = line.split(b"*")[0].split(b",")[4:8]
                tally.add("cell_counter", len([float(v) for v in values]))


async def run_naive(cfg: SiteConfig, seconds: float, tally: Tally) -> str:
    """Every device by its naive loop (cell counters in threads), on a 1 Hz schedule."""
    stop, thread_stop = asyncio.Event(), threading.Event()
    if any(d.driver == "opcua" for d in cfg.devices):
        import asyncua  # noqa: F401 - ~0.7 s of import that would stall the other connects
    by_family: dict[str, list[Any]] = {f: [] for f in FAMILIES}
    for dev in cfg.devices:
        by_family[FAMILY_OF[dev.driver]].append(dev)
    loops: list[Coroutine[Any, Any, None]] = [
        *(naive_incubator(d, stop, tally) for d in by_family["incubator"]),
        *(naive_particle(d, stop, tally) for d in by_family["particle"]),
        *(naive_bioreactor(d, stop, tally) for d in by_family["bioreactor"]),
        *(
            naive_bus(bus, [d for d in by_family["dp"] if d.bus == bus.id], stop, tally)
            for bus in cfg.buses
        ),
    ]
    threads = [
        threading.Thread(target=naive_cell_counter, args=(d, thread_stop, tally), daemon=True)
        for d in by_family["cell_counter"]
    ]
    for thread in threads:
        thread.start()
    tasks = [asyncio.create_task(loop) for loop in loops]
    try:
        await asyncio.sleep(5.0)  # every loop connected and scanning before measuring
        tally.lateness.clear()
        tally.errors = 0
        tally.start()
        await asyncio.sleep(seconds)
        tally.stop()
    finally:
        stop.set()
        thread_stop.set()
        await asyncio.gather(*tasks)
        for thread in threads:
            thread.join(timeout=5.0)
    return f"{tally.errors} failed scans"


def only(cfg: SiteConfig, family: str | None) -> SiteConfig:
    """`cfg` restricted to one family (and the buses its devices use)."""
    if family is None:
        return cfg
    devices = tuple(d for d in cfg.devices if FAMILY_OF[d.driver] == family)
    used = {getattr(d, "bus", None) for d in devices}
    buses = tuple(b for b in cfg.buses if b.id in used)
    return cfg.model_copy(update={"devices": devices, "buses": buses})


def worker(config: str, side: str, family: str | None, seconds: float) -> None:
    """Measure one side on one site file; print one JSON object."""
    cfg = only(load_site(Path(config), {}), family)
    tally = Tally()
    run = run_ours if side == "ours" else run_naive
    # ours on the loop `cellfab run` uses (uvloop), the naive loops on the standard one
    note = eventloop.run(run(cfg, seconds, tally), "uvloop" if side == "ours" else "asyncio")
    print(
        json.dumps(
            {
                "cpu_s": tally.cpu_s,
                "wall_s": tally.wall_s,
                "samples": dict(tally.samples),
                "notifications": tally.notifications,
                "lateness_ms": tally.lateness_ms(),
                "failures": tally.errors,
                "bad_tags": tally.bad,
                "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "rss_mb": rss_of(os.getpid()),
                "note": note,
            }
        )
    )


# --- parent side: the simulator, the workers, the JSON lines -------------------------------
def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def measure(
    config: Path, side: str, seconds: float, sim: int, family: str | None = None
) -> dict[str, Any]:
    """Run one side in a fresh worker process; its JSON result, with the simulator's load."""
    cmd = [sys.executable, __file__, "--worker", side, "--config", str(config)]
    cmd += ["--seconds", str(seconds), *(["--family", family] if family else [])]
    ticks0, t0 = cpu_ticks(sim), time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 240, check=False)
    sim_load = (cpu_ticks(sim) - ticks0) / os.sysconf("SC_CLK_TCK") / (time.monotonic() - t0)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-3000:])
        raise RuntimeError(f"worker {side} {family or ''} failed ({done.returncode})")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["n_samples"] = sum(result["samples"].values())
    result["sim_cpu_pct"] = sim_load * 100
    late = {k: round(v[0]) for k, v in result["lateness_ms"].items()}
    print(
        f"# {side:5} {family or 'all':12} {result['note']}; samples {result['samples']}; "
        f"p99 lateness ms {late}; simulator {sim_load:.0%} CPU",
        file=sys.stderr,
    )
    return result


@contextmanager
def simulating(path: Path) -> Iterator[int]:
    """`cellfab simulate -c path` in its own process until the block exits; yields its pid."""
    cfg = load_site(path, {})
    cmd = [sys.executable, "-m", "controller.cli", "simulate", "-c", str(path)]
    sim = subprocess.Popen([*cmd, "--log-level", "WARNING"])
    try:
        t0 = time.monotonic()
        wait_ready(cfg, sim)
        rss = rss_of(sim.pid)
        print(
            f"# simulator of {path.name}: ready in {time.monotonic() - t0:.1f} s, {rss:.0f} MiB",
            file=sys.stderr,
        )
        yield sim.pid
    finally:
        sim.terminate()
        try:
            sim.wait(timeout=30)
        except subprocess.TimeoutExpired:
            sim.kill()
            sim.wait(timeout=30)


def line(case: str, n: int, ours: float, baseline: float | None, unit: str, **extra: Any) -> None:
    ratio = None if baseline is None else round(baseline / ours, 2) if ours else math.inf
    record = {
        "bench": "fleet",
        "case": case,
        "n": n,
        "ours": round(ours, 2),
        "baseline": None if baseline is None else round(baseline, 2),
        "unit": unit,
        "ratio": ratio,
    }
    record.update({k: round(v, 2) if isinstance(v, float) else v for k, v in extra.items()})
    print(json.dumps(record), flush=True)


def per_1k(r: dict[str, Any], family: str | None = None) -> float:
    """CPU ms per 1,000 samples (= µs per sample)."""
    samples = r["samples"].get(family, 0) if family else r["n_samples"]
    return r["cpu_s"] / samples * 1e6 if samples else math.inf


def rate(r: dict[str, Any]) -> float:
    return float(r["n_samples"] / r["wall_s"])


def side_by_side(
    case: str, n: int, ours: dict[str, Any], base: dict[str, Any], **extra: Any
) -> None:
    """CPU per 1,000 samples, with rates, failures and the simulator's load beside it."""
    line(
        case,
        n,
        per_1k(ours),
        per_1k(base),
        "ms",
        **extra,
        samples_per_s_ours=rate(ours),
        samples_per_s_baseline=rate(base),
        skipped_slots_ours=ours["failures"],
        failed_scans_baseline=base["failures"],
        sim_cpu_pct_ours=ours["sim_cpu_pct"],
        sim_cpu_pct_baseline=base["sim_cpu_pct"],
        **(
            {"notifications_per_s_ours": ours["notifications"] / ours["wall_s"]}
            if ours["notifications"]
            else {}
        ),
    )


def fleet(n: int, shares: dict[str, float], args: argparse.Namespace, folder: Path) -> None:
    """Mixed fleet of `n`: ours vs naive, `rounds` times each; then one family at a time."""
    counts = mix(n, shares)
    print(f"# fleet {n}: {counts}", file=sys.stderr)
    path = write_config(counts, folder, f"fleet-{n}", "subscribe")
    with simulating(path) as sim:
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "naive": []}
        for _ in range(args.rounds):
            for side, results in runs.items():
                results.append(measure(path, side, args.seconds, sim))
        ours, base = (min(v, key=per_1k) for v in runs.values())
        mix_note = ", ".join(f"{k} {v}" for k, v in counts.items())
        side_by_side("cpu_per_1k_samples", n, ours, base, mix=mix_note)
        late = {k: max(r["lateness_ms"]["all"][0] for r in v) for k, v in runs.items()}
        worst = {k: max(r["lateness_ms"]["all"][1] for r in v) for k, v in runs.items()}
        fams = {f: round(v[0], 1) for f, v in ours["lateness_ms"].items() if f != "all"}
        line(
            "p99_lateness",
            n,
            late["ours"],
            late["naive"],
            "ms",
            max_ours=worst["ours"],
            max_baseline=worst["naive"],
            p99_by_family_ours=fams,
        )
        rss = {k: max(r["maxrss_mb"] for r in v) for k, v in runs.items()}
        vm = {k: max(r["rss_mb"] for r in v) for k, v in runs.items()}
        line(
            "maxrss",
            n,
            rss["ours"],
            rss["naive"],
            "MiB",
            vmrss_after_ours=vm["ours"],
            vmrss_after_baseline=vm["naive"],
        )
        if n < args.families_from:
            return
        for family in FAMILIES:
            if counts[family]:
                o = measure(path, "ours", args.family_seconds, sim, family)
                b = measure(path, "naive", args.family_seconds, sim, family)
                side_by_side(f"cpu_per_1k_samples:{family}", counts[family], o, b)


def opcua(n: int, args: argparse.Namespace, folder: Path) -> None:
    """N bioreactors: subscription (notifications) vs polled read_attributes of the same nodes."""
    counts = dict.fromkeys(FAMILIES, 0) | {"bioreactor": n}
    sub = write_config(counts, folder, f"opcua-sub-{n}", "subscribe")
    poll = folder / f"opcua-poll-{n}.toml"
    poll.write_text(sub.read_text().replace('mode = "subscribe"', 'mode = "poll"'))
    with simulating(sub) as sim:
        s = measure(sub, "ours", args.seconds, sim)
        p = measure(poll, "ours", args.seconds, sim)
        b = measure(sub, "naive", args.seconds, sim)
    per_note = s["cpu_s"] / s["notifications"] * 1e6 if s["notifications"] else math.inf
    line(
        "opcua_cpu_per_value:subscribe_vs_poll",
        n,
        per_note,
        per_1k(p),
        "us",
        notifications_per_s=s["notifications"] / s["wall_s"],
        samples_per_s_poll=rate(p),
        cpu_per_sample_subscribe_us=per_1k(s),
        sim_cpu_pct_subscribe=s["sim_cpu_pct"],
        sim_cpu_pct_poll=p["sim_cpu_pct"],
    )
    line(
        "opcua_cpu_per_value:subscribe_vs_naive_per_node",
        n,
        per_note,
        per_1k(b),
        "us",
        samples_per_s_naive=rate(b),
        sim_cpu_pct_naive=b["sim_cpu_pct"],
    )
    line(
        "opcua_p99_lateness:subscribe_vs_poll",
        n,
        s["lateness_ms"]["all"][0],
        p["lateness_ms"]["all"][0],
        "ms",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=12.0, help="measured time per side")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds per case")
    parser.add_argument("--n", type=int, nargs="*", default=[20, 200], help="fleet sizes")
    parser.add_argument("--opcua", type=int, default=10, help="bioreactors of the OPC UA case")
    parser.add_argument("--families-from", type=int, default=200, help="per-family runs at N ≥")
    parser.add_argument("--family-seconds", type=float, default=6.0)
    parser.add_argument("--worker", choices=["ours", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--family", choices=FAMILIES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.config, args.worker, args.family, args.seconds)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.n:
            fleet(n, SHARES, args, Path(tmp))
        if args.opcua:
            opcua(args.opcua, args, Path(tmp))


if __name__ == "__main__":
    main()
