"""Who may command what: `[[users]]`, `[[roles]]` and `[commands]` of the site file.

A user's key is the second component of the electronic signature (21 CFR 11.200(a)), so it
is never in the site file: `key_file` names a file only its owner can read (systemd's
`LoadCredential=` provides one). A key file anybody else can read is refused, not used.
"""

from __future__ import annotations

import base64
import binascii
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, model_validator

from drivers.registermap import Frozen

Verb = Literal[
    "setpoint",
    "mode",
    "write",
    "batch/start",
    "batch/end",
    "ack",
    "reset",
    "shelve",
    "unshelve",
    "out_of_service",
    "in_service",
    "room_state",
]
VERBS: tuple[Verb, ...] = get_args(Verb)
USER_ID = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
MIN_KEY_BYTES = 32  # as long as the HMAC-SHA256 output (RFC 2104 §3)
_HEX = re.compile(r"^(?:[0-9a-fA-F]{2})+$")


class UserConfig(Frozen):
    """One person who signs commands; `name` is the printed name shown with a signature."""

    id: str = Field(pattern=USER_ID)
    name: str = ""
    role: str
    key_file: Path = Field(description="hex or base64 key, ≥ 32 bytes, mode 0600 or 0400")


class Grant(Frozen):
    """Verbs allowed on the objects (loops `device.loop`, tags `device.tag`) matching a glob."""

    verbs: tuple[Verb, ...] = Field(min_length=1)
    objects: tuple[str, ...] = Field(default=("*",), min_length=1, description="fnmatch globs")


class RoleConfig(Frozen):
    """A named set of grants; a role without grants (a viewer) may command nothing."""

    name: str = Field(pattern=USER_ID)
    allow: tuple[Grant, ...] = ()


class CommandsSection(Frozen):
    """Freshness and replay protection of signed commands."""

    skew_s: float = Field(default=30.0, gt=0.0, le=600.0, description="max now - ts")
    max_future_s: float = Field(default=5.0, gt=0.0, description="max ts - now, ≤ skew_s")
    nonce_retention_s: float = Field(default=120.0, gt=0.0, le=86_400.0)
    nonce_cache_max: int = Field(default=100_000, ge=100, le=10_000_000)
    max_payload_bytes: int = Field(default=4096, ge=512, le=65_536)

    @model_validator(mode="after")
    def _retention_covers_window(self) -> CommandsSection:
        """A nonce must be remembered as long as a replay of it could still look fresh; a
        request may be signed only slightly ahead, as that margin outlasts a restart."""
        if self.nonce_retention_s < 2 * self.skew_s:
            raise ValueError(
                f"nonce_retention_s ({self.nonce_retention_s}) must be at least 2 × skew_s "
                f"({2 * self.skew_s}), or a replay could outlive its nonce"
            )
        if self.max_future_s > self.skew_s:
            raise ValueError(
                f"max_future_s ({self.max_future_s}) must be at most skew_s ({self.skew_s}): "
                "lower it too"
            )
        return self


class AccessConfig(Frozen):
    """Users, roles and command settings, checked against each other."""

    users: tuple[UserConfig, ...] = ()
    roles: tuple[RoleConfig, ...] = ()
    commands: CommandsSection = CommandsSection()

    @model_validator(mode="after")
    def _consistent(self) -> AccessConfig:
        problems = access_problems(self.users, self.roles)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def access_problems(users: tuple[UserConfig, ...], roles: tuple[RoleConfig, ...]) -> list[str]:
    """Duplicate user ids or role names, and users whose role does not exist."""
    problems = []
    role_names = [r.name for r in roles]
    problems += [f"duplicate role {n!r}" for n in _dupes(role_names)]
    problems += [f"duplicate user id {u!r}" for u in _dupes([u.id for u in users])]
    problems += [
        f"user {u.id!r}: role {u.role!r} is not a [[roles]] name (known: {', '.join(role_names)})"
        for u in users
        if u.role not in role_names
    ]
    return problems


def _dupes(names: list[str]) -> list[str]:
    return sorted({n for n in names if names.count(n) > 1})


@dataclass(frozen=True, repr=False)
class UserKey:
    """A user's HMAC key; its repr never shows the bytes (keys are never logged)."""

    user: str
    secret: bytes = field(compare=False)

    def __repr__(self) -> str:
        return f"UserKey(user={self.user!r}, secret=<{len(self.secret)} bytes>)"


class KeyFileError(Exception):
    """Key files that cannot be used; `errors` has one line per problem, without key bytes."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def load_keys(users: tuple[UserConfig, ...], base: Path) -> dict[str, UserKey]:
    """Every user's key, read from `key_file` (relative to `base`, the site file's folder)."""
    keys: dict[str, UserKey] = {}
    errors = []
    for i, user in enumerate(users):
        try:
            keys[user.id] = UserKey(user.id, read_key(base / user.key_file))
        except KeyFileError as exc:
            errors += [f"users.{i}.key_file: {e}" for e in exc.errors]
    if errors:
        raise KeyFileError(errors)
    return keys


def read_key(path: Path) -> bytes:
    """The key in `path`: hex if it is only hex digits, else base64; private files only."""
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                [
                    f"{path} is accessible to other users (mode {stat.S_IMODE(mode):04o}); "
                    f"a signing key must be private: chmod 600 {path}"
                ]
            )
        text = path.read_text(encoding="ascii").strip()
    except OSError as exc:
        raise KeyFileError([f"cannot read {path}: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise KeyFileError([f"{path}: not a hex or base64 key (non-ASCII content)"]) from None
    try:
        return decode_key(text)
    except ValueError as exc:
        raise KeyFileError([f"{path}: {exc}"]) from None


def decode_key(text: str) -> bytes:
    """A hex (only hex digits, even length) or base64 (standard or URL-safe) key.

    Raises ValueError for anything else or a key shorter than MIN_KEY_BYTES.
    """
    if _HEX.fullmatch(text):
        key = bytes.fromhex(text)
    else:
        altchars = b"-_" if ("-" in text or "_" in text) else None
        try:
            key = base64.b64decode(text.encode(), altchars=altchars, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not a hex or base64 key") from None
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"key is {len(key)} bytes, at least {MIN_KEY_BYTES} needed")
    return key
