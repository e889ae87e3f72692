"""The webhook receiver: a Starlette ASGI app, `POST /webhooks/spine` and `GET /healthz`.

Every delivery goes through the same steps, in this order, and stops at the first refusal:

1. **Read the raw body, capped** (`max_body`, 1 MiB): a declared `Content-Length` over the
   cap is refused before anything is read, and the stream is counted as it arrives, so a
   missing or lying length cannot make us buffer more than the cap. 413.
2. **Verify the signature** over exactly those bytes (`signature.verify`): 401 for a
   missing, malformed or unmatched signature, 400 for a timestamp outside the window.
3. **Only then parse** the JSON (`inbox.parse_event`): 400 for a body that is not a JSON
   object with an `id` and a `type`.
4. **Store durably** (`Inbox.store_event`) and only then answer 200. A store failure is 503,
   never 2xx, so that Spine delivers the event again.

Nothing refused is stored. Refusals carry a short reason (`{"error": "..."}`); neither a
response nor a log line ever contains a secret, a signature or a body. The receiver never
calls Spine: a delivery only says a run is ready, and the poll path fetches it.

A redelivered event id is acknowledged (200, `"stored": false`) without rewriting anything;
a resend of a (run, type) under a new id is stored, flagged `"duplicate": true`. Unknown
event types and `webhook.ping` are stored and acknowledged like the others.

The app has no state besides its arguments, so it can be mounted in another ASGI app and
several instances (processes, machines) can share one archive.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from spine_pipeline.archive.stores import ObjectStore, StoreError
from spine_pipeline.webhooks.inbox import Inbox, MalformedEvent, parse_event
from spine_pipeline.webhooks.signature import (
    DEFAULT_TOLERANCE,
    SIGNATURE_HEADER,
    SignatureError,
    TimestampError,
    verify,
)

__all__ = ["HEALTH_PATH", "MAX_BODY", "WEBHOOK_PATH", "create_app"]

log = logging.getLogger(__name__)

WEBHOOK_PATH = "/webhooks/spine"
HEALTH_PATH = "/healthz"
MAX_BODY = 1 << 20  # 1 MiB


def _refuse(status: int, reason: str) -> Response:
    log.warning("webhook delivery refused (%d): %s", status, reason)
    return JSONResponse({"error": reason}, status_code=status)


async def _read_capped(request: Request, cap: int) -> bytes | None:
    """The whole body, or None as soon as it is longer than `cap` (the rest is not read)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            return None
    return bytes(body)


def create_app(
    store: ObjectStore,
    secrets: Sequence[str],
    *,
    max_body: int = MAX_BODY,
    tolerance: int = DEFAULT_TOLERANCE,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The receiver for one archive (`store`) and the endpoint's secrets (several during a
    rotation). `clock` gives the Unix time used for the tolerance check and `received_at`."""
    keys = tuple(secrets)
    if isinstance(secrets, str) or not keys or not all(isinstance(s, str) and s for s in keys):
        raise ValueError("the webhook receiver needs at least one non-empty secret")
    if max_body < 1:
        raise ValueError("max_body must be at least 1 byte")
    inbox = Inbox(store)

    async def receive(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not (declared.isascii() and declared.isdigit()):
                return _refuse(400, "malformed Content-Length")
            if int(declared) > max_body:
                return _refuse(413, f"body over {max_body} bytes")
        try:
            body = await _read_capped(request, max_body)
        except ClientDisconnect:
            log.info("webhook sender disconnected before the body was read")
            return Response(status_code=400)
        if body is None:
            return _refuse(413, f"body over {max_body} bytes")
        now = clock()
        headers = request.headers.getlist(SIGNATURE_HEADER)
        try:
            if len(headers) > 1:
                raise SignatureError("more than one Spine-Signature header")
            t = verify(headers[0] if headers else None, body, keys, now, tolerance)
        except TimestampError as exc:
            return _refuse(400, exc.reason)
        except SignatureError as exc:
            return _refuse(401, exc.reason)
        try:
            event = parse_event(body)
        except MalformedEvent as exc:
            return _refuse(400, exc.reason)
        try:
            result = await run_in_threadpool(
                inbox.store_event,
                event,
                received_at=datetime.fromtimestamp(now, UTC),
                signature_t=t,
                headers=dict(request.headers),
            )
        except Exception as exc:  # never 2xx for an event that may not be stored
            detail = str(exc).splitlines()[0] if isinstance(exc, StoreError) and str(exc) else ""
            log.error(
                "webhook event %s not stored: %s %s", event.event_id, type(exc).__name__, detail
            )
            log.debug("store failure", exc_info=True)
            return JSONResponse({"error": "inbox unavailable, retry later"}, status_code=503)
        log.info(
            "webhook event %s (%s) %s%s",
            event.event_id,
            event.type,
            "stored" if result.stored else "already stored",
            f", duplicate of {result.duplicate_of}" if result.duplicate_of else "",
        )
        return JSONResponse(
            {
                "received": True,
                "id": event.event_id,
                "stored": result.stored,
                "duplicate": result.duplicate or not result.stored,
            }
        )

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route(WEBHOOK_PATH, receive, methods=["POST"]),
            Route(HEALTH_PATH, health, methods=["GET"]),
        ]
    )
