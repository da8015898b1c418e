"""The signature of a command: HMAC-SHA256 over a canonical JSON form any language can build.

The canonical form is RFC 8785 (JSON Canonicalization Scheme) of the request object without
its `sig` member: keys sorted, no whitespace, strings escaped as ECMAScript `JSON.stringify`
does, numbers written as ECMAScript writes a double (`37`, `37.5`, `1e-7`, `1e+21`). Field
order and spacing on the wire therefore do not matter; every value does. `docs/commands.md`
states the rules for implementers in other languages.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping
from decimal import Decimal

JsonScalar = str | int | float | bool | None

SIG_FIELD = "sig"
SIG_HEX_LEN = 64  # SHA-256 digest, lowercase hex

_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


class CanonicalError(ValueError):
    """A value that has no canonical form (NaN, infinity, lone surrogate, nested data)."""


def canonical(fields: Mapping[str, JsonScalar]) -> bytes:
    """The bytes that are signed: RFC 8785 JSON of `fields` minus `sig`, UTF-8."""
    members = sorted((k, v) for k, v in fields.items() if k != SIG_FIELD)
    body = ",".join(f"{_string(k)}:{_value(v)}" for k, v in members)
    try:
        return ("{" + body + "}").encode("utf-8")
    except UnicodeEncodeError:
        raise CanonicalError("a string holds a lone surrogate, which has no UTF-8 form") from None


def sign(key: bytes, fields: Mapping[str, JsonScalar]) -> str:
    """The signature of `fields` with `key`: lowercase hex HMAC-SHA256 of the canonical form."""
    return hmac.new(key, canonical(fields), hashlib.sha256).hexdigest()


def verify(key: bytes, fields: Mapping[str, JsonScalar], sig: str) -> bool:
    """Whether `sig` signs `fields` with `key`; the comparison takes constant time."""
    return hmac.compare_digest(sign(key, fields), sig.lower())


def _value(value: JsonScalar) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: bool is an int in Python
        return "true" if value else "false"
    if isinstance(value, int | float):
        return number(float(value))
    if isinstance(value, str):
        return _string(value)
    raise CanonicalError(f"cannot sign a value of type {type(value).__name__}")


def _string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def number(x: float) -> str:
    """ECMAScript Number::toString of a double (RFC 8785 §3.2.2.3); NaN/inf are refused."""
    if not math.isfinite(x):
        raise CanonicalError("NaN and infinity have no JSON form")
    if x == 0:
        return "0"  # also -0
    sign_ = "-" if x < 0 else ""
    digits_t = Decimal(repr(abs(x))).normalize().as_tuple()  # shortest round-trip digits
    digits = "".join(map(str, digits_t.digits))
    exp = digits_t.exponent
    if not isinstance(exp, int):  # pragma: no cover - finite floats always have an int exponent
        raise CanonicalError("not a finite number")
    k, n = len(digits), len(digits) + exp  # x = 0.DIGITS × 10^n
    if k <= n <= 21:
        return sign_ + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign_ + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign_ + "0." + "0" * -n + digits
    e = n - 1
    mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{sign_}{mantissa}e{'+' if e > 0 else '-'}{abs(e)}"
