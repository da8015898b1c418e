"""Execute a read plan on a connected pymodbus client and turn replies into Samples.

Shared by every Modbus transport (TCP now, RTU on a shared bus later): the transport owns
the connection, this module owns "what a reply means". Every failure mode becomes a BAD
sample with the reason — a Modbus exception, a timeout, a short reply, NaN — never 0.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter
from typing import Any, cast

from pymodbus import ModbusException
from pymodbus.exceptions import ConnectionException, ModbusIOException

from drivers.codec import ReadRequest, plan_reads
from drivers.registermap import RegisterSpec, Validity
from drivers.sample import Quality, Sample, utc_now_ns
from drivers.transitions import TransitionLog

EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


class LinkDown(Exception):
    """The connection is gone (or the device stopped answering): the transport reconnects."""


@dataclass(frozen=True, slots=True)
class RequestFailure:
    """Why one read produced no registers; `link_down` asks the transport to reconnect."""

    reason: str
    link_down: bool


async def read_registers(
    client: object, req: ReadRequest, timeout_s: float
) -> list[int] | RequestFailure:
    """One FC3/FC4 read; failures are returned, not raised (pymodbus enforces the timeout)."""
    method = "read_holding_registers" if req.function == 3 else "read_input_registers"
    call = getattr(client, method)
    try:
        reply = await call(req.address, count=req.count, device_id=req.device_id)
    except ModbusIOException:
        return RequestFailure(f"timeout: no reply within {timeout_s:g} s", link_down=True)
    except ConnectionException:
        return RequestFailure("disconnected", link_down=True)
    except ModbusException as exc:
        return RequestFailure(f"modbus error: {exc}", link_down=True)
    return _judge_reply(req, reply)


def _judge_reply(req: ReadRequest, reply: Any) -> list[int] | RequestFailure:
    """The registers of a reply that answers `req`, else why it cannot be used."""
    if reply.isError():
        return _exception_failure(req, int(reply.function_code), int(reply.exception_code))
    mismatch = read_reply_mismatch(req.function, req.count, reply)
    if mismatch is not None:  # a reply to another request, or garbage: resynchronise
        return RequestFailure(f"invalid reply: {mismatch}", link_down=True)
    registers = list(reply.registers)
    if len(registers) < req.count:
        return RequestFailure(
            f"short reply: {len(registers)} of {req.count} registers", link_down=False
        )
    return registers


def read_reply_mismatch(function: int, count: int, reply: Any) -> str | None:
    """How a non-error read reply does not answer its request; None when it does.

    pymodbus decodes whatever function code comes back, so an FC 4 reply to an FC 3
    request (or one with extra registers) would otherwise be taken as good values.
    Fewer registers than asked is left to the caller (a short reply).
    """
    got = int(reply.function_code)
    if got != function:
        return f"function code {got:#04x} to a function {function:#04x} request"
    n = len(reply.registers)
    if n > count:
        return f"{n} registers, {count} asked"
    return None


def _exception_failure(req: ReadRequest, function_code: int, code: int) -> RequestFailure:
    """A real exception reply, or garbage that only looks like one (then: reconnect)."""
    if function_code & 0x7F != req.function or code not in EXCEPTION_NAMES:
        reason = f"invalid reply: function code {function_code:#04x}, exception code {code}"
        return RequestFailure(reason, link_down=True)
    return RequestFailure(f"modbus exception {code} ({EXCEPTION_NAMES[code]})", link_down=False)


def decode_request(req: ReadRequest, registers: Sequence[int], t_ns: int) -> list[Sample]:
    """Samples of every tag covered by one successful read.

    A read whose values are all good (nearly every read) builds its Samples in one C loop:
    `tuple.__new__` over zipped columns is what `Sample(...)` does, without a Python call
    per sample (the general path below costs twice as much).
    """
    decoder = req.decoder
    values = decoder.good_values(registers)
    if values is not None:
        n = len(values)
        rows = zip(
            decoder.tags,
            values,
            decoder.units,
            repeat(Quality.GOOD, n),
            repeat(t_ns, n),
            repeat(None, n),  # reason
            repeat(None, n),  # device time
            repeat(None, n),  # server time
            strict=True,
        )
        return cast("list[Sample]", list(map(_new, repeat(Sample, n), rows)))
    good, bad = Quality.GOOD, Quality.BAD
    return [
        Sample(spec.tag, None, spec.unit, bad, t_ns, value)
        if isinstance(value, str)
        else Sample(spec.tag, value, spec.unit, good, t_ns)
        for (spec, _), value in zip(req.specs, req.decoder.decode(registers), strict=True)
    ]


_new = tuple.__new__
_REASON = itemgetter(5)  # Sample.reason, read by a C loop


def failed_request(req: ReadRequest, reason: str, t_ns: int) -> list[Sample]:
    """BAD samples for every tag of a read that failed."""
    return [Sample.bad(spec.tag, spec.unit, reason, t_ns) for spec, _ in req.specs]


async def read_plan(
    client: object, plan: Sequence[ReadRequest], timeout_s: float
) -> tuple[list[Sample], RequestFailure | None]:
    """Run every read of a scan; after a link-level failure the rest are marked, not sent.

    Skipping the remaining reads keeps a dead device's scan within one timeout instead of
    one timeout per read, so it cannot push the next scan off its schedule.
    """
    samples: list[Sample] = []
    down: RequestFailure | None = None
    done = 0
    try:
        async with asyncio.timeout(_scan_guard_s(client, len(plan), timeout_s)):
            for req in plan:
                result = await read_registers(client, req, timeout_s)
                t_ns = utc_now_ns()
                done += 1
                if isinstance(result, RequestFailure):
                    samples += failed_request(req, result.reason, t_ns)
                    if result.link_down:
                        down = result
                        break
                else:
                    samples += decode_request(req, result, t_ns)
    except TimeoutError:
        down = RequestFailure(f"timeout: no reply within {timeout_s:g} s", link_down=True)
    t_ns = utc_now_ns()
    for req in plan[done:]:
        samples += failed_request(req, down.reason if down else "not read", t_ns)
    return samples, down


def _scan_guard_s(client: object, reads: int, timeout_s: float) -> float | None:
    """One guard per scan, in case the library itself hangs (pymodbus times out each read).

    None for a client on a shared line (`queues_requests`, an RTU bus view): the bus
    guards each frame once it holds the line, and time queued behind other slaves is not
    this device's; counting it read healthy slaves BAD and cut frames off on the wire.
    """
    if getattr(client, "queues_requests", False):
        return None
    return reads * (timeout_s * 2 + 0.5)


def apply_validity(specs: Sequence[RegisterSpec], samples: list[Sample]) -> list[Sample]:
    """Downgrade values whose status register says they are not reliable (Vaisala, Huba)."""
    return MapLayout(specs, [list(zip(specs, range(len(specs)), strict=True))]).assemble(samples)


class MapLayout:
    """Puts one scan's samples (in read order) back into map order and applies validity.

    Computed once per driver: per scan it is a list permutation plus one check per value
    that has a status register, instead of dictionaries rebuilt for every scan.
    """

    def __init__(
        self, specs: Sequence[RegisterSpec], reads: Sequence[Sequence[tuple[RegisterSpec, int]]]
    ) -> None:
        position = {spec.tag: i for i, spec in enumerate(s for read in reads for s, _ in read)}
        self._order = [position[spec.tag] for spec in specs]
        index = {spec.tag: i for i, spec in enumerate(specs)}
        self._rules = [
            (i, index[spec.validity.tag], spec.validity)
            for i, spec in enumerate(specs)
            if spec.validity is not None
        ]

    def assemble(self, samples: Sequence[Sample]) -> list[Sample]:
        """Samples in map order, each downgraded as its status register demands."""
        out = [samples[i] for i in self._order]
        for i, j, rule in self._rules:
            out[i] = _judge(out[i], out[j], rule)
        return out


def _judge(sample: Sample, status: Sample, rule: Validity) -> Sample:
    if sample.quality is Quality.BAD:
        return sample
    if status.value is None:
        return _downgrade(sample, Quality.UNCERTAIN, f"{rule.tag} unreadable")
    code = int(status.value)
    if code in rule.good:
        return sample
    if code in rule.uncertain:
        return _downgrade(sample, Quality.UNCERTAIN, f"{rule.tag}={code}")
    return Sample.bad(sample.tag, sample.unit, f"{rule.tag}={code}", sample.t_receive_ns)


def _downgrade(sample: Sample, quality: Quality, reason: str) -> Sample:
    return Sample(sample.tag, sample.value, sample.unit, quality, sample.t_receive_ns, reason)


class MapScanner:
    """One register map's scan over any connected client, whatever the transport.

    Coalesced reads, samples back in map order with validity applied, and per-tag
    transitions logged; the TCP and RTU drivers differ only in how they get a client.
    """

    def __init__(
        self,
        specs: tuple[RegisterSpec, ...],
        max_gap: int,
        logger: logging.Logger,
        subject: str,
    ) -> None:
        self.specs = specs
        self.plan = plan_reads(specs, max_gap)
        self._layout = MapLayout(specs, [req.specs for req in self.plan])
        self._tags = TransitionLog(logger, f"{subject} tag")

    def all_bad(self, reason: str) -> list[Sample]:
        """Every tag BAD with one reason (no client to read through)."""
        t_ns = utc_now_ns()
        return [Sample.bad(s.tag, s.unit, reason, t_ns) for s in self.specs]

    async def scan(
        self, client: object, timeout_s: float
    ) -> tuple[list[Sample], RequestFailure | None]:
        """Every tag, in map order; the link failure that ended the scan early, if any."""
        samples, down = await read_plan(client, self.plan, timeout_s)
        ordered = self._layout.assemble(samples)
        if down is None and (self._tags.any_failing or any(map(_REASON, ordered))):
            for sample in ordered:
                if sample.reason is None:
                    self._tags.ok(sample.tag)
                else:
                    self._tags.fail(sample.tag, sample.reason)
        return ordered, down
