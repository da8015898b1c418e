"""OPC UA DataValue -> Sample: StatusCode severity to quality, NaN, timestamps, config rules."""

from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from drivers.opcua import quality_of, sample_of
from drivers.opcua_config import NodeSpec, OpcUaConfig, with_profile
from drivers.sample import Quality

SPEC = NodeSpec(tag="temperature", node="s=X", unit="degC")
T0 = datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.UTC)
T0_NS = 1767323045678901000


def dv(value: Any, status: str = "Good", **kw: Any) -> ua.DataValue:
    code = ua.StatusCode(getattr(ua.StatusCodes, status))
    return ua.DataValue(ua.Variant(value), code, **kw)


@pytest.mark.parametrize(
    ("status", "quality", "reason"),
    [
        ("Good", Quality.GOOD, None),
        ("GoodClamped", Quality.GOOD, None),
        ("UncertainLastUsableValue", Quality.UNCERTAIN, "UncertainLastUsableValue"),
        ("UncertainSensorNotAccurate", Quality.UNCERTAIN, "UncertainSensorNotAccurate"),
        ("BadSensorFailure", Quality.BAD, "BadSensorFailure"),
        ("BadNodeIdUnknown", Quality.BAD, "BadNodeIdUnknown"),
        ("BadCommunicationError", Quality.BAD, "BadCommunicationError"),
    ],
)
def test_status_code_maps_to_quality_with_name(
    status: str, quality: Quality, reason: str | None
) -> None:
    """Good* -> GOOD, Uncertain* -> UNCERTAIN, Bad* -> BAD, the status name as reason."""
    assert quality_of(getattr(ua.StatusCodes, status)) == (quality, reason)


@given(st.integers(0, 2**32 - 1))
def test_severity_bits_decide_for_any_code(code: int) -> None:
    """Any 32-bit code, named or not, maps by its two severity bits; non-GOOD has a reason."""
    quality, reason = quality_of(code)
    expected = {0: Quality.GOOD, 1: Quality.UNCERTAIN}.get(code >> 30, Quality.BAD)
    assert quality is expected
    assert (reason is None) == (quality is Quality.GOOD)


def test_good_value_keeps_source_timestamp() -> None:
    """A Good Double becomes a GOOD sample with the SourceTimestamp as device time."""
    later = T0 + datetime.timedelta(seconds=1)
    s = sample_of(SPEC, dv(37.1, SourceTimestamp=T0, ServerTimestamp=later), 99)
    assert (s.value, s.quality, s.reason, s.unit) == (37.1, Quality.GOOD, None, "degC")
    assert s.t_device_ns == T0_NS
    assert s.t_server_ns == T0_NS + 1_000_000_000
    assert s.t_receive_ns == 99


def test_server_timestamp_is_the_fallback() -> None:
    """Without a SourceTimestamp the ServerTimestamp is the device time."""
    assert sample_of(SPEC, dv(1.0, ServerTimestamp=T0), 0).t_device_ns == T0_NS


def test_opcua_null_time_is_no_time() -> None:
    """DateTime 0 (1601-01-01) means "not set": the ServerTimestamp stands in, and a null
    ServerTimestamp is no time at all, never a device time four centuries ago."""
    null = datetime.datetime(1601, 1, 1, tzinfo=datetime.UTC)
    s = sample_of(SPEC, dv(1.0, SourceTimestamp=null, ServerTimestamp=T0), 0)
    assert s.t_device_ns == T0_NS
    s = sample_of(SPEC, dv(1.0, SourceTimestamp=null, ServerTimestamp=null), 0)
    assert (s.t_device_ns, s.t_server_ns) == (None, None)


def test_bad_status_never_carries_a_value() -> None:
    """A Bad status drops the value even if the server sent one."""
    s = sample_of(SPEC, dv(12.0, "BadSensorFailure"), 0)
    assert s.value is None
    assert (s.quality, s.reason) == (Quality.BAD, "BadSensorFailure")


def test_uncertain_keeps_value_and_says_why() -> None:
    """Uncertain keeps the value, flagged, with the status name."""
    s = sample_of(SPEC, dv(4.5, "UncertainLastUsableValue"), 0)
    assert (s.value, s.quality, s.reason) == (4.5, Quality.UNCERTAIN, "UncertainLastUsableValue")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (math.nan, "nan (device has no valid measurement)"),
        (math.inf, "not finite"),
        ("warm", "not a number: str"),
        (None, "not a number: NoneType"),
    ],
)
def test_good_status_with_unusable_value_is_bad(value: object, reason: str) -> None:
    """NaN, infinity or a non-number under a Good status is BAD, never a number."""
    s = sample_of(SPEC, dv(value), 0)
    assert (s.value, s.quality, s.reason) == (None, Quality.BAD, reason)


def test_boolean_and_integer_become_floats() -> None:
    """Booleans read 1.0/0.0 and integers their float value."""
    assert sample_of(SPEC, dv(True), 0).value == 1.0
    assert sample_of(SPEC, dv(ua.Variant(7, ua.VariantType.Int32)), 0).value == 7.0


BASE = {"id": "br", "device_class": "bioreactor", "area": "a", "driver": "opcua"}


def test_config_needs_nodes_security_files_and_paired_credentials() -> None:
    """Missing nodes, a policy without cert/key, or a username alone are config errors."""
    url = "opc.tcp://127.0.0.1:4840/"
    node = {"tag": "t", "node": "s=T"}
    with pytest.raises(ValidationError, match="profile"):
        OpcUaConfig.model_validate({**BASE, "url": url})
    with pytest.raises(ValidationError, match="certificate_file"):
        OpcUaConfig.model_validate(
            {**BASE, "url": url, "nodes": [node], "security_policy": "Basic256Sha256"}
        )
    with pytest.raises(ValidationError, match="password_file"):
        OpcUaConfig.model_validate({**BASE, "url": url, "nodes": [node], "username": "u"})
    with pytest.raises(ValidationError, match="repeats"):
        OpcUaConfig.model_validate({**BASE, "url": url, "nodes": [node, node]})
    with pytest.raises(ValidationError, match="url"):
        OpcUaConfig.model_validate({**BASE, "url": "http://x", "nodes": [node]})


def test_builtin_profile_resolves_nodes_and_namespace() -> None:
    """The shipped xuri-like profile gives the nodes and the namespace the simulator serves."""
    from simulators.bioreactor_server import NAMESPACE_URI, NODES

    raw = {**BASE, "url": "opc.tcp://h:4840/", "profile": "xuri-like-bioreactor"}
    cfg = with_profile(OpcUaConfig.model_validate(raw), Path())
    assert cfg.namespace_uri == NAMESPACE_URI
    assert {n.tag for n in cfg.nodes} == {name for _, _, name, _, _ in NODES}
    assert {n.tag for n in cfg.nodes if n.writable} == {n for _, _, n, w, _ in NODES if w}


def test_simulator_is_built_from_the_device_config_alone() -> None:
    """The simulator serves at exactly the device's url, with the device's simulator table."""
    from simulators.bioreactor_server import BioreactorSimulator

    url = "opc.tcp://127.0.0.1:48123/site/br1/"
    raw = {**BASE, "url": url, "profile": "xuri-like-bioreactor"}
    dev = OpcUaConfig.model_validate({**raw, "simulator": {"model": "bioreactor", "seed": 5}})
    sim = BioreactorSimulator.from_device(dev)
    assert sim.url == url
    assert sim.model.cfg.seed == 5
    with pytest.raises(ValueError, match="no simulator"):
        BioreactorSimulator.from_device(OpcUaConfig.model_validate(raw))
