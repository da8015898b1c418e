"""The watchdog is fed while every component keeps its promise, and starved when one does not."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import pytest

from controller.hub import Hub
from controller.journal import Journal
from controller.poller import Poller
from controller.tagstore import TagStore
from controller.watchdog import Liveness, feed, watchdog_interval_s
from drivers.sample import Sample


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_overdue_lists_only_components_past_their_promise() -> None:
    clock = Clock()
    live = Liveness(clock)
    live.beat("poll:a", 2.0)
    live.beat("sink:mqtt", 10.0)
    assert live.overdue() == []
    clock.now += 5.0
    assert live.overdue() == ["poll:a"]
    live.beat("poll:a", 2.0)
    clock.now += 20.0
    assert live.overdue() == ["poll:a", "sink:mqtt"]  # most overdue first
    live.done("sink:mqtt")
    assert live.overdue() == ["poll:a"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another pid
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_interval_is_half_of_watchdog_usec(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval_s(env) == expected


async def test_feed_sends_watchdog_only_while_all_alive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real notify socket: WATCHDOG=1 while alive, a STATUS naming the stuck one after."""
    path = tmp_path / "notify.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    clock = Clock()
    live = Liveness(clock)
    live.beat("poll:inc-1", 5.0)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(feed(live, 0.01, stop))
    try:
        first = await asyncio.wait_for(loop.sock_recv(server, 256), 5)
        assert first == b"WATCHDOG=1"
        clock.now += 10.0  # poll:inc-1 promised to come round within 5 s
        while True:
            msg = await asyncio.wait_for(loop.sock_recv(server, 256), 5)
            if msg != b"WATCHDOG=1":
                break
        assert msg == b"STATUS=stuck: poll:inc-1"
        live.beat("poll:inc-1", 5.0)
        assert await asyncio.wait_for(loop.sock_recv(server, 256), 5) == b"WATCHDOG=1"
    finally:
        stop.set()
        await task
        server.close()
        path.unlink()


class HangingDriver:
    """A driver with a bug: its read never returns (no timeout of its own)."""

    tags = ()

    def __init__(self) -> None:
        self.entered = asyncio.Event()

    async def read(self) -> list[Sample]:
        self.entered.set()
        await asyncio.Event().wait()
        return []


async def test_a_hanging_poller_is_reported_overdue() -> None:
    """The poller promised to come round within 2 periods + budget; it does not."""
    clock = Clock()
    live = Liveness(clock)
    driver = HangingDriver()
    hub = Hub(TagStore([("dev", ())]), Journal(100))
    poller = Poller("dev", driver, 1.0, hub, liveness=live, scan_budget_s=5.0)
    stop = asyncio.Event()
    task = asyncio.create_task(poller.run(stop))
    await asyncio.wait_for(driver.entered.wait(), 5)
    clock.now += 6.0
    assert live.overdue() == []  # 2 x 1 s + 5 s not yet used up
    clock.now += 2.0
    assert live.overdue() == ["poll:dev"]
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
