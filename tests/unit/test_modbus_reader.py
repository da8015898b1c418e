"""Status registers downgrade the values they vouch for (Vaisala CO2 status, Huba reliability)."""

from __future__ import annotations

from drivers.modbus_reader import apply_validity
from drivers.registermap import RegisterSpec
from drivers.sample import Quality, Sample

STATUS = RegisterSpec(tag="status", address=10, type="u16")
CO2 = RegisterSpec.model_validate(
    {
        "tag": "co2",
        "unit": "%",
        "address": 0,
        "type": "float32",
        "validity": {"tag": "status", "good": [0], "uncertain": [2]},
    }
)


def run(status: Sample) -> Sample:
    co2 = Sample.good("co2", 5.0, "%", 1)
    return apply_validity([CO2, STATUS], [co2, status])[0]


def test_good_status_keeps_the_value() -> None:
    """Status 0: the value stands as read."""
    assert run(Sample.good("status", 0, "", 1)) == Sample.good("co2", 5.0, "%", 1)


def test_uncertain_status_keeps_value_with_reason() -> None:
    """Status 2 (not reliable): the value is kept but marked uncertain with the code."""
    out = run(Sample.good("status", 2, "", 1))
    assert (out.quality, out.value, out.reason) == (Quality.UNCERTAIN, 5.0, "status=2")


def test_other_status_makes_the_value_bad() -> None:
    """Status 256 (not ready): BAD, and no value survives."""
    out = run(Sample.good("status", 256, "", 1))
    assert (out.quality, out.value, out.reason) == (Quality.BAD, None, "status=256")


def test_unreadable_status_makes_the_value_uncertain() -> None:
    """A value whose status could not be read cannot be called good."""
    out = run(Sample.bad("status", "", "timeout", 1))
    assert (out.quality, out.value, out.reason) == (Quality.UNCERTAIN, 5.0, "status unreadable")
