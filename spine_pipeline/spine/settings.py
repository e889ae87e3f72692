"""Where the client's configuration comes from: arguments first, then the environment.

The environment is parsed by `spine_pipeline.settings`, the one reader of every variable;
this module adds what only the client needs: the `/v1` API root, the key as a `Secret`,
the timeouts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from spine_pipeline.settings import (
    DEFAULT_ARTIFACT_MAX_BYTES,
    DEFAULT_BASE_URL,
    ConfigurationError,
    Settings,
    missing_api_key,
    parse_api_key,
    parse_http_url,
    split_host_port,
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
    artifact_max_bytes: int = DEFAULT_ARTIFACT_MAX_BYTES
    artifact_allowed_hosts: tuple[str, ...] = ()

    @classmethod
    def resolve(
        cls,
        api_key: str | Secret | None = None,
        base_url: str | None = None,
        timeout: httpx.Timeout | float | None = None,
        artifact_max_bytes: int | None = None,
        artifact_allowed_hosts: Sequence[str] | None = None,
    ) -> SpineSettings:
        given = (api_key, base_url or None, artifact_max_bytes, artifact_allowed_hosts)
        env = Settings.from_env() if any(v is None for v in given) else None
        key: str | Secret | None = api_key
        if isinstance(key, str):
            key = parse_api_key("api_key", key.strip()) if key.strip() else None
        elif key is None and env is not None:
            key = env.api_key
        if key is None:
            raise missing_api_key()
        secret = key if isinstance(key, Secret) else Secret(key)
        url = base_url or (env.base_url if env is not None else DEFAULT_BASE_URL)
        if isinstance(timeout, int | float):
            timeout = httpx.Timeout(float(timeout), connect=min(10.0, float(timeout)))
        if env is not None:
            if artifact_max_bytes is None:
                artifact_max_bytes = env.artifact_max_bytes
            if artifact_allowed_hosts is None:
                artifact_allowed_hosts = env.artifact_allowed_hosts
        return cls(
            api_key=secret,
            base_url=normalise_base_url(url),
            timeout=timeout or DEFAULT_TIMEOUT,
            artifact_max_bytes=_byte_cap(artifact_max_bytes),
            artifact_allowed_hosts=_hosts(artifact_allowed_hosts or ()),
        )


def _byte_cap(value: int | None) -> int:
    if value is None or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"artifact_max_bytes must be a whole number at least 1: {value!r}")
    return value


def _hosts(entries: Sequence[str]) -> tuple[str, ...]:
    """Allow-list entries as given in code: checked like SPINE_ARTIFACT_ALLOWED_HOSTS."""
    if isinstance(entries, str):  # one comma-separated string, as the variable spells it
        entries = [e for e in entries.split(",") if e.strip()]
    for entry in entries:
        try:
            split_host_port(entry)
        except ValueError:
            raise ConfigurationError(
                f"artifact_allowed_hosts entry {entry[:60]!r} is not a host or host:port"
            ) from None
    return tuple(entries)
