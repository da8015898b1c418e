"""How much of the state directory's file system is still free, as a sample.

The spool defends itself with its disk budget, but the audit trail, the batch archives
and the alarm states in the same directory have none: they grow until the disk is full,
and then a write fails. The daemon records this fraction on its own stream and alarms on
it (`cellfab.disk_free`) well before that, while there is time to act.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from drivers.sample import Sample

TAG = "state_disk_free"
UNIT = "fraction"


def disk_free(path: Path, t_ns: int) -> Sample:
    """The free fraction of the file system holding `path`; BAD with the reason if unknown."""
    try:
        usage = shutil.disk_usage(path)
    except OSError as exc:
        return Sample.bad(TAG, UNIT, f"cannot read free space of {path}: {exc}", t_ns)
    if usage.total <= 0:
        return Sample.bad(TAG, UNIT, f"{path}: file system reports a size of 0", t_ns)
    return Sample.good(TAG, usage.free / usage.total, UNIT, t_ns)
