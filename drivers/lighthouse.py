"""The Lighthouse REMOTE Modbus map (v1.44-v1.50): constants, pure maths, and the calls.

Decoding a record block, reading the status bits and turning raw cumulative counts into
particles/m³ are pure functions, shared by the driver, the simulator and the unit tests.
`Session` at the end makes the few Modbus calls the instrument takes (FC 3, 4 and 6: a
32-bit setting is two single-register writes, high word first) and turns every failure
into one `DeviceError` with the reason a BAD sample shows. Addresses are 0-based PDU
addresses (40001 -> holding 0, 30001 -> input 0); 32-bit items are two registers, high word
first (shared/domain.md §3.1).
config/profiles/lighthouse-remote.toml holds the same map as data; a unit test keeps the two
in step.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import NamedTuple

from pymodbus import ModbusException
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException

from drivers.modbus_reader import EXCEPTION_NAMES, read_reply_mismatch
from drivers.modbus_writer import echo_mismatch

# --- holding registers (FC 3 read, FC 6 write) ------------------------------------------
HR_MAP_VERSION = 0  # 40001
HR_COMMAND = 1  # 40002
HR_STATUS = 2  # 40003
HR_FIRMWARE = 3  # 40004
HR_SERIAL = 4  # 40005-40006
HR_PRODUCT = 6  # 40007-40014, 16 ASCII chars
HR_MODEL = 14  # 40015-40022
HR_FLOW = 22  # 40023, /100 -> CFM
HR_RECORD_COUNT = 23  # 40024
HR_RECORD_INDEX = 24  # 40025, -1 (0xFFFF) = most recent
HR_LOCATION = 25  # 40026
HR_CLOCK = 26  # 40027-40028, Unix s
HR_INITIAL_DELAY = 28  # 40029-40030
HR_HOLD_TIME = 30  # 40031-40032
HR_SAMPLE_TIME = 32  # 40033-40034
HR_FLOW_UNIT = 40  # 40041-40042, ASCII
HOLDING_COUNT = 67  # 40001-40067 served
SETTINGS_READ_COUNT = 34  # 40001-40034: status, flow, count, index, clock, timing in one read

# --- input registers (FC 4): one record, selected by HR_RECORD_INDEX --------------------
IR_TIMESTAMP = 0  # 30001-30002
IR_SAMPLE_TIME = 2  # 30003-30004
IR_LOCATION = 4  # 30005-30006
IR_DATA_STATUS = 6  # 30007-30008
IR_CHANNELS = 8  # 30009-30024, u32 x 8, cumulative counts, smallest size first
MAX_CHANNELS = 8
IR_VALID_PARTICLE = 73  # 30074
RECORD_COUNT_REGS = 76  # 30001-30076, read as one block

LATEST_RECORD = 0xFFFF  # -1 written to 40025


class Command(enum.IntEnum):
    """Values written to 40002 (the subset cellfab uses and the simulator implements)."""

    CLEAR_BUFFER = 3
    SAVE_PARAMETERS = 4
    INSTRUMENT_START = 11
    INSTRUMENT_STOP = 12
    SET_RTC = 13


class DeviceStatus(enum.IntFlag):
    """Bits of 40003."""

    RUNNING = 1
    SAMPLING = 2
    NEW_DATA = 4
    DEVICE_ERROR = 8


class DataStatus(enum.IntFlag):
    """Bits of the record's data status (30007-30008, LSB only)."""

    LASER_ALERT = 1
    FLOW_ALERT = 2
    OVERFLOW = 4
    SERVICE = 8
    THRESHOLD_HIGH = 16
    THRESHOLD_LOW = 32
    SAMPLER_ERROR = 64


# Which data-status bits make a record's concentrations BAD or UNCERTAIN, and why.
BAD_BITS: dict[DataStatus, str] = {
    DataStatus.SERVICE: "instrument malfunction (service)",
    DataStatus.SAMPLER_ERROR: "sampler error",
}
UNCERTAIN_BITS: dict[DataStatus, str] = {
    DataStatus.LASER_ALERT: "laser alert",
    DataStatus.FLOW_ALERT: "flow alert",
    DataStatus.OVERFLOW: "particle overflow (count is a lower bound)",
}

M3_PER_FT3 = 0.028316846592  # 1 ft³ = 28.3168 L
FT3_PER_M3 = 1.0 / M3_PER_FT3  # 35.3147


class RawRecord(NamedTuple):
    """One decoded record block: device time, sample time, status and cumulative counts."""

    timestamp_s: int
    sample_time_s: int
    location: int
    data_status: int
    counts: tuple[int, ...]  # channel 1..8, cumulative, smallest size first


def u32(regs: Sequence[int], at: int) -> int:
    """Unsigned 32-bit value, high word first."""
    return (regs[at] & 0xFFFF) << 16 | (regs[at + 1] & 0xFFFF)


def s32(regs: Sequence[int], at: int) -> int:
    """Signed 32-bit value, high word first."""
    value = u32(regs, at)
    return value - (1 << 32) if value & 0x8000_0000 else value


def s16(value: int) -> int:
    """A register as a signed 16-bit value (record count, record index)."""
    value &= 0xFFFF
    return value - 0x10000 if value & 0x8000 else value


def words32(value: int) -> list[int]:
    """Two registers, high word first, for a 32-bit value (signed values wrap)."""
    value &= 0xFFFF_FFFF
    return [value >> 16, value & 0xFFFF]


def ascii_regs(text: str, n_regs: int) -> list[int]:
    """A NUL-padded string, two characters per register, first character in the high byte."""
    raw = text.encode("ascii")[: 2 * n_regs].ljust(2 * n_regs, b"\0")
    return [raw[i] << 8 | raw[i + 1] for i in range(0, len(raw), 2)]


def ascii_text(regs: Sequence[int]) -> str:
    """The string in `regs`, up to the first NUL."""
    raw = b"".join(bytes([r >> 8 & 0xFF, r & 0xFF]) for r in regs)
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def decode_record(regs: Sequence[int]) -> RawRecord:
    """The record in an input block read from 30001 (at least 24 registers)."""
    if len(regs) < IR_CHANNELS + 2 * MAX_CHANNELS:
        raise ValueError(f"record block too short: {len(regs)} registers")
    return RawRecord(
        timestamp_s=s32(regs, IR_TIMESTAMP),
        sample_time_s=u32(regs, IR_SAMPLE_TIME),
        location=s32(regs, IR_LOCATION),
        data_status=u32(regs, IR_DATA_STATUS) & 0xFF,  # "only the LSB is used"
        counts=tuple(u32(regs, IR_CHANNELS + 2 * i) for i in range(MAX_CHANNELS)),
    )


def encode_record(record: RawRecord, valid_channels: int) -> list[int]:
    """The 76-register input block a device serves for `record` (simulator, tests)."""
    regs = [0] * RECORD_COUNT_REGS
    regs[IR_TIMESTAMP : IR_TIMESTAMP + 2] = words32(record.timestamp_s)
    regs[IR_SAMPLE_TIME : IR_SAMPLE_TIME + 2] = words32(record.sample_time_s)
    regs[IR_LOCATION : IR_LOCATION + 2] = words32(record.location)
    regs[IR_DATA_STATUS : IR_DATA_STATUS + 2] = words32(record.data_status)
    for i, count in enumerate(record.counts[:MAX_CHANNELS]):
        regs[IR_CHANNELS + 2 * i : IR_CHANNELS + 2 * i + 2] = words32(count)
    regs[IR_VALID_PARTICLE] = (1 << valid_channels) - 1
    return regs


def flow_cfm(raw: int) -> float:
    """Register 40023 of an air counter: hundredths of a CFM (100 = 1.00 CFM)."""
    return raw / 100.0


def per_m3(count: int, flow_cfm_value: float, sample_s: float) -> float:
    """Particles/m³ from a raw count: count / (CFM × sample_s / 60) per ft³, × 35.3147.

    Raises ValueError when the sampled volume is zero (no flow or no sample time): there
    is no concentration then, and 0 would be a made-up number.
    """
    volume_ft3 = flow_cfm_value * sample_s / 60.0
    if not volume_ft3 > 0.0:
        raise ValueError(f"no sampled volume (flow {flow_cfm_value} CFM, {sample_s} s)")
    return count / volume_ft3 * FT3_PER_M3


def status_verdict(data_status: int) -> tuple[bool, str | None]:
    """(bad, reason) from a record's data-status bits; reason None when all is well."""
    flags = DataStatus(data_status & 0x7F)
    bad = [why for bit, why in BAD_BITS.items() if bit in flags]
    uncertain = [why for bit, why in UNCERTAIN_BITS.items() if bit in flags]
    reasons = bad + uncertain
    return bool(bad), "; ".join(reasons) if reasons else None


# --- the Modbus calls ------------------------------------------------------------------


class DeviceError(Exception):
    """A request failed; `link_down` asks the driver to reconnect (and then backfill)."""

    def __init__(self, reason: str, link_down: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.link_down = link_down


class Session:
    """One pymodbus TCP client to one unit; reconnecting is the driver's business."""

    def __init__(self, host: str, port: int, unit_id: int, timeout_s: float) -> None:
        self._host, self._port, self._unit, self._timeout = host, port, unit_id, timeout_s
        self._client: AsyncModbusTcpClient | None = None

    @property
    def connected(self) -> bool:
        """True while a client holds an open connection."""
        return self._client is not None and self._client.connected

    async def connect(self) -> bool:
        """Open a fresh connection; False if the device cannot be reached."""
        self.close()
        client = AsyncModbusTcpClient(
            self._host,
            port=self._port,
            timeout=self._timeout,
            retries=0,
            reconnect_delay=0,  # 0 = no library reconnect: the driver owns it
        )
        if await client.connect():
            self._client = client
            return True
        client.close()
        return False

    def close(self) -> None:
        """Close the connection, if any."""
        if self._client is not None:
            self._client.close()
            self._client = None

    async def read_holding(self, address: int, count: int) -> list[int]:
        """FC 3."""
        return await self._read(3, address, count)

    async def read_input(self, address: int, count: int) -> list[int]:
        """FC 4."""
        return await self._read(4, address, count)

    async def write(self, address: int, value: int) -> None:
        """FC 6, one register."""
        client = self._require()
        try:
            reply = await client.write_register(address, value & 0xFFFF, device_id=self._unit)
        except ModbusException as exc:
            raise self._io_error(exc) from exc
        if reply.isError():
            raise _exception(6, int(reply.function_code), int(reply.exception_code))
        mismatch = echo_mismatch(address, [value & 0xFFFF], reply)
        if mismatch is not None:  # the setting may not be in place: resynchronise
            raise DeviceError(f"invalid reply: {mismatch}", link_down=True)

    async def write_u32(self, address: int, value: int) -> None:
        """A 32-bit setting as two FC 6 writes, high word first (the vendor's order)."""
        high, low = words32(value)
        await self.write(address, high)
        await self.write(address + 1, low)

    async def _read(self, function: int, address: int, count: int) -> list[int]:
        client = self._require()
        call = client.read_holding_registers if function == 3 else client.read_input_registers
        try:
            reply = await call(address, count=count, device_id=self._unit)
        except ModbusException as exc:
            raise self._io_error(exc) from exc
        if reply.isError():
            raise _exception(function, int(reply.function_code), int(reply.exception_code))
        mismatch = read_reply_mismatch(function, count, reply)
        if mismatch is not None:  # a reply to another request, or garbage: resynchronise
            raise DeviceError(f"invalid reply: {mismatch}", link_down=True)
        registers = list(reply.registers)
        if len(registers) < count:
            raise DeviceError(f"short reply: {len(registers)} of {count} registers", True)
        return registers

    def _require(self) -> AsyncModbusTcpClient:
        if self._client is None:
            raise DeviceError("disconnected", link_down=True)
        return self._client

    def _io_error(self, exc: ModbusException) -> DeviceError:
        if isinstance(exc, ModbusIOException):
            return DeviceError(f"timeout: no reply within {self._timeout:g} s", link_down=True)
        if isinstance(exc, ConnectionException):
            return DeviceError("disconnected", link_down=True)
        return DeviceError(f"modbus error: {exc}", link_down=True)


def _exception(function: int, function_code: int, code: int) -> DeviceError:
    """A real exception reply, or garbage that only looks like one (then: reconnect)."""
    if function_code & 0x7F != function or code not in EXCEPTION_NAMES:
        reason = f"invalid reply: function code {function_code:#04x}, exception code {code}"
        return DeviceError(reason, link_down=True)
    return DeviceError(f"modbus exception {code} ({EXCEPTION_NAMES[code]})", link_down=False)
