"""Where the client's configuration comes from: arguments first, then the environment.

The environment is parsed by `spine_pipeline.settings`, the one reader of every variable;
this module adds what only the client needs: the `/v1` API root, the key as a `Secret`,
the timeouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from spine_pipeline.settings import (
    DEFAULT_BASE_URL,
    ConfigurationError,
    Settings,
    parse_api_key,
    parse_http_url,
)
from spine_pipeline.spine.redact import Secret

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_TIMEOUT",
    "ConfigurationError",
    "SpineSettings",
    "normalise_base_url",
]

DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0, pool=10.0)


def normalise_base_url(url: str) -> str:
    """API root ending in `/v1`, accepting it with or without (like spine-sdk)."""
    url = parse_http_url("SPINE_BASE_URL", url.strip()).rstrip("/")
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
        env = Settings.from_env() if api_key is None or not base_url else None
        key: str | Secret | None = api_key
        if isinstance(key, str):
            key = parse_api_key("api_key", key.strip()) if key.strip() else None
        elif key is None and env is not None:
            key = env.api_key
        if key is None:
            raise ConfigurationError("SPINE_API_KEY is not set (pass api_key or set the variable)")
        secret = key if isinstance(key, Secret) else Secret(key)
        url = base_url or (env.base_url if env is not None else DEFAULT_BASE_URL)
        if isinstance(timeout, int | float):
            timeout = httpx.Timeout(float(timeout), connect=min(10.0, float(timeout)))
        return cls(
            api_key=secret,
            base_url=normalise_base_url(url),
            timeout=timeout or DEFAULT_TIMEOUT,
        )
