"""Logging for a daemon: UTC ISO timestamps on a terminal, none under journald."""

from __future__ import annotations

import logging
import os
import time


class _UtcFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"


def setup_logging(level: str = "INFO") -> None:
    """Configure the root logger once; quieten libraries that log every retry themselves."""
    handler = logging.StreamHandler()
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(_UtcFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Drivers log connection transitions themselves; these libraries would log every retry.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    logging.getLogger("asyncua").setLevel(logging.WARNING)  # its INFO is lines per connect
    # Only our simulators run an OPC UA server; its warnings about the plain-text endpoint
    # they deliberately offer are noise in the demo.
    logging.getLogger("asyncua.server.server").setLevel(logging.ERROR)
