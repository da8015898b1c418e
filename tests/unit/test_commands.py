"""The signed command channel: parsing, signature, freshness, replay, roles, limits, audit."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.access_config import (
    AccessConfig,
    CommandsSection,
    KeyFileError,
    UserConfig,
    UserKey,
    decode_key,
    load_keys,
    read_key,
)
from controller.audit import AuditTrail
from controller.authz import Limits, NonceCache, Target, Verifier
from controller.cmd_client import believable, reply_verified, send_command, sign_request
from controller.commands import Accepted, Mode, Refused, Setpoint, Write, reply_payload, reply_topic
from controller.signing import canonical, number, sign, verify

NOW = datetime(2026, 11, 22, 8, 0, 0, tzinfo=UTC)
KEYS = {
    "alice": UserKey("alice", bytes(range(32))),
    "bob": UserKey("bob", bytes(range(100, 132))),
    "vic": UserKey("vic", bytes(range(200, 232))),
}
SITE = "suite-a"  # the daemon's site: every request is signed for it

ACCESS = AccessConfig.model_validate(
    {
        "users": [
            {"id": "alice", "role": "operator", "key_file": "keys/alice.key"},
            {"id": "bob", "role": "engineer", "key_file": "keys/bob.key"},
            {"id": "vic", "role": "viewer", "key_file": "keys/vic.key"},
            {"id": "nokey", "role": "engineer", "key_file": "keys/nokey.key"},
        ],
        "roles": [
            {
                "name": "operator",
                "allow": [{"verbs": ["setpoint", "mode"], "objects": ["inc-*.*"]}],
            },
            {"name": "engineer", "allow": [{"verbs": ["setpoint", "mode", "write"]}]},
            {"name": "viewer"},
        ],
        "commands": {"skew_s": 30, "nonce_retention_s": 120, "nonce_cache_max": 100},
    }
)


@dataclass
class FakePlant:
    """Two loops and one writable tag, with limits and current values."""

    setpoints: dict[str, Target] = field(
        default_factory=lambda: {
            "inc-1.temp": Target(Limits(30.0, 40.0, 1.0), 37.0),
            "br-1.temp": Target(Limits(30.0, 40.0, None), 37.0),
            "inc-2.temp": Target(Limits(30.0, 40.0, 1.0), None),
        }
    )
    outputs: dict[str, Target] = field(
        default_factory=lambda: {"inc-1.temp": Target(Limits(0.0, 100.0, 50.0), 20.0)}
    )
    tags: dict[str, Target] = field(
        default_factory=lambda: {"br-1.pump": Target(Limits(0.0, 10.0, None), 0.0)}
    )

    def setpoint(self, loop: str) -> Target | None:
        return self.setpoints.get(loop)

    def output(self, loop: str) -> Target | None:
        return self.outputs.get(loop)

    def mode(self, loop: str) -> str | None:
        return "auto" if loop in self.setpoints else None

    def tag(self, tag: str) -> Target | None:
        return self.tags.get(tag)


def make_verifier(access: AccessConfig = ACCESS) -> Verifier:
    return Verifier(access, KEYS, FakePlant(), site=SITE)


_counter = iter(range(10**9))


def signed(
    verb: str = "setpoint",
    body: dict[str, Any] | None = None,
    user: str = "alice",
    now: datetime = NOW,
    **kwargs: Any,
) -> dict[str, Any]:
    """A correctly signed request of `user`, with a fresh nonce and request id."""
    body = {"loop": "inc-1.temp", "value": 37.5} if body is None else body
    key = KEYS[user].secret if user in KEYS else bytes(32)
    n = next(_counter)
    return sign_request(
        user, key, verb, body, site=SITE, reason="batch B-17 step 4", now=now,
        nonce=f"nonce-{n:012d}", request_id=f"req-{n:08d}", client="test",
        **kwargs,
    )  # fmt: skip


def wire(request: dict[str, Any]) -> bytes:
    return json.dumps(request).encode()


def resign(request: dict[str, Any], user: str = "alice") -> dict[str, Any]:
    """`request` with a signature recomputed after editing it (a genuine, odd request)."""
    out = {k: v for k, v in request.items() if k != "sig"}
    out["sig"] = sign(KEYS[user].secret, out)
    return out


def test_valid_setpoint_is_accepted_with_its_audit_data() -> None:
    """A signed, fresh, authorised set-point within limits is accepted and fully audited."""
    outcome = make_verifier().verify("setpoint", wire(signed()), NOW, client="mqtt")
    assert isinstance(outcome, Accepted)
    assert outcome.request.action == Setpoint("inc-1.temp", 37.5)
    audit = outcome.audit
    assert (audit.user, audit.role, audit.action, audit.object) == (
        "alice", "operator", "cmd.setpoint", "inc-1.temp",
    )  # fmt: skip
    assert (audit.old_value, audit.new_value, audit.result, audit.code) == (
        37.0, 37.5, "accepted", "accepted",
    )  # fmt: skip
    assert (audit.reason, audit.client, audit.time, audit.authenticated) == (
        "batch B-17 step 4", "test", NOW, True,
    )  # fmt: skip


def test_mode_and_write_are_accepted() -> None:
    """Manual mode with an output, auto mode and an engineer's tag write are accepted."""
    v = make_verifier()
    manual = v.verify("mode", wire(signed("mode", {"loop": "inc-1.temp", "mode": "manual",
                                                   "manual_output": 40})), NOW)  # fmt: skip
    auto = v.verify("mode", wire(signed("mode", {"loop": "inc-1.temp", "mode": "auto"})), NOW)
    write = v.verify("write", wire(signed("write", {"tag": "br-1.pump", "value": 2}, "bob")), NOW)
    assert isinstance(manual, Accepted) and isinstance(auto, Accepted)
    assert isinstance(write, Accepted)
    assert manual.request.action == Mode("inc-1.temp", "manual", 40.0)
    assert manual.audit.new_value == "manual (output 40)"
    assert auto.audit.old_value == "auto" and auto.audit.new_value == "auto"
    assert write.request.action == Write("br-1.pump", 2.0) and write.role == "engineer"


def _edit(**changes: Any) -> bytes:
    req = signed()
    req.update(changes)
    return wire({k: v for k, v in req.items() if v is not _DROP})


_DROP = object()

# (case, topic verb, payload, code, words the message contains)
PARSE_CASES = [
    ("truncated JSON", "setpoint", b'{"loop": "inc-1.temp",', "malformed_json", "line 1, column"),
    ("not an object", "setpoint", b"[1, 2]", "malformed_json", "array, not an object"),
    ("not UTF-8", "setpoint", b'{"a": "\xff"}', "malformed_json", "not UTF-8 at byte 7"),
    ("duplicate key", "setpoint", b'{"value": 1, "value": 2}', "malformed_json", "appears twice"),
    ("NaN", "setpoint", b'{"value": NaN}', "malformed_json", "NaN is not valid JSON"),
    ("too large", "setpoint", b" " * 5000, "malformed_json", "at most 4096"),
    ("nested", "setpoint", b'{"value": {"x": 1}}', "bad_field", "no nesting"),
    ("deep nesting", "setpoint", b"[" * 1500 + b"]" * 1500, "malformed_json", "too deeply"),
    ("unknown verb", "reboot", b"{}", "unknown_verb", "unknown verb 'reboot'"),
    ("verb mismatch", "mode", None, "verb_mismatch", "topic is cmd/mode"),
    ("missing reason", "setpoint", _edit(reason=_DROP), "missing_field", "reason"),
    ("missing request_id", "setpoint", _edit(request_id=_DROP), "missing_field", "request_id"),
    ("extra field", "setpoint", _edit(colour="red"), "extra_field", "'colour'"),
    ("value not a number", "setpoint", _edit(value="hot"), "bad_field", "value must be a number"),
    ("boolean value", "setpoint", _edit(value=True), "bad_field", "not boolean"),
    ("huge value", "setpoint", b"", "bad_field", "too large"),
    ("local time", "setpoint", _edit(ts="2026-11-22T09:00:00+01:00"), "bad_field", "UTC ISO"),
    ("bad request_id", "setpoint", _edit(request_id="a/b/c/d/e"), "bad_field", "request_id"),
    ("short nonce", "setpoint", _edit(nonce="abc"), "bad_field", "nonce"),
    ("bad object", "setpoint", _edit(loop="inc1"), "bad_field", "loop must be 'device.name'"),
    ("empty reason", "setpoint", _edit(reason="  "), "bad_field", "reason must be non-empty"),
    ("sig not hex", "setpoint", _edit(sig="zz"), "bad_field", "64 hex digits"),
]


def _special(case: str) -> bytes:
    if case == "verb mismatch":
        return wire(signed())
    req = signed()
    return wire(req).replace(b'"value": 37.5', b'"value": 1e999')


@pytest.mark.parametrize(("case", "verb", "payload", "code", "words"), PARSE_CASES)
def test_malformed_requests_are_refused_with_code_and_reason(
    case: str, verb: str, payload: bytes | None, code: str, words: str
) -> None:
    """Every malformed request is refused before anything else, saying what is wrong."""
    data = payload or _special(case)
    outcome = make_verifier().verify(verb, data, NOW)
    assert isinstance(outcome, Refused), case
    assert (outcome.code, outcome.audit.code, outcome.audit.result) == (code, code, "refused")
    assert words in outcome.message
    assert not outcome.audit.authenticated and outcome.audit.role is None


def test_an_integer_too_long_to_convert_is_malformed_not_a_crash() -> None:
    commands = {"skew_s": 30, "nonce_retention_s": 120, "max_payload_bytes": 65536}
    access = ACCESS.model_copy(update={"commands": CommandsSection.model_validate(commands)})
    outcome = make_verifier(access).verify("setpoint", b'{"value": ' + b"9" * 5000 + b"}", NOW)
    assert isinstance(outcome, Refused)
    assert outcome.code == "malformed_json"
    assert "unreadable JSON value" in outcome.message


def test_mode_fields_depend_on_the_mode() -> None:
    """Manual mode needs manual_output; auto mode must not carry one; other modes are refused."""
    v = make_verifier()
    manual = v.verify("mode", wire(signed("mode", {"loop": "inc-1.temp", "mode": "manual"})), NOW)
    auto = v.verify("mode", wire(signed("mode", {"loop": "inc-1.temp", "mode": "auto",
                                                 "manual_output": 3})), NOW)  # fmt: skip
    off = v.verify("mode", wire(signed("mode", {"loop": "inc-1.temp", "mode": "off"})), NOW)
    assert isinstance(manual, Refused) and manual.code == "missing_field"
    assert "manual_output" in manual.message
    assert isinstance(auto, Refused) and auto.code == "extra_field"
    assert isinstance(off, Refused) and off.code == "bad_field" and "auto" in off.message


def refusal(
    verb: str, request: dict[str, Any], now: datetime = NOW, v: Verifier | None = None
) -> Refused:
    outcome = (v or make_verifier()).verify(verb, wire(request), now)
    assert isinstance(outcome, Refused), outcome
    return outcome


def test_unknown_user_is_refused() -> None:
    """A user not in [[users]], or one whose key was not loaded, is refused as unknown."""
    for user in ("mallory", "nokey"):
        out = refusal("setpoint", signed(user=user))
        assert out.code == "unknown_user" and user in out.message
        assert out.audit.user == user and not out.audit.authenticated


def test_bad_signatures_are_refused_without_echoing_secrets() -> None:
    """A wrong key or any edit after signing is a bad signature; nothing secret is echoed."""
    wrong_key = signed()
    wrong_key["sig"] = sign(KEYS["bob"].secret, dict(wrong_key))
    tampered = signed()
    tampered["value"] = 39.9
    for req in (wrong_key, tampered):
        out = refusal("setpoint", req)
        assert out.code == "bad_signature" and "alice" in out.message
        for secret in (req["sig"], KEYS["alice"].secret.hex(), KEYS["bob"].secret.hex()):
            assert secret not in out.message and secret not in repr(out)
        assert out.audit.role is None and out.audit.seal_fields()["role"] == "(unauthenticated)"


def test_signature_is_checked_before_freshness_and_replay() -> None:
    """A stale forgery is a bad signature, and it does not burn the genuine nonce."""
    v = make_verifier()
    genuine = signed()
    forged = dict(genuine, value=39.0, ts="2020-01-01T00:00:00Z")
    assert refusal("setpoint", forged, v=v).code == "bad_signature"
    assert isinstance(v.verify("setpoint", wire(genuine), NOW), Accepted)


def test_stale_and_future_timestamps_are_refused() -> None:
    """More than skew_s old or max_future_s ahead is refused, saying by how much."""
    stale = refusal("setpoint", signed(now=NOW - timedelta(seconds=31)))
    future = refusal("setpoint", signed(now=NOW + timedelta(seconds=45)))
    assert stale.code == "stale_timestamp" and "31.0 s ago" in stale.message
    assert future.code == "future_timestamp" and "45.0 s in the future" in future.message
    edge = make_verifier().verify("setpoint", wire(signed(now=NOW - timedelta(seconds=30))), NOW)
    assert isinstance(edge, Accepted)
    ahead = make_verifier().verify("setpoint", wire(signed(now=NOW + timedelta(seconds=5))), NOW)
    assert isinstance(ahead, Accepted)
    beyond = refusal("setpoint", signed(now=NOW + timedelta(seconds=6)))
    assert beyond.code == "future_timestamp" and "more than 5 s" in beyond.message


def test_replayed_nonce_and_reused_request_id_are_refused() -> None:
    """The same request twice is a replay; a new nonce with an old request_id is refused too."""
    v = make_verifier()
    first = signed()
    assert isinstance(v.verify("setpoint", wire(first), NOW), Accepted)
    replay = refusal("setpoint", first, NOW + timedelta(seconds=5), v)
    assert replay.code == "replayed_nonce"
    again = resign(dict(first, nonce="another-nonce-0001"))
    dup = refusal("setpoint", again, NOW + timedelta(seconds=5), v)
    assert dup.code == "duplicate_request_id"
    other_user = resign(dict(first, user="bob", request_id="req-bob-000001"), "bob")
    assert isinstance(v.verify("setpoint", wire(other_user), NOW), Accepted)  # nonces per user


def test_replay_within_the_window_is_refused_even_at_its_last_fresh_instant() -> None:
    """A request signed at the future edge of the window cannot be replayed at its stale edge."""
    v = make_verifier()
    req = signed(now=NOW + timedelta(seconds=5))
    assert isinstance(v.verify("setpoint", wire(req), NOW), Accepted)
    assert refusal("setpoint", req, NOW + timedelta(seconds=35), v).code == "replayed_nonce"
    assert refusal("setpoint", req, NOW + timedelta(seconds=36), v).code == "stale_timestamp"


def test_requests_signed_before_a_restart_are_refused() -> None:
    """The replay cache is in memory, so a request signed before the verifier existed is stale."""
    v = Verifier(ACCESS, KEYS, FakePlant(), site=SITE, not_before=NOW)
    early = refusal("setpoint", signed(now=NOW - timedelta(seconds=1)), NOW, v)
    assert early.code == "stale_timestamp" and "(re)started" in early.message
    assert "sign it again after 2026-11-22T08:00:00Z" in early.message
    assert refusal("setpoint", signed(), NOW, v).code == "stale_timestamp"
    later = NOW + timedelta(milliseconds=1)
    assert isinstance(v.verify("setpoint", wire(signed(now=later)), later), Accepted)


def test_a_request_accepted_before_a_crash_is_refused_after_the_restart(tmp_path: Path) -> None:
    """Signed max_future_s ahead, accepted and audited just before a crash: after a restart
    within that margin the audit trail's last record still refuses its replay."""
    trail_file = tmp_path / "audit.jsonl"
    v1 = Verifier(ACCESS, KEYS, FakePlant(), site=SITE, not_before=NOW - timedelta(hours=1))
    req = signed(now=NOW + timedelta(seconds=5))
    accepted = v1.verify("setpoint", wire(req), NOW)
    assert isinstance(accepted, Accepted)
    with AuditTrail.open(trail_file, clock=lambda: NOW) as trail:
        trail.append(**accepted.audit.seal_fields())
    restart = NOW + timedelta(seconds=3)  # crash, systemd restarts within max_future_s
    v2 = Verifier(ACCESS, KEYS, FakePlant(), site=SITE, not_before=restart)
    with AuditTrail.open(trail_file) as trail:
        v2.trail_opened(trail.last_time)
    replay = refusal("setpoint", req, restart + timedelta(seconds=1), v2)
    assert replay.code == "stale_timestamp"
    assert "sign it again after 2026-11-22T08:00:05Z" in replay.message
    resigned = signed(now=NOW + timedelta(seconds=5, milliseconds=1))
    assert isinstance(v2.verify("setpoint", wire(resigned), restart), Accepted)


def test_the_restart_bound_never_falls_before_the_start_nor_runs_far_ahead() -> None:
    """An old trail leaves the start as the bound; a trail from the future (the clock stepped
    back) pushes it only max_future_s past the start; an empty trail changes nothing."""
    cases = [
        (NOW - timedelta(days=1), NOW),
        (NOW + timedelta(days=1), NOW + timedelta(seconds=5)),
        (None, NOW),
    ]
    for last_time, bound in cases:
        v = Verifier(ACCESS, KEYS, FakePlant(), site=SITE, not_before=NOW)
        v.trail_opened(last_time)
        assert v.not_before == bound


def test_full_replay_cache_refuses_instead_of_forgetting() -> None:
    """When the nonce cache is full of live nonces, new requests wait rather than weaken replay."""
    v = make_verifier()
    fill = {"loop": "br-1.temp", "value": 35}
    outcomes = [v.verify("setpoint", wire(signed(body=fill, user="bob")), NOW) for _ in range(100)]
    assert all(isinstance(o, Accepted) for o in outcomes)
    busy = refusal("setpoint", signed(), NOW, v)
    assert busy.code == "busy" and "retry" in busy.message
    later = NOW + timedelta(seconds=120)
    assert isinstance(v.verify("setpoint", wire(signed(now=later)), later), Accepted)


def test_roles_limit_verbs_and_objects() -> None:
    """Viewers may do nothing, operators only on matching loops, writes need an engineer."""
    viewer = refusal("setpoint", signed(user="vic"))
    outside = refusal("setpoint", signed(body={"loop": "br-1.temp", "value": 36}))
    write = refusal("write", signed("write", {"tag": "br-1.pump", "value": 1}))
    assert viewer.code == "not_allowed" and "role 'viewer'" in viewer.message
    assert outside.code == "not_allowed" and "br-1.temp" in outside.message
    assert write.code == "not_allowed" and "may not write br-1.pump" in write.message
    assert viewer.audit.authenticated and viewer.audit.role == "viewer"


@pytest.mark.parametrize(
    ("verb", "body", "user", "code", "words"),
    [
        ("setpoint", {"loop": "inc-9.temp", "value": 37}, "alice", "unknown_object", "no loop"),
        ("write", {"tag": "br-1.heater", "value": 1}, "bob", "unknown_object", "writable tag"),
        ("mode", {"loop": "inc-9.x", "mode": "auto"}, "alice", "unknown_object", "inc-9.x"),
        ("setpoint", {"loop": "br-1.temp", "value": 41}, "bob", "out_of_limits", "30 … 40"),
        ("setpoint", {"loop": "br-1.temp", "value": 29.5}, "bob", "out_of_limits", "29.5"),
        ("write", {"tag": "br-1.pump", "value": 11}, "bob", "out_of_limits", "0 … 10"),
        ("setpoint", {"loop": "inc-1.temp", "value": 38.5}, "alice", "step_too_large",
         "change by 1.5 (from 37 to 38.5); at most 1"),
        ("mode", {"loop": "inc-1.temp", "mode": "manual", "manual_output": 101}, "alice",
         "out_of_limits", "output of inc-1.temp"),
        ("mode", {"loop": "inc-1.temp", "mode": "manual", "manual_output": 80}, "alice",
         "step_too_large", "at most 50"),
        ("setpoint", {"loop": "inc-2.temp", "value": 37}, "alice", "current_unknown",
         "not known"),
    ],
)  # fmt: skip
def test_objects_and_limits_are_checked_after_authorisation(
    verb: str, body: dict[str, Any], user: str, code: str, words: str
) -> None:
    """Unknown objects, values beyond the limits and too-large steps are refused."""
    out = refusal(verb, signed(verb, body, user))
    assert out.code == code and words in out.message
    assert out.audit.authenticated and out.audit.object == (body.get("loop") or body["tag"])


def test_reply_topic_and_payload() -> None:
    """Replies go to <prefix>/reply/<request_id> with ok, code and message; none without an id."""
    v = make_verifier()
    ok = v.verify("setpoint", wire(signed()), NOW)
    bad = v.verify("setpoint", b"{", NOW)
    assert reply_topic("cellfab/s1", ok) == f"cellfab/s1/reply/{ok.request_id}"
    assert reply_topic("cellfab/s1", bad) is None
    body = json.loads(reply_payload(ok, NOW))
    assert body == {"request_id": ok.request_id, "ok": True, "code": "accepted",
                    "message": "setpoint on inc-1.temp accepted",
                    "ts": "2026-11-22T08:00:00.000000Z"}  # fmt: skip
    refused = json.loads(reply_payload(refusal("setpoint", signed(user="vic")), NOW))
    assert refused["ok"] is False and refused["code"] == "not_allowed"


def test_replies_to_an_authenticated_user_are_signed_with_that_users_key() -> None:
    """Anyone who can publish on the broker could post "accepted" on a reply topic: a reply
    signed with the user's key is the daemon's; a refused forgery gets an unsigned reply."""
    v = make_verifier()
    accepted = v.verify("setpoint", wire(signed()), NOW)
    not_allowed = v.verify("setpoint", wire(signed(user="vic")), NOW)
    forged = v.verify("setpoint", wire({**signed(), "sig": "0" * 64}), NOW)
    alice, vic = KEYS["alice"].secret, KEYS["vic"].secret
    assert v.reply_key(accepted) == alice
    assert v.reply_key(not_allowed) == vic  # authenticated, then refused: still signed
    assert v.reply_key(forged) is None
    signed_reply = json.loads(reply_payload(accepted, NOW, v.reply_key(accepted)))
    assert reply_verified(alice, signed_reply)
    assert not reply_verified(vic, signed_reply)
    assert not reply_verified(alice, {**signed_reply, "ok": False})
    unsigned = json.loads(reply_payload(forged, NOW, v.reply_key(forged)))
    assert "sig" not in unsigned


def test_only_believable_replies_are_taken() -> None:
    """With the user's key: a signed reply, or an unsigned refusal; never an unsigned "ok"."""
    alice = KEYS["alice"].secret
    v = make_verifier()
    good = json.loads(reply_payload(v.verify("setpoint", wire(signed()), NOW), NOW, alice))
    assert believable(alice, good)
    assert not believable(alice, {k: val for k, val in good.items() if k != "sig"})
    assert not believable(KEYS["bob"].secret, good)
    assert believable(alice, {"request_id": "x" * 8, "ok": False, "code": "bad_signature"})
    assert believable(None, {"ok": True})  # no key given: no check (tests, tools)


# --- the canonical form -------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20),
)  # fmt: skip
keys = st.text(min_size=1, max_size=8).filter(lambda k: k != "sig")  # sig is never signed
objects = st.dictionaries(keys, scalars, min_size=1, max_size=8)


@given(objects, st.randoms())
def test_field_order_does_not_change_the_signature(fields: dict[str, Any], rnd: Any) -> None:
    """Any order of the same members gives the same canonical bytes and signature."""
    items = list(fields.items())
    rnd.shuffle(items)
    assert canonical(dict(items)) == canonical(fields)
    assert verify(b"k" * 32, dict(items), sign(b"k" * 32, fields))


@given(objects, st.data())
def test_any_change_to_a_signed_field_breaks_the_signature(
    fields: dict[str, Any], data: Any
) -> None:
    """Changing, adding or removing any member other than sig invalidates the signature."""
    sig = sign(b"k" * 32, fields)
    key = data.draw(st.sampled_from(sorted(fields)))
    new = data.draw(scalars.filter(lambda v: canonical({"x": v}) != canonical({"x": fields[key]})))
    assert not verify(b"k" * 32, {**fields, key: new}, sig)
    assert not verify(b"k" * 32, {k: v for k, v in fields.items() if k != key}, sig)
    assert not verify(b"k" * 32, {**fields, key + "_": 1}, sig) or key + "_" in fields


def test_canonical_form_matches_rfc8785() -> None:
    """Keys sorted, no spaces, ECMAScript numbers and JSON.stringify escapes; sig excluded."""
    got = canonical({"b": 'é\n\x01"', "a": 1.0, "sig": "x", "c": True, "d": None})
    assert got == '{"a":1,"b":"é\\n\\u0001\\"","c":true,"d":null}'.encode()
    vectors = {1e21: "1e+21", 1e20: "100000000000000000000", 1e-7: "1e-7", 0.000001: "0.000001",
               -0.0: "0", 4.5: "4.5", 2e-3: "0.002", 1e-27: "1e-27", 333333333.3333333:
               "333333333.3333333", 5e-324: "5e-324", 1.7976931348623157e308:
               "1.7976931348623157e+308", -1.5e-7: "-1.5e-7"}  # fmt: skip
    for x, text in vectors.items():
        assert number(x) == text


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_canonical_numbers_round_trip(x: float) -> None:
    """Every finite double is written so that it reads back as the same double."""
    assert float(number(x)) == x


def test_sign_request_round_trips_through_the_verifier() -> None:
    """sign_request output passes parse and signature check; body cannot override fields."""
    req = signed("write", {"tag": "br-1.pump", "value": 3}, "bob")
    assert verify(KEYS["bob"].secret, req, req["sig"])
    assert isinstance(make_verifier().verify("write", wire(req), NOW), Accepted)
    with pytest.raises(ValueError, match="user"):
        sign_request("bob", b"k" * 32, "write", {"user": "alice"}, site=SITE, reason="r",
                     now=NOW, nonce="n" * 16)  # fmt: skip


def test_a_request_signed_for_another_site_is_refused_before_its_signature() -> None:
    """Suites that share a broker, user ids and keys cannot replay each other's requests."""
    elsewhere = signed()
    elsewhere = {**elsewhere, "site": "suite-b"}
    outcome = make_verifier().verify("setpoint", wire(resign(elsewhere)), NOW)
    assert isinstance(outcome, Refused)
    assert outcome.code == "wrong_site"
    assert outcome.message == "signed for site 'suite-b', this is site 'suite-a'"
    unsigned = {k: v for k, v in signed().items() if k != "site"}
    missing = make_verifier().verify("setpoint", wire(resign(unsigned)), NOW)
    assert isinstance(missing, Refused)
    assert (missing.code, missing.message) == (
        "missing_field",
        "missing field(s) for setpoint: site",
    )


# --- the replay cache ----------------------------------------------------------------------


@given(st.floats(0, 1e6), st.floats(0, 1e4), st.floats(1, 1e3))
def test_nonce_cache_remembers_exactly_for_the_retention(t0: float, dt: float, keep: float) -> None:
    """A nonce is seen for `retention_s` after it was added and forgotten from then on."""
    cache = NonceCache(keep, 10)
    cache.add("alice", "n1", t0)
    assert cache.seen("alice", "n1", t0 + dt) == (t0 + dt < t0 + keep)
    assert not cache.seen("bob", "n1", t0)


def test_a_reload_applies_its_retention_to_the_replay_caches() -> None:
    """Raising skew_s and nonce_retention_s by reload: no nonce, from before or after the
    reload, is forgotten while a replay of it could look fresh under the new skew."""
    v = make_verifier()
    before = signed()
    assert isinstance(v.verify("setpoint", wire(before), NOW), Accepted)
    wider = {"skew_s": 300.0, "nonce_retention_s": 600.0, "nonce_cache_max": 200}
    access = ACCESS.model_copy(update={"commands": ACCESS.commands.model_copy(update=wider)})
    v.reconfigure(access, KEYS, FakePlant())
    after = signed()
    assert isinstance(v.verify("setpoint", wire(after), NOW), Accepted)
    for req in (before, after):
        assert refusal("setpoint", req, NOW + timedelta(seconds=130), v).code == "replayed_nonce"
        assert refusal("setpoint", req, NOW + timedelta(seconds=299), v).code == "replayed_nonce"
    fill = {"loop": "br-1.temp", "value": 35}
    outcomes = [v.verify("setpoint", wire(signed(body=fill, user="bob")), NOW) for _ in range(198)]
    assert all(isinstance(o, Accepted) for o in outcomes)  # 200 fit, not the startup 100
    assert refusal("setpoint", signed(), NOW, v).code == "busy"


def test_a_shorter_retention_forgets_no_nonce_early_and_purges_in_order() -> None:
    """Tokens added after a shorter retention expire no earlier than those before them, so
    purging from the oldest end stays complete and nothing is forgotten early."""
    cache = NonceCache(100.0, 10)
    cache.add("u", "old", 0.0)
    cache.configure(10.0, 2)
    cache.add("u", "new", 1.0)
    assert cache.seen("u", "old", 99.0) and cache.seen("u", "new", 99.0)
    assert not cache.has_room(1, 99.0)  # a smaller capacity forgets nothing either
    assert not cache.seen("u", "old", 100.0) and not cache.seen("u", "new", 100.0)
    assert len(cache) == 0 and cache.has_room(2, 100.0)


def test_nonce_cache_forgets_old_nonces() -> None:
    """Expired nonces are dropped, so the cache does not grow without bound."""
    cache = NonceCache(10.0, 1000)
    for i in range(100):
        cache.add("u", f"n{i}", float(i))
    assert cache.has_room(1, 200.0) and len(cache) == 0


# --- access configuration ------------------------------------------------------------------


def _key_file(tmp_path: Path, text: str, mode: int) -> Path:
    path = tmp_path / "k.key"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_private_key_files_are_read_hex_or_base64(tmp_path: Path) -> None:
    """A 0600 file with a hex or base64 key of at least 32 bytes is read."""
    key = bytes(range(32))
    assert read_key(_key_file(tmp_path, key.hex() + "\n", 0o600)) == key
    assert read_key(_key_file(tmp_path, base64.b64encode(key).decode(), 0o400)) == key
    assert decode_key(base64.urlsafe_b64encode(b"\xff" * 32).decode()) == b"\xff" * 32


@pytest.mark.parametrize(
    ("text", "mode", "words"),
    [
        ("00" * 32, 0o644, "accessible to other users (mode 0644)"),
        ("00" * 32, 0o640, "chmod 600"),
        ("00" * 16, 0o600, "16 bytes, at least 32"),
        ("not a key!", 0o600, "not a hex or base64 key"),
    ],
)
def test_unusable_key_files_are_refused(tmp_path: Path, text: str, mode: int, words: str) -> None:
    """World- or group-accessible, short or undecodable key files are refused, clearly."""
    _key_file(tmp_path, text, mode)
    user = UserConfig(id="alice", role="operator", key_file=Path("k.key"))
    with pytest.raises(KeyFileError) as exc:
        load_keys((user,), tmp_path)
    assert any(words in e and e.startswith("users.0.key_file:") for e in exc.value.errors)
    assert text not in str(exc.value)


def test_user_key_repr_hides_the_secret() -> None:
    """A key never appears in a repr (and so never in a log line or traceback)."""
    assert "secret=<32 bytes>" in repr(KEYS["alice"])
    assert KEYS["alice"].secret.hex() not in repr(KEYS["alice"])


def test_access_config_is_checked() -> None:
    """Unknown roles, duplicate users and a retention shorter than 2 × skew are errors."""
    with pytest.raises(ValueError, match="role 'boss' is not a \\[\\[roles\\]\\] name"):
        AccessConfig.model_validate(
            {"users": [{"id": "a", "role": "boss", "key_file": "a.key"}], "roles": []}
        )
    with pytest.raises(ValueError, match="duplicate user id 'a'"):
        AccessConfig.model_validate(
            {"users": [{"id": "a", "role": "r", "key_file": "a"}] * 2, "roles": [{"name": "r"}]}
        )
    with pytest.raises(ValueError, match="at least 2 × skew_s"):
        CommandsSection(skew_s=60, nonce_retention_s=100)
    with pytest.raises(ValueError, match=r"max_future_s \(10.0\) must be at most skew_s"):
        CommandsSection(skew_s=8, nonce_retention_s=100, max_future_s=10)
    with pytest.raises(ValueError, match="greater than 0"):
        CommandsSection(max_future_s=0)
    assert CommandsSection().max_future_s == 5.0
    with pytest.raises(ValueError, match="Extra inputs"):
        AccessConfig.model_validate({"users": [], "key": "deadbeef"})


# --- the client ----------------------------------------------------------------------------


@dataclass
class FakeMessage:
    topic: aiomqtt.Topic
    payload: bytes


class FakeClient:
    """Stands in for aiomqtt.Client: answers cmd/<verb> through a Verifier, as the daemon will."""

    def __init__(self, answer: bool = True) -> None:
        self.answer = answer
        self.calls: list[str] = []
        self.inbox: asyncio.Queue[FakeMessage] = asyncio.Queue()

    async def subscribe(self, topic: str, **_: Any) -> None:
        self.calls.append(f"sub {topic}")

    async def publish(self, topic: str, payload: bytes, **_: Any) -> None:
        self.calls.append(f"pub {topic}")
        await self.inbox.put(FakeMessage(aiomqtt.Topic("p/reply/someone-else"), b"{}"))
        outcome = make_verifier().verify(topic.rsplit("/", 1)[1], payload, NOW)
        where = reply_topic("p", outcome)
        if self.answer and where:
            await self.inbox.put(FakeMessage(aiomqtt.Topic(where), reply_payload(outcome, NOW)))

    @property
    def messages(self) -> AsyncIterator[FakeMessage]:
        async def gen() -> AsyncIterator[FakeMessage]:
            while True:
                yield await self.inbox.get()

        return gen()


async def test_send_command_subscribes_first_and_returns_the_reply() -> None:
    """send_command subscribes to its reply topic before publishing and returns the reply."""
    client = FakeClient()
    req = signed()
    reply = await send_command(client, "p", req, timeout_s=5)  # type: ignore[arg-type]
    assert reply["ok"] is True and reply["request_id"] == req["request_id"]
    assert client.calls == [f"sub p/reply/{req['request_id']}", "pub p/cmd/setpoint"]


async def test_send_command_waits_past_a_forged_reply_for_the_daemons() -> None:
    """A forged "accepted" that arrives first is skipped; the signed reply is returned."""

    class Forger(FakeClient):
        async def publish(self, topic: str, payload: bytes, **kw: Any) -> None:
            request = json.loads(payload)
            fake = {"request_id": request["request_id"], "ok": True, "code": "accepted"}
            where = aiomqtt.Topic(f"p/reply/{request['request_id']}")
            await self.inbox.put(FakeMessage(where, json.dumps(fake).encode()))
            outcome = make_verifier().verify(topic.rsplit("/", 1)[1], payload, NOW)
            real = reply_payload(outcome, NOW, KEYS["vic"].secret)
            await self.inbox.put(FakeMessage(where, real))

    req = signed(user="vic")  # vic may not: the daemon's real answer is a signed refusal
    reply = await send_command(Forger(), "p", req, 5, KEYS["vic"].secret)  # type: ignore[arg-type]
    assert (reply["ok"], reply["code"]) == (False, "not_allowed")


async def test_send_command_times_out_without_a_reply() -> None:
    """No reply within the timeout is a TimeoutError naming the reply topic."""
    req = signed()
    with pytest.raises(TimeoutError, match=f"p/reply/{req['request_id']}"):
        await send_command(FakeClient(answer=False), "p", req, timeout_s=0.05)  # type: ignore[arg-type]
