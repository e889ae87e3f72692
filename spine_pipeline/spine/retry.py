"""When to retry, and how long to wait: pure functions, shared by the sync and async clients.

The rules differ by request kind. A GET is idempotent, so 429, 5xx and transport failures
are retried. `POST /v1/run` creates a billable run and Spine has no idempotency key, so it
is retried only when the request provably never reached Spine: the connection could not be
opened (refused, connect timeout, no pooled connection) or Spine said 429.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import Enum

import httpx


class RequestKind(Enum):
    READ = "read"  # GET: safe to repeat
    CREATE = "create"  # POST /v1/run: repeat only if it never reached Spine


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter; `Retry-After` wins when the server sends it."""

    max_retries: int = 4
    base_delay: float = 0.5
    max_delay: float = 30.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.base_delay < 0 or self.max_delay < 0:
            raise ValueError("retry policy values must be non-negative")
        if not 0 <= self.jitter < 1:
            raise ValueError("retry jitter must be in [0, 1)")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `attempt` (0-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        raw = self.base_delay * (2**attempt)
        spread = raw * self.jitter
        return min(self.max_delay, max(0.0, raw + random.uniform(-spread, spread)))


NO_RETRY = RetryPolicy(max_retries=0)

# Transport errors raised before a single byte of the request left this machine.
_NEVER_SENT: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)
# Transport errors worth repeating for an idempotent request.
_RETRYABLE_READ: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ReadError,
    httpx.ReadTimeout,
    httpx.WriteError,
    httpx.WriteTimeout,
    httpx.RemoteProtocolError,
)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """`Retry-After` as seconds from now: either delta-seconds or an HTTP-date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def status_is_retryable(kind: RequestKind, status_code: int) -> bool:
    """A response status that may succeed if asked again, for this kind of request."""
    if status_code == 429:
        return True
    return kind is RequestKind.READ and status_code >= 500


def exception_is_retryable(kind: RequestKind, exc: Exception) -> bool:
    """A transport error that may succeed if repeated, for this kind of request."""
    if kind is RequestKind.CREATE:
        return isinstance(exc, _NEVER_SENT)
    return isinstance(exc, _RETRYABLE_READ)


def never_sent(exc: Exception) -> bool:
    """True when the request cannot have reached the server."""
    return isinstance(exc, _NEVER_SENT)
