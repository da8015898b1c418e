"""The installed cellfab version: stamped on status messages, backups and batch records."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def cellfab_version() -> str:
    """The distribution's version, or "unknown" when running from an uninstalled tree."""
    try:
        return version("cellfab")
    except PackageNotFoundError:
        return "unknown"
