"""Serve a simulated Lighthouse REMOTE counter over a real pymodbus Modbus TCP server.

Holding (40001+, FC 3/6) and input (30001+, FC 4) registers are separate blocks, as on the
instrument. Everything happens in the SimDevice `action` hook, called before pymodbus
answers: a holding read gets the live status, flow, record count and clock written into
the block; an input read gets the record selected by 40025 (and clears NEW DATA); a write
to 40002 runs the command (and the register reads 0 again); 40025 accepts -1 or
0..count-1. Faults act in the same hook; a `disconnect` closes the listener while the
model keeps sampling into its buffer, which is what a backfilling driver recovers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import TracebackType
from typing import Self, get_args

from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimAction, SimData, SimDevice

from drivers import lighthouse as lh
from drivers.particle_counter import ParticleCounterConfig
from simulators.base import Simulator
from simulators.config import FaultKind, FaultSpec
from simulators.modbus_server import EXCEPTION_CODES, manual_fault, scheduled_faults
from simulators.particle_counter import (
    STATUS_BITS,
    ParticleCounterModel,
    ParticleCounterSimConfig,
    StatusFaultKind,
)
from simulators.tcp_endpoint import ModbusTcpEndpoint, WireFaults

log = logging.getLogger(__name__)

COMM_FAULTS: tuple[FaultKind, ...] = (
    "no_response",
    "exception",
    "disconnect",
    "garbage",
    "short_frame",
    "slow",
)
STATUS_FAULTS: tuple[StatusFaultKind, ...] = get_args(StatusFaultKind)
WRITABLE = frozenset(
    {lh.HR_COMMAND, lh.HR_RECORD_INDEX, lh.HR_LOCATION, *range(lh.HR_CLOCK, lh.HR_SAMPLE_TIME + 2)}
)
MAP_VERSION = 148
FIRMWARE = 210


class ParticleCounterSimulator:
    """One counter on one Modbus TCP endpoint (unit id from the device config)."""

    def __init__(self, dev: ParticleCounterConfig, port: int | None = None) -> None:
        if dev.simulator is None:
            raise ValueError(f"device {dev.id} has no simulator")
        self._cfg: ParticleCounterSimConfig = dev.simulator
        self._unit = dev.unit_id
        self._net = ModbusTcpEndpoint(
            dev.host, dev.port if port is None else port, seed=self._cfg.seed
        )
        clock = self._cfg.clock_start_unix
        self.model = ParticleCounterModel(
            self._cfg, dev.channel_sizes_um, int(time.time()) if clock is None else clock
        )
        self._holding = self._initial_holding(dev)
        self._index = -1
        self._manual: dict[str, int] = {}
        self._manual_slow = manual_fault("slow")
        self._scheduled: set[str] = set()
        self._scheduled_comm: dict[FaultKind, FaultSpec] = {}
        self._wanted = False

    # --- Simulator protocol -------------------------------------------------------------
    @property
    def where(self) -> str:
        """host:port, for logs."""
        return self._net.where

    @property
    def endpoint(self) -> tuple[str, int]:
        """(host, port); the bound port once started with port 0."""
        return self._net.host, self._net.port

    @property
    def tick_s(self) -> float:
        """A tenth of a sample in wall time, within 0.05..0.5 s."""
        return min(0.5, max(0.05, self.model.sample_s / 10.0 / self._cfg.time_scale))

    async def __aenter__(self) -> Self:
        self._wanted = True
        await self._reconcile()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._wanted = False
        await self._reconcile()

    async def wait_listening(self) -> None:
        """Return once clients can connect."""
        await self._net.wait_listening()

    async def advance(self, elapsed_s: float) -> None:
        """Apply the fault schedule at `elapsed_s` wall seconds, then sample up to it."""
        before = self.active_faults
        self._scheduled_comm = scheduled_faults(self._cfg.faults, elapsed_s)
        self._scheduled = set(self._scheduled_comm)
        self._scheduled |= {
            f.kind
            for f in self._cfg.status_faults
            if f.start_s <= elapsed_s < f.start_s + f.duration_s
        }
        await self._apply(before)
        self.model.run_to(elapsed_s * self._cfg.time_scale)

    # --- faults ---------------------------------------------------------------------------
    @property
    def active_faults(self) -> frozenset[str]:
        """Fault kinds in force now, injected or scheduled."""
        return frozenset(self._manual) | frozenset(self._scheduled)

    async def inject(
        self, kind: str, active: bool, exception_code: int = 6, delay_s: float = 1.0
    ) -> None:
        """Switch a communication or status fault on or off; in force when this returns.

        `exception_code` is for kind "exception", `delay_s` (reply delay) for kind "slow".
        """
        if kind not in COMM_FAULTS and kind not in STATUS_FAULTS:
            raise ValueError(f"unknown fault kind {kind!r}")
        if active and kind == "exception" and exception_code not in EXCEPTION_CODES:
            raise ValueError(f"{exception_code} is not a Modbus exception code")
        before = self.active_faults
        if active and kind == "slow":
            self._manual_slow = manual_fault("slow", delay_s=delay_s)
        if active:
            self._manual[kind] = exception_code
        else:
            self._manual.pop(kind, None)
        await self._apply(before)

    async def _apply(self, before: frozenset[str]) -> None:
        after = self.active_faults
        for kind in sorted(after ^ before):
            log.info(
                "simulator %s: fault %s %s", self.where, kind, "on" if kind in after else "off"
            )
        bits = 0
        for kind in after & set(STATUS_FAULTS):
            bits |= STATUS_BITS[kind]
        self.model.status_bits = bits
        slow = self._manual_slow if "slow" in self._manual else self._scheduled_comm.get("slow")
        self._net.wire = WireFaults.of(after, slow.delay_s if slow else 0.0)
        await self._reconcile()

    async def _reconcile(self) -> None:
        up = self._wanted and "disconnect" not in self.active_faults
        if up and not self._net.listening:
            await self._net.up([self._device()])
        elif not up:
            await self._net.down()

    # --- register memory ------------------------------------------------------------------
    def _initial_holding(self, dev: ParticleCounterConfig) -> list[int]:
        regs = [0] * lh.HOLDING_COUNT
        regs[lh.HR_MAP_VERSION] = MAP_VERSION
        regs[lh.HR_FIRMWARE] = FIRMWARE
        regs[lh.HR_SERIAL : lh.HR_SERIAL + 2] = lh.words32(31040000 + self._cfg.seed % 10000)
        regs[lh.HR_PRODUCT : lh.HR_PRODUCT + 8] = lh.ascii_regs("REMOTE 3104", 8)
        regs[lh.HR_MODEL : lh.HR_MODEL + 8] = lh.ascii_regs("3104P", 8)
        regs[lh.HR_FLOW_UNIT : lh.HR_FLOW_UNIT + 2] = lh.ascii_regs("CFM", 2)
        regs[lh.HR_LOCATION] = 1
        regs[lh.HR_SAMPLE_TIME : lh.HR_SAMPLE_TIME + 2] = lh.words32(self.model.sample_s)
        return regs

    def _refresh_holding(self) -> None:
        """Write the live values into the holding image."""
        regs, model = self._holding, self.model
        regs[lh.HR_COMMAND] = 0
        regs[lh.HR_STATUS] = model.status
        regs[lh.HR_FLOW] = model.flow_raw
        regs[lh.HR_RECORD_COUNT] = len(model.buffer)
        regs[lh.HR_RECORD_INDEX] = self._index & 0xFFFF
        regs[lh.HR_CLOCK : lh.HR_CLOCK + 2] = lh.words32(model.rtc_s)

    def selected_record(self) -> lh.RawRecord | None:
        """The record 30001-30076 show now (40025: -1 latest, else 0 = oldest held)."""
        buffer = self.model.buffer
        if not buffer:
            return None
        return buffer[-1] if self._index == -1 else buffer[min(self._index, len(buffer) - 1)]

    def _device(self) -> SimDevice:
        bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        holding = [SimData(0, values=[0] * lh.HOLDING_COUNT, datatype=DataType.REGISTERS)]
        inputs = [SimData(0, values=[0] * lh.RECORD_COUNT_REGS, datatype=DataType.REGISTERS)]

        async def action(  # noqa: PLR0917 - the signature pymodbus calls
            fc: int,
            start: int,
            addr: int,
            count: int,
            regs: list[int],
            set_values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            return self._on_access(fc, addr, count, regs, set_values)

        simaction: SimAction = action
        return SimDevice(id=self._unit, simdata=(bits, bits, holding, inputs), action=simaction)

    def _on_access(
        self,
        fc: int,
        addr: int,
        count: int,
        regs: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """Every client access: faults first, then the instrument's register semantics."""
        active = self.active_faults
        if "no_response" in active:
            raise asyncio.CancelledError  # pymodbus' request task dies; nothing is sent
        if "exception" in active:
            if "exception" in self._manual:
                return ExcCodes(self._manual["exception"])
            return ExcCodes(self._scheduled_comm["exception"].exception_code)
        if fc in {1, 2, 5, 15}:
            return ExcCodes.ILLEGAL_FUNCTION
        if fc == 4:
            record = self.selected_record()
            block = lh.encode_record(record, len(self.model.sizes_um)) if record else None
            regs[: lh.RECORD_COUNT_REGS] = block or [0] * lh.RECORD_COUNT_REGS
            self.model.new_data = False
            return None
        if set_values is None:
            if fc == 3:
                self._refresh_holding()
                regs[: lh.HOLDING_COUNT] = self._holding
            return None  # FC 6/16 read-back half: the write was checked already
        return self._write(addr, [int(v) for v in set_values], regs)

    def _write(self, addr: int, values: list[int], regs: list[int]) -> ExcCodes | None:
        """Writable settings, the command register and the record index; else exception 2."""
        if any(a not in WRITABLE for a in range(addr, addr + len(values))):
            return ExcCodes.ILLEGAL_ADDRESS
        for offset, value in enumerate(values):
            result = self._write_one(addr + offset, value)
            if result is not None:
                return result
            values[offset] = self._holding[addr + offset]  # what the register reads back
        regs[: lh.HOLDING_COUNT] = self._holding
        return None

    def _write_one(self, addr: int, value: int) -> ExcCodes | None:
        if addr == lh.HR_COMMAND:
            return self._command(value)
        if addr == lh.HR_RECORD_INDEX:
            index = lh.s16(value)
            if not (index == -1 or 0 <= index < len(self.model.buffer)):
                return ExcCodes.ILLEGAL_VALUE
            self._index = index
        self._holding[addr] = value
        if addr == lh.HR_CLOCK + 1:  # the low word completes a clock write
            self.model.set_clock(lh.s32(self._holding, lh.HR_CLOCK))
        if addr == lh.HR_LOCATION:
            self.model.location = value
        return None

    def _command(self, value: int) -> ExcCodes | None:
        model = self.model
        if value == lh.Command.SAVE_PARAMETERS:
            sample = lh.u32(self._holding, lh.HR_SAMPLE_TIME)
            hold = lh.u32(self._holding, lh.HR_HOLD_TIME)
            delay = lh.u32(self._holding, lh.HR_INITIAL_DELAY)
            if not (1 <= sample <= 86_399 and hold <= 359_999 and delay <= 359_999):
                return ExcCodes.ILLEGAL_VALUE
            model.sample_s, model.hold_s, model.delay_s = sample, hold, delay
        elif value == lh.Command.INSTRUMENT_START:
            model.start()
        elif value == lh.Command.INSTRUMENT_STOP:
            model.stop()
        elif value == lh.Command.CLEAR_BUFFER:
            model.clear()
            self._index = -1
        elif value == lh.Command.SET_RTC:
            model.set_clock(lh.s32(self._holding, lh.HR_CLOCK))
        else:
            return ExcCodes.ILLEGAL_VALUE
        log.info("simulator %s: command %d", self.where, value)
        return None


def _check(sim: ParticleCounterSimulator) -> Simulator:
    """mypy proof that the class implements the Simulator protocol."""
    return sim
