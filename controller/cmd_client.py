"""The client side of commands: sign a request, publish it, await its reply.

`cellfab cmd …` uses this; any other client (in any language) follows docs/commands.md.
The key stays in this process: only the signature goes on the wire.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import ssl
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import aiomqtt

from controller.commands import COMMON, OPTIONAL
from controller.signing import SIG_FIELD, CanonicalError, JsonScalar, sign, verify

log = logging.getLogger(__name__)


def new_nonce() -> str:
    """A fresh random nonce (144 bits, URL-safe base64)."""
    return secrets.token_urlsafe(18)


def new_request_id() -> str:
    """A fresh request id (a UUID4 as 32 hex digits): unique, and safe in a topic."""
    return uuid.uuid4().hex


def utc_timestamp(now: datetime) -> str:
    """`now` as the `ts` field: UTC, ISO 8601, milliseconds, `Z`."""
    return now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sign_request(
    user: str,
    key: bytes,
    verb: str,
    body: Mapping[str, JsonScalar],
    *,
    site: str,
    reason: str,
    now: datetime,
    nonce: str,
    request_id: str | None = None,
    client: str | None = None,
) -> dict[str, JsonScalar]:
    """The signed request payload for `verb` with its fields `body` (e.g. loop and value)."""
    clash = sorted(set(body) & {*COMMON, *OPTIONAL})
    if clash:
        raise ValueError(f"body must hold only the verb's fields, not {', '.join(clash)}")
    fields: dict[str, JsonScalar] = {
        **body,
        "request_id": request_id or new_request_id(),
        "user": user,
        "reason": reason,
        "ts": utc_timestamp(now),
        "nonce": nonce,
        "verb": verb,
        "site": site,
    }
    if client is not None:
        fields["client"] = client
    fields[SIG_FIELD] = sign(key, fields)
    return fields


def reply_verified(key: bytes, reply: Mapping[str, Any]) -> bool:
    """Whether `reply` is signed with `key`: the daemon answering this user's request."""
    sig = reply.get(SIG_FIELD)
    if not isinstance(sig, str):
        return False
    try:
        return verify(key, {k: v for k, v in reply.items() if k != SIG_FIELD}, sig)
    except (CanonicalError, TypeError, ValueError):  # not even a flat JSON object
        return False


def believable(key: bytes | None, reply: Mapping[str, Any]) -> bool:
    """A reply worth showing: signed with the user's key, or an unsigned refusal (the daemon
    signs nothing for a request it could not authenticate). An unsigned or wrongly signed
    "ok" is somebody else's message on the broker, never the daemon's."""
    if key is None:
        return True
    return reply_verified(key, reply) or (SIG_FIELD not in reply and reply.get("ok") is False)


async def send_command(
    client: aiomqtt.Client,
    prefix: str,
    request: Mapping[str, JsonScalar],
    timeout_s: float = 10.0,
    key: bytes | None = None,
) -> dict[str, Any]:
    """Publish `request` on `<prefix>/cmd/<verb>` and return the JSON reply.

    The reply topic is subscribed before publishing, so a fast reply cannot be missed.
    With the user's `key`, replies that are not `believable` are skipped (and logged): the
    wait goes on for the daemon's. Raises TimeoutError when none comes within `timeout_s`.
    """
    reply_topic = f"{prefix}/reply/{request['request_id']}"
    payload = json.dumps(dict(request), separators=(",", ":"), allow_nan=False).encode()
    try:
        async with asyncio.timeout(timeout_s):
            await client.subscribe(reply_topic, qos=1, timeout=timeout_s)
            await client.publish(
                f"{prefix}/cmd/{request['verb']}", payload, qos=1, timeout=timeout_s
            )
            async for message in client.messages:
                if message.topic.matches(reply_topic) and isinstance(message.payload, bytes):
                    reply = _json_object(message.payload)
                    if reply is not None and believable(key, reply):
                        return reply
                    log.warning("ignored a reply on %s not signed by the daemon", reply_topic)
    except TimeoutError:
        raise TimeoutError(f"no reply on {reply_topic} within {timeout_s:g} s") from None
    raise aiomqtt.MqttError("the connection ended before a reply came")


async def send_to_broker(
    hostname: str,
    port: int,
    prefix: str,
    request: Mapping[str, JsonScalar],
    *,
    username: str | None = None,
    password: str | None = None,
    tls_context: ssl.SSLContext | None = None,
    timeout_s: float = 10.0,
    key: bytes | None = None,
) -> dict[str, Any]:
    """`send_command` over a connection of its own (MQTT 5, clean start), closed afterwards."""
    client = aiomqtt.Client(
        hostname,
        port,
        username=username,
        password=password,
        identifier=f"cellfab-cmd-{new_request_id()[:12]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=tls_context,
        timeout=timeout_s,
    )
    async with asyncio.timeout(timeout_s):
        await client.__aenter__()
    try:
        return await send_command(client, prefix, request, timeout_s, key)
    finally:
        await client.__aexit__(None, None, None)


def _json_object(payload: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(payload)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested without end
        return None
    return value if isinstance(value, dict) else None
