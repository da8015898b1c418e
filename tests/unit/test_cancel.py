"""A task that swallows a cancellation (as 3.11's wait_for can) is still stopped."""

from __future__ import annotations

import asyncio

from controller.cancel import cancel_and_wait, wait_at_most


async def test_a_swallowed_cancellation_is_repeated_until_the_task_ends() -> None:
    release, waiting = asyncio.Event(), asyncio.Event()
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        waiting.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            swallowed += 1  # what wait_for does when its result lands with the cancel
        await release.wait()  # ... and the task goes on waiting: one cancel() never ends it

    task = asyncio.create_task(stubborn())
    await waiting.wait()
    await asyncio.wait_for(cancel_and_wait(task, every_s=0.01), timeout=10)
    assert task.cancelled() and swallowed == 1
    assert not release.is_set()


async def test_a_finished_task_is_left_alone() -> None:
    async def quick() -> int:
        return 7

    task = asyncio.create_task(quick())
    await task
    await cancel_and_wait(task)
    assert task.result() == 7


async def test_wait_at_most_returns_when_done_and_on_a_past_deadline() -> None:
    event = asyncio.Event()
    await asyncio.wait_for(wait_at_most(event.wait(), -1.0), timeout=10)  # nothing to wait for
    event.set()
    await asyncio.wait_for(wait_at_most(event.wait(), 3600.0), timeout=10)


async def test_wait_at_most_keeps_a_cancel_that_lands_with_the_event() -> None:
    """Cancelled 0–3 loop iterations after its event fired, the wait ends cancelled whenever
    `cancel()` was accepted. (3.11's `wait_for` returned normally one iteration after.)"""
    for iterations in range(4):
        stop = asyncio.Event()
        task = asyncio.create_task(wait_at_most(stop.wait(), 3600.0))
        await asyncio.sleep(0)  # one loop iteration: the task is now waiting on the event
        stop.set()
        for _ in range(iterations):
            await asyncio.sleep(0)  # the interleaving under test, not a wait for something
        accepted = task.cancel()
        await asyncio.wait([task])
        assert task.cancelled() == accepted, iterations
