"""systemd's notify protocol in a few lines of stdlib, so libsystemd is not a dependency.

Outside systemd (no NOTIFY_SOCKET) every call is a no-op; see shared/libraries.md §6.1.
"""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1") to systemd; False when not run under Type=notify."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr[0] == "@":
        addr = "\0" + addr[1:]  # abstract namespace socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(addr)
        sock.sendall(state.encode())
    return True
