"""Alarm configuration: validation names the field; packing groups kinds into slices."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from controller.alarms import AlarmConfig, pack


def cfg(**over: Any) -> AlarmConfig:
    base: dict[str, Any] = {"id": "a1", "tag": "inc1.temp", "kind": "high", "limit": 38.0}
    return AlarmConfig.model_validate(base | over)


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"limit": None}, "limit"),
        ({"kind": "deviation"}, "setpoint_tag"),
        ({"kind": "roc", "limit": None}, "rate_per_min"),
        ({"kind": "roc", "rate_per_min": 5.0}, "limit"),
        ({"kind": "discrete", "limit": None, "state": 1.0}, "for_s"),
        ({"kind": "quality", "limit": None}, "stale_after_s"),
        ({"kind": "n_of_m", "window_n": 2}, "window_m"),
        ({"kind": "n_of_m", "window_n": 4, "window_m": 3}, "window_n"),
        ({"window_n": 2}, "window_n"),
        ({"setpoint_tag": "loop.sp"}, "setpoint_tag"),
        ({"kind": "quality", "limit": None, "stale_after_s": 5, "deadband": 1.0}, "deadband"),
        ({"kind": "quality", "limit": None, "stale_after_s": 5, "on_delay_s": 1.0}, "on_delay_s"),
        ({"deadband": -1.0}, "deadband"),
        ({"on_delay_s": float("nan")}, "on_delay_s"),
        ({"tag": "no-slash"}, "tag"),
        ({"id": "a/b"}, "id"),
        ({"priority": "urgent"}, "priority"),
        ({"shelve_max_s": 0.0}, "shelve_max_s"),
        ({"colour": "red"}, "colour"),
        ({"suppress_when": {"tag": "br1.state"}}, "equals"),
    ],
)
def test_invalid_config_names_the_field(over: dict[str, Any], field: str) -> None:
    """Every invalid alarm config is refused with an error that names the offending field."""
    with pytest.raises(ValidationError) as err:
        cfg(**over)
    assert field in str(err.value)


def test_every_kind_validates_with_its_fields() -> None:
    """One valid config per kind builds; the model is frozen."""
    alarms = [
        cfg(id="h", kind="high_high", limit=40.0, deadband=0.5, on_delay_s=10, latch=True),
        cfg(id="l", kind="low_low", limit=2.0, priority="critical"),
        cfg(id="d", kind="deviation", limit=1.0, setpoint_tag="loop1.sp"),
        cfg(id="r", kind="roc", limit=None, rate_per_min=2.0),
        cfg(id="x", kind="discrete", limit=None, state=1.0, for_s=60.0),
        cfg(id="q", kind="quality", limit=None, stale_after_s=30.0),
        cfg(id="n", kind="n_of_m", limit=3520.0, window_n=2, window_m=3),
        cfg(id="s", suppress_when={"tag": "br1.state", "equals": 0}),
    ]
    assert [a.compared_limit for a in alarms] == [40.0, 2.0, 1.0, 2.0, 1.0, 30.0, 3520.0, 38.0]
    with pytest.raises(ValidationError):
        alarms[0].limit = 1.0  # type: ignore[misc]


def test_pack_groups_kinds_and_keeps_config_order_within_a_kind() -> None:
    """Packed order is by kind group, then configuration order; delays and signs are set."""
    table = pack(
        [
            cfg(id="q", kind="quality", limit=None, stale_after_s=30.0),
            cfg(id="h1"),
            cfg(id="n", kind="n_of_m", limit=1.0, window_n=2, window_m=5),
            cfg(id="lo", kind="low", limit=1.0, deadband=0.2, off_delay_s=3.0),
            cfg(id="x", kind="discrete", limit=None, state=1.0, for_s=60.0),
        ]
    )
    assert table.ids == ("h1", "lo", "x", "q", "n")
    assert table.groups["level"] == slice(0, 2)
    assert table.groups["deviation"] == slice(2, 2)
    assert table.sign.tolist() == [1.0, -1.0, 1.0, 1.0, 1.0]
    assert table.on_delay_s.tolist() == [0.0, 0.0, 60.0, 30.0, 0.0]
    assert table.off_delay_s.tolist() == [0.0, 3.0, 0.0, 0.0, 0.0]
    assert table.window_n.tolist() == [2]
    assert table.window_m.tolist() == [5]


def test_pack_refuses_duplicate_ids() -> None:
    """Two alarms with one id are an error naming the id."""
    with pytest.raises(ValueError, match="'a1'"):
        pack([cfg(), cfg()])


def test_tag_columns_and_suppression() -> None:
    """The gather index maps each alarm's tags to tag-store columns; suppression compares."""
    table = pack(
        [
            cfg(id="a", suppress_when={"tag": "br1.state", "equals": 0}),
            cfg(id="d", kind="deviation", limit=1.0, setpoint_tag="loop1.sp", tag="inc1.co2"),
        ]
    )
    cols = {"inc1.temp": 0, "inc1.co2": 1, "loop1.sp": 2, "br1.state": 3}
    value, sp, supp = table.tag_columns(cols)
    assert value.tolist() == [0, 1]
    assert sp.tolist() == [0, 2]
    assert supp.tolist() == [3, 1]
    store = np.array([37.0, 5.0, 5.0, 0.0])
    assert table.suppression(store[supp]).tolist() == [True, False]
    store[3] = 1.0
    assert table.suppression(store[supp]).tolist() == [False, False]
    with pytest.raises(KeyError, match=r"loop1\.sp"):
        table.tag_columns({"inc1.temp": 0, "inc1.co2": 1, "br1.state": 3})
