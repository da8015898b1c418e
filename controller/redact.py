"""Secrets out of what is shown: a URL's password never reaches a log line or an error."""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(://[^/@\s:]*):[^/@\s]*@")


def redact(text: str) -> str:
    """`text` with the password of any `scheme://user:password@` replaced by `***`."""
    return _USERINFO.sub(r"\1:***@", text)
