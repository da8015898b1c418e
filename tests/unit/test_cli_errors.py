"""What the machine or the state refuses ends in one line naming it, never a traceback."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.cli import EXIT_FAILED, main

SITE = """
[site]
id = "lab"
[state]
dir = "{state}"
[mqtt]
url = "mqtt://127.0.0.1:1"
[[devices]]
id = "inc-1"
device_class = "co2_incubator"
area = "room-1"
driver = "modbus_tcp"
host = "127.0.0.1"
port = 1
profile = "co2-incubator"
"""


COMMAND_TAG = """
[[command_tags]]
tag = "inc-1.temp_setpoint"
min = 30.0
max = 39.0
"""  # commands change the process: the daemon keeps an audit trail and a batch archive


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    """`cellfab run` configures the root logger as a daemon does; give pytest's back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def site(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "site.toml"
    path.write_text(SITE.format(state=tmp_path / "state") + extra)
    return path


@pytest.mark.parametrize("name", ["spool.sqlite", "batch_archive.sqlite3"])
def test_run_on_a_corrupt_state_file_says_which_and_exits_1(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = site(tmp_path, COMMAND_TAG)
    state = tmp_path / "state"
    state.mkdir()
    (state / name).write_bytes(b"this is not a database, it is garbage" * 100)
    code = main(["run", "-c", str(path), "--log-level", "ERROR"])
    err = capsys.readouterr().err
    assert code == EXIT_FAILED
    assert "Traceback" not in err
    assert str(state / name) in err and "not a database" in err


def test_run_with_a_file_for_its_state_dir_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = site(tmp_path)
    (tmp_path / "state").write_text("a file, not a folder")
    assert main(["run", "-c", str(path), "--log-level", "ERROR"]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(tmp_path / "state") in err


def test_a_demo_duration_must_be_a_finite_positive_number(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for bad in ("nan", "-1", "inf", "soon"):
        with pytest.raises(SystemExit) as exc:
            main(["demo", "--duration-s", bad])
        assert exc.value.code == 2
    assert "--duration-s" in capsys.readouterr().err


def test_cmd_with_a_value_that_has_no_json_form_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "alice.key"
    key.write_text("00" * 32)
    key.chmod(0o600)
    argv = ["cmd", "-c", str(site(tmp_path)), "--user", "alice", "--key-file", str(key)]
    code = main([*argv, "--reason", "r", "setpoint", "inc-1.temp", "nan"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and "NaN" in err


def test_simulate_on_a_port_in_use_says_which_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        text = SITE.format(state=tmp_path / "state").replace("port = 1\n", f"port = {port}\n")
        text += "[devices.simulator]\nseed = 1\n"
        path = tmp_path / "site.toml"
        path.write_text(text)
        code = main(["simulate", "-c", str(path), "--log-level", "ERROR"])
    err = capsys.readouterr().err
    assert code == EXIT_FAILED
    assert "Traceback" not in err and f"cannot listen on 127.0.0.1:{port}" in err


def test_simulate_a_file_without_simulators_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "-c", str(site(tmp_path))]) == 2
    assert "no device has a [devices.simulator] table" in capsys.readouterr().err


def test_the_one_line_names_the_sub_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "state").write_text("a file, not a folder")
    main(["run", "-c", str(site(tmp_path)), "--log-level", "ERROR"])
    assert capsys.readouterr().err.startswith("cellfab run: ")
