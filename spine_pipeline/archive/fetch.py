"""Fetch everything Spine holds about one terminal run, deciding what is worth retrying.

A transient failure (5xx after the client's retries, a dropped connection, a timeout)
means "not now": the run is left for the next attempt rather than archived without its
blocks, so a run is committed with all its parts or not at all. A persistent answer (the
canvas 404s although the run says completed, a body that stays unreadable) is recorded as
a `fetch_error` and the run is archived with what exists, so one broken run never blocks
its batch forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from spine_pipeline.archive.records import RawDoc
from spine_pipeline.spine import (
    AsyncSpineClient,
    MalformedResponseError,
    NotFoundError,
    Run,
    SpineAPIError,
)
from spine_pipeline.spine.envelope import ApiResponse

T = TypeVar("T")
MALFORMED_ATTEMPTS = 5


class NotTerminalError(Exception):
    """The run is still going (or reports a status we do not know as terminal)."""


class TransientFetchError(Exception):
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

    For a valid UTF-8 body the client has already sliced the exact `data` text and parsed
    it; reusing both avoids decoding and parsing the body a second time (three more copies
    of a 20 MiB block held at once). Invalid UTF-8 needs the original bytes: re-split.
    """
    if response.utf8_valid:
        return RawDoc(text=response.data_text, value=response.data)
    return RawDoc.from_envelope(response.body)


def _persistent(exc: SpineAPIError) -> bool:
    return isinstance(exc, NotFoundError | MalformedResponseError) or (
        400 <= exc.status_code < 500 and exc.status_code != 429
    )


async def fetch_run(client: AsyncSpineClient, run_id: str) -> Run:
    """GET the run; raises NotTerminalError or TransientFetchError when it can't be archived."""
    try:
        run = await _patiently(lambda: client.get_run(run_id))
    except NotFoundError:
        raise
    except MalformedResponseError as exc:
        raise TransientFetchError(f"run {run_id}: {exc.message}") from None
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
    """DAG and task tree of a canvas, with persistent failures recorded as fetch errors."""
    if not canvas_id:
        return None, None, ["canvas: the run has no canvas_id"]
    errors: list[str] = []
    docs: list[RawDoc | None] = []
    for part, call in (("dag", client.get_dag), ("tasks", client.get_tasks)):
        try:
            response = await _patiently(lambda call=call: call(canvas_id))
            docs.append(raw_doc(response.response))
        except SpineAPIError as exc:
            if not _persistent(exc):
                raise TransientFetchError(f"{part} of canvas {canvas_id}: {exc}") from None
            errors.append(f"{part}: {exc.message} (HTTP {exc.status_code})")
            docs.append(None)
        except ValueError as exc:  # the envelope parsed for the view but not for the archive
            errors.append(f"{part}: unreadable response ({exc})")
            docs.append(None)
    return docs[0], docs[1], errors


def terminal_time(run: Run, submitted_at: datetime | None, observed_at: datetime) -> datetime:
    """When the run ended: submit time plus Spine's duration if both are known."""
    if submitted_at is not None and run.duration_ms is not None and run.duration_ms >= 0:
        start = submitted_at if submitted_at.tzinfo else submitted_at.replace(tzinfo=UTC)
        return min(start + timedelta(milliseconds=run.duration_ms), observed_at)
    return observed_at
