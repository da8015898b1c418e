"""Poll N simulated incubators: CPU per sample and schedule lateness, ours vs a naive loop.

The simulators run in a separate process (`cellfab simulate`), so the CPU measured here is
the poller's own. Baseline: what many integrations do — one pymodbus request per register,
sequentially, per device, on the same 1 Hz schedule. A second case compares with the library
floor: pymodbus doing our coalesced reads and nothing else, which shows what our own code
adds. The daemon runs on the loop `cellfab run` uses (uvloop, controller/eventloop.py) and
so does the floor; the baseline runs on the standard asyncio loop, as a naive integration
would, and once more on uvloop, so that the loop's share of the ratio is visible.
Usage: python bench/poll.py [--seconds S] [--rounds R] [--n 1 10 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient

from controller import eventloop
from controller.app import Daemon
from controller.config import SiteConfig
from controller.configload import load_site
from drivers.codec import plan_reads
from drivers.registermap import RegisterSpec
from simulators.modbus_server import free_ports

DEVICE = """
[[devices]]
id = "inc-{i}"
device_class = "co2_incubator"
area = "bench"
driver = "modbus_tcp"
host = "127.0.0.1"
port = {port}
profile = "co2-incubator"
poll_period_s = 1.0
timeout_s = 0.5
[devices.simulator]
model = "co2_incubator"
seed = {i}
probe_warmup_s = 0.0
door_period_s = 100000.0
"""


def write_config(n: int, folder: Path) -> Path:
    path = folder / f"bench-{n}.toml"
    ports = free_ports(n)
    text = f'[site]\nid = "bench"\n[state]\ndir = "{folder}/state-{n}"\n' + "".join(
        DEVICE.format(i=i, port=port) for i, port in enumerate(ports)
    )
    path.write_text(text)
    return path


def wait_ports(cfg: SiteConfig, deadline_s: float = 60.0) -> None:
    end = time.monotonic() + deadline_s
    for dev in cfg.devices:
        while True:
            try:
                socket.create_connection((dev.host, dev.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)


def cpu_now() -> float:
    """User + system CPU seconds of this process, at ns resolution (os.times ticks at 10 ms)."""
    return time.process_time()


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)] if ordered else 0.0


async def run_ours(cfg: SiteConfig, seconds: float) -> tuple[float, int, list[float]]:
    """CPU seconds, samples and scan lateness of the daemon's pollers over `seconds`."""
    daemon = Daemon(cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    await daemon.ready.wait()
    # Ready comes right after the first scans: start the window mid-period, as the other
    # cases do, so that it holds whole scans only (a window ending inside the 100 scans of
    # a tick counted their CPU but not their samples: ±10 % between rounds).
    await asyncio.sleep(0.5)
    for poller in daemon.pollers:
        poller.stats.lateness_s.clear()
    # the pollers' scans: the hub also counts the daemon's own stream (a scan every 2 s),
    # which at N = 1 would add half as many samples again
    scans0, cpu0 = sum(p.stats.scans for p in daemon.pollers), cpu_now()
    await asyncio.sleep(seconds)
    cpu = cpu_now() - cpu0
    scans = sum(p.stats.scans for p in daemon.pollers) - scans0
    lateness = [x for p in daemon.pollers for x in p.stats.lateness_s]
    bad = sum(int(q) != 0 for q in daemon.store.quality)
    skipped = sum(p.stats.skipped for p in daemon.pollers)
    print(
        f"# ours: {scans} scans, {skipped} skipped slots, {bad} tags not good at the end",
        file=sys.stderr,
    )
    stop.set()
    await task
    per_scan = len(cfg.devices[0].registers)
    return cpu, scans * per_scan, lateness


def naive_decode(spec: RegisterSpec, words: list[int]) -> float:
    if spec.words == 1:
        return float(words[0]) * spec.scale + spec.offset
    hi, lo = (words[0], words[1]) if spec.word_order == "big" else (words[1], words[0])
    fmt = {"u32": ">I", "s32": ">i", "float32": ">f"}[spec.type]
    return float(struct.unpack(fmt, struct.pack(">HH", hi, lo))[0]) * spec.scale + spec.offset


async def naive_device(
    host: str,
    port: int,
    specs: tuple[RegisterSpec, ...],
    stop: asyncio.Event,
    out: dict[str, list[float]],
) -> None:
    """The baseline: one request per register, decoded by hand, on the same schedule."""
    client = AsyncModbusTcpClient(host, port=port, timeout=0.5, retries=0)
    await client.connect()
    due = time.monotonic()
    while not stop.is_set():
        out["lateness"].append(max(0.0, time.monotonic() - due))
        for spec in specs:
            read = (
                client.read_holding_registers if spec.function == 3 else client.read_input_registers
            )
            words = []
            for reg in range(spec.address, spec.address + spec.words):
                reply = await read(reg, count=1, device_id=spec.device_id)
                words.append(reply.registers[0])
            naive_decode(spec, words)
            out["samples"].append(1.0)
        due += 1.0
        await asyncio.sleep(max(0.0, due - time.monotonic()))
    client.close()


async def floor_device(
    host: str,
    port: int,
    specs: tuple[RegisterSpec, ...],
    stop: asyncio.Event,
    out: dict[str, list[float]],
) -> None:
    """The library floor: the same coalesced reads as ours, nothing decoded or forwarded."""
    plan = plan_reads(specs)
    client = AsyncModbusTcpClient(host, port=port, timeout=0.5, retries=0)
    await client.connect()
    due = time.monotonic()
    while not stop.is_set():
        out["lateness"].append(max(0.0, time.monotonic() - due))
        for req in plan:
            read = (
                client.read_holding_registers if req.function == 3 else client.read_input_registers
            )
            await read(req.address, count=req.count, device_id=req.device_id)
        out["samples"].extend([1.0] * len(specs))
        due += 1.0
        await asyncio.sleep(max(0.0, due - time.monotonic()))
    client.close()


async def run_loop(
    cfg: SiteConfig, seconds: float, device: Callable[..., Awaitable[None]]
) -> tuple[float, int, list[float]]:
    """CPU, samples and lateness of `device` loops polling every configured device."""
    stop = asyncio.Event()
    out: dict[str, list[float]] = {"lateness": [], "samples": []}
    tasks = [
        asyncio.create_task(device(d.host, d.port, d.registers, stop, out)) for d in cfg.devices
    ]
    await asyncio.sleep(1.5)  # let every device connect and scan once before measuring
    out["lateness"].clear()
    samples0, cpu0 = len(out["samples"]), cpu_now()
    await asyncio.sleep(seconds)
    cpu = cpu_now() - cpu0
    samples = len(out["samples"]) - samples0
    lateness = list(out["lateness"])
    stop.set()
    await asyncio.gather(*tasks)
    return cpu, samples, lateness


def line(case: str, n: int, ours: float, baseline: float, unit: str, **extra: float) -> str:
    ratio = baseline / ours if ours else float("inf")
    record = {
        "bench": "poll",
        "case": case,
        "n": n,
        "ours": round(ours, 2),
        "baseline": round(baseline, 2),
        "unit": unit,
        "ratio": round(ratio, 2),
    }
    record.update({k: round(v, 2) for k, v in extra.items()})
    return json.dumps(record)


# case -> (event loop, what runs); each round of each case runs in a fresh process, so no
# case inherits another's heap, threads or frozen collector generations (measured: the
# floor cost 10.6 µs a sample before the daemon had run in the same process, 18 after).
CASES = {
    "ours": ("uvloop", "daemon"),
    "base": ("asyncio", "naive"),
    "base_uv": ("uvloop", "naive"),
    "floor": ("uvloop", "floor"),
}


def run_case(case: str, path: Path, seconds: float) -> tuple[float, int, list[float]]:
    """One round of one case, in a child process; (CPU s, samples, lateness list)."""
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--case",
            case,
            "--config",
            str(path),
            "--seconds",
            str(seconds),
        ],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["cpu_s"], result["samples"], result["lateness_s"]


def child(case: str, path: Path, seconds: float) -> None:
    """The child side of `run_case`: measure, print one JSON line."""
    cfg = load_site(path, {})
    loop, what = CASES[case]
    main = (
        run_ours(cfg, seconds)
        if what == "daemon"
        else run_loop(cfg, seconds, naive_device if what == "naive" else floor_device)
    )
    cpu, samples, lateness = eventloop.run(main, loop)
    print(json.dumps({"cpu_s": cpu, "samples": samples, "lateness_s": lateness}))


def bench(n: int, seconds: float, rounds: int, folder: Path) -> None:
    """Interleave the cases `rounds` times, each in a fresh process; best round each."""
    path = write_config(n, folder)
    cfg = load_site(path, {})
    sim = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "controller.cli",
            "simulate",
            "-c",
            str(path),
            "--log-level",
            "WARNING",
        ]
    )
    runs: dict[str, list[tuple[float, int, list[float]]]] = {case: [] for case in CASES}
    try:
        wait_ports(cfg)
        for _ in range(rounds):
            for case in CASES:
                runs[case].append(run_case(case, path, seconds))
    finally:
        sim.terminate()
        sim.wait(timeout=30)
    best = {k: min(v, key=lambda r: r[0] / r[1]) for k, v in runs.items()}
    cpu = {k: cpu_s / samples * 1e6 for k, (cpu_s, samples, _) in best.items()}
    rate = {k: samples / seconds for k, (_, samples, _) in best.items()}
    late = {k: [x for r in v for x in r[2]] for k, v in runs.items()}
    print(
        line(
            "cpu_per_sample",
            n,
            cpu["ours"],
            cpu["base"],
            "us/sample",
            samples_per_s_ours=rate["ours"],
            samples_per_s_baseline=rate["base"],
        )
    )
    print(line("cpu_per_sample_both_on_uvloop", n, cpu["ours"], cpu["base_uv"], "us/sample"))
    print(line("cpu_per_sample_vs_library_floor", n, cpu["ours"], cpu["floor"], "us/sample"))
    print(line("p99_lateness", n, p99(late["ours"]) * 1e3, p99(late["base"]) * 1e3, "ms"))
    print(
        line("max_lateness", n, max(late["ours"]) * 1e3, max(late["base"]) * 1e3, "ms"), flush=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per case")
    parser.add_argument("--n", type=int, nargs="*", default=[1, 10, 100], help="device counts")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per case")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        child(args.case, args.config, args.seconds)
        return
    with tempfile.TemporaryDirectory() as folder:
        for n in args.n:
            bench(n, args.seconds, args.rounds, Path(folder))


if __name__ == "__main__":
    main()
