"""A pymodbus TCP server that a simulator can take down and bring back on the same port.

The "disconnect" fault of every Modbus TCP simulator: down closes the listener and every
open connection, up listens again on the port first bound (port 0 picks one, once).
"""

from __future__ import annotations

import asyncio
from typing import cast

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimDevice


class ModbusTcpEndpoint:
    """One listening address; `server` is None while down."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.server: ModbusTcpServer | None = None
        self._listening = asyncio.Event()

    @property
    def where(self) -> str:
        """host:port, for logs."""
        return f"{self.host}:{self.port}"

    @property
    def listening(self) -> bool:
        """True while the server accepts connections."""
        return self.server is not None

    async def wait_listening(self) -> None:
        """Return once the server accepts connections."""
        await self._listening.wait()

    async def up(self, devices: list[SimDevice]) -> None:
        """Listen (no-op when up); a busy port raises with the address in the message."""
        if self.server is not None:
            return
        server = ModbusTcpServer(devices, address=(self.host, self.port))
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus logs the errno, raises without it
            raise RuntimeError(f"simulator cannot listen on {self.where}") from exc
        listener = cast(asyncio.Server, server.transport)
        self.port = int(listener.sockets[0].getsockname()[1])
        self.server = server
        self._listening.set()

    async def down(self) -> None:
        """Close the listener and every open connection (no-op when down)."""
        if self.server is None:
            return
        server, self.server = self.server, None
        self._listening.clear()
        await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it bare
