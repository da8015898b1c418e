"""Line-oriented reading of a serial port on the event loop, without a thread.

pyserial has no asyncio support of its own and the add-on packages are stale or new
(shared/libraries.md §8); on POSIX `loop.add_reader` on the port's fd is enough. The port
is opened non-blocking (`timeout=0`) and `exclusive=True`, so a second cellfab (or a
forgotten `screen`) cannot silently steal half of the bytes.

The pitfall this module exists for: after a hang-up (USB adapter unplugged, pty master
closed) `in_waiting` raises a plain `OSError(EIO)`, not a `SerialException`; catching only
the latter leaves the fd readable forever and the callback spins. Every OSError here ends
the session: the reader is removed and the error is raised to the next `readline()`.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Any, Literal, Self

import serial

Parity = Literal["N", "E", "O", "M", "S"]


class LineTooLong(ValueError):
    """More than `max_line` bytes arrived without a line terminator (noise on the line)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(f"{len(data)} bytes without a line end")
        self.data = data


class SerialLines:
    """One open serial port, read as `\\n`-terminated lines (a trailing `\\r` is stripped).

    Use as `async with SerialLines(url, ...) as port:` on a running loop; `readline()`
    raises TimeoutError when a started line did not end in time (the partial line stays in
    the buffer; `take_partial()` hands it over), OSError when the port failed or hung up.
    """

    def __init__(
        self,
        url: str,
        *,
        baudrate: int = 9600,
        bytesize: int = 8,
        parity: Parity = "N",
        stopbits: float = 1,
        max_line: int = 1024,
    ) -> None:
        self.url = url
        self._settings: dict[str, Any] = {
            "baudrate": baudrate,
            "bytesize": bytesize,
            "parity": parity,
            "stopbits": stopbits,
        }
        self._max_line = max_line
        self._ser: Any = None  # serial.Serial; pyserial ships no type hints
        self._fd = -1
        self._buf = bytearray()
        self._line_start = 0.0  # loop time the first byte of the buffered line came in
        self._rx_at = 0.0  # loop time of the latest bytes read
        self._error: OSError | None = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> Self:
        self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Open the port (raises OSError/SerialException when it cannot) and start reading."""
        ser = serial.serial_for_url(self.url, timeout=0, exclusive=True, **self._settings)
        self._ser, self._error = ser, None
        self._buf.clear()
        try:
            self._fd = ser.fileno()
            asyncio.get_running_loop().add_reader(self._fd, self._on_readable)
        except BaseException:
            ser.close()
            self._ser = None
            raise

    def close(self) -> None:
        """Stop reading and close the port; safe to call twice."""
        ser, self._ser = self._ser, None
        if ser is None:
            return
        self._stop_reader()
        with contextlib.suppress(OSError):  # closing a hung-up port may fail; it is gone anyway
            ser.close()

    @property
    def is_open(self) -> bool:
        """True while the port is open and has not failed."""
        return self._ser is not None and self._error is None

    def take_partial(self) -> bytes:
        """The bytes of an unfinished line, removed from the buffer."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    async def readline(self, timeout_s: float, idle_timeout_s: float | None = None) -> bytes:
        """The next complete line without its terminator.

        `timeout_s` runs from the line's first byte, not from the call: a record that starts
        arriving late in an idle wait is not cut in two. Waiting for a line to start is
        bounded by `idle_timeout_s` only (None: wait until a byte, an error or a cancel).
        """
        idle_deadline = None
        if idle_timeout_s is not None:
            idle_deadline = asyncio.get_running_loop().time() + idle_timeout_s
        while True:
            line = self._next_line()
            if line is not None:
                return line
            deadline = self._line_start + timeout_s if self._buf else idle_deadline
            self._changed.clear()
            async with asyncio.timeout_at(deadline):
                await self._changed.wait()

    def _next_line(self) -> bytes | None:
        """A complete line taken from the buffer, None if there is none yet; raises errors."""
        end = self._buf.find(b"\n")
        if end >= 0:
            line = bytes(self._buf[:end])
            del self._buf[: end + 1]
            self._line_start = self._rx_at  # what is left came in with the latest bytes
            return line.removesuffix(b"\r")
        if len(self._buf) > self._max_line:
            raise LineTooLong(self.take_partial())
        if self._error is not None:
            raise self._error
        if self._ser is None:
            raise OSError(f"{self.url}: port closed")
        return None

    def write(self, data: bytes) -> None:
        """Send bytes (commands are short; the tty driver buffers them)."""
        if self._ser is None:
            raise OSError(f"{self.url}: port closed")
        self._ser.write(data)

    def _on_readable(self) -> None:
        try:
            data = self._ser.read(self._ser.in_waiting or 1)
        except OSError as exc:  # SerialException is an OSError too; EIO after hang-up is not
            self._error = exc
            self._stop_reader()
        else:
            self._received(data)
        self._changed.set()

    def _received(self, data: bytes) -> None:
        """Buffer bytes, noting when a new line started (its deadline runs from there)."""
        if data:
            self._rx_at = asyncio.get_running_loop().time()
            if not self._buf:
                self._line_start = self._rx_at
            self._buf += data

    def _stop_reader(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
                asyncio.get_running_loop().remove_reader(self._fd)
            self._fd = -1
