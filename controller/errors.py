"""Errors that stop a command or the daemon for a reason outside it: said in one line.

The CLI (controller/cli.py) prints these as `cellfab <command>: <message>` and exits 1; the
message names the file or resource and what to do. They are not bugs, so no traceback.
"""

from __future__ import annotations


class RefusedToStart(RuntimeError):
    """The state cannot be used as it is: a corrupt or locked file, a trail to examine."""
