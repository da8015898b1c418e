"""Read a site file: TOML -> environment overrides -> validation -> device profiles.

Every problem is collected and reported as `FILE: path.to.key: message`, all at once, so an
engineer fixes a file in one round. Nothing is repaired silently.
"""

from __future__ import annotations

import copy
import os
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from controller.alarm_service import cleanroom_alarms, derived_tags
from controller.config import SiteConfig
from controller.loops_check import alarm_problems, catalog, loop_problems
from controller.redact import redact
from drivers.opcua_config import OpcUaConfig, with_profile
from drivers.registermap import RegisterMap
from drivers.registry import DRIVER_NAMES, AnyDeviceConfig

ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "CELLFAB_MQTT_URL": ("mqtt", "url"),
    "CELLFAB_INFLUX_URL": ("influx", "url"),
    "CELLFAB_INFLUX_TOKEN": ("influx", "token"),
    "CELLFAB_INFLUX_ORG": ("influx", "org"),
    "CELLFAB_INFLUX_BUCKET": ("influx", "bucket"),
    "CELLFAB_STATE_DIR": ("state", "dir"),
}

_FRIENDLY = {
    "extra_forbidden": "unknown key",
    "missing": "required key is missing",
}


class ConfigError(Exception):
    """A site file that cannot be used; `errors` lists every problem, one line each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def load_site(
    path: Path, env: Mapping[str, str] | None = None, *, read_secrets: bool = True
) -> SiteConfig:
    """The validated config of `path`, with env overrides and profiles resolved.

    `read_secrets=False` (for `cellfab check`) leaves `*_file` secrets unread: under systemd
    they exist only inside the service (LoadCredential=), not in an engineer's shell.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    return load_site_text(text, path, env, read_secrets=read_secrets)


def load_site_text(
    text: str,
    path: Path,
    env: Mapping[str, str] | None = None,
    *,
    read_secrets: bool = True,
) -> SiteConfig:
    """Like `load_site` for a file's text (the demo's embedded default); `path` names it."""
    env = os.environ if env is None else env
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: toml: {exc}"]) from None
    raw = apply_env(raw, env)
    errors = [f"{path}: {loc}: {msg}" for loc, msg in _duplicate_ids(raw)]
    try:
        cfg = SiteConfig.model_validate(raw)
    except ValidationError as exc:
        errors += [f"{path}: {loc}: {msg}" for loc, msg in pydantic_errors(exc, env)]
        raise ConfigError(errors) from None
    if errors:
        raise ConfigError(errors)
    return _resolve(cfg, path, read_secrets=read_secrets)


def apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    """A copy of `raw` with the CELLFAB_* environment variables that are set applied."""
    out = copy.deepcopy(raw)
    for var, (section, key) in ENV_OVERRIDES.items():
        value = env.get(var)
        if value:
            table = out.setdefault(section, {})
            if isinstance(table, dict):
                table[key] = value
    return out


def pydantic_errors(
    exc: ValidationError, env: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """(dotted key path, human message) for every error pydantic found.

    A value that came from a CELLFAB_* variable says so, since the file looks fine then.
    """
    from_env = {".".join(key): var for var, key in ENV_OVERRIDES.items() if env and env.get(var)}
    errors = exc.errors(include_url=False)
    failing = {e["loc"][:i] for e in errors for i in range(len(e["loc"]))}
    out = []
    for err in errors:
        if err["type"] == "too_short" and err["loc"] in failing:
            continue  # "no items" only because the items themselves are invalid
        loc = _dotted(err["loc"])
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            known = ", ".join(DRIVER_NAMES)
            ctx = err.get("ctx") or {}
            if err["type"] == "union_tag_not_found":
                out.append((f"{loc}.driver", f"required key is missing (one of: {known})"))
            else:
                out.append((f"{loc}.driver", f"unknown driver {ctx.get('tag')!r} (known: {known})"))
            continue
        msg = _FRIENDLY.get(err["type"], err["msg"])
        if loc in from_env:  # never echo the value: env values carry passwords and tokens
            loc = f"{loc} (from ${from_env[loc]})"
        elif err["type"] not in _FRIENDLY and not isinstance(err.get("input"), dict | None):
            msg = f"{msg} (got {redact(repr(err['input']))})"
        if msg.startswith("Value error, duplicate device id"):
            continue  # reported by _duplicate_ids with the exact key path
        out.append((loc, msg.removeprefix("Value error, ")))
    return out


def _dotted(loc: tuple[int | str, ...]) -> str:
    """`devices.3.port`: without the union tag pydantic inserts (`devices.3.modbus_tcp.port`)."""
    parts = [
        str(part)
        for i, part in enumerate(loc)
        if not (part in DRIVER_NAMES and i > 0 and isinstance(loc[i - 1], int))
    ]
    return ".".join(parts) or "(top level)"


def _duplicate_ids(raw: dict[str, Any]) -> list[tuple[str, str]]:
    devices = raw.get("devices")
    if not isinstance(devices, list):
        return []
    first: dict[str, int] = {}
    out = []
    for i, dev in enumerate(devices):
        dev_id = dev.get("id") if isinstance(dev, dict) else None
        if not isinstance(dev_id, str):
            continue
        if dev_id in first:
            out.append(
                (f"devices.{i}.id", f"duplicate device id {dev_id!r} (devices.{first[dev_id]}.id)")
            )
        else:
            first[dev_id] = i
    return out


def _resolve(cfg: SiteConfig, path: Path, *, read_secrets: bool) -> SiteConfig:
    """Load device profiles and secret files; errors name the file they are in."""
    errors: list[str] = []
    devices: list[AnyDeviceConfig] = []
    for i, dev in enumerate(cfg.devices):
        if isinstance(dev, OpcUaConfig):  # its profile is a node set, not a register map
            try:
                devices.append(with_profile(dev, path.parent))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, ValidationError) as exc:
                errors.append(f"{path}: devices.{i}.profile: {_one_line(exc)}")
            continue
        profile = getattr(dev, "profile", None)  # register-map devices (Modbus TCP / RTU)
        if getattr(dev, "register_map", None) is not None or profile is None:
            devices.append(dev)
            continue
        try:
            regmap = load_profile(profile, path.parent)
        except ConfigError as exc:
            errors += [f"{path}: devices.{i}.profile: {e}" for e in exc.errors]
            continue
        devices.append(dev.model_copy(update={"register_map": regmap}))
    influx = cfg.influx
    if read_secrets and influx.token is None and influx.token_file is not None:
        token = _read_secret(influx.token_file, path, "influx.token_file", errors)
        influx = influx.model_copy(update={"token": token})
    mqtt = cfg.mqtt
    if read_secrets and mqtt.password is None and mqtt.password_file is not None:
        password = _read_secret(mqtt.password_file, path, "mqtt.password_file", errors)
        mqtt = mqtt.model_copy(update={"password": password})
    if errors:
        raise ConfigError(errors)
    groups = [g.id for g in cfg.loop_groups]
    tags = catalog(devices)
    refs = loop_problems(cfg.loops, cfg.command_tags, groups, tags)
    refs += alarm_problems(cfg.alarms, tags, derived_tags(cfg))
    if cfg.cleanroom is not None:
        rules = cleanroom_alarms(cfg.cleanroom)
        refs += [
            ("cleanroom", msg.replace("alarms.", "rule ", 1))
            for _, msg in alarm_problems(rules, tags, derived_tags(cfg))
        ]
    if refs:
        raise ConfigError([f"{path}: {at}: {msg}" for at, msg in refs])
    return cfg.model_copy(update={"devices": tuple(devices), "influx": influx, "mqtt": mqtt})


def _one_line(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{loc}: {msg}" for loc, msg in pydantic_errors(exc))
    if isinstance(exc, OSError):
        return f"cannot read {exc.filename}: {exc.strerror}"
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.start})"
    return str(exc)


def _read_secret(secret: Path, path: Path, key: str, errors: list[str]) -> SecretStr | None:
    try:
        return SecretStr((path.parent / secret).read_text(encoding="utf-8").strip())
    except OSError as exc:
        errors.append(f"{path}: {key}: cannot read {secret}: {exc.strerror}")
        return None
    except UnicodeDecodeError:
        errors.append(f"{path}: {key}: {secret} is not UTF-8 text")
        return None


def load_profile(ref: str, base: Path) -> RegisterMap:
    """A register map by built-in name (config/profiles/NAME.toml) or by path."""
    if "/" in ref or ref.endswith(".toml"):
        source = base / ref
        name = str(source)
        try:
            text = source.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError([f"cannot read profile {name}: {exc.strerror}"]) from None
        except UnicodeDecodeError as exc:
            raise ConfigError([f"profile {name}: not UTF-8 text (byte {exc.start})"]) from None
    else:
        item = resources.files("config").joinpath("profiles", f"{ref}.toml")
        name = f"config/profiles/{ref}.toml"
        if not item.is_file():
            known = ", ".join(builtin_profiles()) or "none"
            raise ConfigError([f"no built-in profile {ref!r} (known: {known})"])
        text = item.read_text(encoding="utf-8")
    try:
        return RegisterMap.model_validate(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{name}: toml: {exc}"]) from None
    except ValidationError as exc:
        raise ConfigError([f"{name}: {loc}: {msg}" for loc, msg in pydantic_errors(exc)]) from None


def builtin_profiles() -> list[str]:
    """Names of the profiles shipped in config/profiles."""
    folder = resources.files("config").joinpath("profiles")
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )
