"""Cell counter on a serial line: `$CC` result records in, Records and live samples out.

The instrument speaks when it has measured, not when asked, so a background task owns the
port: it reads lines as they come, parses each into a whole record or a counted rejection,
and queues Records for `drain_records()`. `read()` only reports the state that task left.
The port is reopened with backoff after an error (a USB adapter unplugged and plugged back,
the simulator's pty replaced), without a restart of the daemon.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import random
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Literal, NamedTuple, Self

from pydantic import Field, model_validator

from drivers.backoff import Backoff
from drivers.base import DeviceBase, Record
from drivers.cellcount_record import REASONS, CellCount, RecordError, parse_record
from drivers.sample import Quality, Sample, utc_now_ns
from drivers.serial_lines import LineTooLong, Parity, SerialLines
from drivers.transitions import TransitionLog
from simulators.cell_counter import CellCounterSimConfig

log = logging.getLogger(__name__)
MAX_QUEUED_RECORDS = 10_000  # ~ a month of 5-min results; beyond, the oldest are dropped


class CellCountTag(NamedTuple):
    """A tag of the cell counter: name, unit, and the CellCount field it comes from."""

    tag: str
    unit: str
    field: str


TAGS = (
    CellCountTag("total_cells", "cells/mL", "total_per_mL"),
    CellCountTag("viable_cells", "cells/mL", "viable_per_mL"),
    CellCountTag("viability", "%", "viability_pct"),
    CellCountTag("mean_diameter", "um", "diameter_um"),
)


class CellCounterConfig(DeviceBase):
    """A cell counter that sends `$CC` result records on a serial port (or a pty)."""

    driver: Literal["cell_counter_serial"]
    port: str = Field(min_length=1, description="device path or pyserial URL")
    baudrate: int = Field(default=9600, ge=300, le=921600)
    bytesize: Literal[7, 8] = 8
    parity: Parity = "N"
    stopbits: Literal[1, 2] = 1
    record_timeout_s: float = Field(
        default=2.0, gt=0.0, le=60.0, description="a started line must end within this"
    )
    stale_after_s: float = Field(
        default=900.0, gt=0.0, description="no line for this long: the link is silent (BAD)"
    )
    simulator: CellCounterSimConfig | None = None

    @model_validator(mode="after")
    def _stale_after_timeout(self) -> CellCounterConfig:
        if self.stale_after_s <= self.record_timeout_s:
            raise ValueError("stale_after_s must be longer than record_timeout_s")
        return self


class CellCounterDriver:
    """Reads the counter's records in a background task; `read()` never blocks on the port."""

    def __init__(self, cfg: CellCounterConfig, rng: random.Random | None = None) -> None:
        self._cfg = cfg
        self._backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s, rng)
        self._link = TransitionLog(log, f"device {cfg.id}")
        self._task: asyncio.Task[None] | None = None
        self._records: collections.deque[Record] = collections.deque(maxlen=MAX_QUEUED_RECORDS)
        self._latest: CellCount | None = None
        self._latest_rx_ns = 0
        self._last_line_s: float | None = None
        self._port_error: str | None = "port not opened yet"
        self._last_rejection: str | None = None
        self._started_s = time.monotonic()
        self.accepted = 0
        self.rejected: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.opens = 0

    @property
    def tags(self) -> tuple[CellCountTag, ...]:
        """Tag name and unit of every value this driver produces."""
        return TAGS

    @property
    def health(self) -> Mapping[str, int]:
        """Counters for the health topic: accepted, rejected by reason, successful port opens."""
        return {"accepted": self.accepted, "opens": self.opens} | {
            f"rejected_{reason}": n for reason, n in self.rejected.items()
        }

    @property
    def last_result(self) -> CellCount | None:
        """The latest accepted measurement, with its sample id and instrument serial."""
        return self._latest

    async def __aenter__(self) -> Self:
        self._started_s = time.monotonic()
        self._task = asyncio.create_task(self._run(), name=f"cell-counter {self._cfg.id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])  # our caller's own cancellation still propagates
            error = None if task.cancelled() else task.exception()
            if error is not None:
                raise error  # a bug in the reader task
        self._port_error = "port closed"

    async def read(self) -> list[Sample]:
        """The latest result, or BAD with the reason it cannot be trusted now."""
        t_ns = utc_now_ns()
        reason = self._bad_reason()
        if reason is not None or self._latest is None:
            why = reason or "no measurement yet"
            return [Sample.bad(t.tag, t.unit, why, t_ns) for t in TAGS]
        return _samples(self._latest, self._latest_rx_ns)

    def drain_records(self) -> list[Record]:
        """Records accepted since the last call, oldest first, each exactly once."""
        out = list(self._records)
        self._records.clear()
        return out

    def _bad_reason(self) -> str | None:
        if self._task is not None and self._task.done():
            return "reader stopped"
        if self._port_error is not None:
            return self._port_error
        since = self._last_line_s if self._last_line_s is not None else self._started_s
        silent_s = time.monotonic() - since
        if silent_s > self._cfg.stale_after_s:
            self._link.fail("data", f"silent for more than {self._cfg.stale_after_s:g} s")
            return f"no data for {silent_s:.0f} s"
        if self._last_rejection is not None:
            return f"record rejected: {self._last_rejection}"
        return None

    async def _run(self) -> None:
        """Open, read until the port fails, back off, reopen: until cancelled."""
        while True:
            await asyncio.sleep(self._backoff.remaining_s())
            port = SerialLines(
                self._cfg.port,
                baudrate=self._cfg.baudrate,
                bytesize=self._cfg.bytesize,
                parity=self._cfg.parity,
                stopbits=self._cfg.stopbits,
            )
            try:
                port.open()
            except OSError as exc:  # SerialException included: missing path, locked port
                self._port_failed(f"port error: cannot open {self._cfg.port}: {_short(exc)}")
                continue
            try:
                self._port_error = None
                self.opens += 1
                await self._read_lines(port)
            except OSError as exc:
                self._port_failed(_port_reason(exc))
            finally:
                port.close()

    async def _read_lines(self, port: SerialLines) -> None:
        while True:
            try:
                # the timeout runs from a line's first byte: idle time between records
                # is not counted (silence is judged by stale_after_s in read())
                line = await port.readline(self._cfg.record_timeout_s)
            except TimeoutError:
                partial = port.take_partial()
                if partial:
                    self._line_seen()
                    self._reject(RecordError("truncated", f"{len(partial)} bytes, then silence"))
                continue
            except LineTooLong as exc:
                self._line_seen()
                self._reject(RecordError("garbage", str(exc)))
                continue
            self._line_seen()
            self._handle(line)

    def _handle(self, line: bytes) -> None:
        start = line.rfind(b"$")
        if start > 0:  # resynchronise: what came before the last `$` is a broken record
            head = line[:start]
            kind = "truncated" if head.startswith(b"$") else "garbage"
            self._reject(RecordError(kind, f"{len(head)} bytes before a new record"))
            line = line[start:]
        if not line.strip():
            return  # an empty line (a lone CRLF) is not a record
        try:
            rec = parse_record(line)
        except RecordError as exc:
            self._reject(exc)
            return
        self._accept(rec)

    def _accept(self, rec: CellCount) -> None:
        rx_ns = utc_now_ns()
        self._latest, self._latest_rx_ns = rec, rx_ns
        self._last_rejection = None
        self._records.append(Record(rec.t_ns, _samples(rec, rx_ns)))
        self.accepted += 1
        self._link.ok("records")

    def _reject(self, exc: RecordError) -> None:
        self.rejected[exc.reason] += 1
        self._last_rejection = exc.reason
        log.warning("device %s: record rejected (%s)", self._cfg.id, exc)

    def _line_seen(self) -> None:
        self._last_line_s = time.monotonic()
        self._backoff.succeeded()
        self._link.ok("link")
        self._link.ok("data")

    def _port_failed(self, reason: str) -> None:
        self._port_error = reason
        self._link.fail("link", reason)
        self._backoff.failed()


def _samples(rec: CellCount, rx_ns: int) -> list[Sample]:
    values = rec._asdict()
    return [
        Sample(t.tag, float(values[t.field]), t.unit, Quality.GOOD, rx_ns, None, rec.t_ns)
        for t in TAGS
    ]


def _short(exc: OSError) -> str:
    """The errno's text without pyserial's repetition of the path; 'locked' for a lock."""
    if exc.errno in {errno.EAGAIN, errno.EWOULDBLOCK} and "lock" in str(exc):
        return "locked by another process"
    return os.strerror(exc.errno) if exc.errno else str(exc)


def _port_reason(exc: OSError) -> str:
    """'port closed (hang-up)' for an unplug or a closed pty, else 'port error: ...'."""
    text = str(exc)
    if exc.errno == errno.EIO or "returned no data" in text or "closed" in text:
        return "port closed (hang-up)"
    return f"port error: {_short(exc)}"
