"""Pre-signed download URLs: ``/files/<token>?expires=<unix>&sig=<hmac>``, S3-style.

They need no API key, expire after ``url_ttl_seconds`` on the simulator clock (so
``world.advance`` expires them), and every mint yields a fresh URL.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Callable
from email.utils import formatdate
from urllib.parse import quote


class UrlSigner:
    """Mints and verifies pre-signed file URLs."""

    def __init__(self, secret: bytes, ttl_seconds: float, clock: Callable[[], float]) -> None:
        self._secret = secret
        self._ttl = ttl_seconds
        self._clock = clock
        self._mints = 0

    def _sig(self, token: str, expires: int, nonce: str) -> str:
        message = f"{token}\n{expires}\n{nonce}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:40]

    def mint(self, token: str, base: str = "") -> str:
        """A fresh signed URL for ``token`` (``base`` is the server origin, e.g. http://host:port).

        Every call yields a different URL (a nonce is signed in), valid for the TTL from now.
        """
        self._mints += 1
        expires = int(self._clock() + self._ttl)
        nonce = f"{self._mints:x}"
        sig = self._sig(token, expires, nonce)
        return f"{base}/files/{quote(token, safe='')}?expires={expires}&n={nonce}&sig={sig}"

    def mint_stable(self, token: str, anchor: float, base: str = "") -> str:
        """A URL that stays identical for a whole TTL window counted from ``anchor``.

        Used for DAG node ``url``s, so repeated DAG reads (and ground truth) agree byte for
        byte; the URL rotates once less than half a TTL of validity is left.
        """
        now = self._clock()
        windows = max(1, math.ceil((now + self._ttl / 2 - anchor) / self._ttl))
        expires = int(anchor + windows * self._ttl)
        sig = self._sig(token, expires, "")
        return f"{base}/files/{quote(token, safe='')}?expires={expires}&sig={sig}"

    def check(self, token: str, expires: str | None, nonce: str | None, sig: str | None) -> str:
        """Return ``ok``, ``expired`` or ``bad-signature`` for a presented URL."""
        if not expires or not sig or not expires.isdigit():
            return "bad-signature"
        want = self._sig(token, int(expires), nonce or "")
        if not hmac.compare_digest(want, sig):
            return "bad-signature"
        if self._clock() >= int(expires):
            return "expired"
        return "ok"


def s3_error_xml(code: str, message: str, request_id: str, **extra: str) -> bytes:
    """An S3-like XML error document (what a real pre-signed URL returns on failure)."""
    fields = "".join(f"<{k}>{v}</{k}>" for k, v in extra.items())
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>{fields}"
        f"<RequestId>{request_id}</RequestId></Error>"
    ).encode()


def http_date(unix: float) -> str:
    """RFC 7231 date, as used in Retry-After and Expires."""
    return formatdate(unix, usegmt=True)
