"""What the sink tests share: a small site, scans with every quality, and a scripted
/api/v2/write endpoint for the InfluxDB answers VictoriaMetrics never gives (unit tests only:
the integration tests talk to the real servers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from controller.config import SiteConfig
from drivers.sample import Quality, Sample, Scan
from tests.servers import HOST, free_port

AREA = 'Suite 1, "east" = B\\'  # every character line protocol treats specially
FAST = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.3}
FAST_INFLUX = {"retry_min_s": 0.02, "retry_max_s": 0.2, "flush_interval_s": 0.05}


def site_dict(site_id: str, device_class: str = "incubator", **sections: Any) -> dict[str, Any]:
    """A site with device `inc1` in AREA and a device `poison` for rejection tests."""
    regmap = {"name": "m", "registers": [{"tag": "t", "address": 0, "type": "u16"}]}
    common = {"driver": "modbus_tcp", "host": HOST, "register_map": regmap}
    return {
        "site": {"id": site_id},
        "devices": [
            {"id": "inc1", "device_class": device_class, "area": AREA, **common},
            {"id": "poison", "device_class": device_class, "area": "x", **common},
        ],
        **sections,
    }


def site(site_id: str, device_class: str = "incubator", **sections: Any) -> SiteConfig:
    return SiteConfig.model_validate(site_dict(site_id, device_class, **sections))


def make_scan(i: int, t0_ns: int, device: str = "inc1") -> Scan:
    """Scan i: ms apart with a ns remainder; co2 bad every 3rd, rh uncertain every 4th."""
    t_ns = t0_ns + i * 1_000_000 + 123_457
    samples = [Sample.good("chamber_temp", round(36.6 + i * 0.01, 2), "degC", t_ns)]
    if i % 3 == 0:
        samples.append(Sample.bad("co2", "%", "timeout", t_ns))
    else:
        samples.append(Sample.good("co2", 5, "%", t_ns))  # an int on purpose
    quality = Quality.UNCERTAIN if i % 4 == 1 else Quality.GOOD
    reason = "probe warming up" if quality is Quality.UNCERTAIN else None
    samples.append(Sample("rh", 40.0 + i, "%RH", quality, t_ns, reason))
    return Scan(device, t_ns, tuple(samples))


class ScriptedInflux:
    """An /api/v2/write endpoint that answers from a script (`reply`, overridable); a 204
    stores the lines in `accepted`."""

    def __init__(
        self, answer: Callable[[int, str], tuple[int, dict[str, str]]] = lambda _n, _b: (204, {})
    ) -> None:
        self._answer = answer
        self.requests = 0
        self.accepted: list[str] = []
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    async def __aenter__(self) -> Any:
        app = web.Application()
        app.router.add_post("/api/v2/write", self._write)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, HOST, self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    async def _write(self, request: web.Request) -> web.Response:
        body = await request.text()
        self.requests += 1
        return self.reply(self.requests, body)

    def reply(self, n: int, body: str) -> web.Response:
        """The answer to request `n` (1-based) carrying `body`."""
        status, headers = self._answer(n, body)
        if status == 204:
            self.accepted += body.split("\n")
            return web.Response(status=204)
        payload = {"code": "error", "message": f"scripted {status} for {body.count(chr(10)) + 1}"}
        return web.json_response(payload, status=status, headers=headers)
