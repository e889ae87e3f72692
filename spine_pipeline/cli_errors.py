"""How every `spine-pipeline` command fails: one redacted line on stderr, never a traceback.

Exit code 2 for a bad setting (bad usage, like a bad option: click's own code for those),
1 for the other expected conditions (bad key, unknown run, unreachable endpoint, bad SQL,
broken chain). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
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
from spine_pipeline.settings import ConfigurationError, Settings
from spine_pipeline.spine import SpineError
from spine_pipeline.spine.redact import redact

F = TypeVar("F", bound=Callable[..., Any])

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


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {redact(message)}", err=True)
    sys.exit(code)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def expected_errors(func: F) -> F:
    """Turn the libraries' expected exceptions into a one-line error and exit code 1 or 2.

    Every setting is validated before the command starts, not only those it reads: a bad
    one must stop it before it does anything (a submit must not reach Spine, and bill a
    run, and then fail to record it because a variable read later is malformed).
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            Settings.from_env()
            return func(*args, **kwargs)
        except ConfigurationError as exc:
            fail(one_line(exc), BAD_USAGE)
        except duckdb.Error as exc:
            fail(duckdb_message(exc))
        except EXPECTED_ERRORS as exc:
            fail(one_line(exc))

    return wrapper  # type: ignore[return-value]
