"""One command from the broker to its reply: verify, audit, carry out, answer.

The audit record is made durable before anything changes and before the reply is sent,
so a reply saying `ok` always has its record on disk; a command that cannot be audited
(disk full, trail broken) is refused and nothing changes. An accepted action that a
device then refuses gets a second record (`failed: …`) and a reply with `ok: false`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from controller.audit import AuditTrail
from controller.audit_record import AuditRecord
from controller.authz import Verifier
from controller.commands import Accepted, SealFields, reply_body, reply_payload, reply_topic
from controller.plant import ActionFailed, LoopPlant
from controller.spool_events import JSON, Event

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Message:
    """Something to publish: a reply (QoS 1, not retained) or an audit event."""

    topic: str
    payload: bytes


class CommandService:
    """Handles `<prefix>/cmd/<verb>` messages; returns what to publish in answer."""

    def __init__(
        self,
        verifier: Verifier,
        plant: LoopPlant,
        trail: AuditTrail | None,
        prefix: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._verifier = verifier
        self.plant = plant
        self.trail = trail
        self._prefix = prefix
        self._clock = clock
        self.accepted = 0
        self.refused = 0
        self.record_event: Callable[[Event], None] | None = None  # the stream's, once wired

    @property
    def subscription(self) -> str:
        """The topic filter the MQTT sink subscribes for us."""
        return f"{self._prefix}/cmd/#"  # verbs like batch/start have two levels

    async def handle(self, topic: str, payload: bytes) -> list[Message]:
        """The reply and audit events for one request (no reply when it had no request_id).

        Once begun, a request is handled to its end even if the caller is cancelled (the MQTT
        session failed, shutdown): an `accepted` record must be followed by the action or a
        `failed` record. The cancellation is re-raised when it is done.
        """
        inner = asyncio.create_task(self._handle(topic, payload), name="command")
        try:
            return await asyncio.shield(inner)
        except asyncio.CancelledError:
            while not inner.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait((inner,))
            if not inner.cancelled() and (exc := inner.exception()) is not None:
                log.exception("command on %s failed while cancelled", topic[-60:], exc_info=exc)
            raise

    async def _handle(self, topic: str, payload: bytes) -> list[Message]:
        """Verify, audit, carry out: not to be interrupted between audit and action."""
        head = f"{self._prefix}/cmd/"
        verb = topic[len(head) :] if topic.startswith(head) else topic.rsplit("/", 1)[-1]
        now = self._clock()
        try:
            outcome = self._verifier.verify(verb, payload, now)
        except Exception as exc:  # a bug on hostile input must not stop the plant's control
            log.exception("command on cmd/%s: verification failed", verb[:40])
            return await self._internal_error(verb, now, exc)
        key = self._verifier.reply_key(outcome)  # replies to an authenticated user are signed
        out: list[Message] = []
        fields = outcome.audit.seal_fields()
        try:
            out += await self._audit(fields)
        except (RuntimeError, OSError) as exc:  # AuditWriteError is a RuntimeError
            log.error("audit trail unavailable, command refused: %s", exc)  # noqa: TRY400 - said
            return self._unaudited(outcome.request_id, now, exc, key)
        if isinstance(outcome, Accepted):
            try:
                request = outcome.request
                await self.plant.execute(request.action, request.user, request.reason)
            except ActionFailed as exc:
                failure = (exc.code, str(exc))
                return await self._failed(outcome.request_id, fields, now, failure, key, out)
            except Exception as exc:  # audited as accepted: its end must be recorded too
                log.exception("command %s on %s: action failed", verb, outcome.request.object)
                failure = (
                    "internal_error",
                    f"internal error: {type(exc).__name__}: {str(exc)[:200]}",
                )
                return await self._failed(outcome.request_id, fields, now, failure, key, out)
            self.accepted += 1
            log.info(
                "command %s on %s by %s accepted", verb, outcome.request.object, fields["user"]
            )
        else:
            self.refused += 1
            log.warning(
                "command on cmd/%s refused: %s: %s", verb[:40], outcome.code, outcome.message
            )
        topic_out = reply_topic(self._prefix, outcome)
        if topic_out is not None:
            out.insert(0, Message(topic_out, reply_payload(outcome, now, key)))
        return out

    async def _audit(self, fields: SealFields) -> list[Message]:
        """Make the record durable; it then goes out as an `audit` event (InfluxDB, MQTT)."""
        if self.trail is None:
            return []
        record: AuditRecord = await asyncio.to_thread(self.trail.append, **fields)
        if self.record_event is not None:
            self.record_event(audit_event(record))
        return []

    async def _audit_quietly(self, fields: SealFields) -> list[Message]:
        try:
            return await self._audit(fields)
        except (RuntimeError, OSError) as exc:
            log.error("audit trail unavailable for a failed command: %s", exc)  # noqa: TRY400
            return []

    async def _failed(  # noqa: PLR0917 - one call site per failure kind, all positional
        self,
        request_id: str,
        fields: SealFields,
        now: datetime,
        failure: tuple[str, str],
        key: bytes | None,
        out: list[Message],
    ) -> list[Message]:
        """An accepted action that did not happen: a second record, and `ok: false`."""
        self.refused += 1
        code, why = failure
        failed: SealFields = {**fields, "result": f"failed ({code}): {why}"}
        out += await self._audit_quietly(failed)
        return [*self._reply(request_id, now, (False, code, why), key), *out]

    async def _internal_error(self, verb: str, now: datetime, exc: Exception) -> list[Message]:
        """A request the verifier could not judge: refused, audited as unauthenticated."""
        self.refused += 1
        fields: SealFields = {
            "user": "",
            "role": "(unauthenticated)",
            "action": f"cmd.{verb[:40]}",
            "obj": "",
            "old": None,
            "new": None,
            "reason": "",
            "client": "",
            "result": f"refused (internal_error): {type(exc).__name__}",
        }
        return await self._audit_quietly(fields)

    def _unaudited(
        self, request_id: str | None, now: datetime, exc: Exception, key: bytes | None
    ) -> list[Message]:
        self.refused += 1
        why = f"the audit trail cannot be written ({exc}); nothing was changed"
        return self._reply(request_id, now, (False, "audit_unavailable", why), key)

    def _reply(
        self,
        request_id: str | None,
        now: datetime,
        answer: tuple[bool, str, str],
        key: bytes | None,
    ) -> list[Message]:
        if request_id is None:
            return []
        payload = reply_body(request_id, *answer, now, key=key)
        return [Message(f"{self._prefix}/reply/{request_id}", payload)]


def audit_event(record: AuditRecord) -> Event:
    """An audit record as a stream event: `<prefix>/events/audit`, InfluxDB `audit_events`."""
    body: dict[str, JSON] = dict(record.to_event())
    t_ns = int(record.time.timestamp() * 1_000_000) * 1000
    return Event(t_ns, "audit", record.obj or record.action, body)
