"""The `Spine-Signature` rule, in one place: how a delivery is signed and how it is checked.

The receiver verifies with `verify`; the simulator's sender signs with `sign`. Both follow
the fact sheet (`spine-api.md` section 5) and the official SDK's `_verify_and_parse`:

1. The header is split on `,`, each part on its first `=` (whitespace around a part is
   ignored, and so are parts without a value or with another name, as the SDK does). There
   must be exactly one `t` (the SDK keeps the last of several; two are refused here, since
   one of them would be ignored) and at least one `v1` (several allow dual signing).
2. `t` is a Unix time in ASCII digits (the SDK's `int()` would also take `+12`, `1_000`,
   spaces and other scripts' digits; none is a timestamp a sender writes).
3. `|now - t|` over the tolerance (300 s) is refused, in both directions: a stale delivery
   may be a replay, and a future one would stay replayable for longer than the window.
   `now` is truncated to whole seconds, like the SDK's `int(time.time())`.
4. `expected = HMAC-SHA256(key=secret.encode("utf-8"), msg=f"{t}.".encode() + raw_body)`,
   lower-case hex; the whole `whsec_...` string is the key, never base64-decoded.
5. Each `v1` is compared with `hmac.compare_digest`, against every configured secret (a
   rotation keeps the old and the new one for a while).

Only after this may the body be parsed: re-serialised JSON would not verify, and parsing
unauthenticated input is work an attacker could make us do.

Errors are typed, with a short `reason` that is safe to return and log: it never contains
the header, a signature, the body or a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from collections.abc import Sequence

__all__ = [
    "DEFAULT_TOLERANCE",
    "SIGNATURE_HEADER",
    "FutureTimestamp",
    "MalformedSignature",
    "MissingSignature",
    "NoMatchingSignature",
    "SignatureError",
    "StaleTimestamp",
    "TimestampError",
    "sign",
    "signature_hex",
    "verify",
]

SIGNATURE_HEADER = "Spine-Signature"
#: Seconds; the sender enforces the same window (spine-api.md section 5).
DEFAULT_TOLERANCE = 300
#: A header longer than this is refused unread: dozens of `v1` values fit, and nothing
#: legitimate is longer (servers cap a header near 8 KiB anyway).
MAX_HEADER_CHARS = 4096
_DIGITS = re.compile(r"[0-9]{1,15}")


class SignatureError(ValueError):
    """A delivery whose signature does not check. `reason` is short and safe to show."""

    reason = "bad signature"

    def __init__(self, reason: str | None = None) -> None:
        if reason is not None:
            self.reason = reason
        super().__init__(self.reason)


class MissingSignature(SignatureError):
    reason = "missing Spine-Signature header"


class MalformedSignature(SignatureError):
    reason = "malformed Spine-Signature header"


class NoMatchingSignature(SignatureError):
    reason = "no matching signature"


class TimestampError(SignatureError):
    """The timestamp is outside the tolerance window (the signature was not even checked)."""


class StaleTimestamp(TimestampError):
    reason = "signature timestamp too old"


class FutureTimestamp(TimestampError):
    reason = "signature timestamp in the future"


def signature_hex(secret: str, t: int, body: bytes) -> str:
    """The `v1` value: HMAC-SHA256 of `f"{t}."` + body, keyed by the secret's UTF-8 bytes."""
    if not isinstance(secret, str) or not secret:
        raise ValueError("a webhook secret must be a non-empty string")
    message = f"{int(t)}.".encode("ascii") + bytes(body)
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign(secret: str, t: int, body: bytes) -> str:
    """The `Spine-Signature` header value for `body` sent at Unix time `t`: `t=<t>,v1=<hex>`."""
    return f"t={int(t)},v1={signature_hex(secret, t, body)}"


def _parse(header: str) -> tuple[int, list[str]]:
    """(t, the v1 values) of a header, or MalformedSignature."""
    if len(header) > MAX_HEADER_CHARS:
        raise MalformedSignature("malformed Spine-Signature header: too long")
    stamps: list[str] = []
    v1: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if not name or not value:
            continue
        if name == "t":
            stamps.append(value)
        elif name == "v1":
            v1.append(value)
    if not stamps or not v1:
        missing = "t" if not stamps else "v1"
        raise MalformedSignature(f"malformed Spine-Signature header: no {missing}")
    if len(stamps) > 1:
        raise MalformedSignature("malformed Spine-Signature header: more than one t")
    if not _DIGITS.fullmatch(stamps[0]):
        raise MalformedSignature("malformed Spine-Signature header: t is not an integer")
    return int(stamps[0]), v1


def verify(
    header: str | None,
    body: bytes,
    secrets: Sequence[str],
    now: float,
    tolerance: int = DEFAULT_TOLERANCE,
) -> int:
    """Check a delivery's `Spine-Signature` header against its raw body; return its `t`.

    `secrets` are the endpoint's current secrets (one, or two during a rotation); `now` is
    the receiver's Unix time. Raises a `SignatureError` subclass: `MissingSignature`,
    `MalformedSignature`, `StaleTimestamp`, `FutureTimestamp` or `NoMatchingSignature`.
    """
    if (
        isinstance(secrets, str)
        or not secrets
        or not all(isinstance(s, str) and s for s in secrets)
    ):
        raise ValueError("verify needs a list of non-empty webhook secrets")
    if not header:
        raise MissingSignature()
    t, candidates = _parse(header)
    age = math.floor(now) - t
    if age > tolerance:
        raise StaleTimestamp()
    if -age > tolerance:
        raise FutureTimestamp()
    given = [c.encode("utf-8", "replace") for c in candidates]
    matched = False
    for secret in secrets:
        expected = signature_hex(secret, t, body).encode("ascii")
        for candidate in given:
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise NoMatchingSignature()
    return t
