"""A request that trips a bug still gets an audit record and an answer; the daemon goes on."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from controller.audit import AuditTrail, read_lines
from controller.command_service import CommandService
from controller.commands import Setpoint
from controller.plant import ActionFailed
from tests.unit.test_commands import NOW, make_verifier, signed, wire


class BrokenPlant:
    """Carries out nothing: every action raises what no device error looks like."""

    async def execute(self, action: Any, user: str, reason: str) -> None:
        raise ZeroDivisionError("a bug in the action path")


@pytest.fixture
def trail(tmp_path: Path) -> Any:
    with AuditTrail.open(tmp_path / "audit.jsonl", clock=lambda: NOW) as t:
        yield t


async def test_an_unexpected_error_in_an_action_is_audited_and_answered(trail: Any) -> None:
    service = CommandService(make_verifier(), BrokenPlant(), trail, "cellfab/t", lambda: NOW)  # type: ignore[arg-type]
    request = signed()
    out = await service.handle("cellfab/t/cmd/setpoint", wire(request))
    (reply,) = [m for m in out if m.topic == f"cellfab/t/reply/{request['request_id']}"]
    body = json.loads(reply.payload)
    assert (body["ok"], body["code"]) == (False, "internal_error")
    assert "ZeroDivisionError" in body["message"]
    results = [ln.record.result for ln in read_lines(trail.path) if ln.record]
    assert results[0] == "accepted"
    assert results[1].startswith("failed (internal_error): internal error: ZeroDivisionError")


async def test_an_error_while_verifying_is_audited_not_raised(trail: Any) -> None:
    service = CommandService(make_verifier(), BrokenPlant(), trail, "cellfab/t", lambda: NOW)  # type: ignore[arg-type]

    def explode(*_: Any) -> Any:
        raise RecursionError("deep")

    service._verifier.verify = explode  # type: ignore[method-assign]
    assert await service.handle("cellfab/t/cmd/setpoint", b"{}") == []
    (line,) = [ln.record for ln in read_lines(trail.path) if ln.record]
    assert line is not None
    assert (line.action, line.result) == (
        "cmd.setpoint",
        "refused (internal_error): RecursionError",
    )
    assert service.refused == 1


class HeldPlant:
    """Records what it carries out; holds each action until `release` (then fails if told)."""

    def __init__(self, fail: bool = False) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.fail = fail
        self.done: list[Any] = []

    async def execute(self, action: Any, user: str, reason: str) -> None:
        self.started.set()
        await self.release.wait()
        if self.fail:
            raise ActionFailed("the device refused the write")
        self.done.append(action)


def results(trail: Any) -> list[str]:
    return [ln.record.result for ln in read_lines(trail.path) if ln.record]


async def test_cancelled_while_auditing_the_action_is_still_carried_out(
    trail: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The MQTT session fails while the `accepted` record is being written: the action it
    records still happens (no record of an action that never ran); the cancel is re-raised."""
    plant = HeldPlant()
    plant.release.set()
    service = CommandService(make_verifier(), plant, trail, "cellfab/t", lambda: NOW)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    appending = asyncio.Event()
    written = threading.Event()
    real_append = trail.append

    def held_append(**fields: Any) -> Any:
        loop.call_soon_threadsafe(appending.set)
        written.wait()
        return real_append(**fields)

    monkeypatch.setattr(trail, "append", held_append)
    task = asyncio.create_task(service.handle("cellfab/t/cmd/setpoint", wire(signed())))
    await appending.wait()
    task.cancel()
    written.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert plant.done == [Setpoint("inc-1.temp", 37.5)]
    assert results(trail) == ["accepted"]


async def test_cancelled_while_acting_the_failure_is_still_audited(trail: Any) -> None:
    """Cancelled while the device write runs, which then fails: the `failed` record follows."""
    plant = HeldPlant(fail=True)
    service = CommandService(make_verifier(), plant, trail, "cellfab/t", lambda: NOW)  # type: ignore[arg-type]
    task = asyncio.create_task(service.handle("cellfab/t/cmd/setpoint", wire(signed())))
    await plant.started.wait()
    task.cancel()
    plant.release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert results(trail)[0] == "accepted"
    assert results(trail)[1].startswith("failed (failed): the device refused the write")
    assert service.refused == 1
