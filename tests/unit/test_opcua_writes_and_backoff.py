"""OPC UA driver writes to typed nodes and its reconnect backoff, against an in-process
asyncua server on a loopback port (one per module: Server.init takes ~1.5 s)."""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from asyncua import Server, ua
from asyncua.common.callback import CallbackType, ServerItemCallback

from drivers.opcua import OpcUaDriver
from drivers.opcua_config import NodeSpec, OpcUaConfig
from drivers.sample import Quality, Sample
from tests.servers import free_port
from tests.virtual_clock import Clock

NAMESPACE = "urn:cellfab:test:fix-a"
MIN_S = 1.0  # reconnect_min_s: a reset backoff never waits longer than this
FAR = 10_000.0  # virtual seconds: past any backoff
TYPES = {
    "count": ua.VariantType.Int16,
    "level": ua.VariantType.UInt32,
    "gain": ua.VariantType.Float,
}


class Peer:
    """A server with a Double `T` and writable integer/Float nodes; `refuse_reads` makes
    every Read of `T` fail with a ServiceFault (a server that opens sessions, then no data)."""

    def __init__(self, server: Server, idx: int) -> None:
        self.server, self.idx = server, idx
        self.url = ""
        self.refuse_reads = False

    def node_id(self, name: str) -> ua.NodeId:
        return ua.NodeId(name, self.idx)

    async def value(self, name: str) -> Any:
        return await self.server.get_node(self.node_id(name)).read_value()

    def pre_read(self, event: ServerItemCallback, _dispatcher: object) -> None:
        asked = {r.NodeId for r in event.request_params.NodesToRead}
        if self.refuse_reads and self.node_id("T") in asked:
            raise ua.uaerrors.BadResourceUnavailable


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def peer() -> AsyncIterator[Peer]:
    server = Server()
    await server.init()
    url = f"opc.tcp://127.0.0.1:{free_port()}/"
    server.set_endpoint(url)
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    idx = await server.register_namespace(NAMESPACE)
    device = await server.nodes.objects.add_object(idx, "Dev")
    await device.add_variable(ua.NodeId("T", idx), "T", 37.0)
    for name, vtype in TYPES.items():
        node = await device.add_variable(ua.NodeId(name, idx), name, ua.Variant(0, vtype))
        await node.set_writable()
    peer = Peer(server, idx)
    peer.url = url
    server.subscribe_server_callback(CallbackType.PreRead, peer.pre_read)
    async with server:
        yield peer


def driver(peer: Peer, clock: Clock | None = None) -> OpcUaDriver:
    nodes = [NodeSpec(tag="t", node="s=T", unit="degC")]
    nodes += [NodeSpec(tag=name, node=f"s={name}", writable=True) for name in TYPES]
    cfg = OpcUaConfig(
        id="ua-1",
        device_class="bioreactor",
        area="lab",
        driver="opcua",
        url=peer.url,
        namespace_uri=NAMESPACE,
        nodes=tuple(nodes),
        timeout_s=2.0,
        reconnect_min_s=MIN_S,
        reconnect_max_s=1000.0,
    )
    return OpcUaDriver(cfg, random.Random(1), clock or Clock())


def t_of(samples: list[Sample]) -> Sample:
    return next(s for s in samples if s.tag == "t")


# --- writes to typed nodes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "value", "stored"),
    [("count", 37.9, 38), ("count", -2.6, -3), ("level", 4_294_967_295.2, 4_294_967_295)],
)
async def test_integer_write_rounds_to_nearest(
    peer: Peer, tag: str, value: float, stored: int
) -> None:
    """37.9 is written as 38, never truncated to 37, as the Modbus path does."""
    async with driver(peer) as drv:
        await drv.read()  # opens the session
        await drv.write(tag, value)
        assert await peer.value(tag) == stored
        await drv.write(tag, 0.0)


@pytest.mark.parametrize(
    ("tag", "value", "why"),
    [
        ("count", math.nan, "does not fit Int16"),
        ("count", math.inf, "does not fit Int16"),
        ("count", -math.inf, "does not fit Int16"),
        ("count", 32767.6, r"does not fit Int16 \(-32768..32767\)"),
        ("level", -1.0, r"does not fit UInt32 \(0..4294967295\)"),
        ("gain", 1e39, "does not fit Float"),
    ],
)
async def test_write_the_node_type_cannot_hold_is_refused(
    peer: Peer, tag: str, value: float, why: str
) -> None:
    """NaN, inf and out-of-range values are refused by the driver, naming the device, tag
    and type, before anything is sent (never an OverflowError, never a clipped value)."""
    async with driver(peer) as drv:
        await drv.read()
        with pytest.raises(ValueError, match=f"device ua-1: cannot write {tag}: .*{why}"):
            await drv.write(tag, value)
        assert await peer.value(tag) == 0


# --- the reconnect backoff resets on data, not on a session ----------------------------------


async def test_server_whose_reads_fail_is_retried_ever_more_slowly(peer: Peer) -> None:
    """Sessions open but every Read fails: the fifth session waits far beyond reconnect_min_s."""
    clock = Clock()
    peer.refuse_reads = True
    try:
        async with driver(peer, clock) as drv:
            for _ in range(4):
                clock.t += FAR
                assert (t_of(await drv.read()).reason or "").startswith("read failed")
            clock.t += MIN_S  # enough for a backoff reset at every session
            reason = t_of(await drv.read()).reason or ""
            assert reason.startswith("disconnected (next connect in")
            assert drv.sessions == 4
    finally:
        peer.refuse_reads = False


async def test_backoff_resets_after_a_read_that_returned_data(peer: Peer) -> None:
    """After a good Read, the next loss waits at most reconnect_min_s again."""
    clock = Clock()
    peer.refuse_reads = True
    try:
        async with driver(peer, clock) as drv:
            for _ in range(4):
                clock.t += FAR
                await drv.read()
            peer.refuse_reads = False
            clock.t += FAR
            assert t_of(await drv.read()).quality is Quality.GOOD
            peer.refuse_reads = True
            assert (t_of(await drv.read()).reason or "").startswith("read failed")
            clock.t += MIN_S
            assert (t_of(await drv.read()).reason or "").startswith("read failed")
            assert drv.sessions == 6
    finally:
        peer.refuse_reads = False


async def test_a_read_answered_with_too_few_values_is_bad_not_guessed(peer: Peer) -> None:
    """A non-compliant server that answers fewer values than nodes asked: which value is
    which cannot be known, so every tag reads BAD and the session is dropped."""
    async with driver(peer) as drv:
        assert t_of(await drv.read()).quality is Quality.GOOD
        client = drv._client
        assert client is not None
        real = client.read_attributes

        async def short(nodes: list[Any], *args: Any, **kwargs: Any) -> list[Any]:
            return (await real(nodes, *args, **kwargs))[:-1]

        client.read_attributes = short  # type: ignore[method-assign]
        bad = t_of(await drv.read())
        assert bad.quality is Quality.BAD
        assert (bad.reason or "").startswith("read failed: server returned")
        assert drv._client is None
