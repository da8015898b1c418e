"""The state directory's free space: a sample on the daemon's stream, and a built-in alarm."""

from __future__ import annotations

from pathlib import Path

from controller.alarm_service import BUILT_IN, SYSTEM, SYSTEM_TAGS
from controller.disk_free import TAG, UNIT, disk_free
from drivers.sample import Quality


def test_free_fraction_of_a_real_directory(tmp_path: Path) -> None:
    s = disk_free(tmp_path, 5)
    assert s.quality is Quality.GOOD and s.value is not None and 0.0 < s.value <= 1.0
    assert (s.tag, s.unit, s.t_receive_ns) == (TAG, UNIT, 5)


def test_an_unreadable_path_is_a_bad_sample_that_says_where(tmp_path: Path) -> None:
    s = disk_free(tmp_path / "gone", 5)
    assert s.quality is Quality.BAD and s.value is None
    assert s.reason is not None and str(tmp_path / "gone") in s.reason


def test_the_built_in_alarm_watches_the_tag_the_daemon_records() -> None:
    """The disk sample is the last of the stream's tags; the alarm is low, at 10 %."""
    assert SYSTEM_TAGS[-1].tag == TAG and SYSTEM_TAGS[-1].unit == UNIT
    (alarm,) = [a for a in BUILT_IN if a.id == "cellfab.disk_free"]
    assert (alarm.tag, alarm.kind, alarm.limit) == (f"{SYSTEM}.{TAG}", "low", 0.1)
