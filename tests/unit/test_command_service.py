"""A request that trips a bug still gets an audit record and an answer; the daemon goes on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controller.audit import AuditTrail, read_lines
from controller.command_service import CommandService
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
