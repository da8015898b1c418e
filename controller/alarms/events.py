"""A transition of one alarm, as a record: published, stored and audited as it is.

The lead's sinks turn an `AlarmEvent` into the `alarm_events` InfluxDB point and, with the
engine's `snapshot`, into the retained `<prefix>/alarms/<alarm>` message (docs/alarms.md).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import NamedTuple

from controller.alarms.states import Cause, State


class AlarmEvent(NamedTuple):
    """One state change; `user` and `reason` are set when a person caused it.

    A NamedTuple, like Sample: immutable and several times cheaper to create than a frozen
    dataclass, and an alarm flood creates thousands.
    """

    alarm: str
    from_state: State
    to_state: State
    cause: Cause
    t_ns: int  # UTC
    value: float | None  # the compared quantity at the time (None when not a number)
    limit: float
    priority: str
    message: str
    user: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, object]:
        """JSON-ready: states and cause as strings, time as ns and ISO-8601 UTC."""
        return {
            "alarm": self.alarm,
            "from": self.from_state.value,
            "to": self.to_state.value,
            "cause": self.cause.value,
            "ts": iso_utc(self.t_ns),
            "ts_ns": self.t_ns,
            "value": self.value,
            "limit": self.limit,
            "priority": self.priority,
            "message": self.message,
            "user": self.user,
            "reason": self.reason,
        }


def number(x: float) -> float | None:
    """A float for JSON: NaN and infinities become None (JSON has no NaN)."""
    return float(x) if math.isfinite(x) else None


def iso_utc(t_ns: int) -> str:
    """`2026-11-22T07:50:42.123456789Z`, as docs/mqtt.md prints every timestamp."""
    seconds, nanos = divmod(int(t_ns), 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"
