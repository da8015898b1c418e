"""The live view shows every tag, and a failed tag's reason instead of a number."""

from __future__ import annotations

from rich.console import Console

from controller.liveview import render
from controller.tagstore import TagStore
from drivers.registermap import RegisterSpec
from drivers.sample import Sample, Scan


def test_view_shows_values_units_quality_and_reasons() -> None:
    """A good tag shows value and unit; a bad one its reason, never a stale or zero value."""
    tags = (
        RegisterSpec(tag="chamber_temp", unit="degC", address=0, type="float32"),
        RegisterSpec(tag="co2", unit="%", address=2, type="float32"),
    )
    store = TagStore([("inc-1", tags)])
    store.update(
        Scan(
            "inc-1",
            1,
            (Sample.good("chamber_temp", 37.02, "degC", 1), Sample.bad("co2", "%", "timeout", 1)),
        )
    )
    console = Console(width=120, record=True, color_system=None)
    console.print(render(store, "suite"))
    text = console.export_text()
    assert "inc-1" in text and "37.02" in text and "degC" in text
    co2_line = next(line for line in text.splitlines() if "co2" in line)
    assert "timeout" in co2_line and "B" in co2_line
    assert "0.0" not in co2_line.split("│")[1]
