"""One session per RS-485 line, shared by every slave on it.

A serial port can be opened by one client only, and a half-duplex line carries one frame
at a time, so every device on a line goes through this session: requests are served one at
a time in arrival order (asyncio.Lock wakes waiters FIFO), with the Modbus inter-frame gap
(≥ 3.5 character times) kept between them. A slave that times out is backed off: its
requests fail at once without touching the line until its backoff ends, so a dead slave
costs one timeout per backoff period instead of one per scan and cannot starve the others.
A silent slave never closes the port; a failed port (adapter unplugged, OSError) is closed
and reopened with its own backoff.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Protocol, Self

from pydantic import Field
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ConnectionException, ModbusIOException

from drivers.backoff import Backoff
from drivers.modbus_reader import read_reply_mismatch
from drivers.modbus_writer import echo_mismatch
from drivers.registermap import Frozen
from drivers.transitions import TransitionLog
from simulators.dp_cascade import RtuBusSimConfig

log = logging.getLogger(__name__)

FAST_BAUD_GAP_S = 0.00175  # Modbus over serial line §2.5.1.1: fixed 1.75 ms above 19200 Bd


class RtuBusConfig(Frozen):
    """An RS-485 line: the serial settings every slave on it shares (a `[[buses]]` table)."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    port: str = Field(min_length=1, description="/dev/ttyUSB0, a symlink, or a pyserial URL")
    baudrate: int = Field(default=19200, ge=1200, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[8] = 8
    timeout_s: float = Field(default=0.3, gt=0.0, le=10.0, description="per request")
    inter_frame_gap_s: float | None = Field(
        default=None, ge=0.0, le=1.0, description="default: 3.5 character times"
    )
    post_connect_pause_s: float = Field(default=0.05, ge=0.0, le=10.0)
    slave_backoff_min_s: float = Field(default=1.0, gt=0.0)
    slave_backoff_max_s: float = Field(default=30.0, gt=0.0)
    reopen_min_s: float = Field(default=0.5, gt=0.0, description="port reopen backoff")
    reopen_max_s: float = Field(default=30.0, gt=0.0)
    simulator: RtuBusSimConfig | None = Field(
        default=None, description="`cellfab simulate` serves a pty and links it at `port`"
    )

    @property
    def frame_gap_s(self) -> float:
        """Silence kept between frames: the override, or 3.5 characters at this baud rate."""
        if self.inter_frame_gap_s is not None:
            return self.inter_frame_gap_s
        if self.baudrate > 19200:
            return FAST_BAUD_GAP_S
        bits = 1 + self.bytesize + (self.parity != "N") + self.stopbits
        return 3.5 * bits / self.baudrate


class BusClient(Protocol):
    """The part of pymodbus' AsyncModbusSerialClient the bus uses (fakes in unit tests)."""

    @property
    def connected(self) -> bool: ...

    async def connect(self) -> bool: ...

    def close(self) -> None: ...

    def read_holding_registers(
        self, address: int, *, count: int, device_id: int
    ) -> Awaitable[Any]: ...

    def read_input_registers(
        self, address: int, *, count: int, device_id: int
    ) -> Awaitable[Any]: ...

    def write_register(self, address: int, value: int, *, device_id: int) -> Awaitable[Any]: ...

    def write_registers(
        self, address: int, values: Sequence[int], *, device_id: int
    ) -> Awaitable[Any]: ...


@dataclass(frozen=True, slots=True)
class Frame:
    """One request on the line: a read (FC 3/4, `count` registers) or a write (FC 6/16)."""

    function: int
    address: int
    count: int
    values: tuple[int, ...] = ()

    def send(self, client: BusClient, unit: int) -> Awaitable[Any]:
        """The pymodbus call for this frame."""
        if self.function == 6:
            return client.write_register(self.address, self.values[0], device_id=unit)
        if self.function == 16:
            return client.write_registers(self.address, self.values, device_id=unit)
        read = client.read_holding_registers if self.function == 3 else client.read_input_registers
        return read(self.address, count=self.count, device_id=unit)

    def mismatch(self, reply: Any) -> str | None:
        """How a reply fails to answer this frame (another request's, garbled); None if it does."""
        if reply.isError():
            got = int(reply.function_code) & 0x7F
            return None if got == self.function else f"exception to function {got:#04x}"
        if self.function in {3, 4}:
            return read_reply_mismatch(self.function, self.count, reply)
        return echo_mismatch(self.address, self.values, reply)


def serial_client(cfg: RtuBusConfig) -> BusClient:
    """The real client: no library retries or reconnects, the bus owns both."""
    return AsyncModbusSerialClient(
        cfg.port,
        framer=FramerType.RTU,
        baudrate=cfg.baudrate,
        bytesize=cfg.bytesize,
        parity=cfg.parity,
        stopbits=cfg.stopbits,
        timeout=cfg.timeout_s,
        retries=0,
        reconnect_delay=0,
    )


@dataclass
class SlaveStats:
    """Counters of one unit id on the line, for health reporting."""

    backoff: Backoff = field(repr=False)
    requests: int = 0
    replies: int = 0
    exceptions: int = 0
    timeouts: int = 0  # no reply in time, or the request was cancelled on the wire
    invalid: int = 0  # replies that did not answer their request
    skipped: int = 0  # refused at once while backed off

    @property
    def backed_off(self) -> bool:
        """True while requests to this slave are refused without touching the line."""
        return not self.backoff.ready()


class RtuBus:
    """The session of one serial line; `async with` closes the port at the end.

    The port opens on the first request (and reopens with backoff after a failure), so
    the bus can be entered before the adapter is plugged in.
    """

    def __init__(
        self,
        cfg: RtuBusConfig,
        rng: random.Random | None = None,
        client_factory: Callable[[RtuBusConfig], BusClient] = serial_client,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cfg = cfg
        self._rng = rng or random.Random()
        self._factory = client_factory
        self._clock = clock
        self._client: BusClient | None = None
        self._reopen = Backoff(cfg.reopen_min_s, cfg.reopen_max_s, self._rng, clock)
        self._lock = asyncio.Lock()
        self._waiting = 0
        self._last_frame_end = -1e9
        self._slaves: dict[int, SlaveStats] = {}
        self._log = TransitionLog(log, f"bus {cfg.id}", clock)

    @property
    def cfg(self) -> RtuBusConfig:
        """The line's settings."""
        return self._cfg

    @property
    def queue_depth(self) -> int:
        """Requests waiting for or holding the line right now."""
        return self._waiting

    @property
    def port_failures(self) -> int:
        """Port failures (open or mid-request) since a slave last answered: the reopen backoff."""
        return self._reopen.failures

    @property
    def port_open(self) -> bool:
        """True while the serial port is open."""
        return self._client is not None and self._client.connected

    def stats(self, unit: int) -> SlaveStats:
        """The counters of one unit id (created on first use)."""
        if unit not in self._slaves:
            backoff = Backoff(
                self._cfg.slave_backoff_min_s, self._cfg.slave_backoff_max_s, self._rng, self._clock
            )
            self._slaves[unit] = SlaveStats(backoff=backoff)
        return self._slaves[unit]

    @property
    def slaves(self) -> dict[int, SlaveStats]:
        """Counters of every unit id seen so far."""
        return dict(self._slaves)

    def unavailable(self, unit: int) -> str | None:
        """Why a request to `unit` would fail at once right now, or None if it may go."""
        stats = self.stats(unit)
        if stats.backed_off:
            return (
                f"slave backed off after {stats.backoff.failures} timeouts "
                f"(retry in {stats.backoff.remaining_s():.1f} s)"
            )
        if not self.port_open and not self._reopen.ready():
            wait = self._reopen.remaining_s()
            return f"disconnected: port {self._cfg.port} (reopen in {wait:.1f} s)"
        return None

    def view(self, unit: int) -> SlaveView:
        """A client-like handle for one unit id (reads for read_plan, writes for the writer)."""
        return SlaveView(self, unit)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()

    async def request(self, function: int, address: int, count: int, unit: int) -> Any:
        """One FC 3/4 read on the line, in turn; raises what pymodbus raises.

        ModbusIOException: the slave did not answer (it is backed off) or is backed off;
        ConnectionException: the port is closed or failed (it is reopened with backoff).
        """
        return await self._in_turn(unit, Frame(function, address, count), open_port=True)

    async def write(self, address: int, values: Sequence[int], unit: int) -> Any:
        """One FC 6 (one register) or FC 16 (more) write, in turn with the reads.

        Raises as `request` does, and ConnectionException while the port is closed: a
        write never opens the port, the next poll does.
        """
        frame = Frame(6 if len(values) == 1 else 16, address, len(values), tuple(values))
        return await self._in_turn(unit, frame, open_port=False)

    async def _in_turn(self, unit: int, frame: Frame, *, open_port: bool) -> Any:
        stats = self.stats(unit)
        self._waiting += 1
        try:
            async with self._lock:
                reason = self.unavailable(unit)  # may have changed while we queued
                if reason is None and not open_port and not self.port_open:
                    reason = f"disconnected: port {self._cfg.port} is not open"
                if reason is not None:
                    stats.skipped += 1
                    exc_type = ModbusIOException if stats.backed_off else ConnectionException
                    raise exc_type(reason)
                client = await self._open()
                await self._keep_gap()
                return await self._send(client, stats, unit, frame)
        finally:
            self._waiting -= 1

    async def _send(self, client: BusClient, stats: SlaveStats, unit: int, frame: Frame) -> Any:
        stats.requests += 1
        try:
            reply = await self._on_wire(client, unit, frame)
        except asyncio.CancelledError:
            # The caller gave up with the frame on the wire: the slave may still answer, so
            # the next frame must not collide with that reply or be taken for it.
            self._hold_line()
            stats.timeouts += 1
            self._log.fail(f"slave {unit}", "request cancelled before its reply")
            raise
        except (ModbusIOException, TimeoutError) as exc:
            if not client.connected:  # the port died under the request: not the slave's fault
                self._port_failed(f"port {self._cfg.port} failed")
                raise ConnectionException("disconnected") from exc
            stats.timeouts += 1
            stats.backoff.failed()
            self._log.fail(f"slave {unit}", "no reply, backed off")  # one line per outage
            raise ModbusIOException(f"slave {unit}: no reply") from exc
        except (ConnectionException, OSError) as exc:
            self._port_failed(f"port {self._cfg.port} failed: {exc}")
            raise ConnectionException("disconnected") from exc
        self._judge(stats, unit, frame, reply)
        return reply

    async def _on_wire(self, client: BusClient, unit: int, frame: Frame) -> Any:
        """One request and its reply; the line's silence is timed from when it ends."""
        try:
            # pymodbus times the request out itself; this guards against the library hanging
            async with asyncio.timeout(self._cfg.timeout_s * 2 + 0.5):
                return await frame.send(client, unit)
        finally:
            self._last_frame_end = self._clock()

    def _judge(self, stats: SlaveStats, unit: int, frame: Frame, reply: Any) -> None:
        """Count a reply; only one that answers its frame proves the slave and the port."""
        stats.replies += 1
        mismatch = frame.mismatch(reply)
        if mismatch is not None:  # the reader or writer fails it; here: resynchronise
            stats.invalid += 1
            self._hold_line()  # whatever else is on its way passes before the next frame
            self._log.fail(f"slave {unit}", f"invalid reply: {mismatch}")
            return
        if reply.isError():
            stats.exceptions += 1
        stats.backoff.succeeded()
        self._reopen.succeeded()  # not on opening: a port that dies at once keeps backing off
        self._log.ok(f"slave {unit}")

    def _hold_line(self) -> None:
        """Keep the line quiet for one reply timeout (plus the gap) from now."""
        self._last_frame_end = max(self._last_frame_end, self._clock() + self._cfg.timeout_s)

    async def _open(self) -> BusClient:
        """The open client, opening the port (then pausing) if needed."""
        if self._client is not None and self._client.connected:
            return self._client
        self._close()
        client = self._factory(self._cfg)
        try:
            opened = await asyncio.wait_for(client.connect(), self._cfg.timeout_s + 5.0)
        except (OSError, TimeoutError):
            opened = False
        if not opened:
            client.close()
            wait = self._reopen.failed()
            self._log.fail("port", f"cannot open {self._cfg.port}")
            raise ConnectionException(
                f"disconnected: cannot open {self._cfg.port} (retry in {wait:.1f} s)"
            )
        self._client = client
        self._log.ok("port")
        if self._cfg.post_connect_pause_s > 0:
            await asyncio.sleep(self._cfg.post_connect_pause_s)  # adapters drop the first bytes
        self._last_frame_end = self._clock()
        return client

    async def _keep_gap(self) -> None:
        wait = self._last_frame_end + self._cfg.frame_gap_s - self._clock()
        if wait > 0:
            await asyncio.sleep(wait)  # the protocol's silent interval, not synchronisation

    def _port_failed(self, reason: str) -> None:
        self._close()
        self._reopen.failed()
        self._log.fail("port", reason)

    def _close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class SlaveView:
    """Looks like a pymodbus client for one unit id; every call goes through the bus."""

    queues_requests = True  # read_plan: the bus guards each frame, not the time in its queue

    def __init__(self, bus: RtuBus, unit: int) -> None:
        self._bus, self._unit = bus, unit

    async def read_holding_registers(self, address: int, *, count: int, device_id: int) -> Any:
        """FC 3 through the bus (device_id must be this view's unit)."""
        return await self._bus.request(3, address, count, self._checked(device_id))

    async def read_input_registers(self, address: int, *, count: int, device_id: int) -> Any:
        """FC 4 through the bus (device_id must be this view's unit)."""
        return await self._bus.request(4, address, count, self._checked(device_id))

    async def write_register(self, address: int, value: int, *, device_id: int) -> Any:
        """FC 6 through the bus, on an open port only."""
        return await self._bus.write(address, [value], self._checked(device_id))

    async def write_registers(self, address: int, values: Sequence[int], *, device_id: int) -> Any:
        """FC 16 (FC 6 for a single register) through the bus, on an open port only."""
        return await self._bus.write(address, values, self._checked(device_id))

    def _checked(self, device_id: int) -> int:
        if device_id != self._unit:
            raise ValueError(f"view of unit {self._unit} asked for unit {device_id}")
        return self._unit
