"""The register side of a simulated incubator, shared by its Modbus TCP and RS-485 servers.

What a register holds (the model's state, encoded by the profile), which reads the map
answers, which writes reach the model, and how the common faults answer: one place, so the
TCP gateway variant and the RS-485 variant of the incubator cannot drift apart. The servers
only own their transport and their fault schedule.
"""

from __future__ import annotations

import asyncio
import math
from collections import defaultdict
from collections.abc import Sequence

from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData

from drivers import codec
from drivers.registermap import RegisterSpec
from simulators.incubator import (
    CO2_STATUS_NOT_READY,
    SETPOINT_LIMITS,
    IncubatorModel,
    check_setpoint,
)

READ_FUNCTIONS = frozenset({3, 4})  # publishes use these with values: no client can


def registers_for(spec: RegisterSpec, value: float) -> list[int]:
    """`codec.encode`, except that NaN in an integer register becomes its no-data code."""
    if math.isnan(value) and spec.type != "float32":
        raw = spec.not_available_raw
        if raw is None:
            raise ValueError(f"{spec.tag}: NaN in an integer register without a no-data code")
        return [raw & 0xFFFF] if spec.words == 1 else [raw >> 16 & 0xFFFF, raw & 0xFFFF]
    return codec.encode(spec, value)


def own_publish(fc: int, set_values: list[int] | list[bool] | None) -> bool:
    """True for the server's own `async_setValues` (a read function carrying values)."""
    return set_values is not None and fc in READ_FUNCTIONS


def fault_reply(no_response: bool, exception_code: int | None) -> ExcCodes | None:
    """The answer of an access under a device fault, or None to answer normally.

    no_response: pymodbus runs each request in a task of its own; cancelling it sends
    nothing, so the master times out as with a device that heard the request but hung.
    """
    if no_response:
        raise asyncio.CancelledError
    if exception_code is not None:
        return ExcCodes(exception_code)
    return None


class IncubatorRegisters:
    """One incubator's model seen through a register map (one or more unit ids)."""

    def __init__(self, specs: Sequence[RegisterSpec], model: IncubatorModel) -> None:
        self.model = model
        self.specs = tuple(specs)
        missing = sorted({s.tag for s in self.specs} - set(model.state))
        if missing:
            raise ValueError(f"profile tags without a value in the incubator model: {missing}")
        self._readable: dict[tuple[int, int], set[int]] = defaultdict(set)
        self._writable: dict[int, list[RegisterSpec]] = defaultdict(list)
        for spec in self.specs:
            self._readable[spec.device_id, spec.function].update(
                range(spec.address, spec.address + spec.words)
            )
            if spec.writable and spec.tag in SETPOINT_LIMITS:
                self._writable[spec.device_id].append(spec)

    def image(self, probe_nan: bool = False) -> dict[RegisterSpec, list[int]]:
        """Every register's words now; `probe_nan`: the CO2 probe answers 'not ready'."""
        state = self.model.state
        if probe_nan:
            state["co2"] = math.nan
            state["probe_co2_status"] = float(CO2_STATUS_NOT_READY)
        return {spec: registers_for(spec, state[spec.tag]) for spec in self.specs}

    def blocks(self, probe_nan: bool = False) -> dict[int, list[SimData]]:
        """The SimData of each unit id: exactly the profile's addresses, current values."""
        out: dict[int, list[SimData]] = defaultdict(list)
        for spec, regs in self.image(probe_nan).items():
            out[spec.device_id].append(
                SimData(spec.address, values=regs, datatype=DataType.REGISTERS)
            )
        return dict(sorted(out.items()))

    def access(
        self,
        unit: int,
        *,
        fc: int,
        start: int,
        addr: int,
        count: int,
        regs: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """A client's access once faults have had their say: write, or check the read."""
        if set_values is not None:
            return self._write(unit, start, addr, regs, [int(v) for v in set_values])
        if fc in READ_FUNCTIONS:
            return self._check_read(unit, fc, addr, count)
        return None  # the read-back half of FC 6/16/22/23, already checked as a write

    def _check_read(self, unit: int, fc: int, addr: int, count: int) -> ExcCodes | None:
        readable = self._readable.get((unit, fc))
        if readable is None:
            return ExcCodes.ILLEGAL_FUNCTION
        if any(a not in readable for a in range(addr, addr + count)):
            return ExcCodes.ILLEGAL_ADDRESS
        return None

    def _write(
        self, unit: int, start: int, addr: int, regs: list[int], values: list[int]
    ) -> ExcCodes | None:
        """Accept a write that covers writable registers only and leaves each one valid."""
        end = addr + len(values)
        targets = [
            s for s in self._writable[unit] if s.address < end and addr < s.address + s.words
        ]
        covered = {a for s in targets for a in range(s.address, s.address + s.words)}
        if not targets or any(a not in covered for a in range(addr, end)):
            return ExcCodes.ILLEGAL_ADDRESS
        new: dict[str, float] = {}
        for spec in targets:
            span = range(spec.address, spec.address + spec.words)
            words = [values[a - addr] if addr <= a < end else regs[a - start] for a in span]
            try:
                new[spec.tag] = codec.decode(spec, words)
                check_setpoint(spec.tag, new[spec.tag])
            except ValueError:  # DecodeError (NaN, inf) is a ValueError too
                return ExcCodes.ILLEGAL_VALUE
        for tag, value in new.items():
            self.model.set_setpoint(tag, value)
        return None
