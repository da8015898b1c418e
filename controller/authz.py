"""Deciding on a command: signature, freshness, replay, role, then engineering limits.

The order matters. Nothing in a request is trusted before its signature is verified with the
claimed user's key; only then are its nonce and request_id remembered (so a forger cannot
burn them), its role consulted and its value checked. Every outcome carries an AuditEntry.
The verifier reads no clock and does no I/O: the caller passes `now` and the plant view.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Literal, Protocol

from controller.access_config import AccessConfig, RoleConfig, UserKey
from controller.command_actions import AlarmAction, BatchEnd, BatchStart, RoomState, new_value
from controller.commands import (
    REQUEST_ID,
    Accepted,
    AuditEntry,
    Mode,
    Outcome,
    Refusal,
    Refused,
    Request,
    Setpoint,
    Value,
    Write,
    decode,
    parse,
)
from controller.signing import CanonicalError, verify


@dataclass(frozen=True)
class Limits:
    """An object's engineering range and the largest change one command may make."""

    low: float
    high: float
    max_step: float | None = None  # None: any change within [low, high]


@dataclass(frozen=True)
class Target:
    """The limits of a commandable value and its current value (None: not known now)."""

    limits: Limits
    current: float | None


class Plant(Protocol):
    """The daemon's view of what commands act on; None means no such (writable) object."""

    def setpoint(self, loop: str) -> Target | None:
        """Set-point limits of `loop` and its current set-point."""

    def output(self, loop: str) -> Target | None:
        """Output limits of `loop` (for manual output) and its current output."""

    def mode(self, loop: str) -> str | None:
        """`auto` or `manual`: the loop's current mode."""

    def tag(self, tag: str) -> Target | None:
        """Limits and current value of a writable tag `device.tag`."""

    def batch(self, device: str) -> tuple[bool, str | None]:
        """Whether `device` exists, and the batch it runs (None: none)."""

    def alarm(self, alarm: str) -> str | None:
        """The alarm's ISA-18.2 state, or None for no such alarm."""

    def room(self, room: str) -> str | None:
        """The room's operational state, or None for no such room."""


class NonceCache:
    """Tokens seen per scope (user), each remembered for `retention_s`, at most `capacity`.

    When full of unexpired tokens it refuses new requests rather than forget one early:
    forgetting would let a replay through. Insertion order is kept equal to expiry order,
    so purging only ever looks at the oldest end.
    """

    def __init__(self, retention_s: float, capacity: int) -> None:
        self.retention_s = retention_s
        self.capacity = capacity
        self._expiry: OrderedDict[tuple[str, str], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def seen(self, scope: str, token: str, now_s: float) -> bool:
        """Whether `token` was added for `scope` within the retention window."""
        self._purge(now_s)
        return (scope, token) in self._expiry

    def has_room(self, n: int, now_s: float) -> bool:
        """Whether `n` more tokens fit."""
        self._purge(now_s)
        return len(self._expiry) + n <= self.capacity

    def add(self, scope: str, token: str, now_s: float) -> None:
        """Remember `token` until `now_s + retention_s`, or until the newest token expires if
        that is later (after a shorter retention or a clock step back): expiry order must
        stay insertion order, and keeping a token longer is always safe."""
        expiry = now_s + self.retention_s
        if self._expiry:
            expiry = max(expiry, next(reversed(self._expiry.values())))
        self._expiry[(scope, token)] = expiry

    def configure(self, retention_s: float, capacity: int) -> None:
        """New limits (a config reload), keeping every token. A longer retention extends the
        kept tokens too: a larger skew_s may let a replay of one look fresh for longer. A
        shorter one never cuts a kept token short, and a smaller capacity forgets nothing
        (new requests wait until enough tokens expire)."""
        grow = retention_s - self.retention_s
        if grow > 0:  # a uniform shift keeps expiry order
            self._expiry = OrderedDict((k, e + grow) for k, e in self._expiry.items())
        self.retention_s = retention_s
        self.capacity = capacity

    def _purge(self, now_s: float) -> None:
        """Drop expired tokens from the oldest end (insertion order is expiry order)."""
        while self._expiry:
            key, expiry = next(iter(self._expiry.items()))
            if expiry > now_s:
                return
            del self._expiry[key]


class Policy:
    """Which verbs a role may use on which objects (fnmatch globs, case-sensitive)."""

    def __init__(self, roles: tuple[RoleConfig, ...]) -> None:
        self._roles = {r.name: r for r in roles}

    def allows(self, role: str, verb: str, obj: str) -> bool:
        """Whether some grant of `role` names `verb` and a glob matching `obj`."""
        found = self._roles.get(role)
        return found is not None and any(
            verb in g.verbs and any(fnmatchcase(obj, p) for p in g.objects) for g in found.allow
        )


class Verifier:
    """Turns a payload received on `<prefix>/cmd/<verb>` into Accepted or Refused."""

    def __init__(
        self,
        access: AccessConfig,
        keys: Mapping[str, UserKey],
        plant: Plant,
        *,
        site: str,
        not_before: datetime | None = None,
    ) -> None:
        """`not_before`: the start of this process. The nonce cache lives in memory, so a
        request signed before it existed is refused: it may have been carried out already.
        `trail_opened` raises it further once the audit trail tells when the last run ended.
        """
        self._site = site  # requests must be signed for it
        self._started = not_before
        self._not_before = not_before
        self._cmd = access.commands
        self._roles = {u.id: u.role for u in access.users}
        self._keys = keys
        self._plant = plant
        self._policy = Policy(access.roles)
        self._nonces = NonceCache(self._cmd.nonce_retention_s, self._cmd.nonce_cache_max)
        self._request_ids = NonceCache(self._cmd.nonce_retention_s, self._cmd.nonce_cache_max)

    def reconfigure(self, access: AccessConfig, keys: Mapping[str, UserKey], plant: Plant) -> None:
        """New users, roles, keys and plant (a config reload); the replay caches keep their
        entries under the new retention and capacity, so a request accepted before the
        reload cannot be replayed after it, even when the reload widens skew_s."""
        self._cmd = access.commands
        self._roles = {u.id: u.role for u in access.users}
        self._keys = keys
        self._plant = plant
        self._policy = Policy(access.roles)
        for cache in (self._nonces, self._request_ids):
            cache.configure(self._cmd.nonce_retention_s, self._cmd.nonce_cache_max)

    def reply_key(self, outcome: Outcome) -> bytes | None:
        """The key a reply to `outcome` is signed with: its user's, once the request's own
        signature verified (a refused forgery gets an unsigned reply)."""
        if isinstance(outcome, Accepted):
            user: str | None = outcome.request.user
        else:
            user = outcome.audit.user if outcome.audit.authenticated else None
        key = self._keys.get(user) if user is not None else None
        return key.secret if key is not None else None

    def trail_opened(self, last_time: datetime | None) -> None:
        """Refuse what the previous run may have accepted: `last_time` is the newest audit
        record before this run appended any. Every request it accepted was audited by then,
        so was signed at most max_future_s after it. Taking the earlier of it and the start
        keeps a clock that stepped back from pushing the bound far ahead."""
        if last_time is None:
            return
        start = self._started if self._started is not None else last_time
        bound = min(last_time, start) + timedelta(seconds=self._cmd.max_future_s)
        self._not_before = max(start, bound)

    @property
    def not_before(self) -> datetime | None:
        """Requests signed at or before this are refused (None: no such bound)."""
        return self._not_before

    def verify(
        self, topic_verb: str, payload: bytes, now: datetime, client: str | None = None
    ) -> Outcome:
        """The decision on one request; `client` is what the transport knows of the sender."""
        try:
            request = parse(topic_verb, payload, self._site, self._cmd.max_payload_bytes)
        except Refusal as refusal:
            return self._refused_unparsed(refusal, topic_verb, payload, now, client)
        try:
            role = self._authenticate(request, now)
        except Refusal as refusal:
            return self._refused(refusal, request, now, client, role=None)
        try:
            self._authorise(request, role)
            old, new = self._within_limits(request)
        except Refusal as refusal:
            return self._refused(refusal, request, now, client, role=role)
        detail = f"{request.verb} on {request.object} accepted"
        audit = _audit(
            request, now, client, role, values=(old, new), outcome=("accepted", "accepted", detail)
        )
        return Accepted(request=request, role=role, old_value=old, audit=audit)

    def _authenticate(self, request: Request, now: datetime) -> str:
        """The user's role once signature, freshness, nonce and request_id check out."""
        key = self._keys.get(request.user)
        role = self._roles.get(request.user)
        if key is None or role is None:
            raise Refusal("unknown_user", f"unknown user {request.user[:64]!r}")
        try:
            good = verify(key.secret, request.fields, request.sig)
        except CanonicalError as exc:
            raise Refusal("bad_field", f"cannot be signed: {exc}") from None
        if not good:
            raise Refusal("bad_signature", f"signature does not match user {request.user[:64]!r}")
        self._fresh(request.ts, now)
        self._not_replayed(request, now.timestamp())
        return role

    def _fresh(self, ts: datetime, now: datetime) -> None:
        """Within the clock window, and after anything the previous run may have accepted."""
        age_s = (now - ts).total_seconds()
        if age_s > self._cmd.skew_s:
            raise Refusal(
                "stale_timestamp",
                f"signed {age_s:.1f} s ago, more than {self._cmd.skew_s:g} s: "
                "send it again, and check the client's clock",
            )
        if age_s < -self._cmd.max_future_s:
            raise Refusal(
                "future_timestamp",
                f"signed {-age_s:.1f} s in the future, more than {self._cmd.max_future_s:g} s: "
                "check the client's clock",
            )
        if self._not_before is not None and ts <= self._not_before:
            after = _utc_ceil_s(self._not_before)
            raise Refusal(
                "stale_timestamp",
                "signed too early: the daemon (re)started and cannot tell whether it carried "
                f"this request out before, so it cannot be checked for replay: sign it again "
                f"after {after}",
            )

    def _not_replayed(self, request: Request, now_s: float) -> None:
        if self._nonces.seen(request.user, request.nonce, now_s):
            raise Refusal("replayed_nonce", "this nonce was already used: a replayed request")
        if self._request_ids.seen("", request.request_id, now_s):
            raise Refusal("duplicate_request_id", "request_id was already used: pick a new one")
        if not (self._nonces.has_room(1, now_s) and self._request_ids.has_room(1, now_s)):
            raise Refusal("busy", "too many recent requests to protect against replay: retry")
        self._nonces.add(request.user, request.nonce, now_s)
        self._request_ids.add("", request.request_id, now_s)

    def _authorise(self, request: Request, role: str) -> None:
        if not self._policy.allows(role, request.verb, request.object):
            raise Refusal(
                "not_allowed",
                f"role {role!r} of user {request.user!r} may not {request.verb} {request.object}",
            )

    def _within_limits(self, request: Request) -> tuple[Value, Value]:
        """(old value, new value) for the audit trail, once the new value is allowed."""
        action = request.action
        if isinstance(action, Setpoint):
            target = self._target(self._plant.setpoint(action.loop), "loop", action.loop)
            check_value(target, action.value, f"set-point of {action.loop}")
            return target.current, action.value
        if isinstance(action, Write):
            target = self._target(self._plant.tag(action.tag), "writable tag", action.tag)
            check_value(target, action.value, action.tag)
            return target.current, action.value
        if isinstance(action, Mode):
            return self._mode_change(action)
        return self._other(action)

    def _other(
        self, action: BatchStart | BatchEnd | AlarmAction | RoomState
    ) -> tuple[Value, Value]:
        """Batches, alarms and rooms: the object exists and is in a state that allows it."""
        if isinstance(action, BatchStart | BatchEnd):
            known, running = self._plant.batch(action.device)
            if not known:
                raise Refusal("unknown_object", f"there is no device {action.device!r}")
            if isinstance(action, BatchStart) and running is not None:
                raise Refusal(
                    "batch_running", f"{action.device} runs batch {running}: end it first"
                )
            if isinstance(action, BatchEnd) and running != action.batch:
                what = f"batch {running}" if running else "no batch"
                raise Refusal("no_such_batch", f"{action.device} runs {what}, not {action.batch}")
            return running, new_value(action)
        if isinstance(action, AlarmAction):
            state = self._plant.alarm(action.alarm)
            if state is None:
                raise Refusal("unknown_object", f"there is no alarm {action.alarm!r}")
            return state, new_value(action)
        room = self._plant.room(action.room)
        if room is None:
            raise Refusal("unknown_object", f"there is no room {action.room!r}")
        return room, new_value(action)

    def _mode_change(self, action: Mode) -> tuple[Value, Value]:
        current = self._plant.mode(action.loop)
        if current is None:
            raise Refusal("unknown_object", f"there is no loop {action.loop!r}")
        if action.manual_output is not None:
            target = self._target(self._plant.output(action.loop), "loop", action.loop)
            check_value(target, action.manual_output, f"output of {action.loop}")
        return current, new_value(action)

    @staticmethod
    def _target(target: Target | None, kind: str, name: str) -> Target:
        if target is None:
            raise Refusal("unknown_object", f"there is no {kind} {name!r}")
        return target

    def _refused(
        self,
        refusal: Refusal,
        request: Request,
        now: datetime,
        client: str | None,
        role: str | None,
    ) -> Refused:
        new = _new_value(request)
        outcome: tuple[Literal["refused"], str, str] = ("refused", refusal.code, refusal.message)
        audit = _audit(request, now, client, role, values=(None, new), outcome=outcome)
        return Refused(refusal.code, refusal.message, request.request_id, audit)

    def _refused_unparsed(
        self, refusal: Refusal, verb: str, payload: bytes, now: datetime, client: str | None
    ) -> Refused:
        """A refusal before parsing finished: whatever could be read, all unauthenticated."""
        try:
            fields = decode(payload, self._cmd.max_payload_bytes)
        except Refusal:
            fields = {}
        request_id = _claimed(fields, "request_id")
        if request_id is not None and not _usable_id(request_id):
            request_id = None
        audit = AuditEntry(
            time=now,
            user=_claimed(fields, "user"),
            authenticated=False,
            role=None,
            action=f"cmd.{verb[:40]}",
            object=_claimed(fields, "loop") or _claimed(fields, "tag"),
            old_value=None,
            new_value=None,
            reason=_claimed(fields, "reason"),
            client=_claimed(fields, "client") or client,
            result="refused",
            code=refusal.code,
            detail=refusal.message,
            request_id=request_id,
            signed_ts=_claimed(fields, "ts"),
        )
        return Refused(refusal.code, refusal.message, request_id, audit)


def check_value(target: Target, value: float, what: str) -> None:
    """Refuse `value` outside [low, high] or further than max_step from the current value."""
    lim = target.limits
    if not lim.low <= value <= lim.high:
        raise Refusal(
            "out_of_limits",
            f"{value:g} is outside the limits of {what}: {lim.low:g} … {lim.high:g}",
        )
    if lim.max_step is None:
        return
    if target.current is None or not math.isfinite(target.current):
        raise Refusal(
            "current_unknown",
            f"the current value of {what} is not known, so the maximum step "
            f"({lim.max_step:g}) cannot be checked",
        )
    step = abs(value - target.current)
    if step > lim.max_step:
        raise Refusal(
            "step_too_large",
            f"{what} would change by {step:g} (from {target.current:g} to {value:g}); "
            f"at most {lim.max_step:g} per command",
        )


def _audit(
    request: Request,
    now: datetime,
    client: str | None,
    role: str | None,
    *,
    values: tuple[Value, Value],
    outcome: tuple[Literal["accepted", "refused"], str, str],
) -> AuditEntry:
    return AuditEntry(
        time=now,
        user=request.user,
        authenticated=role is not None,
        role=role,
        action=f"cmd.{request.verb}",
        object=request.object,
        old_value=values[0],
        new_value=values[1],
        reason=request.reason,
        client=request.client or client,
        result=outcome[0],
        code=outcome[1],
        detail=outcome[2],
        request_id=request.request_id,
        signed_ts=request.fields["ts"],  # type: ignore[arg-type]  # a str once parsed
    )


def _utc_ceil_s(t: datetime) -> str:
    """`t` in UTC, rounded up to the whole second, for a person to wait until."""
    t = t.astimezone(UTC)
    if t.microsecond:
        t = t.replace(microsecond=0) + timedelta(seconds=1)
    return t.isoformat().replace("+00:00", "Z")


def _new_value(request: Request) -> Value:
    return new_value(request.action)


def _claimed(fields: Mapping[str, object], key: str) -> str | None:
    value = fields.get(key)
    return value[:200] if isinstance(value, str) else None


def _usable_id(request_id: str) -> bool:
    return REQUEST_ID.fullmatch(request_id) is not None
