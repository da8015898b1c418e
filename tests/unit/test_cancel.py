"""A task that swallows a cancellation (as 3.11's wait_for can) is still stopped."""

from __future__ import annotations

import asyncio

from controller.cancel import cancel_and_wait


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
