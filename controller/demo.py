"""`cellfab demo`: the simulated suite and the daemon in one process, on embedded defaults.

The embedded config is `config/demo.toml`; its simulators are moved to free loopback ports
so the demo runs on any machine, whatever else listens there.
"""

from __future__ import annotations

import asyncio
from importlib import resources
from pathlib import Path

from controller.app import Daemon
from controller.config import SiteConfig
from controller.configload import load_site_text
from controller.liveview import run_view
from simulators.modbus_server import free_ports
from simulators.runner import serve_devices


def demo_config() -> SiteConfig:
    """The embedded demo suite, each simulated device on a free loopback port."""
    text = resources.files("config").joinpath("demo.toml").read_text()
    cfg = load_site_text(text, Path("config/demo.toml"))
    ports = free_ports(len(cfg.devices))
    devices = tuple(
        dev.model_copy(update={"host": "127.0.0.1", "port": port})
        for dev, port in zip(cfg.devices, ports, strict=True)
    )
    return cfg.model_copy(update={"devices": devices})


async def run_demo(stop: asyncio.Event, *, view: bool, duration_s: float | None) -> None:
    """Serve the simulators, run the daemon against them, show the live view."""
    cfg = demo_config()
    if duration_s is not None:
        asyncio.get_running_loop().call_later(duration_s, stop.set)
    async with serve_devices(cfg.devices):
        daemon = Daemon(cfg)

        async def live(stop: asyncio.Event) -> None:
            await run_view(daemon.store, stop, f"cellfab demo — {cfg.site.name}")

        await daemon.run(stop, extra=live if view else None)
