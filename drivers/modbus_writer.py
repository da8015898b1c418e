"""Write one tag of a register map on a connected Modbus client, whatever the transport.

Shared by the TCP and RTU drivers: the transport decides whether a link is up (a write
never reconnects: the poll path owns that), this module owns what a write may be and what
a reply means. Refusals before anything is sent are ValueError (unknown or read-only tag,
a value the register cannot hold); a device that refuses, times out or is gone is
RuntimeError, naming the device, the tag and the Modbus exception.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Sequence
from typing import Any, Protocol

from pymodbus import ModbusException
from pymodbus.exceptions import ConnectionException, ModbusIOException

from drivers.codec import encode
from drivers.modbus_reader import EXCEPTION_NAMES
from drivers.registermap import RegisterSpec


class WriteClient(Protocol):
    """The part of a pymodbus client (or an RTU bus view) a write uses."""

    def write_register(self, address: int, value: int, *, device_id: int) -> Awaitable[Any]: ...

    def write_registers(
        self, address: int, values: Sequence[int], *, device_id: int
    ) -> Awaitable[Any]: ...


def encode_write(spec: RegisterSpec, value: float) -> list[int]:
    """Registers for a value of a writable holding register; ValueError if it cannot be."""
    if not math.isfinite(value):
        raise ValueError(f"{spec.tag}: {value} is not a finite value")
    return encode(spec, value)


class RegisterWriter:
    """The writable tags of one map, and the request that writes one.

    FC 6 for a one-register value, FC 16 for two or more: a 32-bit value goes in one
    request, so the device never holds half of an old and half of a new value.
    """

    def __init__(self, specs: Sequence[RegisterSpec], subject: str) -> None:
        self._by_tag = {s.tag: s for s in specs if s.writable and s.function == 3}
        self._subject = subject

    def spec_for(self, tag: str) -> RegisterSpec:
        """The spec of a writable holding register; ValueError for any other tag."""
        spec = self._by_tag.get(tag)
        if spec is None:
            raise ValueError(f"{self._subject}: {tag!r} is not a writable tag")
        return spec

    def prepare(self, tag: str, value: float) -> tuple[RegisterSpec, list[int]]:
        """Check tag and value before touching the link (ValueError names what is wrong)."""
        spec = self.spec_for(tag)
        try:
            return spec, encode_write(spec, value)
        except ValueError as exc:
            raise ValueError(f"{self._subject}: cannot write {exc}") from None

    async def write(
        self,
        client: WriteClient,
        spec: RegisterSpec,
        registers: list[int],
        *,
        value: float,
        timeout_s: float,
        queued: int = 0,
    ) -> None:
        """Send one write and judge its reply; RuntimeError for every failure.

        `timeout_s` is the reply timeout pymodbus enforces; the guard around the call also
        allows for `queued` requests ahead of this one on a shared line, each of which
        may take as long.
        """
        what = f"{self._subject}: write {spec.tag}={value:g}"
        try:
            # pymodbus times the request out itself; this guards against the library hanging
            async with asyncio.timeout((queued + 1) * (timeout_s * 2 + 0.5)):
                if len(registers) == 1:
                    reply = await client.write_register(
                        spec.address, registers[0], device_id=spec.device_id
                    )
                else:
                    reply = await client.write_registers(
                        spec.address, registers, device_id=spec.device_id
                    )
        except TimeoutError:
            raise RuntimeError(f"{what} failed: timeout: no reply within {timeout_s:g} s") from None
        except ModbusIOException as exc:  # pymodbus' timeout, or an RTU slave backed off
            raise RuntimeError(f"{what} failed: no reply ({exc})") from None
        except ConnectionException as exc:
            raise RuntimeError(f"{what} failed: disconnected ({exc})") from None
        except ModbusException as exc:
            raise RuntimeError(f"{what} failed: modbus error: {exc}") from None
        if reply.isError():
            raise RuntimeError(f"{what} refused: {_exception_text(reply)}")
        mismatch = echo_mismatch(spec.address, registers, reply)
        if mismatch is not None:
            raise RuntimeError(f"{what} failed: invalid reply: {mismatch}")


def echo_mismatch(address: int, values: Sequence[int], reply: Any) -> str | None:
    """How a write reply differs from the echo its request asks for; None when it matches.

    FC 6 echoes address and value, FC 16 address and count: any other reply answers some
    other request (or is garbage), so the write cannot be taken as done.
    """
    function = 6 if len(values) == 1 else 16
    got = int(reply.function_code)
    if got != function:
        return f"function code {got:#04x} to a function {function:#04x} request"
    if function == 6:
        echoed = list(reply.registers)
        if reply.address != address or echoed != [values[0]]:
            return f"echo of register {reply.address} = {echoed}, sent {address} = {values[0]}"
    elif reply.address != address or reply.count != len(values):
        return (
            f"echo of {reply.count} registers at {reply.address}, sent {len(values)} at {address}"
        )
    return None


def _exception_text(reply: Any) -> str:
    code = int(reply.exception_code)
    name = EXCEPTION_NAMES.get(code)
    if name is None:
        return f"invalid reply: function code {int(reply.function_code):#04x}, exception {code}"
    return f"modbus exception {code} ({name})"
