"""OPC UA device config: the node set as data, from the site file or a profile file.

Kept apart from the driver so that `cellfab check` validates OPC UA devices without
importing the driver (and asyncua, ~0.7 s) at all.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from drivers.base import DeviceBase
from drivers.registermap import TAG_PATTERN, Frozen
from simulators.bioreactor import BioreactorSimConfig


class NodeSpec(Frozen):
    """One tag: the node it reads and its engineering unit."""

    tag: str = Field(pattern=TAG_PATTERN)
    node: str = Field(
        min_length=1,
        description="'s=Id' / 'i=123' in the device namespace, or a browse path 'A/B/C'",
    )
    unit: str = ""
    description: str = ""
    writable: bool = False


class OpcUaProfile(Frozen):
    """A device family's node set, as a profile file (config/profiles/*.toml)."""

    name: str
    description: str = ""
    sources: tuple[str, ...] = ()
    namespace_uri: str = Field(min_length=1)
    nodes: tuple[NodeSpec, ...] = Field(min_length=1)


class OpcUaConfig(DeviceBase):
    """A device reached over OPC UA; node ids are resolved against `namespace_uri` at connect."""

    driver: Literal["opcua"]
    url: str = Field(pattern=r"^opc\.tcp://[^/\s]+")
    namespace_uri: str | None = Field(default=None, description="default: the profile's")
    profile: str | None = Field(default=None, description="profile name or path (TOML)")
    nodes: tuple[NodeSpec, ...] = ()
    mode: Literal["poll", "subscribe"] = "poll"
    publishing_interval_ms: float = Field(default=200.0, gt=0.0, le=60000.0)
    sampling_interval_ms: float = Field(default=100.0, ge=0.0, le=60000.0)
    stale_after_s: float | None = Field(
        default=30.0, gt=0.0, description="subscribe mode: BAD 'stale' after this silence"
    )
    connect_timeout_s: float = Field(default=5.0, gt=0.0, le=60.0)
    security_policy: Literal["None", "Basic256Sha256"] = "None"
    security_mode: Literal["Sign", "SignAndEncrypt"] = "SignAndEncrypt"
    application_uri: str = Field(default="urn:cellfab:client", description="= the cert's SAN URI")
    certificate_file: Path | None = None
    private_key_file: Path | None = None
    server_certificate_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    simulator: BioreactorSimConfig | None = None

    @model_validator(mode="after")
    def _consistent(self) -> OpcUaConfig:
        if not self.nodes and self.profile is None:
            raise ValueError("give either `profile` or inline `nodes`")
        tags = [n.tag for n in self.nodes]
        if len(set(tags)) != len(tags):
            raise ValueError(
                f"tag {next(t for i, t in enumerate(tags) if t in tags[:i])!r} repeats"
            )
        if self.security_policy != "None" and (
            self.certificate_file is None or self.private_key_file is None
        ):
            raise ValueError("a security policy needs `certificate_file` and `private_key_file`")
        if (self.username is None) != (self.password_file is None):
            raise ValueError("give `username` and `password_file` together")
        return self


def load_opcua_profile(path: Path) -> OpcUaProfile:
    """Read and validate a node-set profile file."""
    with path.open("rb") as f:
        return OpcUaProfile.model_validate(tomllib.load(f))


def with_profile(cfg: OpcUaConfig, base: Path) -> OpcUaConfig:
    """`cfg` with nodes and namespace taken from its profile (built-in name or path)."""
    if cfg.profile is None:
        return cfg
    if "/" in cfg.profile or cfg.profile.endswith(".toml"):
        prof = load_opcua_profile(base / cfg.profile)
    else:
        item = resources.files("config").joinpath("profiles", f"{cfg.profile}.toml")
        prof = OpcUaProfile.model_validate(tomllib.loads(item.read_text()))
    ns = cfg.namespace_uri or prof.namespace_uri
    return cfg.model_copy(update={"nodes": cfg.nodes or prof.nodes, "namespace_uri": ns})
