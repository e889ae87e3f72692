"""Where the client's configuration comes from: arguments first, then the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import httpx

from spine_pipeline.spine.redact import Secret

DEFAULT_BASE_URL = "https://api.getspine.ai"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0, pool=10.0)


class ConfigurationError(ValueError):
    """A setting is missing or malformed; the message names it."""


def normalise_base_url(url: str) -> str:
    """API root ending in `/v1`, accepting it with or without (like spine-sdk)."""
    url = url.strip().rstrip("/")
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigurationError(f"SPINE_BASE_URL must be an http(s) URL, got {url!r}")
    return url if url.endswith("/v1") else url + "/v1"


@dataclass(frozen=True)
class SpineSettings:
    """Resolved client settings. The key is a `Secret`, so printing settings is safe."""

    api_key: Secret
    base_url: str = field(default=DEFAULT_BASE_URL + "/v1")
    timeout: httpx.Timeout = field(default_factory=lambda: DEFAULT_TIMEOUT)

    @classmethod
    def resolve(
        cls,
        api_key: str | Secret | None = None,
        base_url: str | None = None,
        timeout: httpx.Timeout | float | None = None,
    ) -> SpineSettings:
        key = api_key if api_key is not None else os.environ.get("SPINE_API_KEY")
        if isinstance(key, str):
            key = key.strip()
            if not key:
                key = None
        if key is None:
            raise ConfigurationError("SPINE_API_KEY is not set (pass api_key or set the variable)")
        secret = key if isinstance(key, Secret) else Secret(key)
        url = base_url or os.environ.get("SPINE_BASE_URL") or DEFAULT_BASE_URL
        if isinstance(timeout, int | float):
            timeout = httpx.Timeout(float(timeout), connect=min(10.0, float(timeout)))
        return cls(
            api_key=secret,
            base_url=normalise_base_url(url),
            timeout=timeout or DEFAULT_TIMEOUT,
        )
