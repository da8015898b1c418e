"""One audit record and its exact bytes: canonical JSON, SHA-256 self-hash, chained by `prev`.

The hash is taken over the stored bytes, never over a re-serialisation, so an auditor checks
a line with any JSON parser and any SHA-256: `body` is the line with the member
`"hash":"<hex>",` cut out, and `sha256(body)` must equal that hex (docs/audit.md). No I/O here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

FORMAT_VERSION = 1
GENESIS = "0" * 64
"""The `prev` of the first record: 64 zeros, since no record precedes it."""

AuditValue = str | int | float | bool | None
"""What an old or new value may be: a JSON scalar (finite numbers only)."""

TEXT_FIELDS = ("user", "role", "action", "object", "reason", "client", "result")
KEYS = frozenset((*TEXT_FIELDS, "v", "seq", "time", "old", "new", "prev", "hash"))
_HEX64 = re.compile(r"[0-9a-f]{64}")


class MalformedRecord(ValueError):
    """A line that is not a well-formed audit record (garbage, missing field, wrong type)."""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One entry: who did what to which object, from where, why, with which outcome.

    `obj` is stored as the JSON key `object`. `hash` is SHA-256 over this record's canonical
    body (every field but `hash`); `prev` is the `hash` of the record before it.
    """

    seq: int
    time: datetime
    user: str
    role: str
    action: str
    obj: str
    old: AuditValue
    new: AuditValue
    reason: str
    client: str
    result: str
    prev: str
    hash: str

    def to_event(self) -> dict[str, AuditValue]:
        """The record as a flat JSON-able dict (the file's keys), for MQTT / InfluxDB events."""
        return {"v": FORMAT_VERSION, **_fields(self), "hash": self.hash}


def utc_now() -> datetime:
    """The default clock of the writer: aware UTC wall time."""
    return datetime.now(UTC)


def format_time(t: datetime) -> str:
    """ISO 8601, UTC, explicit offset, microseconds: 2026-11-22T09:14:27.123456+00:00."""
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError(f"audit time must be timezone-aware, got naive {t!r}")
    return t.astimezone(UTC).isoformat(timespec="microseconds")


def canonical(obj: dict[str, Any]) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, ASCII only (\\uXXXX escapes), no NaN."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256."""
    return hashlib.sha256(data).hexdigest()


def seal(
    seq: int,
    time: datetime,
    prev: str,
    *,
    user: str,
    role: str,
    action: str,
    obj: str,
    old: AuditValue,
    new: AuditValue,
    reason: str,
    client: str,
    result: str,
) -> tuple[AuditRecord, bytes]:
    """Build a record chained to `prev` and its stored line (canonical JSON + b"\\n")."""
    for name, value in (("old", old), ("new", new)):
        _check_value(name, value)
    texts = (user, role, action, obj, reason, client, result)
    for name, text in zip(TEXT_FIELDS, texts, strict=True):
        if not isinstance(text, str):
            raise TypeError(f"audit field {name!r} must be str, got {type(text).__name__}")
    stamp = format_time(time)
    record = AuditRecord(
        seq, datetime.fromisoformat(stamp), user, role, action, obj, old, new, reason,
        client, result, prev, "",
    )  # fmt: skip
    body = canonical({"v": FORMAT_VERSION, **_fields(record)})
    digest = sha256_hex(body)
    line = canonical({"v": FORMAT_VERSION, **_fields(record), "hash": digest}) + b"\n"
    return dataclasses.replace(record, hash=digest), line


def body_of(line: bytes, digest: str) -> bytes:
    """The hashed bytes of a stored line: the line minus the member `"hash":"<digest>",`.

    The member text cannot occur inside a JSON string (its quotes would be escaped), so the
    first occurrence is the member itself.
    """
    return line.replace(b'"hash":"' + digest.encode("ascii") + b'",', b"", 1)


def parse_line(line: bytes) -> AuditRecord:
    """Parse one stored line (without its newline) into a record; hash not yet checked.

    Raises MalformedRecord naming what is wrong.
    """
    try:
        data = json.loads(line.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedRecord(f"not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise MalformedRecord("not a JSON object")
    if set(data) != KEYS:
        missing, extra = sorted(KEYS - set(data)), sorted(set(data) - KEYS)
        raise MalformedRecord(f"wrong fields (missing {missing}, unexpected {extra})")
    return _from_dict(data)


def _from_dict(data: dict[str, Any]) -> AuditRecord:
    if data["v"] != FORMAT_VERSION:
        raise MalformedRecord(f"unknown format version {data['v']!r}")
    seq = data["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise MalformedRecord(f"seq must be a positive integer, got {seq!r}")
    for key in (*TEXT_FIELDS, "time", "prev", "hash"):
        if not isinstance(data[key], str):
            raise MalformedRecord(f"{key} must be a string")
    for key in ("prev", "hash"):
        if not _HEX64.fullmatch(data[key]):
            raise MalformedRecord(f"{key} is not 64 lower-case hex digits")
    try:
        for key in ("old", "new"):
            _check_value(key, data[key])
        time = datetime.fromisoformat(data["time"])
        stamp = format_time(time)
    except (TypeError, ValueError) as exc:
        raise MalformedRecord(str(exc)) from None
    if stamp != data["time"]:
        raise MalformedRecord("time is not UTC ISO 8601 with offset and microseconds")
    return AuditRecord(
        seq, time, data["user"], data["role"], data["action"], data["object"], data["old"],
        data["new"], data["reason"], data["client"], data["result"], data["prev"], data["hash"],
    )  # fmt: skip


def _fields(r: AuditRecord) -> dict[str, AuditValue]:
    return {
        "seq": r.seq,
        "time": format_time(r.time),
        "user": r.user,
        "role": r.role,
        "action": r.action,
        "object": r.obj,
        "old": r.old,
        "new": r.new,
        "reason": r.reason,
        "client": r.client,
        "result": r.result,
        "prev": r.prev,
    }


def _check_value(name: str, value: object) -> None:
    if value is None or isinstance(value, str | int | bool):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"audit {name} value must be finite, got {value!r}")
        return
    raise TypeError(f"audit {name} value must be a JSON scalar, got {type(value).__name__}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise MalformedRecord("duplicate key")
    return dict(pairs)
