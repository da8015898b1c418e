"""A pymodbus TCP server that a simulator can take down, bring back, and make misbehave.

The "disconnect" fault of every Modbus TCP simulator: down closes the listener and every
open connection, up listens again on the port first bound (port 0 picks one, once).

The wire faults of every Modbus TCP simulator live here too, in the one place where a
reply becomes bytes: `garbage` (a correctly framed reply whose PDU is random bytes with an
exception-like function code that is not the request's), `short_frame` (a read reply with
half the registers asked for, its byte count and MBAP length consistent) and `slow` (the
reply leaves `delay_s` late). pymodbus builds the reply as usual (the SimDevice action has
run); our request handler changes the bytes and the moment they go out, on the real socket.
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import Collection
from dataclasses import dataclass
from typing import cast

from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import SimDevice

MBAP = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id
REGISTER_READS = frozenset({3, 4, 23})  # replies: fc, byte count, 2 bytes per register
BIT_READS = frozenset({1, 2})  # replies: fc, byte count, packed bits


@dataclass(frozen=True, slots=True)
class WireFaults:
    """How replies leave the socket now; the default changes nothing."""

    garbage: bool = False
    short_frame: bool = False
    delay_s: float = 0.0

    @classmethod
    def of(cls, active: Collection[str], delay_s: float) -> WireFaults:
        """The wire faults among a simulator's active fault kinds (`delay_s` for slow)."""
        return cls(
            garbage="garbage" in active,
            short_frame="short_frame" in active,
            delay_s=delay_s if "slow" in active else 0.0,
        )


def shorten(pdu: bytes) -> bytes:
    """A read reply keeps half its data (rounded down), byte count to match; else one byte less."""
    fc = pdu[0]
    if len(pdu) >= 2 and fc in REGISTER_READS | BIT_READS:
        data = pdu[2:]
        keep = len(data) // 4 * 2 if fc in REGISTER_READS else len(data) // 2
        return bytes((fc, keep)) + data[:keep]
    return pdu[:-1] if len(pdu) > 1 else pdu


def garble(pdu: bytes, rng: random.Random) -> bytes:
    """Random bytes of the same length (at least 2), led by an exception-like function code
    that is not the request's own: a master can only call it an invalid reply."""
    own = (pdu[0] & 0x7F) | 0x80
    lead = rng.choice([fc for fc in range(0x81, 0x100) if fc != own])
    return bytes((lead,)) + rng.randbytes(max(1, len(pdu) - 1))


def mangle(packet: bytes, faults: WireFaults, rng: random.Random) -> bytes:
    """Apply short_frame, then garbage, to one MBAP frame; the header stays consistent."""
    if len(packet) <= MBAP.size or not (faults.short_frame or faults.garbage):
        return packet
    tid, pid, _, unit = MBAP.unpack_from(packet)
    pdu = packet[MBAP.size :]
    if faults.short_frame:
        pdu = shorten(pdu)
    if faults.garbage:
        pdu = garble(pdu, rng)
    return MBAP.pack(tid, pid, len(pdu) + 1, unit) + pdu


class _FaultyRequestHandler(ServerRequestHandler):
    """One client connection: pymodbus' handler, with the endpoint's wire faults on send."""

    def __init__(self, owner: _FaultyTcpServer, endpoint: ModbusTcpEndpoint) -> None:
        super().__init__(owner, owner.trace_packet, owner.trace_pdu, owner.trace_connect)  # type: ignore[no-untyped-call]  # pymodbus leaves it bare
        self._endpoint = endpoint
        self._late: set[asyncio.TimerHandle] = set()

    def server_send(self, pdu: ModbusPDU | None, addr: tuple[str, int] | None) -> None:
        """Send the reply pymodbus built, mangled and/or late as the faults say."""
        faults = self._endpoint.wire
        if pdu is None or faults == WireFaults():
            super().server_send(pdu, addr)  # type: ignore[no-untyped-call]  # pymodbus leaves it bare
            return
        packet = mangle(self.framer.buildFrame(pdu), faults, self._endpoint.rng)
        if faults.delay_s <= 0.0:
            self._write(packet)
            return

        def late() -> None:
            self._late.discard(handle)
            self._write(packet)

        handle = self.loop.call_later(faults.delay_s, late)
        self._late.add(handle)

    def _write(self, packet: bytes) -> None:
        """Straight to the socket: pymodbus' `send` would also drop a half-received request."""
        transport = cast(asyncio.Transport | None, self.transport)
        if transport is not None and not transport.is_closing():
            transport.write(packet)

    def callback_disconnected(self, exc: Exception | None) -> None:
        """A late reply has nowhere to go once the connection is gone."""
        for handle in self._late:
            handle.cancel()
        self._late.clear()
        super().callback_disconnected(exc)


class _FaultyTcpServer(ModbusTcpServer):
    """pymodbus' TCP server, handing each new connection our request handler."""

    def __init__(self, devices: list[SimDevice], endpoint: ModbusTcpEndpoint) -> None:
        super().__init__(devices, address=(endpoint.host, endpoint.port))
        self._endpoint = endpoint

    def callback_new_connection(self) -> _FaultyRequestHandler:
        return _FaultyRequestHandler(self, self._endpoint)


class ModbusTcpEndpoint:
    """One listening address; `server` is None while down; `wire` acts on every reply."""

    def __init__(self, host: str, port: int, seed: int = 0) -> None:
        self.host, self.port = host, port
        self.server: ModbusTcpServer | None = None
        self.wire = WireFaults()
        self.rng = random.Random(seed)  # garbage bytes, not cryptography
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
        server = _FaultyTcpServer(devices, self)
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus logs the errno, raises without it
            # an OSError, as the bind failure it is: `cellfab simulate` says it in one line
            why = f"simulator cannot listen on {self.where} (port in use, or not this host's)"
            raise OSError(why) from exc
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
