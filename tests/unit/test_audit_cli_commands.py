"""`cellfab audit show/verify` find the trail through the site file's state dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.audit import AuditTrail, trail_path
from controller.cli import main

SITE = """
[site]
id = "lab"
[state]
dir = "{state}"
[[devices]]
id = "inc-1"
device_class = "co2_incubator"
area = "room-1"
driver = "modbus_tcp"
host = "127.0.0.1"
profile = "co2-incubator"
"""


def test_audit_commands_read_the_state_dir_trail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """show prints the records, verify exits 0 when intact and 3 once a record is edited."""
    state = tmp_path / "state"
    site = tmp_path / "site.toml"
    site.write_text(SITE.format(state=state))
    with AuditTrail.open(trail_path(state)) as trail:
        for n in range(3):
            trail.append(
                user="alice",
                role="engineer",
                action="config.load",
                obj="site.toml",
                old=None,
                new=f"sha-{n}",
                reason="start",
                client="cli",
                result="ok",
            )
    assert main(["audit", "show", "-c", str(site)]) == 0
    assert capsys.readouterr().out.count("config.load") == 3
    assert main(["audit", "verify", "-c", str(site)]) == 0
    path = trail_path(state)
    path.write_text(path.read_text().replace("sha-1", "sha-9"))
    assert main(["audit", "verify", "-c", str(site)]) == 3
    assert "EDITED" in capsys.readouterr().out
