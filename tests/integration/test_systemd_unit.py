"""The shipped unit file, checked by systemd's own tools: hardened, and only as exposed as
documented (`systemd-analyze security`, exposure 1.6 "OK" in systemd/README.md)."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.servers import require_binary

pytestmark = pytest.mark.integration

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "cellfab.service"


def security(threshold: int) -> subprocess.CompletedProcess[str]:
    analyze = require_binary("systemd-analyze")
    argv = [analyze, "security", "--offline=yes", f"--threshold={threshold}", str(UNIT)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_exposure_is_ok_and_the_check_can_fail() -> None:
    """Exposure at most 2.0 passes; the same check at 1.0 fails, so the number is real."""
    ok = security(20)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Overall exposure level for cellfab.service: 1.6 OK" in ok.stdout
    assert security(10).returncode != 0


def test_unit_has_the_operating_contract() -> None:
    """Type=notify with a watchdog, restart on failure, reload by SIGHUP, state and secrets."""
    text = UNIT.read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=60",
        "Restart=on-failure",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "StateDirectory=cellfab",
        "User=cellfab",
        "LoadCredential=influx-token:",
    ):
        assert line in text, line


# Runs in a child: installs a seccomp filter that treats mbind (one of @resources, which the
# unit filters out) as systemd would, then imports what `cellfab check` imports first.
_UNDER_FILTER = textwrap.dedent(
    """
    import ctypes, struct, sys
    libc = ctypes.CDLL(None, use_errno=True)
    action = int(sys.argv[1])
    MBIND = 237  # x86_64
    prog = [(0x20, 0, 0, 0), (0x15, 0, 1, MBIND), (0x06, 0, 0, action), (0x06, 0, 0, 0x7FFF0000)]
    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *f) for f in prog))
    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fp = Fprog(len(prog), ctypes.addressof(buf))
    assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.byref(fp), 0, 0) == 0  # PR_SET_SECCOMP, FILTER
    import controller.loops_config  # numpy, as cellfab check and run import it
    """
)
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO_EPERM = 0x00050000 | 1


def filtered_call_action(unit_text: str) -> int:
    """What the unit makes of a filtered syscall: an error if SystemCallErrorNumber= is set,
    else systemd's default, killing the process."""
    errno_set = any(ln.startswith("SystemCallErrorNumber=") for ln in unit_text.splitlines())
    return SECCOMP_RET_ERRNO_EPERM if errno_set else SECCOMP_RET_KILL_PROCESS


@pytest.mark.skipif(platform.machine() != "x86_64", reason="mbind's number is x86_64's")
def test_the_daemon_imports_numpy_under_the_units_syscall_filter() -> None:
    """numpy's OpenBLAS calls mbind at import; the unit must not let that kill the daemon."""
    action = filtered_call_action(UNIT.read_text())
    ok = subprocess.run(
        [sys.executable, "-c", _UNDER_FILTER, str(action)],
        cwd=UNIT.parents[1],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    killed = subprocess.run(  # the same import under the default action: the check can fail
        [sys.executable, "-c", _UNDER_FILTER, str(SECCOMP_RET_KILL_PROCESS)],
        cwd=UNIT.parents[1],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode != 0
