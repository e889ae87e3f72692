"""Fetch everything Spine holds about one terminal run, deciding what is worth retrying.

A transient failure (5xx after the client's retries, a dropped connection, a timeout)
means "not now": the run is left for the next attempt rather than archived without its
blocks, so a run is committed with all its parts or not at all. A persistent answer (the
canvas 404s although the run says completed, a body that stays unreadable, a reply refused
for its decoded size) is recorded as a `fetch_error` and the run is archived with what
exists, so one broken run never blocks its batch forever; the run's own GET failing that
way fails the run at once (named in its outcome), without repeating the request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from spine_pipeline.archive.records import RawDoc
from spine_pipeline.spine import (
    AsyncSpineClient,
    MalformedResponseError,
    NotFoundError,
    ResponseTooLargeError,
    Run,
    SpineAPIError,
)
from spine_pipeline.spine.envelope import ApiResponse
from spine_pipeline.spine.rawjson import BigString, spool_sources
from spine_pipeline.spine.redact import RedactedError, redact
from spine_pipeline.spine.textfidelity import encode_original, original_text

T = TypeVar("T")
MALFORMED_ATTEMPTS = 5
# Members whose string values may be huge and that the archiver never reads through a typed
# view: in `lean_run` they stay BigStrings, every other string is materialised (exact view).
_BIG_TEXT_KEYS = frozenset({"final_output", "prompt", "agent_instructions", "error", "content"})


class NotTerminalError(RedactedError):
    """The run is still going (or reports a status we do not know as terminal)."""


class TransientFetchError(RedactedError):
    """Spine could not answer right now; try the whole run again later."""


async def _patiently(call: Callable[[], Awaitable[T]]) -> T:
    """Repeat a call whose answer was unreadable a few times: proxies garble bodies."""
    for attempt in range(MALFORMED_ATTEMPTS):
        try:
            return await call()
        except MalformedResponseError:
            if attempt == MALFORMED_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def raw_doc(response: ApiResponse) -> RawDoc:
    """The exact `data` of a response, as the archive stores it.

    The client has already parsed the body once (`spine.envelope.parse_envelope`), sliced
    the exact `data` text and kept its original bytes when the body was not valid UTF-8;
    reusing them avoids decoding and parsing the body a second time (three more copies of a
    20 MiB block held at once). A body with big strings is taken in its lean form (the big
    strings stay in the body), and that body is moved to a spooled buffer (`spine.spool`): the
    archive holds the run until its files are written, and a body in the heap would stay
    resident all that time, next to the decoded value and Arrow's page copy of it.
    """
    doc = RawDoc.sliced(response.lean_data, response.source)
    spool_sources(big for _, big in doc.bigs)
    return doc


def _materialised(value: Any) -> Any:
    """A copy of a lean value with its BigStrings as str, except under `_BIG_TEXT_KEYS`."""
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(value, root, 0)]
    while stack:  # explicit stack: payloads can be nested beyond the recursion limit
        src, dest, key = stack.pop()
        new: Any
        if isinstance(src, dict):
            new = {}
            for k, v in src.items():
                if isinstance(v, BigString) and k in _BIG_TEXT_KEYS:
                    new[k] = v
                else:
                    new[k] = None
                    stack.append((v, new, k))
        elif isinstance(src, list):
            new = [None] * len(src)
            stack.extend((v, new, i) for i, v in enumerate(src))
        elif isinstance(src, BigString):
            new = src.text()
        else:
            new = src
        dest[key] = new
    return root[0]


def lean_run(run: Run) -> Run:
    """The run as the archiver reads it: a typed view that never materialises a big text.

    `Run.data` would turn a 20 MiB `final_output` into a Python str; the archiver only reads
    status, canvas_id, duration_ms and the artifact references, so its view is built over the
    lean value (with every other big string materialised, so what it reads is exact).
    """
    response = run.response
    if not response.bigs:
        return run
    return Run(response.viewing(_materialised(response.lean_data)))


async def get_lean_run(client: AsyncSpineClient, run_id: str) -> Run:
    """GET the run again (fresh pre-signed URLs), viewed like `fetch_run` views it."""
    return lean_run(await client.get_run(run_id))


def verbatim_doc(body: bytes) -> RawDoc:
    """A response body that is not the JSON envelope, kept as Spine sent it (nothing derived).

    Secrets are masked first (`redact`: registered secrets and anything shaped like a Spine
    key): an error page from a proxy may echo request headers, and invariant 5 keeps keys out
    of every Parquet file. Nothing else is changed.
    """
    text = original_text(body)
    clean = redact(text)
    return RawDoc.verbatim_body(body if clean == text else encode_original(clean))


def _persistent(exc: SpineAPIError) -> bool:
    """An answer that asking again would not change (a refused size is one: see its class)."""
    return isinstance(exc, NotFoundError | MalformedResponseError | ResponseTooLargeError) or (
        400 <= exc.status_code < 500 and exc.status_code != 429
    )


async def fetch_run(client: AsyncSpineClient, run_id: str) -> Run:
    """GET the run; raises NotTerminalError or TransientFetchError when it can't be archived."""
    try:
        run = lean_run(await _patiently(lambda: client.get_run(run_id)))
    except NotFoundError:
        raise
    except MalformedResponseError as exc:
        raise TransientFetchError(f"run {run_id}: {exc.message} (HTTP {exc.status_code})") from None
    except SpineAPIError as exc:
        if _persistent(exc):
            raise
        raise TransientFetchError(f"run {run_id}: {exc}") from None
    if not run.is_terminal:
        raise NotTerminalError(f"run {run_id} is not terminal (status {run.status!r})")
    return run


async def fetch_canvas(
    client: AsyncSpineClient, canvas_id: str | None
) -> tuple[RawDoc | None, RawDoc | None, list[str]]:
    """DAG and task tree of a canvas, with persistent failures recorded as fetch errors.

    A body that stays unreadable (not the JSON envelope after `MALFORMED_ATTEMPTS` reads) is
    kept verbatim: an auditor can see exactly what Spine sent, and nothing is derived from it.
    """
    if not canvas_id:
        return None, None, ["canvas: the run has no canvas_id"]
    errors: list[str] = []
    docs: list[RawDoc | None] = []
    for part, call in (("dag", client.get_dag), ("tasks", client.get_tasks)):
        try:
            response = await _patiently(partial(call, canvas_id))
            docs.append(raw_doc(response.response))
        except MalformedResponseError as exc:
            error = f"{part}: {exc.message} (HTTP {exc.status_code})"
            if exc.raw_body is None:
                docs.append(None)
            else:
                docs.append(verbatim_doc(exc.raw_body))
                error += f"; body archived verbatim in {part}_raw_json"
            errors.append(error)
        except SpineAPIError as exc:
            if not _persistent(exc):
                raise TransientFetchError(f"{part} of canvas {canvas_id}: {exc}") from None
            errors.append(f"{part}: {exc.message} (HTTP {exc.status_code})")
            docs.append(None)
        except ValueError as exc:  # e.g. a canvas id that cannot be encoded as a path segment
            errors.append(f"{part}: unreadable response ({exc})")
            docs.append(None)
    return docs[0], docs[1], errors


def terminal_time(run: Run, submitted_at: datetime | None, observed_at: datetime) -> datetime:
    """When the run ended: submit time plus Spine's duration if both are known.

    A duration past what a datetime can hold (`duration_ms` 9e18 fits int64, not a date)
    ends after `observed_at` by definition, so `observed_at` it is; the flattened row nulls
    that duration and names it in `fetch_errors` (`flatten.values.as_duration_ms`).
    """
    if submitted_at is not None and run.duration_ms is not None and run.duration_ms >= 0:
        start = submitted_at if submitted_at.tzinfo else submitted_at.replace(tzinfo=UTC)
        try:
            end = start + timedelta(milliseconds=run.duration_ms)
        except OverflowError:
            return observed_at
        return min(end, observed_at)
    return observed_at
