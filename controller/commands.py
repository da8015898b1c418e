"""Command requests on `<prefix>/cmd/<verb>`: parsing into typed requests, outcomes, replies.

Parsing trusts nothing yet: it only checks that the payload is one JSON object whose members
are exactly the verb's fields with the right types and formats. Who sent it, and whether
they may, is decided afterwards (`controller/authz.py`), signature first.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypedDict

from controller.access_config import VERBS, Verb
from controller.command_actions import (
    VERB_FIELDS,
    Action,
    AlarmAction,
    BatchEnd,
    BatchStart,
    Mode,
    Refusal,
    RoomState,
    Setpoint,
    Write,
    kind,
    parse_action,
    text,
)
from controller.signing import SIG_FIELD, SIG_HEX_LEN, JsonScalar, sign

__all__ = [
    "Action",
    "AlarmAction",
    "BatchEnd",
    "BatchStart",
    "Mode",
    "Refusal",
    "RoomState",
    "Setpoint",
    "Write",
]

Value = float | str | None

COMMON = ("request_id", "user", "reason", "ts", "nonce", "sig", "verb", "site")
OPTIONAL = ("client",)
REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")  # safe in a topic: no '/', '+', '#'
NONCE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
SIG = re.compile(rf"^[0-9a-fA-F]{{{SIG_HEX_LEN}}}$")
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|\+00:00)$")


@dataclass(frozen=True)
class Request:
    """A well-formed request; `fields` is the payload exactly as parsed, for the signature."""

    request_id: str
    user: str
    reason: str
    ts: datetime
    nonce: str
    sig: str
    verb: Verb
    client: str | None
    action: Action
    fields: dict[str, JsonScalar]

    @property
    def object(self) -> str:
        """The loop, tag, device, alarm or room the request acts on."""
        return self.action.object


class SealFields(TypedDict):
    """The keyword arguments of `controller.audit_record.seal` besides seq, time and prev."""

    user: str
    role: str
    action: str
    obj: str
    old: Value
    new: Value
    reason: str
    client: str
    result: str


@dataclass(frozen=True)
class AuditEntry:
    """What the audit trail records about one request, accepted or refused.

    `user` is the claimed id; `authenticated` says whether its signature was verified, so a
    refused forgery is attributed to nobody. `detail` is the human reason given in the reply.
    """

    time: datetime
    user: str | None
    authenticated: bool
    role: str | None
    action: str
    object: str | None
    old_value: Value
    new_value: Value
    reason: str | None
    client: str | None
    result: Literal["accepted", "refused"]
    code: str
    detail: str
    request_id: str | None
    signed_ts: str | None

    def seal_fields(self) -> SealFields:
        """Keyword arguments for `controller.audit_record.seal` (all text fields are str).

        A refusal before the signature was verified names the claimed user with the role
        `(unauthenticated)`, so nobody is credited with a forgery.
        """
        role = self.role if self.authenticated and self.role else "(unauthenticated)"
        result = (
            "accepted" if self.result == "accepted" else f"refused ({self.code}): {self.detail}"
        )
        return {
            "user": self.user or "",
            "role": role,
            "action": self.action,
            "obj": self.object or "",
            "old": self.old_value,
            "new": self.new_value,
            "reason": self.reason or "",
            "client": self.client or "",
            "result": result,
        }


@dataclass(frozen=True)
class Accepted:
    """A verified, authorised request within limits: the caller carries it out."""

    request: Request
    role: str
    old_value: Value
    audit: AuditEntry

    ok: Literal[True] = True

    @property
    def request_id(self) -> str:
        """Where the reply goes: `<prefix>/reply/<request_id>`."""
        return self.request.request_id


@dataclass(frozen=True)
class Refused:
    """A request that is not carried out; `request_id` is None when none could be read."""

    code: str
    message: str
    request_id: str | None
    audit: AuditEntry

    ok: Literal[False] = False


Outcome = Accepted | Refused


def reply_topic(prefix: str, outcome: Outcome) -> str | None:
    """`<prefix>/reply/<request_id>`, or None when the request had no usable request_id."""
    return None if outcome.request_id is None else f"{prefix}/reply/{outcome.request_id}"


def reply_payload(outcome: Outcome, now: datetime, key: bytes | None = None) -> bytes:
    """The reply: `ok`, a machine `code` and a `message` a person understands."""
    if isinstance(outcome, Accepted):
        code, message = "accepted", f"{outcome.request.verb} on {outcome.request.object} accepted"
    else:
        code, message = outcome.code, outcome.message
    return reply_body(outcome.request_id, outcome.ok, code, message, now, key=key)


def reply_body(
    request_id: str | None,
    ok: bool,
    code: str,
    message: str,
    now: datetime,
    *,
    key: bytes | None = None,
) -> bytes:
    """The JSON of a reply on `<prefix>/reply/<request_id>` (docs/commands.md).

    `key`: the requesting user's, when the request was authenticated. The reply is then
    signed like a request, so the user can tell it from one that anybody able to publish
    on the broker could have posted ("accepted" for a command that was refused).
    """
    body: dict[str, JsonScalar] = {
        "request_id": request_id,
        "ok": ok,
        "code": code,
        "message": message,
        "ts": now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
    }
    if key is not None:
        body[SIG_FIELD] = sign(key, body)
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def parse(topic_verb: str, payload: bytes, site: str, max_bytes: int = 4096) -> Request:
    """The request in `payload` sent on `<prefix>/cmd/<topic_verb>` to the daemon of `site`.

    `site` is signed like `verb`: a request meant for one site cannot be replayed to another
    that shares the broker, user ids and keys (a test and a production suite, say).
    """
    if topic_verb not in VERBS:
        raise Refusal("unknown_verb", f"unknown verb {topic_verb[:40]!r} (known: {_known()})")
    fields = decode(payload, max_bytes)
    verb = fields.get("verb")
    if "verb" in fields and verb != topic_verb:
        raise Refusal(
            "verb_mismatch", f"field verb is {_short(verb)} but the topic is cmd/{topic_verb}"
        )
    claimed = fields.get("site")
    if "site" in fields and claimed != site:
        raise Refusal("wrong_site", f"signed for site {_short(claimed)}, this is site {site!r}")
    _check_members(topic_verb, fields)
    return Request(
        request_id=text(fields, "request_id", REQUEST_ID, "8-64 letters, digits, '-' or '_'"),
        user=text(fields, "user", None, ""),
        reason=text(fields, "reason", None, ""),
        ts=_timestamp(fields),
        nonce=text(fields, "nonce", NONCE, "16-128 letters, digits, '-' or '_'"),
        sig=text(fields, "sig", SIG, f"{SIG_HEX_LEN} hex digits"),
        verb=topic_verb,  # narrowed by the `in VERBS` check above
        client=text(fields, "client", None, "") if "client" in fields else None,
        action=parse_action(topic_verb, fields),
        fields=fields,
    )


def decode(payload: bytes, max_bytes: int = 4096) -> dict[str, JsonScalar]:
    """The payload as a flat JSON object; duplicate keys, NaN and nesting are refused."""
    if len(payload) > max_bytes:
        raise Refusal("malformed_json", f"payload is {len(payload)} bytes, at most {max_bytes}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Refusal("malformed_json", f"not UTF-8 at byte {exc.start}") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise Refusal("malformed_json", f"malformed JSON at {where}: {exc.msg}") from None
    except RecursionError:  # [[[[…]]]] nested deeper than the parser's stack
        raise Refusal("malformed_json", "nested too deeply; fields are flat scalars") from None
    except ValueError as exc:  # e.g. an integer literal longer than Python converts
        raise Refusal("malformed_json", f"unreadable JSON value: {str(exc)[:80]}") from None
    if not isinstance(obj, dict):
        raise Refusal("malformed_json", f"the payload is a JSON {kind(obj)}, not an object")
    for key, value in obj.items():
        if isinstance(value, dict | list):
            raise Refusal("bad_field", f"field {key[:40]!r} is a {kind(value)}; no nesting")
    return obj


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Refuse duplicate keys: parsers disagree on which one wins, so a signature would too."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise Refusal("malformed_json", f"key {key[:40]!r} appears twice")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise Refusal("malformed_json", f"{name} is not valid JSON")


def _check_members(verb: str, fields: dict[str, JsonScalar]) -> None:
    expected = [*COMMON, *VERB_FIELDS[verb]]
    if verb == "mode" and fields.get("mode") == "manual":
        expected.append("manual_output")
    missing = [k for k in expected if k not in fields]
    if missing:
        raise Refusal("missing_field", f"missing field(s) for {verb}: {', '.join(missing)}")
    extra = sorted(set(fields) - set(expected) - set(OPTIONAL))
    if extra:
        names = ", ".join(repr(k[:40]) for k in extra[:5])
        raise Refusal("extra_field", f"unexpected field(s) for {verb}: {names}")


def _timestamp(fields: dict[str, JsonScalar]) -> datetime:
    stamp = text(fields, "ts", TS, "UTC ISO 8601 like 2026-11-22T08:00:42.123Z")
    try:
        return datetime.fromisoformat(stamp)
    except ValueError:
        raise Refusal("bad_field", "ts is not a valid date and time") from None


def _short(value: object) -> str:
    return repr(value[:40]) if isinstance(value, str) else kind(value)


def _known() -> str:
    return ", ".join(VERBS)
