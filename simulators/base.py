"""What the runner needs of any simulator, whatever its physics and protocol.

A simulator is an async context manager that serves one device (or one bus); the runner
calls `advance(elapsed_s)` every `tick_s` wall seconds so the model catches up with the
scaled clock, publishes its values and applies its wall-clock fault schedule.
"""

from __future__ import annotations

import math
from types import TracebackType
from typing import Protocol, Self


class Simulator(Protocol):
    """One simulated device (or bus) behind its real protocol."""

    @property
    def where(self) -> str:
        """Where clients reach it, for logs ("127.0.0.1:5020", "/run/cellfab/rs485-1")."""
        ...

    @property
    def tick_s(self) -> float:
        """Wall seconds between `advance` calls this simulator wants."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def wait_listening(self) -> None:
        """Return once clients can connect."""
        ...

    async def advance(self, elapsed_s: float) -> None:
        """Bring the model to `elapsed_s` wall seconds after start; publish; apply faults."""
        ...


def steps_due(elapsed_wall_s: float, time_scale: float, step_s: float) -> int:
    """Whole model steps that fit into the simulated time since start."""
    return math.floor(elapsed_wall_s * time_scale / step_s + 1e-9)
