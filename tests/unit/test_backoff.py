"""Reconnect backoff: it stays at its maximum however long a device stays away."""

from __future__ import annotations

import random

from drivers.backoff import Backoff


class Clock:
    """Virtual monotonic time."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_wait_stays_at_max_after_thousands_of_failures() -> None:
    """Past 1024 failures (~6 h at 0.5..30 s) the wait is still jittered max, no OverflowError."""
    backoff = Backoff(0.5, 30.0, random.Random(7), Clock())
    waits = [backoff.failed() for _ in range(5000)]
    assert backoff.failures == 5000
    assert all(15.0 <= w <= 30.0 for w in waits[10:])


def test_wait_still_doubles_from_min_to_max() -> None:
    """Capping the exponent changes nothing below the maximum: 1, 2, 4, 8 then 10 (x jitter)."""
    backoff = Backoff(1.0, 10.0, random.Random(7), Clock())
    waits = [backoff.failed() for _ in range(6)]
    for wait, base in zip(waits, [1.0, 2.0, 4.0, 8.0, 10.0, 10.0], strict=True):
        assert base * 0.5 <= wait <= base


def test_success_after_a_long_outage_waits_the_minimum_again() -> None:
    """After 2000 failures and one success the next failure waits min_s (x jitter) again."""
    backoff = Backoff(0.5, 30.0, random.Random(7), Clock())
    for _ in range(2000):
        backoff.failed()
    backoff.succeeded()
    assert backoff.failed() <= 0.5
