"""What every driver shares: the common device keys and the driver protocol."""

from __future__ import annotations

from types import TracebackType
from typing import NamedTuple, Protocol, Self, runtime_checkable

from pydantic import Field

from drivers.registermap import TAG_PATTERN, Frozen
from drivers.sample import Sample


class DeviceBase(Frozen):
    """Keys every device has, whatever its protocol."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", description="unique device id")
    device_class: str = Field(pattern=TAG_PATTERN, description="InfluxDB measurement name")
    area: str = Field(min_length=1, description="room the device stands in")
    description: str = ""
    poll_period_s: float = Field(default=1.0, gt=0.0, le=3600.0)
    timeout_s: float = Field(default=0.5, gt=0.0, le=60.0, description="per request")
    reconnect_min_s: float = Field(default=0.5, gt=0.0)
    reconnect_max_s: float = Field(default=30.0, gt=0.0)
    # Each driver's config adds `simulator: <its simulator's config> | None`: served by
    # `cellfab simulate` / `cellfab demo` at the device's endpoint.


class TagInfo(Protocol):
    """What the tag store needs to know of a tag before the first reading."""

    @property
    def tag(self) -> str: ...

    @property
    def unit(self) -> str: ...


class Driver(Protocol):
    """One session to one device: opened with `async with`, read once per scan."""

    @property
    def tags(self) -> tuple[TagInfo, ...]: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def read(self) -> list[Sample]:
        """One sample per tag, every time: failures come back as BAD samples, not raises."""
        ...


class Writer(Protocol):
    """A driver that can write a value to its device (set points, remote demands).

    Raises ValueError when the tag is unknown, not writable or the value cannot be encoded
    (nothing was sent), RuntimeError when the device refuses, does not answer or is not
    connected; the message names the device and the tag. Never reconnects by itself.
    """

    async def write(self, tag: str, value: float) -> None:
        """Write one value to one tag of the device."""
        ...


class Record(NamedTuple):
    """A measurement the device itself timestamped (a particle-count sample, a cell count).

    `t_ns` is the device's time (UTC ns); `backfill` marks a record read back from the
    device's buffer after an outage.
    """

    t_ns: int
    samples: list[Sample]
    backfill: bool = False


@runtime_checkable
class RecordDriver(Protocol):
    """A driver whose data are records, not polled values (particle and cell counters).

    Its `read()` still returns one sample per tag (the latest state, for the tag store and
    the live view); what goes into the record (journal, InfluxDB, MQTT) are the records
    `drain_records()` hands over after each read, each exactly once, oldest first.
    """

    def drain_records(self) -> list[Record]:
        """Records completed since the last call (new ones and backfilled ones)."""
        ...
