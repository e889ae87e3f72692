"""Every environment variable the product reads, parsed and validated in one place.

Each variable used to be read where it was used, with its own parser or none: a typo in
one failed at load with a clear message, in another as a float() traceback in the middle of
a sensor tick, and a third was silently ignored. Here each variable has one typed parser,
one default and one error wording, and `Settings.from_env` validates the whole environment
at once, so a bad setting stops a command (exit 2) or the code location before anything
runs, rather than half-way through.

A leaf module: it imports nothing from the project, so the libraries (`spine/`, `archive/`,
`audit/`) read their settings here without importing upwards. Settings are resolved per
call from the mapping given (the process environment by default), never cached at import:
the demo, the tests and the soak change the environment between calls, and a parse is a
few dictionary look-ups.

Errors are one line naming the variable and, except for the API key, the signing key and the
webhook secret, the value (shortened, any URL credentials masked). The API key is only ever
"not set" or "malformed"; the signing key (a path or PEM text) and the webhook secret are
never shown either.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")

DEFAULT_BASE_URL = "https://api.getspine.ai"
DEFAULT_ARCHIVE_URI = "data/archive"
DEFAULT_AUDIT_DB = "data/audit.duckdb"
DEFAULT_CATALOG = "data/requests.yaml"
DEFAULT_ARCHIVE_BATCH_SIZE = 100
DEFAULT_POLL_BUDGET_SECONDS = 40.0
DEFAULT_POLL_MIN_INTERVAL = 15.0
DEFAULT_POLL_MAX_INTERVAL = 60.0
DEFAULT_POLL_REREQUEST = 600.0
DEFAULT_AUDIT_RETRY = 300.0
DEFAULT_ARTIFACT_MAX_BYTES = 2 * 1024**3
DEFAULT_AUDIT_MEMORY_LIMIT = 1 << 30  # bytes
DEFAULT_RUN_FETCH_DEADLINE = 600.0
SSE_MODES = ("AES256", "aws:kms")
MAX_OBJECT_LOCK_DAYS = 36_500

#: Every variable `Settings.from_env` reads, in the order of README's configuration table.
VARIABLES = (
    "SPINE_API_KEY",
    "SPINE_BASE_URL",
    "SPINE_ARCHIVE_URI",
    "SPINE_AUDIT_DB",
    "SPINE_CATALOG",
    "SPINE_ARCHIVE_BATCH_SIZE",
    "SPINE_POLL_BUDGET_SECONDS",
    "SPINE_POLL_MIN_INTERVAL_SECONDS",
    "SPINE_POLL_MAX_INTERVAL_SECONDS",
    "SPINE_POLL_REREQUEST_SECONDS",
    "SPINE_AUDIT_RETRY_SECONDS",
    "SPINE_AUDIT_MEMORY_LIMIT",
    "SPINE_AUDIT_CATALOG",
    "SPINE_RUN_FETCH_DEADLINE_SECONDS",
    "SPINE_CREDIT_BUDGET_DAILY",
    "SPINE_CREDIT_BUDGET_MONTHLY",
    "SPINE_ARTIFACT_MAX_BYTES",
    "SPINE_ARTIFACT_ALLOWED_HOSTS",
    "SPINE_S3_SSE",
    "SPINE_S3_SSE_KMS_KEY_ID",
    "SPINE_S3_OBJECT_LOCK_DAYS",
    "SPINE_SIGNING_KEY",
    "SPINE_VERIFY_KEY",
    "SPINE_WITNESS_URI",
    "SPINE_WEBHOOK_SECRET",
    "SPINE_TRACK_FROM_WEBHOOKS",
    "SPINE_ALERT_WEBHOOK_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "DAGSTER_HOME",
)


class ConfigurationError(ValueError):
    """A setting is missing or malformed; the message names it, on one line.

    A `ValueError`, as it always was, so callers that treat bad input as `ValueError` keep
    doing so; the CLI maps it to exit code 2 (bad usage) before its other errors.
    """


class MissingSettingError(ConfigurationError):
    """A required setting is unset. Its message is for library callers, who may pass the
    value as an argument; `cli_message` is for CLI users, who can only set the variable:
    both live here, so they cannot drift apart."""

    def __init__(self, variable: str, argument: str, value: str, hint: str = "") -> None:
        self.variable = variable
        self.cli_message = f"{variable} is not set: export {variable}=<{value}>" + (
            f" ({hint})" if hint else ""
        )
        super().__init__(f"{variable} is not set (pass {argument} or set the variable)")


def missing_api_key() -> MissingSettingError:
    """The error for a client built without a key, from the CLI or from Python."""
    return MissingSettingError(
        "SPINE_API_KEY",
        "api_key",
        "your Spine API key",
        "or try the embedded simulator: spine-pipeline demo",
    )


# ----------------------------------------------------------------------------- messages

_SHOWN_CHARS = 60
_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")


def _shown(raw: str) -> str:
    """The value for a message: credentials in a URL masked, long values cut, one line."""
    text = _USERINFO.sub("***@", raw)
    if len(text) > _SHOWN_CHARS:
        return f"{text[:_SHOWN_CHARS]!r} (cut)"
    return repr(text)


def _bad(name: str, expected: str, raw: str) -> ConfigurationError:
    return ConfigurationError(f"{name} must be {expected}, got {_shown(raw)}")


def _has_control(raw: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in raw)


# ----------------------------------------------------------------------------- parsers
# Each takes the variable's name (for the message) and its stripped, non-empty value.

_DIGITS = re.compile(r"\+?[0-9]+")
_HOSTNAME = re.compile(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?")
_REGION = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")


def parse_positive_int(name: str, raw: str, *, maximum: int | None = None) -> int:
    """A whole number from 1 (to `maximum`): batch sizes, retention days."""
    expected = f"a whole number from 1 to {maximum}" if maximum else "a whole number at least 1"
    if not _DIGITS.fullmatch(raw):
        raise _bad(name, expected, raw)
    value = int(raw)
    if value < 1 or (maximum is not None and value > maximum):
        raise _bad(name, expected, raw)
    return value


def _finite(raw: str) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_seconds(name: str, raw: str, *, allow_zero: bool = False) -> float:
    """A duration in seconds: above 0, or 0 or more where 0 means "no wait"."""
    value = _finite(raw)
    if value is None or value < 0 or (value == 0 and not allow_zero):
        expected = "a number of seconds, 0 or more" if allow_zero else "a number of seconds above 0"
        raise _bad(name, expected, raw)
    return value


_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B|B)?", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_SIZE_UNITS |= {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
MIN_MEMORY_LIMIT = 16 * 10**6
MAX_MEMORY_LIMIT = 1 << 50


def parse_memory_size(name: str, raw: str) -> int:
    """A memory size in bytes, with DuckDB's units (`512MB`, `2GiB`; bare = bytes), >= 16 MB."""
    expected = "a size such as 512MB or 2GiB (at least 16MB)"
    match = _SIZE.fullmatch(raw)
    if not match:
        raise _bad(name, expected, raw)
    value = float(match[1]) * _SIZE_UNITS[(match[2] or "B").lower()]
    if not MIN_MEMORY_LIMIT <= value <= MAX_MEMORY_LIMIT:
        raise _bad(name, expected, raw)
    return int(value)


def parse_credits(name: str, raw: str) -> float:
    """A credit budget: a number above 0."""
    value = _finite(raw)
    if value is None or value <= 0:
        raise _bad(name, "a number of credits above 0", raw)
    return value


def parse_choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    """One of `choices`, exactly (S3 spells `AES256` and `aws:kms` this way)."""
    if raw not in choices:
        raise _bad(name, "one of " + ", ".join(choices), raw)
    return raw


def parse_http_url(name: str, raw: str) -> str:
    """An http(s) URL with a host, returned as given (userinfo is allowed, never echoed)."""
    ok = not _has_control(raw) and " " not in raw
    if ok:
        try:
            parts = urlsplit(raw)
            parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
        except ValueError:
            ok = False
        else:
            ok = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
    if not ok:
        raise _bad(name, "an http(s) URL with a host", raw)
    return raw


def parse_path(name: str, raw: str) -> str:
    """A file or directory path (relative to the working directory, or absolute)."""
    if _has_control(raw):
        raise _bad(name, "a path without control characters", raw)
    return raw


def parse_archive_uri(name: str, raw: str) -> str:
    """A local path (optionally `file://`) or `s3://bucket[/prefix]`."""
    scheme, sep, rest = raw.partition("://")
    if _has_control(raw) or (
        sep and (scheme.lower() not in ("s3", "file") or not rest.split("/", 1)[0])
    ):
        raise _bad(name, "a path or s3://bucket[/prefix]", raw)
    return raw


def parse_archive_uris(name: str, raw: str) -> tuple[str, ...]:
    """One or more archive URIs (`parse_archive_uri` each), separated by commas."""
    uris = tuple(part.strip() for part in raw.split(","))
    if not all(uris):
        raise _bad(name, "paths or s3://bucket[/prefix] URIs separated by commas", raw)
    return tuple(parse_archive_uri(name, uri) for uri in uris)


def parse_region(name: str, raw: str) -> str:
    """An AWS-style region name (`eu-west-1`; S3-compatible stores also use e.g. `auto`)."""
    if not _REGION.fullmatch(raw):
        raise _bad(name, "a region name (letters, digits and '-')", raw)
    return raw


def parse_token(name: str, raw: str) -> str:
    """An identifier such as a KMS key id, alias or ARN: no spaces or control characters."""
    if _has_control(raw) or any(c.isspace() for c in raw):
        raise _bad(name, "an identifier without spaces", raw)
    return raw


def split_host_port(entry: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address -> (host, port or None).

    Lower-cased, a trailing dot dropped; a ValueError for anything else (a scheme, a path,
    credentials, a port outside 1-65535). The one reading of an allow-listed host entry.
    """
    text = entry.strip().lower()
    port_text: str | None = None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"not a host: {entry!r}")
        port_text = rest[1:] if rest else None
        host = str(ipaddress.IPv6Address(host))
    elif text.count(":") > 1:
        host = str(ipaddress.IPv6Address(text))
    else:
        host, sep, after = text.partition(":")
        port_text = after if sep else None
        host = host.rstrip(".")
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"not a host: {entry!r}")
    port = None
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"not a port: {entry!r}")
        port = int(port_text)
    return host, port


def parse_host_list(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated hosts, each optionally with `:port` (no scheme, path or credentials)."""
    entries = tuple(e.strip().lower() for e in raw.split(",") if e.strip())
    try:
        for entry in entries:
            split_host_port(entry)
    except ValueError:
        entries = ()
    if not entries:
        raise _bad(name, "comma-separated hostnames, each optionally with :port", raw)
    return entries


def parse_api_key(name: str, raw: str) -> str:
    """An API key: printable ASCII without spaces (it goes into an HTTP header).

    The message never contains the value, not even part of it.
    """
    if not (raw.isascii() and raw.isprintable()) or " " in raw:
        raise ConfigurationError(
            f"{name} is malformed (spaces, control or non-ASCII characters); value not shown"
        )
    return raw


_PEM_START = "-----BEGIN"


def parse_signing_key(name: str, raw: str) -> str:
    """An Ed25519 private key: PEM text (starts with `-----BEGIN`) or the path of a PEM file.

    Only the shape is checked here; `archive/signing.py` loads the key where it is used. The
    message never contains the value: PEM text is the key itself.
    """
    if raw.startswith(_PEM_START):
        if "PRIVATE KEY-----" not in raw or "-----END" not in raw:
            raise ConfigurationError(
                f"{name} is PEM text without a complete PRIVATE KEY block; value not shown"
            )
    elif _has_control(raw):
        raise ConfigurationError(
            f"{name} must be PEM text or a path without control characters; value not shown"
        )
    return raw


def parse_verify_keys(name: str, raw: str) -> str:
    """Ed25519 public key(s): PEM text (one or more blocks), or paths separated by `,`/newlines.

    A private key here is refused without echoing it: it would spread the signing key to
    every place that only verifies.
    """
    if "PRIVATE KEY" in raw:
        raise ConfigurationError(
            f"{name} holds a private key; it takes public keys only; value not shown"
        )
    if raw.startswith(_PEM_START):
        if "-----BEGIN PUBLIC KEY-----" not in raw or "-----END PUBLIC KEY-----" not in raw:
            raise ConfigurationError(f"{name} is PEM text without a PUBLIC KEY block")
        return raw
    paths = [p.strip() for p in re.split(r"[,\n]", raw)]
    if not any(paths) or any(_has_control(p) for p in paths):
        raise _bad(name, "PEM text or paths separated by commas or newlines", raw)
    return raw


def parse_webhook_secrets(name: str, raw: str) -> tuple[str, ...]:
    """Webhook signing secrets (`whsec_...`), separated by commas: two during a rotation.

    Each is used whole as the HMAC key, so it must survive the environment unchanged:
    printable ASCII without spaces, none empty. The message never contains the value.
    """
    parts = tuple(part.strip() for part in raw.split(","))
    if not all(p and p.isascii() and p.isprintable() and " " not in p for p in parts):
        raise ConfigurationError(
            f"{name} must be one or more secrets separated by commas (printable ASCII, no "
            "spaces, none empty); value not shown"
        )
    return tuple(dict.fromkeys(parts))


def parse_alert_url(name: str, raw: str) -> str:
    """A Slack-compatible incoming-webhook URL: http(s) with a host. Its path (or query)
    usually is the credential (`hooks.slack.com/services/T.../B.../secret`), so the message
    never shows the value."""
    try:
        return parse_http_url(name, raw)
    except ConfigurationError:
        raise ConfigurationError(
            f"{name} must be an http(s) URL with a host; value not shown (it may hold a token)"
        ) from None


_CATALOG_PREFIX = "ducklake:"
_POSTGRES_PREFIX = "postgres:"


def parse_audit_catalog(name: str, raw: str) -> str:
    """A DuckLake catalog: `ducklake:PATH` (a DuckDB catalog file) or `ducklake:postgres:CONNINFO`.

    Returned as given. The message never contains the value: a Postgres connection string
    may hold a password (`password=...` or `postgresql://user:secret@host/db`).
    """
    rest = raw[len(_CATALOG_PREFIX) :] if raw.startswith(_CATALOG_PREFIX) else None
    ok = rest is not None and bool(rest.strip()) and not _has_control(raw)
    if ok and rest is not None:
        if rest.startswith(_POSTGRES_PREFIX):
            ok = bool(rest[len(_POSTGRES_PREFIX) :].strip())
        else:
            # A catalog file path; another DuckLake catalog type (sqlite:, mysql:) or a URL
            # is not supported (its DuckDB extension is not installed, or DuckDB cannot
            # write a catalog file there).
            ok = not re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", rest) and not rest.endswith("/")
    if not ok:
        raise ConfigurationError(
            f"{name} must be ducklake:PATH (a DuckDB catalog file) or "
            "ducklake:postgres:CONNINFO; value not shown"
        )
    return raw


def parse_flag(name: str, raw: str) -> bool:
    """A switch: `1` on, `0` off (nothing else, so a typo is not silently "off")."""
    if raw not in ("0", "1"):
        raise _bad(name, "0 or 1", raw)
    return raw == "1"


# ----------------------------------------------------------------------------- reading


def _raw(environ: Mapping[str, str], name: str) -> str | None:
    """The stripped value, or None when the variable is unset or blank (blank = unset)."""
    value = environ.get(name)
    if value is None:
        return None
    return value.strip() or None


def _optional(environ: Mapping[str, str], name: str, parse: Callable[[str, str], T]) -> T | None:
    raw = _raw(environ, name)
    return None if raw is None else parse(name, raw)


def _first(
    environ: Mapping[str, str], names: tuple[str, ...], parse: Callable[[str, str], T]
) -> T | None:
    """The first set variable of `names` (every one is still validated)."""
    values = [_optional(environ, name, parse) for name in names]
    return next((v for v in values if v is not None), None)


def _get(environ: Mapping[str, str], name: str, parse: Callable[[str, str], T], default: T) -> T:
    value = _optional(environ, name, parse)
    return default if value is None else value


@dataclass(frozen=True)
class Settings:
    """The product's settings, typed and validated; see README's configuration table.

    `api_key` is the raw key (kept out of `repr`); the Spine client wraps it in a `Secret`.
    `signing_key` and `verify_key` are the raw values (PEM text or paths; the signing key kept
    out of `repr`), loaded by `archive/signing.py` where they are used. `webhook_secrets`
    (kept out of `repr`) are the receiver's HMAC keys, in the order given.
    `alert_webhook_url` (kept out of `repr`: its path is usually the credential) is where
    `spine_alert_sensor` posts.

    `audit_catalog` (kept out of `repr`: a Postgres connection string may hold a password) is
    the DuckLake catalog the audit tables are also published to (`audit/ducklake.py`).
    `s3_endpoint_url` is `AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`; `aws_region` is
    `AWS_REGION`, else `AWS_DEFAULT_REGION` (None: boto3's chain decides).
    """

    api_key: str | None = field(default=None, repr=False)
    base_url: str = DEFAULT_BASE_URL
    archive_uri: str = DEFAULT_ARCHIVE_URI
    audit_db: str = DEFAULT_AUDIT_DB
    catalog_path: str = DEFAULT_CATALOG
    archive_batch_size: int = DEFAULT_ARCHIVE_BATCH_SIZE
    poll_budget_seconds: float = DEFAULT_POLL_BUDGET_SECONDS
    poll_min_interval_seconds: float = DEFAULT_POLL_MIN_INTERVAL
    poll_max_interval_seconds: float = DEFAULT_POLL_MAX_INTERVAL
    poll_rerequest_seconds: float = DEFAULT_POLL_REREQUEST
    audit_retry_seconds: float = DEFAULT_AUDIT_RETRY
    audit_memory_limit: int = DEFAULT_AUDIT_MEMORY_LIMIT
    audit_catalog: str | None = field(default=None, repr=False)
    run_fetch_deadline_seconds: float = DEFAULT_RUN_FETCH_DEADLINE
    credit_budget_daily: float | None = None
    credit_budget_monthly: float | None = None
    artifact_max_bytes: int = DEFAULT_ARTIFACT_MAX_BYTES
    artifact_allowed_hosts: tuple[str, ...] = ()
    s3_sse: str | None = None
    s3_sse_kms_key_id: str | None = None
    s3_object_lock_days: int | None = None
    signing_key: str | None = field(default=None, repr=False)
    verify_key: str | None = None
    witness_uris: tuple[str, ...] = ()
    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    track_from_webhooks: bool = False
    alert_webhook_url: str | None = field(default=None, repr=False)
    s3_endpoint_url: str | None = None
    aws_region: str | None = None
    dagster_home: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Parse and validate every variable; the first bad one raises `ConfigurationError`."""
        e = environ
        duration = partial(parse_seconds, allow_zero=False)
        wait = partial(parse_seconds, allow_zero=True)
        settings = cls(
            api_key=_optional(e, "SPINE_API_KEY", parse_api_key),
            base_url=_get(e, "SPINE_BASE_URL", parse_http_url, DEFAULT_BASE_URL),
            archive_uri=_get(e, "SPINE_ARCHIVE_URI", parse_archive_uri, DEFAULT_ARCHIVE_URI),
            audit_db=_get(e, "SPINE_AUDIT_DB", parse_path, DEFAULT_AUDIT_DB),
            catalog_path=_get(e, "SPINE_CATALOG", parse_path, DEFAULT_CATALOG),
            archive_batch_size=_get(
                e, "SPINE_ARCHIVE_BATCH_SIZE", parse_positive_int, DEFAULT_ARCHIVE_BATCH_SIZE
            ),
            poll_budget_seconds=_get(
                e, "SPINE_POLL_BUDGET_SECONDS", duration, DEFAULT_POLL_BUDGET_SECONDS
            ),
            poll_min_interval_seconds=_get(
                e, "SPINE_POLL_MIN_INTERVAL_SECONDS", wait, DEFAULT_POLL_MIN_INTERVAL
            ),
            poll_max_interval_seconds=_get(
                e, "SPINE_POLL_MAX_INTERVAL_SECONDS", wait, DEFAULT_POLL_MAX_INTERVAL
            ),
            poll_rerequest_seconds=_get(
                e, "SPINE_POLL_REREQUEST_SECONDS", wait, DEFAULT_POLL_REREQUEST
            ),
            audit_retry_seconds=_get(e, "SPINE_AUDIT_RETRY_SECONDS", wait, DEFAULT_AUDIT_RETRY),
            audit_memory_limit=_get(
                e, "SPINE_AUDIT_MEMORY_LIMIT", parse_memory_size, DEFAULT_AUDIT_MEMORY_LIMIT
            ),
            audit_catalog=_optional(e, "SPINE_AUDIT_CATALOG", parse_audit_catalog),
            run_fetch_deadline_seconds=_get(
                e, "SPINE_RUN_FETCH_DEADLINE_SECONDS", duration, DEFAULT_RUN_FETCH_DEADLINE
            ),
            credit_budget_daily=_optional(e, "SPINE_CREDIT_BUDGET_DAILY", parse_credits),
            credit_budget_monthly=_optional(e, "SPINE_CREDIT_BUDGET_MONTHLY", parse_credits),
            artifact_max_bytes=_get(
                e, "SPINE_ARTIFACT_MAX_BYTES", parse_positive_int, DEFAULT_ARTIFACT_MAX_BYTES
            ),
            artifact_allowed_hosts=_get(e, "SPINE_ARTIFACT_ALLOWED_HOSTS", parse_host_list, ()),
            s3_sse=_optional(e, "SPINE_S3_SSE", partial(parse_choice, choices=SSE_MODES)),
            s3_sse_kms_key_id=_optional(e, "SPINE_S3_SSE_KMS_KEY_ID", parse_token),
            s3_object_lock_days=_optional(
                e,
                "SPINE_S3_OBJECT_LOCK_DAYS",
                partial(parse_positive_int, maximum=MAX_OBJECT_LOCK_DAYS),
            ),
            signing_key=_optional(e, "SPINE_SIGNING_KEY", parse_signing_key),
            verify_key=_optional(e, "SPINE_VERIFY_KEY", parse_verify_keys),
            witness_uris=_get(e, "SPINE_WITNESS_URI", parse_archive_uris, ()),
            webhook_secrets=_get(e, "SPINE_WEBHOOK_SECRET", parse_webhook_secrets, ()),
            track_from_webhooks=_get(e, "SPINE_TRACK_FROM_WEBHOOKS", parse_flag, False),
            alert_webhook_url=_optional(e, "SPINE_ALERT_WEBHOOK_URL", parse_alert_url),
            s3_endpoint_url=_first(e, ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"), parse_http_url),
            aws_region=_first(e, ("AWS_REGION", "AWS_DEFAULT_REGION"), parse_region),
            dagster_home=_optional(e, "DAGSTER_HOME", parse_path),
        )
        settings._check_combinations()
        return settings

    def _check_combinations(self) -> None:
        """Rules between variables, after each one parsed on its own."""
        if self.s3_sse_kms_key_id is not None and self.s3_sse != "aws:kms":
            raise ConfigurationError(
                "SPINE_S3_SSE_KMS_KEY_ID is only valid with SPINE_S3_SSE=aws:kms"
            )
        if self.poll_min_interval_seconds > self.poll_max_interval_seconds:
            raise ConfigurationError(
                f"SPINE_POLL_MIN_INTERVAL_SECONDS ({self.poll_min_interval_seconds:g}) must not "
                f"exceed SPINE_POLL_MAX_INTERVAL_SECONDS ({self.poll_max_interval_seconds:g})"
            )
