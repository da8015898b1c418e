"""Our OPC UA driver against our asyncua bioreactor simulator: real sockets, one event loop.

One simulator serves the whole module (asyncua's Server.init takes ~1.6 s); a test that
injects a fault switches it off again before it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from drivers.opcua import OpcUaDriver
from drivers.opcua_config import OpcUaConfig, with_profile
from drivers.sample import Quality, utc_now_ns
from simulators.bioreactor import BioreactorSimConfig
from simulators.bioreactor_server import BioreactorSimulator, ServerSecurity
from tests.scanning import Samples
from tests.scanning import read_until as _read_until
from tests.servers import free_port

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def sim() -> AsyncIterator[BioreactorSimulator]:
    async with BioreactorSimulator(BioreactorSimConfig(time_scale=60.0), port=free_port()) as s:
        await s.advance(0.0)
        yield s


@contextlib.asynccontextmanager
async def ticking(sim: BioreactorSimulator) -> AsyncIterator[None]:
    """Advance and publish the simulator as the runner does, until the block ends."""

    async def tick() -> None:
        t0 = time.monotonic()
        while True:
            await sim.advance(time.monotonic() - t0)
            await asyncio.sleep(0.05)  # the runner's tick period, not synchronisation

    task = asyncio.create_task(tick())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.wait([task])


def config(sim: BioreactorSimulator, **kw: Any) -> OpcUaConfig:
    raw = {
        "id": "br-1",
        "device_class": "bioreactor",
        "area": "grade-b-1",
        "driver": "opcua",
        "url": sim.url,
        "profile": "xuri-like-bioreactor",
        "timeout_s": 2.0,
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.5,
        **kw,
    }
    return with_profile(OpcUaConfig.model_validate(raw), Path())


def all_good(samples: Samples) -> bool:
    return all(s.quality is Quality.GOOD for s in samples.values())


async def test_poll_reads_every_node_with_source_time(sim: BioreactorSimulator) -> None:
    """Poll mode: every profile node reads GOOD with its value, unit and SourceTimestamp."""
    async with OpcUaDriver(config(sim, mode="poll")) as driver:
        samples = await read_until(driver, all_good)
    assert set(samples) == {n.tag for n in driver.tags}
    assert 36.0 < (samples["temperature"].value or 0.0) < 38.0
    assert samples["temperature"].unit == "degC"
    assert samples["temperature_auto"].value == 1.0
    t = samples["ph"]
    assert t.t_device_ns is not None
    assert t.t_device_ns <= t.t_receive_ns


async def test_subscribe_mode_reports_changes_and_bad_status(sim: BioreactorSimulator) -> None:
    """Subscribe mode: values arrive by notification; a Bad StatusCode becomes BAD by name."""
    async with ticking(sim), OpcUaDriver(config(sim, mode="subscribe")) as driver:
        first = await read_until(driver, all_good)
        later = await read_until(
            driver, lambda s: s["weight"].t_device_ns != first["weight"].t_device_ns
        )
        assert later["weight"].quality is Quality.GOOD
        await sim.inject("bad_status", True, tag="do", status="BadDeviceFailure")
        try:
            bad = await read_until(driver, lambda s: s["do"].quality is Quality.BAD)
            assert bad["do"].reason == "BadDeviceFailure"
            assert bad["do"].value is None
            assert bad["ph"].quality is Quality.GOOD
        finally:
            await sim.inject("bad_status", False, tag="do")
        await read_until(driver, lambda s: s["do"].quality is Quality.GOOD)


async def test_nan_sensor_is_bad_never_a_number(sim: BioreactorSimulator) -> None:
    """A NaN pH (Good status) and a BadSensorFailure DO both read BAD with their reasons."""
    async with OpcUaDriver(config(sim)) as driver:
        await read_until(driver, all_good)
        await sim.inject("nan", True)
        try:
            s = await read_until(driver, lambda s: s["ph"].quality is Quality.BAD)
        finally:
            await sim.inject("nan", False)
        assert s["ph"].reason == "nan (device has no valid measurement)"
        assert s["do"].reason == "BadSensorFailure"
        assert s["ph"].value is None
        assert s["temperature"].quality is Quality.GOOD
        await read_until(driver, all_good)


async def test_write_reaches_model_and_bad_writes_are_refused(sim: BioreactorSimulator) -> None:
    """A rocking-rate write changes the model (and kLa); out-of-range or manual-only writes
    are refused with the server's StatusCode and change nothing."""
    async with OpcUaDriver(config(sim)) as driver:
        await read_until(driver, all_good)
        kla_before = sim.model.kla_per_h
        await driver.write("rock_rate_sp", 30.0)
        try:
            assert sim.model.settings["rock_rate_sp"] == 30.0
            assert sim.model.kla_per_h > kla_before
            with pytest.raises(RuntimeError, match="BadOutOfRange"):
                await driver.write("rock_rate_sp", 55.0)
            assert sim.model.settings["rock_rate_sp"] == 30.0
            with pytest.raises(RuntimeError, match="BadInvalidState"):
                await driver.write("heater_output", 10.0)
            with pytest.raises(ValueError, match="not a writable tag"):
                await driver.write("temperature", 10.0)
            await driver.write("temperature_auto", 0.0)
            await driver.write("heater_output", 10.0)
            assert sim.model.heater_pct == 10.0
        finally:
            await driver.write("temperature_auto", 1.0)
            await driver.write("rock_rate_sp", 10.0)
        await sim.advance(0.0)
        s = await read_until(driver, lambda s: s["rock_rate_sp"].value == 10.0)
        assert s["temperature_auto"].value == 1.0


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_server_restart_is_survived(sim: BioreactorSimulator, mode: str) -> None:
    """After the server is stopped and a NEW one listens on the port, the same driver
    instance opens a new session (and subscription) and values flow again."""
    async with ticking(sim), OpcUaDriver(config(sim, mode=mode)) as driver:
        await read_until(driver, all_good)
        await sim.inject("disconnect", True)
        try:
            down = await read_until(driver, lambda s: s["temperature"].quality is Quality.BAD)
            assert all(s.value is None for s in down.values())
        finally:
            await sim.inject("disconnect", False)
        restarted_ns = utc_now_ns()
        back = await read_until(
            driver,
            lambda s: all_good(s) and (s["temperature"].t_device_ns or 0) > restarted_ns,
        )
        assert back["vcd"].quality is Quality.GOOD
        assert driver.sessions == 2


async def test_first_connect_failure_is_retried(sim: BioreactorSimulator) -> None:
    """A device that is down when the driver starts reads BAD 'disconnected', then GOOD."""
    await sim.inject("disconnect", True)
    try:
        async with OpcUaDriver(config(sim)) as driver:
            samples = {s.tag: s for s in await driver.read()}
            reason = samples["temperature"].reason or ""
            assert reason.startswith("disconnected")
            assert {s.quality for s in samples.values()} == {Quality.BAD}
            await sim.inject("disconnect", False)
            await read_until(driver, all_good)
    finally:
        await sim.inject("disconnect", False)


async def test_unknown_node_is_bad_others_good(sim: BioreactorSimulator) -> None:
    """A node the server does not have reads BAD with the status name; the rest GOOD."""
    cfg = config(sim)
    nodes = [n.model_dump() for n in cfg.nodes[:2]] + [
        {"tag": "ghost", "node": "s=Bioreactor.Nothing.Here"},
        {"tag": "ghost_path", "node": "Bioreactor/Nothing/Here"},
    ]
    cfg = config(sim, profile=None, namespace_uri="urn:cellfab:sim:bioreactor", nodes=nodes)
    async with OpcUaDriver(cfg) as driver:
        s = await read_until(driver, lambda s: s["temperature_sp"].quality is Quality.GOOD)
    assert s["ghost"].quality is Quality.BAD
    assert s["ghost"].reason == "BadNodeIdUnknown"
    assert s["ghost_path"].quality is Quality.BAD
    assert s["ghost_path"].reason == "node 'Bioreactor/Nothing/Here': BadNoMatch"


async def make_cert(directory: Path, name: str, uri: str, server: bool) -> tuple[Path, Path]:
    """A self-signed (DER cert, PEM key) pair whose SAN holds `uri` and the hostname."""
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    use = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert, key = directory / f"{name}_cert.der", directory / f"{name}_key.pem"
    await setup_self_signed_certificate(
        key, cert, uri, socket.gethostname(), [use], {"commonName": name}
    )
    return cert, key


async def test_basic256sha256_sign_and_encrypt(tmp_path: Path) -> None:
    """A trusted client reads over Basic256Sha256/SignAndEncrypt; an unsecured client and
    a client whose certificate the server does not trust both read BAD, never a value."""
    trusted = tmp_path / "trusted"
    trusted.mkdir()
    srv_cert, srv_key = await make_cert(tmp_path, "srv", "urn:cellfab:sim:server", server=True)
    cli_cert, cli_key = await make_cert(tmp_path, "cli", "urn:cellfab:test:client", server=False)
    shutil.copy(cli_cert, trusted)
    rogue_cert, rogue_key = await make_cert(tmp_path, "rogue", "urn:cellfab:rogue", server=False)
    security = ServerSecurity(srv_cert, srv_key, trusted)
    async with BioreactorSimulator(BioreactorSimConfig(), port=free_port(), security=security) as s:
        await s.advance(0.0)
        secure: dict[str, Any] = {
            "security_policy": "Basic256Sha256",
            "security_mode": "SignAndEncrypt",
            "server_certificate_file": str(srv_cert),
        }
        good = config(
            s,
            **secure,
            application_uri="urn:cellfab:test:client",
            certificate_file=str(cli_cert),
            private_key_file=str(cli_key),
        )
        async with OpcUaDriver(good) as driver:
            samples = await read_until(driver, all_good)
        assert 36.0 < (samples["temperature"].value or 0.0) < 38.0

        async with OpcUaDriver(config(s)) as plain:
            refused = {x.tag: x for x in await plain.read()}
        assert refused["temperature"].quality is Quality.BAD
        assert "disconnected" in (refused["temperature"].reason or "")

        rogue = config(
            s,
            **secure,
            application_uri="urn:cellfab:rogue",
            certificate_file=str(rogue_cert),
            private_key_file=str(rogue_key),
        )
        async with OpcUaDriver(rogue) as untrusted:
            denied = {x.tag: x for x in await untrusted.read()}
        assert denied["temperature"].quality is Quality.BAD
        assert "BadCertificateUntrusted" in (denied["temperature"].reason or "")


async def read_until(driver: OpcUaDriver, ok: Callable[[Samples], bool]) -> Samples:
    """OPC UA reconnects take longer: a 20.0 s deadline."""
    return await _read_until(driver, ok, timeout_s=20.0)


async def test_user_name_and_password(tmp_path: Path) -> None:
    """A server that wants a user name: the right password reads values, a wrong one and no
    credentials at all read BAD, never a value."""
    users = {"operator": "s3cret-floor"}
    async with BioreactorSimulator(BioreactorSimConfig(), port=free_port(), users=users) as s:
        await s.advance(0.0)
        right, wrong = tmp_path / "right", tmp_path / "wrong"
        right.write_text("s3cret-floor\n")
        wrong.write_text("guess\n")
        good = config(s, username="operator", password_file=str(right))
        async with OpcUaDriver(good) as driver:
            samples = await read_until(driver, all_good)
        assert 36.0 < (samples["temperature"].value or 0.0) < 38.0
        for cfg in (config(s, username="operator", password_file=str(wrong)), config(s)):
            async with OpcUaDriver(cfg) as refused:
                sample = {x.tag: x for x in await refused.read()}["temperature"]
            assert (sample.quality, sample.value) == (Quality.BAD, None)
            assert sample.reason
