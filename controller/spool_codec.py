"""The spool's on-disk format: its tables, and a Scan as one compact blob (one row per scan).

Tags and units repeat in every scan of a device, so they are stored once as a *layout*
(a row of their own, referenced by id) and a scan's blob holds only what changes: per
sample a flag byte (quality, which optional fields are present), the values as packed
doubles, and the rare extras (a receive time other than the scan's common one, device and
server times, a reason). 8 + 9 bytes per sample in the common case; stdlib only.

Blob layout (little-endian): header `<BBHq` = version, scan flags (bit 0 backfill, bit 1
"plain": every sample has a value, the common receive time and no extras), n samples, the
common receive time; then n flag bytes; then the present values as doubles; then, per
sample in order, its own receive/device/server times as int64; then each present reason as
`<H` length + UTF-8. A plain scan is packed and unpacked by C loops (zip, array, map).
"""

from __future__ import annotations

import struct
from array import array
from itertools import repeat
from operator import mul, ne, or_
from typing import NamedTuple

from drivers.sample import Quality, Sample, Scan

VERSION = 1
_HEADER = struct.Struct("<BBHq")
_LEN = struct.Struct("<H")
_QUALITIES = (Quality.GOOD, Quality.UNCERTAIN, Quality.BAD)
_BACKFILL = 0x01
_PLAIN = 0x02
_HAS_VALUE = 0x04
_HAS_REASON = 0x08
_HAS_T_DEVICE = 0x10
_HAS_T_SERVER = 0x20
_OWN_T_RECEIVE = 0x40
_TIMES = _OWN_T_RECEIVE | _HAS_T_DEVICE | _HAS_T_SERVER


SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS layouts (id INTEGER PRIMARY KEY, tags TEXT NOT NULL,
    units TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scans_gmp (seq INTEGER PRIMARY KEY, t_ns INTEGER NOT NULL,
    device TEXT NOT NULL, layout INTEGER NOT NULL, blob BLOB NOT NULL, batch TEXT, config TEXT);
CREATE TABLE IF NOT EXISTS scans_other (seq INTEGER PRIMARY KEY, t_ns INTEGER NOT NULL,
    device TEXT NOT NULL, layout INTEGER NOT NULL, blob BLOB NOT NULL, batch TEXT, config TEXT);
CREATE TABLE IF NOT EXISTS gaps (id INTEGER PRIMARY KEY, start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL, cause TEXT NOT NULL, devices TEXT NOT NULL, scans INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, t_ns INTEGER NOT NULL,
    kind TEXT NOT NULL, key TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cursors (name TEXT PRIMARY KEY, acked INTEGER NOT NULL,
    gap_acked INTEGER NOT NULL, event_acked INTEGER NOT NULL DEFAULT 0,
    outage_since_ns INTEGER, outage_reason TEXT);
"""
# GMP and other scans live in two tables so that the budget deletes a prefix of one table
# (whole pages freed and reused) rather than every other row of shared pages; readers merge
# the two by seq (SQLite plans this as MERGE (UNION ALL) over both primary keys).
READ = (
    "SELECT seq, device, t_ns, layout, blob, batch, config FROM scans_gmp"
    " WHERE seq > ?1 AND seq <= ?2"
    " UNION ALL SELECT seq, device, t_ns, layout, blob, batch, config FROM scans_other"
    " WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3"
)


class Layout(NamedTuple):
    """The tags and units of one kind of scan, in sample order."""

    tags: tuple[str, ...]
    units: tuple[str, ...]


def layout_of(scan: Scan) -> Layout:
    """The layout a scan's samples follow."""
    return Layout(tuple(s.tag for s in scan.samples), tuple(s.unit for s in scan.samples))


def encode(scan: Scan) -> bytes:
    """Pack a scan's samples (not its device, time or layout: those are columns)."""
    return pack(scan)[1]


def pack(scan: Scan) -> tuple[Layout, bytes]:
    """The scan's layout and its blob, from one transposition of the samples."""
    samples = scan.samples
    n = len(samples)
    t_common = samples[0].t_receive_ns if n else scan.t_scan_ns
    backfill = _BACKFILL if scan.backfill else 0
    if not n:
        return Layout((), ()), _HEADER.pack(VERSION, backfill | _PLAIN, 0, t_common)
    tags, values, units, qualities, t_receive, reasons, t_device, t_server = zip(
        *samples, strict=True
    )
    layout = Layout(tags, units)
    if (
        reasons.count(None) == n
        and t_device.count(None) == n
        and t_server.count(None) == n
        and None not in values
    ):
        if t_receive.count(t_common) == n:
            head = _HEADER.pack(VERSION, backfill | _PLAIN, n, t_common)
            flags = bytes(q | _HAS_VALUE for q in qualities)
            return layout, head + flags + array("d", values).tobytes()
        return layout, _encode_own_times(qualities, values, t_receive, backfill, t_common)
    return layout, _encode_general(samples, backfill, t_common)


def _encode_own_times(
    qualities: tuple[Quality, ...],
    values: tuple[float, ...],
    t_receive: tuple[int, ...],
    backfill: int,
    t_common: int,
) -> bytes:
    """Every value present, no extras, but receive times that differ (one per Modbus read).

    The same bytes as `_encode_general`, from the transposed columns: a scan of several
    reads is the common case, and the general per-sample loop cost ~3x as much.
    """
    own_bit = map(mul, map(ne, t_receive, repeat(t_common)), repeat(_OWN_T_RECEIVE))
    flags = bytes(map(or_, qualities, map(or_, own_bit, repeat(_HAS_VALUE))))  # C loops
    own = [t for t in t_receive if t != t_common]
    head = _HEADER.pack(VERSION, backfill, len(qualities), t_common)
    return b"".join((head, flags, array("d", values).tobytes(), struct.pack(f"<{len(own)}q", *own)))


def _encode_general(samples: tuple[Sample, ...], backfill: int, t_common: int) -> bytes:
    flags = bytearray()
    values: list[float] = []
    times: list[int] = []
    reasons: list[bytes] = []
    for s in samples:
        f = int(s.quality)
        if s.value is not None:
            f |= _HAS_VALUE
            values.append(s.value)
        if s.t_receive_ns != t_common:
            f |= _OWN_T_RECEIVE
            times.append(s.t_receive_ns)
        if s.t_device_ns is not None:
            f |= _HAS_T_DEVICE
            times.append(s.t_device_ns)
        if s.t_server_ns is not None:
            f |= _HAS_T_SERVER
            times.append(s.t_server_ns)
        if s.reason is not None:
            f |= _HAS_REASON
            raw = s.reason.encode()
            reasons.append(_LEN.pack(len(raw)) + raw)
        flags.append(f)
    head = _HEADER.pack(VERSION, backfill, len(samples), t_common)
    packed_times = struct.pack(f"<{len(times)}q", *times)
    return b"".join([head, flags, array("d", values).tobytes(), packed_times, *reasons])


def decode(device: str, t_scan_ns: int, layout: Layout, blob: bytes) -> Scan:
    """The exact Scan that `encode` was given (values come back as float)."""
    version, scan_flags, n, t_common = _HEADER.unpack_from(blob)
    if version != VERSION:
        raise ValueError(f"spool blob version {version} is not {VERSION}")
    backfill = bool(scan_flags & _BACKFILL)
    start = _HEADER.size
    flags = blob[start : start + n]
    values = array("d")
    if scan_flags & _PLAIN:
        values.frombytes(blob[start + n : start + 9 * n])
        quals = [_QUALITIES[f & 3] for f in flags]
        tags, units = layout
        samples = tuple(map(Sample, tags, values, units, quals, repeat(t_common, n)))
        return Scan(device, t_scan_ns, samples, backfill)
    return Scan(
        device, t_scan_ns, _decode_general(blob, start + n, flags, layout, t_common), backfill
    )


def _decode_general(
    blob: bytes, pos: int, flags: bytes, layout: Layout, t_common: int
) -> tuple[Sample, ...]:
    """Samples with missing values, own times or reasons: one flag byte at a time."""
    n_values = sum(1 for f in flags if f & _HAS_VALUE)
    values = array("d", blob[pos : pos + 8 * n_values])
    pos += 8 * n_values
    n_times = sum(bin(f & _TIMES).count("1") for f in flags)
    times = iter(struct.unpack_from(f"<{n_times}q", blob, pos))
    pos += 8 * n_times
    next_value = iter(values)
    out: list[Sample] = []
    for tag, unit, f in zip(*layout, flags, strict=True):
        value = next(next_value) if f & _HAS_VALUE else None
        t_receive = next(times) if f & _OWN_T_RECEIVE else t_common
        t_device = next(times) if f & _HAS_T_DEVICE else None
        t_server = next(times) if f & _HAS_T_SERVER else None
        reason = None
        if f & _HAS_REASON:
            (size,) = _LEN.unpack_from(blob, pos)
            reason = blob[pos + 2 : pos + 2 + size].decode()
            pos += 2 + size
        quality = _QUALITIES[f & 3]
        out.append(Sample(tag, value, unit, quality, t_receive, reason, t_device, t_server))
    return tuple(out)
