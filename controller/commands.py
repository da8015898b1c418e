"""Command requests on `<prefix>/cmd/<verb>`: parsing into typed requests, outcomes, replies.

Parsing trusts nothing yet: it only checks that the payload is one JSON object whose members
are exactly the verb's fields with the right types and formats. Who sent it, and whether
they may, is decided afterwards (`controller/authz.py`), signature first.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypedDict

from controller.access_config import VERBS, Verb
from controller.signing import SIG_HEX_LEN, JsonScalar

Value = float | str | None

COMMON = ("request_id", "user", "reason", "ts", "nonce", "sig", "verb")
OPTIONAL = ("client",)
VERB_FIELDS: dict[str, tuple[str, ...]] = {
    "setpoint": ("loop", "value"),
    "mode": ("loop", "mode"),  # + manual_output when mode is manual
    "write": ("tag", "value"),
}
REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")  # safe in a topic: no '/', '+', '#'
NONCE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
SIG = re.compile(rf"^[0-9a-fA-F]{{{SIG_HEX_LEN}}}$")
OBJECT = re.compile(r"^(?=.{3,128}$)[A-Za-z0-9][A-Za-z0-9_-]*\.[A-Za-z0-9_][A-Za-z0-9_.-]*$")
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|\+00:00)$")
MAX_TEXT = 500


class Refusal(Exception):
    """A request that is not carried out: a machine `code` and a `message` for a human.

    Messages never contain the signature, a key or arbitrary payload text.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Setpoint:
    """Move a loop's set-point to `value` (engineering units of its PV)."""

    loop: str
    value: float


@dataclass(frozen=True)
class Mode:
    """Switch a loop to auto, or to manual with a fixed `manual_output`."""

    loop: str
    mode: Literal["auto", "manual"]
    manual_output: float | None


@dataclass(frozen=True)
class Write:
    """Write `value` to a writable tag `device.tag` outside any loop."""

    tag: str
    value: float


Action = Setpoint | Mode | Write


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
        """The loop or tag the request acts on."""
        return self.action.tag if isinstance(self.action, Write) else self.action.loop


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


def reply_payload(outcome: Outcome, now: datetime) -> bytes:
    """The reply: `ok`, a machine `code` and a `message` a person understands."""
    if isinstance(outcome, Accepted):
        code, message = "accepted", f"{outcome.request.verb} on {outcome.request.object} accepted"
    else:
        code, message = outcome.code, outcome.message
    body = {
        "request_id": outcome.request_id,
        "ok": outcome.ok,
        "code": code,
        "message": message,
        "ts": now.isoformat(timespec="microseconds").replace("+00:00", "Z"),
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def parse(topic_verb: str, payload: bytes, max_bytes: int = 4096) -> Request:
    """The request in `payload` sent on `<prefix>/cmd/<topic_verb>`, or a Refusal."""
    if topic_verb not in VERBS:
        raise Refusal("unknown_verb", f"unknown verb {topic_verb[:40]!r} (known: {_known()})")
    fields = decode(payload, max_bytes)
    verb = fields.get("verb")
    if "verb" in fields and verb != topic_verb:
        raise Refusal(
            "verb_mismatch", f"field verb is {_short(verb)} but the topic is cmd/{topic_verb}"
        )
    _check_members(topic_verb, fields)
    return Request(
        request_id=_text(fields, "request_id", REQUEST_ID, "8-64 letters, digits, '-' or '_'"),
        user=_text(fields, "user", None, ""),
        reason=_text(fields, "reason", None, ""),
        ts=_timestamp(fields),
        nonce=_text(fields, "nonce", NONCE, "16-128 letters, digits, '-' or '_'"),
        sig=_text(fields, "sig", SIG, f"{SIG_HEX_LEN} hex digits"),
        verb=topic_verb,  # narrowed by the `in VERBS` check above
        client=_text(fields, "client", None, "") if "client" in fields else None,
        action=_action(topic_verb, fields),
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
    if not isinstance(obj, dict):
        raise Refusal("malformed_json", f"the payload is a JSON {_kind(obj)}, not an object")
    for key, value in obj.items():
        if isinstance(value, dict | list):
            raise Refusal("bad_field", f"field {key[:40]!r} is a {_kind(value)}; no nesting")
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


def _text(
    fields: dict[str, JsonScalar], key: str, pattern: re.Pattern[str] | None, rule: str
) -> str:
    value = fields[key]
    if not isinstance(value, str):
        raise Refusal("bad_field", f"{key} must be a string, not {_kind(value)}")
    if pattern is not None and not pattern.fullmatch(value):
        raise Refusal("bad_field", f"{key} must be {rule}")
    if pattern is None and not (0 < len(value.strip()) <= MAX_TEXT):
        raise Refusal("bad_field", f"{key} must be non-empty text of at most {MAX_TEXT} characters")
    return value


def _number(fields: dict[str, JsonScalar], key: str) -> float:
    value = fields[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Refusal("bad_field", f"{key} must be a number, not {_kind(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise Refusal("bad_field", f"{key} is too large for a double")
    return number


def _object(fields: dict[str, JsonScalar], key: str) -> str:
    return _text(fields, key, OBJECT, "'device.name' (letters, digits, '-', '_', '.'; ≤ 128)")


def _timestamp(fields: dict[str, JsonScalar]) -> datetime:
    text = _text(fields, "ts", TS, "UTC ISO 8601 like 2026-11-22T08:00:42.123Z")
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise Refusal("bad_field", "ts is not a valid date and time") from None


def _action(verb: str, fields: dict[str, JsonScalar]) -> Action:
    if verb == "setpoint":
        return Setpoint(_object(fields, "loop"), _number(fields, "value"))
    if verb == "write":
        return Write(_object(fields, "tag"), _number(fields, "value"))
    mode = fields["mode"]
    if mode == "auto":
        if "manual_output" in fields:
            raise Refusal("extra_field", "manual_output is only allowed with mode manual")
        return Mode(_object(fields, "loop"), "auto", None)
    if mode == "manual":
        return Mode(_object(fields, "loop"), "manual", _number(fields, "manual_output"))
    raise Refusal("bad_field", "mode must be 'auto' or 'manual'")


def _kind(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _short(value: object) -> str:
    return repr(value[:40]) if isinstance(value, str) else _kind(value)


def _known() -> str:
    return ", ".join(VERBS)
