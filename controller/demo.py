"""`cellfab demo`: the simulated suite and the daemon in one process, on embedded defaults.

The embedded config is `config/demo.toml`; its simulators are moved to free loopback ports
and temporary pty links, so the demo runs on any machine, whatever else listens there.
"""

from __future__ import annotations

import asyncio
import tempfile
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from controller.app import Daemon
from controller.config import SiteConfig
from controller.configload import load_site_text
from controller.liveview import run_view
from drivers.opcua_config import OpcUaConfig
from drivers.registry import AnyDeviceConfig
from simulators.modbus_server import free_ports
from simulators.runner import serve_devices


def demo_config(links: Path) -> SiteConfig:
    """The embedded demo suite: network devices on free loopback ports, serial devices on
    ptys linked under `links`, so the demo runs on any machine whatever else runs there."""
    text = resources.files("config").joinpath("demo.toml").read_text()
    cfg = load_site_text(text, Path("config/demo.toml"))
    ports = iter(free_ports(len(cfg.devices)))
    devices: list[AnyDeviceConfig] = []
    for dev in cfg.devices:
        if isinstance(dev, OpcUaConfig):
            url = urlsplit(dev.url)._replace(netloc=f"127.0.0.1:{next(ports)}").geturl()
            devices.append(dev.model_copy(update={"url": url}))
        elif hasattr(dev, "host"):
            devices.append(dev.model_copy(update={"host": "127.0.0.1", "port": next(ports)}))
        elif hasattr(dev, "port"):  # a serial device of its own
            devices.append(dev.model_copy(update={"port": str(links / dev.id)}))
        else:  # a slave on a bus: the bus moves
            devices.append(dev)
    buses = tuple(bus.model_copy(update={"port": str(links / bus.id)}) for bus in cfg.buses)
    state = cfg.state.model_copy(update={"dir": links / "state"})  # audit trail of the demo
    return cfg.model_copy(update={"devices": tuple(devices), "buses": buses, "state": state})


async def run_demo(stop: asyncio.Event, *, view: bool, duration_s: float | None) -> None:
    """Serve the simulators, run the daemon against them, show the live view."""
    if duration_s is not None:
        asyncio.get_running_loop().call_later(duration_s, stop.set)
    with tempfile.TemporaryDirectory(prefix="cellfab-demo-") as links:
        cfg = demo_config(Path(links))
        async with serve_devices(cfg.devices, cfg.buses):
            daemon = Daemon(cfg)

            async def live(stop: asyncio.Event) -> None:
                title = f"cellfab demo — {cfg.site.name}"
                await run_view(daemon.store, stop, title, alarms=daemon.alarms.attention)

            await daemon.run(stop, extra=live if view else None)
