"""Generic Modbus TCP driver: a register map as data, coalesced reads, own reconnect.

pymodbus retries a first failed connect never and closes a link after a few timeouts
(shared/libraries.md §1.2), so this driver owns the connection: it reconnects with
exponential backoff and jitter, and between attempts every tag reads BAD "disconnected"
at once instead of blocking the scan.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Literal, Self

from pydantic import Field, model_validator
from pymodbus.client import AsyncModbusTcpClient

from drivers.backoff import Backoff
from drivers.base import DeviceBase
from drivers.modbus_reader import MapScanner, RequestFailure
from drivers.modbus_writer import RegisterWriter
from drivers.registermap import RegisterMap, RegisterSpec
from drivers.sample import Sample
from drivers.transitions import TransitionLog
from simulators.config import IncubatorSimConfig

log = logging.getLogger(__name__)


class ModbusTcpConfig(DeviceBase):
    """A device (or gateway) reached over Modbus TCP, described by a register map."""

    driver: Literal["modbus_tcp"]
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    profile: str | None = Field(
        default=None, description="profile name in config/profiles, or a path to a TOML map"
    )
    register_map: RegisterMap | None = Field(default=None, description="inline map")
    max_gap_registers: int = Field(default=0, ge=0, le=124)
    simulator: IncubatorSimConfig | None = None

    @model_validator(mode="after")
    def _has_map(self) -> ModbusTcpConfig:
        if self.profile is None and self.register_map is None:
            raise ValueError("give either `profile` or an inline `register_map`")
        return self

    @property
    def registers(self) -> tuple[RegisterSpec, ...]:
        """The tags of this device (the profile must have been resolved by the loader)."""
        if self.register_map is None:
            raise RuntimeError(f"device {self.id}: profile {self.profile!r} was not resolved")
        return self.register_map.registers


class ModbusTcpDriver:
    """One TCP session to one device; `read()` returns one Sample per tag, every time."""

    def __init__(
        self,
        cfg: ModbusTcpConfig,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cfg = cfg
        self._map = MapScanner(cfg.registers, cfg.max_gap_registers, log, f"device {cfg.id}")
        self._writer = RegisterWriter(cfg.registers, f"device {cfg.id}")
        self._client: AsyncModbusTcpClient | None = None
        self._backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s, rng, clock)
        self._link = TransitionLog(log, f"device {cfg.id}")

    @property
    def tags(self) -> tuple[RegisterSpec, ...]:
        """Tag name and unit of every value this driver produces."""
        return self._map.specs

    @property
    def request_count(self) -> int:
        """Modbus requests per scan after coalescing."""
        return len(self._map.plan)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._drop_client()

    async def read(self) -> list[Sample]:
        """One scan: every tag of the map, with its quality."""
        client = await self._connected_client()
        if isinstance(client, str):
            return self._map.all_bad(client)
        samples, down = await self._map.scan(client, self._cfg.timeout_s)
        if answered(samples, down):
            self._backoff.succeeded()
        if down is not None:
            self._link.fail("link", down.reason)
            self._drop_client()
            self._backoff.failed()
        else:
            self._link.ok("link")
        return samples

    async def write(self, tag: str, value: float) -> None:
        """Write one holding register tag (FC 6/16); never reconnects (`read()` does that).

        ValueError: not a writable tag, or a value its register cannot hold;
        RuntimeError: not connected, no reply, or a Modbus exception reply (named).
        """
        spec, registers = self._writer.prepare(tag, value)
        client = self._client
        if client is None or not client.connected:
            raise RuntimeError(f"device {self._cfg.id}: write {tag} failed: not connected")
        await self._writer.write(
            client, spec, registers, value=value, timeout_s=self._cfg.timeout_s
        )

    async def _connected_client(self) -> AsyncModbusTcpClient | str:
        """The live client, or the reason why there is none right now."""
        if self._client is not None and self._client.connected:
            return self._client
        self._drop_client()
        if not self._backoff.ready():
            return f"disconnected (next connect in {self._backoff.remaining_s():.1f} s)"
        client = AsyncModbusTcpClient(
            self._cfg.host,
            port=self._cfg.port,
            timeout=self._cfg.timeout_s,
            retries=0,
            reconnect_delay=0,  # 0 = no library reconnect: this driver owns it
        )
        if await client.connect():  # the backoff resets on a reply, not here: see answered()
            self._client = client
            return client
        client.close()
        wait = self._backoff.failed()
        reason = f"connect to {self._cfg.host}:{self._cfg.port} failed"
        self._link.fail("link", reason)
        return f"disconnected: {reason} (retry in {wait:.1f} s)"

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def answered(samples: Sequence[Sample], down: RequestFailure | None) -> bool:
    """True when the device replied to this scan: every read answered, or one returned data.

    Only a reply resets the reconnect backoff. A gateway that accepts connections but never
    answers would otherwise be reconnected every `reconnect_min_s`, forever.
    """
    return down is None or any(s.value is not None for s in samples)
