"""A reload may not remove a device that runs a batch: its record would end without a word."""

from __future__ import annotations

import logging

import pytest

from controller.daemon_parts import warn_orphan_batches
from controller.reload import ConfigDiff, batch_conflict


def test_removing_a_device_with_a_running_batch_is_refused_and_says_which() -> None:
    d = ConfigDiff(removed=("inc-2", "inc-3"), changed=("inc-1",))
    why = batch_conflict(d, {"inc-1": "LOT-7", "inc-2": "LOT-9"})
    assert why == "inc-2 runs batch LOT-9: end the batch before removing the device"


def test_changing_or_keeping_a_device_with_a_batch_is_allowed() -> None:
    d = ConfigDiff(added=("inc-4",), removed=("inc-3",), changed=("inc-1",))
    assert batch_conflict(d, {"inc-1": "LOT-7", "inc-2": "LOT-9"}) is None


def test_a_batch_on_a_device_missing_at_start_is_logged_as_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="controller.daemon_parts"):
        warn_orphan_batches({"inc-1": "LOT-7", "gone": "LOT-9"}, {"inc-1": object()})
    (record,) = caplog.records
    assert "LOT-9 runs on gone" in record.getMessage()
