"""The daemon's own stream says when its spool cannot write, and a built-in alarm watches it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from controller.alarm_service import BUILT_IN, SYSTEM, SYSTEM_TAGS
from controller.self_watch import record_self
from controller.spool_budget import Gap
from controller.tagstore import TagStore
from controller.watchdog import Liveness
from drivers.sample import Scan


class Journal:
    usage_fraction = 0.25
    buffered = 12
    failing = True  # commits fail: disk I/O error, corrupt file …


class Watched:
    def __init__(self) -> None:
        self.journal: Any = Journal()
        self.liveness = Liveness()
        self.devices: dict[str, object] = {}
        self.sinks: dict[str, object] = {}
        self.store = TagStore([])

    def record_gap(self, gap: Gap) -> None:
        raise AssertionError(gap)


async def test_a_failing_spool_is_on_the_daemons_stream_and_alarmed(tmp_path: Path) -> None:
    published: list[Scan] = []
    stop = asyncio.Event()

    def publish(scan: Scan) -> None:
        published.append(scan)
        stop.set()  # one round is enough

    await record_self(Watched(), publish, tmp_path, stop)  # type: ignore[arg-type]
    (scan,) = published
    values = {s.tag: s.value for s in scan.samples}
    assert values["spool_failing"] == 1.0
    assert [s.tag for s in scan.samples] == [t.tag for t in SYSTEM_TAGS]
    (alarm,) = [a for a in BUILT_IN if a.id == "cellfab.spool_failing"]
    assert (alarm.tag, alarm.kind, alarm.limit, alarm.priority) == (
        f"{SYSTEM}.spool_failing",
        "high",
        0.5,
        "critical",
    )
