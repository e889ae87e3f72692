"""How every `spine-pipeline` command fails: one redacted line on stderr, never a traceback.

Exit code 2 for a bad setting (bad usage, like a bad option: click's own code for those),
1 for the other expected conditions (bad key, unknown run, unreachable endpoint or store,
bad SQL, broken chain, a full disk, a read-only or forbidden path). Anything else is a bug
and keeps its traceback.

The traceback of an expected error is not lost: it goes to the debug log (logger
`spine_pipeline.cli_errors`), which `spine-pipeline --debug ...` prints on stderr, redacted
like everything else.
"""

from __future__ import annotations

import errno
import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click
import duckdb

from spine_pipeline.archive.manifest import ManifestError
from spine_pipeline.archive.stores import StoreError
from spine_pipeline.audit import AuditError
from spine_pipeline.audit.sql import duckdb_message
from spine_pipeline.catalog import CatalogError
from spine_pipeline.settings import ConfigurationError, MissingSettingError, Settings
from spine_pipeline.spine import SpineError
from spine_pipeline.spine.redact import redact, register_secret

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger(__name__)

BAD_USAGE = 2
EXPECTED_ERRORS: tuple[type[Exception], ...] = (
    SpineError,
    CatalogError,
    StoreError,
    ManifestError,
    AuditError,
    FileNotFoundError,
    PermissionError,
    ValueError,
)
#: Conditions of the machine, not bugs: full disk or quota, no permission, read-only mount.
EXPECTED_ERRNOS = frozenset(
    code
    for code in (
        errno.ENOSPC,
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        getattr(errno, "EDQUOT", None),
    )
    if code is not None
)
#: The root logger of the product, which `--debug` turns up.
PRODUCT_LOGGER = "spine_pipeline"


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {redact(message)}", err=True)
    sys.exit(code)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def expected_os_error(exc: BaseException) -> bool:
    """A missing or forbidden file, a lost link, or a condition in `EXPECTED_ERRNOS`."""
    expected = (FileNotFoundError, PermissionError, ConnectionError, TimeoutError)
    return isinstance(exc, expected) or (isinstance(exc, OSError) and exc.errno in EXPECTED_ERRNOS)


def os_error_line(exc: OSError) -> str:
    """`No space left on device: '/data/archive/x'`, without `[Errno 28]`."""
    if exc.strerror is None:  # raised with a message of its own
        return one_line(exc)
    return f"{exc.strerror}: {exc.filename!r}" if exc.filename is not None else exc.strerror


class _RedactingFormatter(logging.Formatter):
    """Formats as usual (traceback included), then masks every secret in the result."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _StderrHandler(logging.Handler):
    """Writes to whatever stderr is at the time (click's test runner swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(self.format(record), err=True)
        except Exception:  # a log line must never be what breaks the command
            self.handleError(record)


def enable_debug_log() -> None:
    """`--debug`: the product's log at DEBUG on stderr, with tracebacks, redacted."""
    logger = logging.getLogger(PRODUCT_LOGGER)
    logger.setLevel(logging.DEBUG)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler(logging.DEBUG)
        handler.setFormatter(_RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def enable_info_log(name: str) -> None:
    """INFO and up of one product logger on stderr, redacted: what a long-running command
    (the webhook receiver) reports as it goes. `--debug` already shows it all."""
    if any(isinstance(h, _StderrHandler) for h in logging.getLogger(PRODUCT_LOGGER).handlers):
        return
    logger = logging.getLogger(name)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler(logging.INFO)
        handler.setFormatter(_RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


#: Loggers whose warnings a user of the CLI must see as they happen (the client's retry
#: notices: a wrong SPINE_BASE_URL says so at the first failure, not after the backoff).
NOTICE_LOGGERS = ("spine_pipeline.spine.client",)


def enable_notices() -> None:
    """WARNING and up of `NOTICE_LOGGERS` on stderr as `note: ...` lines, redacted. With
    `--debug` the product's handler already prints them (and would print them twice)."""
    if any(isinstance(h, _StderrHandler) for h in logging.getLogger(PRODUCT_LOGGER).handlers):
        return
    for name in NOTICE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
            handler = _StderrHandler(logging.WARNING)
            handler.setFormatter(_RedactingFormatter("note: %(message)s"))
            logger.addHandler(handler)


def expected_errors(func: F) -> F:
    """Turn the libraries' expected exceptions into a one-line error and exit code 1 or 2.

    Every setting is validated before the command starts, not only those it reads: a bad
    one must stop it before it does anything (a submit must not reach Spine, and bill a
    run, and then fail to record it because a variable read later is malformed).
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            # The key (and the webhook secrets) are masked from the start, whatever their
            # shape, even in a command that never builds a client (which would register it).
            settings = Settings.from_env()
            register_secret(settings.api_key)
            for secret in settings.webhook_secrets:
                register_secret(secret)
            return func(*args, **kwargs)
        except ConfigurationError as exc:
            log.debug("bad setting", exc_info=True)
            message = exc.cli_message if isinstance(exc, MissingSettingError) else one_line(exc)
            fail(message, BAD_USAGE)
        except duckdb.Error as exc:
            log.debug("database error", exc_info=True)
            fail(duckdb_message(exc))
        except OSError as exc:
            if not expected_os_error(exc):
                raise
            log.debug("system error", exc_info=True)
            fail(os_error_line(exc))
        except EXPECTED_ERRORS as exc:
            log.debug("expected error", exc_info=True)
            fail(one_line(exc))

    return wrapper  # type: ignore[return-value]
