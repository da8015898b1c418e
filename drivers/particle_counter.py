"""Lighthouse REMOTE particle counter over Modbus TCP: the vendor's sampling flow, records
with the device's own timestamps, and backfill of the records taken during an outage.

The counter keeps sampling into its ring buffer whatever happens to the network, so the
driver remembers the device timestamp of the last record it delivered and, on the next
successful poll, walks the buffer back by record index to it (shared/domain.md §3.1,
docs/devices/particle-counter.md). The map, the maths and the Modbus calls are in
drivers/lighthouse.py.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from types import TracebackType
from typing import Literal, NamedTuple, Self

from pydantic import Field, model_validator

from drivers import lighthouse as lh
from drivers.backoff import Backoff
from drivers.base import DeviceBase, Record
from drivers.sample import Quality, Sample, utc_now_ns
from drivers.transitions import TransitionLog
from simulators.particle_counter import ParticleCounterSimConfig

log = logging.getLogger(__name__)

CONC_UNIT = "particles/m3"
DEVICE_ERROR_REASON = "counter reports DEVICE ERROR (40003 bit 3)"
BEFORE_ANY = -(2**31)  # cursor before every record (the earliest s32 timestamp)
REMOTE_3104_SIZES_UM = (0.3, 0.5, 1.0, 3.0, 5.0, 10.0)


class Tag(NamedTuple):
    """A tag this driver produces."""

    tag: str
    unit: str


def conc_tag(size_um: float) -> str:
    """Tag of the cumulative concentration >= size_um: 0.5 -> "conc_0_5um"."""
    return "conc_" + f"{size_um:g}".replace(".", "_") + ("_0um" if size_um % 1 == 0 else "um")


class ParticleCounterConfig(DeviceBase):
    """A Lighthouse REMOTE (or ApexRemote) counter on Modbus TCP, run in automatic mode."""

    driver: Literal["lighthouse_remote"]
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=1, le=247)
    sample_time_s: int = Field(default=60, ge=1, le=86_399, description="40033-40034")
    hold_time_s: int = Field(default=0, ge=0, le=359_999, description="40031-40032")
    initial_delay_s: int = Field(default=0, ge=0, le=359_999, description="40029-40030")
    set_clock: bool = Field(default=False, description="write UTC Unix time to 40027 on connect")
    start_timeout_s: float = Field(default=5.0, gt=0.0, le=120.0, description="wait for RUNNING")
    channel_sizes_um: tuple[float, ...] = Field(
        default=REMOTE_3104_SIZES_UM, description="the instrument's channels 1..n, smallest first"
    )
    channels_um: tuple[float, ...] = Field(default=(0.5, 5.0), description="sizes reported")
    simulator: ParticleCounterSimConfig | None = None

    @model_validator(mode="after")
    def _channels(self) -> ParticleCounterConfig:
        sizes = self.channel_sizes_um
        if not 1 <= len(sizes) <= lh.MAX_CHANNELS or list(sizes) != sorted(set(sizes)):
            raise ValueError("channel_sizes_um: 1 to 8 sizes, strictly increasing")
        unknown = sorted(set(self.channels_um) - set(sizes))
        if unknown:
            raise ValueError(f"channels_um {unknown} are not channels of the instrument")
        missing = sorted({0.5, 5.0} - set(self.channels_um))
        if missing:
            raise ValueError(f"channels_um must include {missing} µm (Annex 1 limits)")
        return self


class ParticleCounterDriver:
    """One Modbus TCP session to one counter; a RecordDriver (drivers/base.py).

    `resume_after_s`: device timestamp of the last record already stored (from the journal);
    without it the first connect delivers only records completed after it.
    """

    def __init__(
        self,
        cfg: ParticleCounterConfig,
        rng: random.Random | None = None,
        resume_after_s: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cfg = cfg
        self._index = {size: i for i, size in enumerate(cfg.channel_sizes_um)}
        self._conc = tuple(Tag(conc_tag(s), CONC_UNIT) for s in cfg.channels_um)
        self._tags = (
            *self._conc,
            Tag("data_status", "code"),
            Tag("flow", "CFM"),
            Tag("device_status", "code"),
        )
        self._session = lh.Session(cfg.host, cfg.port, cfg.unit_id, cfg.timeout_s)
        self._backoff = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s, rng, clock)
        self._link = TransitionLog(log, f"device {cfg.id}")
        self._last_t: int | None = resume_after_s
        self._started = False  # sampling flow done on this connection
        self._catch_up = resume_after_s is not None  # next poll walks the buffer back
        self._pending: list[Record] = []
        self._latest: list[Sample] = []

    @property
    def tags(self) -> tuple[Tag, ...]:
        """Concentration per reported size, data status, flow, device status."""
        return self._tags

    @property
    def last_record_s(self) -> int | None:
        """Device timestamp of the last record delivered (persist it to resume after restart)."""
        return self._last_t

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._session.close()

    def drain_records(self) -> list[Record]:
        """Records completed since the last call, oldest first, each exactly once."""
        out, self._pending = self._pending, []
        return out

    async def read(self) -> list[Sample]:
        """One poll: status, and any new records; one sample per tag, every time."""
        if not self._session.connected:
            reason = await self._connect()
            if reason is not None:
                return self._all_bad(reason)
        try:
            async with asyncio.timeout(self._guard_s()):
                if not self._started:
                    await self._start_sampling()
                hold = await self._session.read_holding(0, lh.SETTINGS_READ_COUNT)
                status = lh.DeviceStatus(hold[lh.HR_STATUS] & 0x0F)
                new_data = lh.DeviceStatus.NEW_DATA in status
                if new_data or self._catch_up:
                    await self._collect(hold, new_data)
        except TimeoutError:
            return self._link_down(f"timeout: no reply within {self._cfg.timeout_s:g} s")
        except lh.DeviceError as err:
            if err.link_down:
                return self._link_down(err.reason)
            self._link.fail("device", err.reason)
            return self._all_bad(err.reason)
        self._link.ok("link")
        self._backoff.succeeded()  # a reply, not the connect, proves the counter answers
        if lh.DeviceStatus.DEVICE_ERROR in status:
            self._link.fail("device", DEVICE_ERROR_REASON)
        else:
            self._link.ok("device")
        return self._live(hold, status)

    # --- the sampling flow ----------------------------------------------------------------
    async def _start_sampling(self) -> None:
        """Vendor order: clock, sample/hold/delay + save (4), start (11), wait for RUNNING."""
        cfg, session = self._cfg, self._session
        if cfg.set_clock:
            await session.write_u32(lh.HR_CLOCK, utc_now_ns() // 1_000_000_000)
        hold = await session.read_holding(0, lh.SETTINGS_READ_COUNT)
        wanted = (cfg.sample_time_s, cfg.hold_time_s, cfg.initial_delay_s)
        have = (
            lh.u32(hold, lh.HR_SAMPLE_TIME),
            lh.u32(hold, lh.HR_HOLD_TIME),
            lh.u32(hold, lh.HR_INITIAL_DELAY),
        )
        running = hold[lh.HR_STATUS] & lh.DeviceStatus.RUNNING
        if have != wanted or not running:
            await session.write_u32(lh.HR_SAMPLE_TIME, cfg.sample_time_s)
            await session.write_u32(lh.HR_HOLD_TIME, cfg.hold_time_s)
            await session.write_u32(lh.HR_INITIAL_DELAY, cfg.initial_delay_s)
            await session.write(lh.HR_COMMAND, lh.Command.SAVE_PARAMETERS)
            await session.write(lh.HR_COMMAND, lh.Command.INSTRUMENT_START)
            await self._wait_running()
            log.info("device %s: sampling started (%s s sample)", cfg.id, cfg.sample_time_s)
        if self._last_t is None:  # first connect: records before it are not ours to deliver
            latest = await self._read_record(-1) if lh.s16(hold[lh.HR_RECORD_COUNT]) > 0 else None
            self._last_t = latest.timestamp_s if latest else BEFORE_ANY
            if latest and cfg.set_clock:  # a clock that was ahead must not hide new records
                self._last_t = min(self._last_t, utc_now_ns() // 1_000_000_000)
        self._started = True

    async def _wait_running(self) -> None:
        async with asyncio.timeout(self._cfg.start_timeout_s):
            while True:
                status = (await self._session.read_holding(lh.HR_STATUS, 1))[0]
                if status & lh.DeviceStatus.RUNNING:
                    return
                await asyncio.sleep(0.05)  # poll cadence inside the deadline

    # --- records and backfill -------------------------------------------------------------
    async def _read_record(self, index: int) -> lh.RawRecord:
        await self._session.write(lh.HR_RECORD_INDEX, index & 0xFFFF)
        return lh.decode_record(await self._session.read_input(0, lh.RECORD_COUNT_REGS))

    async def _collect(self, hold: list[int], new_data: bool) -> None:
        """Read the latest record, then walk back by index to the last one delivered."""
        count = lh.s16(hold[lh.HR_RECORD_COUNT])
        last = self._last_t if self._last_t is not None else BEFORE_ANY
        latest = await self._read_record(-1) if count > 0 else None
        if (
            latest is None
            or latest.timestamp_s == last
            or (latest.timestamp_s < last and not new_data)
        ):
            self._catch_up = False
            return
        found = [latest]
        index = count - 1
        if latest.timestamp_s < last:  # a new record older than the cursor: clock set back
            log.warning(
                "device %s: record time %d is before the last delivered (%d): clock set back?",
                self._cfg.id,
                latest.timestamp_s,
                last,
            )
            index = -1  # deliver it alone; the buffer cannot be ordered by time any more
        while index >= 0:
            record = await self._read_record(index)
            index -= 1
            if record.timestamp_s <= last:
                break
            if record.timestamp_s < found[-1].timestamp_s:
                found.append(record)
        else:
            self._report_lost(last, found[-1].timestamp_s)
        flow = lh.flow_cfm(hold[lh.HR_FLOW])
        for record in reversed(found):
            backfill = record is not latest or self._catch_up
            self._pending.append(
                Record(record.timestamp_s * 10**9, self._samples(record, flow), backfill)
            )
        self._latest = self._pending[-1].samples
        self._last_t = latest.timestamp_s
        if len(found) > 1 or self._catch_up:
            log.info("device %s: %d records read back from the buffer", self._cfg.id, len(found))
        self._catch_up = False

    def _report_lost(self, last: int, oldest: int) -> None:
        """The buffer wrapped: records between `last` and the oldest one held are gone."""
        if last == BEFORE_ANY:
            return
        period = self._cfg.sample_time_s + self._cfg.hold_time_s
        lost = max(0, round((oldest - last) / period) - 1)
        if lost:
            log.error(
                "device %s: buffer overrun, about %d records lost between %d and %d (Unix s)",
                self._cfg.id,
                lost,
                last,
                oldest,
            )

    def _samples(self, record: lh.RawRecord, flow: float) -> list[Sample]:
        """Concentrations of the reported channels and the data status of one record."""
        t_rx, t_dev = utc_now_ns(), record.timestamp_s * 10**9
        bad, why = lh.status_verdict(record.data_status)
        quality = Quality.BAD if bad else Quality.UNCERTAIN if why else Quality.GOOD
        out = []
        for size, tag in zip(self._cfg.channels_um, self._conc, strict=True):
            count = record.counts[self._index[size]]
            try:
                value: float | None = lh.per_m3(count, flow, record.sample_time_s)
            except ValueError as exc:
                out.append(Sample(tag.tag, None, CONC_UNIT, Quality.BAD, t_rx, str(exc), t_dev))
                continue
            value = None if bad else value
            out.append(Sample(tag.tag, value, CONC_UNIT, quality, t_rx, why, t_dev))
        out.append(
            Sample("data_status", record.data_status, "code", Quality.GOOD, t_rx, None, t_dev)
        )
        return out

    # --- live view and failures ---------------------------------------------------------
    def _live(self, hold: list[int], status: lh.DeviceStatus) -> list[Sample]:
        t_ns = utc_now_ns()
        live = [
            Sample.good("flow", lh.flow_cfm(hold[lh.HR_FLOW]), "CFM", t_ns),
            Sample.good("device_status", float(hold[lh.HR_STATUS]), "code", t_ns),
        ]
        reason = self._why_not_live(status)
        if reason is not None:
            return [Sample.bad(t.tag, t.unit, reason, t_ns) for t in self._tags[:-2]] + live
        return [*self._latest, *live]

    def _why_not_live(self, status: lh.DeviceStatus) -> str | None:
        """Why the record tags read BAD now, or None when the latest record stands."""
        if lh.DeviceStatus.RUNNING not in status:
            self._started = False  # someone stopped it: run the flow again next poll
            return f"counter not running (status {int(status)})"
        if lh.DeviceStatus.DEVICE_ERROR in status:  # the instrument distrusts its own data
            return DEVICE_ERROR_REASON
        if not self._latest:
            return "no record yet (first sample in progress)"
        return None

    def _all_bad(self, reason: str) -> list[Sample]:
        t_ns = utc_now_ns()
        return [Sample.bad(t.tag, t.unit, reason, t_ns) for t in self._tags]

    def _link_down(self, reason: str) -> list[Sample]:
        self._link.fail("link", reason)
        self._session.close()
        self._backoff.failed()
        self._started = False
        self._catch_up = True  # the counter kept sampling: read back what we missed
        return self._all_bad(reason)

    async def _connect(self) -> str | None:
        """None once connected, else the reason why not."""
        if not self._backoff.ready():
            return f"disconnected (next connect in {self._backoff.remaining_s():.1f} s)"
        if await self._session.connect():  # the backoff resets on the first reply, in read()
            return None
        wait = self._backoff.failed()
        reason = f"connect to {self._cfg.host}:{self._cfg.port} failed"
        self._link.fail("link", reason)
        return f"disconnected: {reason} (retry in {wait:.1f} s)"

    def _guard_s(self) -> float:
        """One guard per poll, in case the library hangs: a start or a long backfill may
        take many requests, each limited by pymodbus to timeout_s."""
        return self._cfg.start_timeout_s + self._cfg.timeout_s * 2 * (lh.HOLDING_COUNT + 50)
