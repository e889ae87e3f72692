"""The ASGI app: the five public Spine endpoints, pre-signed downloads and admin hooks.

``SimMiddleware`` wraps the Starlette app as the outermost layer: it stamps ``X-Request-ID`` on
every response and injects faults. Faults that must not produce any response (``drop``,
``truncated``, the ``lying-length`` scenario) close the TCP connection through uvicorn's
transport, which is the only way to make a client see a dead connection instead of a 500.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from .config import FaultRule
from .faults import classify_route
from .jsonio import dumps
from .multipart import FormError, parse_form
from .urls import http_date, s3_error_xml
from .vocab import (
    BLOCK_TYPES,
    CONTENT_TYPES,
    MSG_BAD_BLOCKS_JSON,
    MSG_BAD_CONTENT_TYPE,
    MSG_CREATE_500,
    MSG_EMPTY_BLOCKS,
    MSG_INTERNAL,
    MSG_INVALID_KEY,
    MSG_MISSING_KEY,
    MSG_MISSING_PROMPT,
    TEMPLATES,
    invalid_blocks_message,
    invalid_template_message,
    invalid_uuid_message,
)
from .webhooks import WebhookDelivery
from .world import CreateForm, Run, World, canonical_uuid

log = logging.getLogger("spine_pipeline.simulator")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON = "application/json"
_MALFORMED_BODY = b'{"success": true, "data": {"run_id": "'
_BAD_GATEWAY = (
    b"<html><head><title>502 Bad Gateway</title></head>"
    b"<body><h1>502 Bad Gateway</h1></body></html>\n"
)


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    """A compact JSON response."""
    return Response(dumps(payload).encode("utf-8"), status, headers, media_type=JSON)


def ok(data: Any) -> Response:
    """Success envelope."""
    return json_response(200, {"success": True, "data": data})


def fail(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """Error envelope."""
    return json_response(status, {"success": False, "error": message}, headers)


def close_connection(send: Send) -> bool:
    """Close the client connection from inside the app (uvicorn only); True if it worked.

    Marking the uvicorn cycle as disconnected first stops uvicorn from writing a 500 or logging
    "returned without completing response"; ``transport.close`` flushes what was already sent.
    """
    cycle = getattr(send, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if cycle is None or transport is None:
        return False
    cycle.disconnected = True
    transport.close()
    return True


async def _discard(message: Message) -> None:
    return None


class SimMiddleware:
    """Outermost ASGI layer: request ids, latency and fault injection."""

    def __init__(self, app: ASGIApp, world: World) -> None:
        self.app = app
        self.world = world

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = f"req_{uuid.uuid4().hex}"
        rid = request_id.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid)]
            await send(message)

        scope["sim.request_id"] = request_id
        scope["sim.close"] = lambda: close_connection(send)
        self.world.requests_served += 1
        route = classify_route(scope["method"], scope["path"])
        decision = self.world.faults.decide(route)
        if decision.latency_ms:
            await asyncio.sleep(decision.latency_ms / 1000.0)
        if decision.rule is None or route is None:
            await self.app(scope, receive, send_with_id)
            return
        await self._inject(decision.rule, route, scope, receive, send, send_with_id)

    async def _inject(
        self,
        rule: FaultRule,
        route: str,
        scope: Scope,
        receive: Receive,
        raw_send: Send,
        send: Send,
    ) -> None:
        kind = rule.kind
        log.debug("injecting fault %s on %s", kind, route)
        download = route == "download"
        rid = scope["sim.request_id"]
        if kind == "drop":
            if route == "create":
                await self.app(scope, receive, _discard)  # the run is created, the reply is lost
            if not close_connection(raw_send):
                raise RuntimeError("drop fault needs uvicorn")
            return
        if kind == "500-after":
            await self.app(scope, receive, _discard)
            response: Response = fail(500, MSG_CREATE_500)
        elif kind == "unknown-status":
            scope["sim.force_status"] = "queued"
            await self.app(scope, receive, send)
            return
        elif kind == "truncated":
            await self.app(scope, receive, _Truncator(raw_send, send))
            return
        elif kind == "429":
            # An HTTP-date is compared with the client's own clock, so use real time.
            date = rule.retry_after == "date"
            retry = http_date(time.time() + 2) if date else rule.retry_after
            headers = {"Retry-After": retry}
            if download:
                response = _xml(429, "SlowDown", "Please reduce your request rate.", rid, headers)
            else:
                response = fail(429, "Rate limit exceeded", headers)
        elif kind == "500":
            if download:
                response = _xml(500, "InternalError", "We encountered an internal error.", rid)
            else:
                response = fail(500, MSG_CREATE_500 if route == "create" else MSG_INTERNAL)
        elif kind == "502":
            response = Response(_BAD_GATEWAY, 502, media_type="text/html")
        elif kind == "503":
            if download:
                response = _xml(503, "SlowDown", "Please reduce your request rate.", rid)
            else:
                response = fail(503, "Service temporarily unavailable")
        elif kind == "malformed":
            response = Response(_MALFORMED_BODY, 200, media_type=JSON)
        elif kind == "false200":
            response = json_response(
                200, {"success": False, "error": "Temporary failure, please retry"}
            )
        elif kind == "expired":
            response = _xml(403, "AccessDenied", "Request has expired", rid)
        else:  # pragma: no cover - parse_faults rejects unknown kinds
            raise RuntimeError(f"unhandled fault kind {kind}")
        await response(scope, receive, send)


class _Truncator:
    """A send wrapper that forwards half of a 200 body, then closes the connection."""

    def __init__(self, raw_send: Send, send: Send) -> None:
        self.raw_send = raw_send
        self.send = send
        self.budget: int | None = None
        self.closed = False

    async def __call__(self, message: Message) -> None:
        if self.closed:
            return
        if message["type"] == "http.response.start":
            if message.get("status") == 200:
                for key, value in message.get("headers", []):
                    if key.lower() == b"content-length":
                        self.budget = int(value) // 2
            await self.send(message)
            return
        if self.budget is None:
            await self.send(message)
            return
        body = bytes(message.get("body", b""))
        if len(body) < self.budget:
            self.budget -= len(body)
            await self.send({"type": "http.response.body", "body": body, "more_body": True})
            return
        await self.send(
            {"type": "http.response.body", "body": body[: self.budget], "more_body": True}
        )
        self.closed = True
        close_connection(self.raw_send)


def _xml(
    status: int, code: str, message: str, request_id: str, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        s3_error_xml(code, message, request_id), status, headers, media_type="application/xml"
    )


class _LyingResponse(Response):
    """Declares a Content-Length larger than the bytes it sends, then hangs up."""

    def __init__(
        self, content: bytes, declared: int, headers: dict[str, str], media_type: str
    ) -> None:
        super().__init__(content, 200, headers, media_type)
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        self.raw_headers.append((b"content-length", str(declared).encode()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": True})
        closer = scope.get("sim.close")
        if closer is None or not closer():
            raise RuntimeError("lying-length needs uvicorn")


def _delivery_row(record: WebhookDelivery) -> dict[str, Any]:
    """One webhook delivery record as JSON (the body is omitted: it can be megabytes)."""
    row = {k: v for k, v in vars(record).items() if k != "body"}
    row["faults"] = list(record.faults)
    return row


def build_app(world: World) -> ASGIApp:
    """The complete ASGI application for one world."""
    api_key = world.config.api_key

    def auth(request: Request) -> Response | None:
        presented = request.headers.get("x-api-key")
        if not presented:
            return fail(401, MSG_MISSING_KEY)
        if not hmac.compare_digest(presented.encode(), api_key.encode()):
            return fail(401, MSG_INVALID_KEY)
        return None

    def base_of(request: Request) -> str:
        if world.base_url:
            return world.base_url
        host = request.headers.get("host")
        return f"{request.url.scheme}://{host}" if host else ""

    async def create_run(request: Request) -> Response:
        if (denied := auth(request)) is not None:
            return denied
        body = await request.body()
        try:
            parts = parse_form(request.headers.get("content-type"), body)
        except FormError:
            return fail(400, MSG_BAD_CONTENT_TYPE)
        fields: dict[str, str] = {}
        files: list[tuple[str, str, bytes]] = []
        for part in parts:
            if part.name == "files" and part.filename is not None:
                files.append(
                    (part.filename, part.content_type or "application/octet-stream", part.data)
                )
            else:
                fields.setdefault(part.name, part.text)
        prompt = fields.get("prompt")
        if prompt is None or not prompt.strip():
            return fail(400, MSG_MISSING_PROMPT)
        template = fields.get("template", "auto")
        if template not in TEMPLATES:
            return fail(400, invalid_template_message(template))
        blocks: list[str] | None = None
        if "blocks" in fields:
            try:
                parsed = json.loads(fields["blocks"])
            except ValueError:
                return fail(400, MSG_BAD_BLOCKS_JSON)
            if not isinstance(parsed, list):
                return fail(400, MSG_BAD_BLOCKS_JSON)
            if not parsed:
                return fail(400, MSG_EMPTY_BLOCKS)
            bad = [b if isinstance(b, str) else dumps(b) for b in parsed if b not in BLOCK_TYPES]
            if bad:
                return fail(400, invalid_blocks_message(bad))
            blocks = list(parsed)
        form = CreateForm(
            prompt=prompt,
            template=template,
            blocks=blocks,
            agent_instructions=fields.get("agent_instructions"),
            webhook_url=fields.get("webhook_url"),
            files=files,
        )
        run = world.create_run(form)
        return ok(world.create_payload(run))

    async def get_run(request: Request) -> Response:
        if (denied := auth(request)) is not None:
            return denied
        raw = request.path_params["run_id"]
        run_id = canonical_uuid(raw)
        if run_id is None:
            return fail(400, invalid_uuid_message("run_id"))
        run = world.get_run(run_id)
        if run is None:
            return fail(404, f"Run not found: {raw}")
        force = request.scope.get("sim.force_status")
        base = base_of(request)
        if run.heavy:
            data = await run_in_threadpool(world.run_payload, run, base, force)
        else:
            data = world.run_payload(run, base, force)
        return ok(data)

    def canvas_of(request: Request) -> tuple[Run | None, Response | None]:
        raw = request.path_params["canvas_id"]
        canvas_id = canonical_uuid(raw)
        if canvas_id is None:
            return None, fail(400, invalid_uuid_message("canvas_id"))
        run = world.get_canvas(canvas_id)
        if run is None or "canvas-404" in run.scenarios:
            return None, fail(404, f"Canvas not found: {raw}")
        return run, None

    async def get_dag(request: Request) -> Response:
        if (denied := auth(request)) is not None:
            return denied
        run, error = canvas_of(request)
        if run is None:
            return error  # type: ignore[return-value]
        base = base_of(request)
        if run.heavy:
            body = await run_in_threadpool(world.dag_body, run, base)
        else:
            body = world.dag_body(run, base)
        return Response(body, 200, media_type=JSON)

    async def get_tasks(request: Request) -> Response:
        if (denied := auth(request)) is not None:
            return denied
        run, error = canvas_of(request)
        if run is None:
            return error  # type: ignore[return-value]
        if run.heavy:
            body = await run_in_threadpool(world.tasks_body, run)
        else:
            body = world.tasks_body(run)
        return Response(body, 200, media_type=JSON)

    async def get_task(request: Request) -> Response:
        if (denied := auth(request)) is not None:
            return denied
        run, error = canvas_of(request)
        if run is None:
            return error  # type: ignore[return-value]
        raw = request.path_params["task_id"]
        task_id = canonical_uuid(raw)
        if task_id is None:
            return fail(400, invalid_uuid_message("task_id"))
        data = world.task_payload(run, task_id)
        if data is None:
            return fail(404, f"Task not found: {raw}")
        return ok(data)

    async def download(request: Request) -> Response:
        token = request.path_params["token"]
        query = request.query_params
        rid = request.scope.get("sim.request_id", "")
        verdict = world.signer.check(token, query.get("expires"), query.get("n"), query.get("sig"))
        if verdict == "expired":
            return _xml(
                403,
                "AccessDenied",
                "Request has expired",
                rid,
                {"x-sim-expired-at": query.get("expires", "")},
            )
        if verdict != "ok":
            return _xml(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
                rid,
            )
        found = world.resolve_token(token)
        if found is None:
            return _xml(404, "NoSuchKey", "The specified key does not exist.", rid)
        run, node = found
        headers = {
            "Cache-Control": "private, max-age=0",
            "Last-Modified": http_date(run.created_at),
        }
        name = node.artifact_name or node.name
        encoded = quote(name, safe="")
        if len(encoded) <= 512:
            headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{encoded}"
        if node.upload is not None:
            _, content_type, data = run.form.files[node.upload]
            return Response(data, 200, headers, media_type=content_type)
        media_type = CONTENT_TYPES[node.artifact_type or "png"]
        if request.method == "HEAD":  # headers only; never generate 200 MB for nothing
            headers["Content-Length"] = str(world.artifact_size(run, node))
            return Response(b"", 200, headers, media_type=media_type)
        if node.big:
            big = world.big_png(run, node)
            headers["Content-Length"] = str(big.size)
            return StreamingResponse(big.iter_bytes(), 200, headers, media_type=media_type)
        data = (
            await run_in_threadpool(world.artifact_bytes, run, node)
            if run.heavy
            else world.artifact_bytes(run, node)
        )
        headers["ETag"] = f'"{world.artifact_etag(run, node)}"'
        if world.lying_node(run) == node.index:
            return _LyingResponse(data, len(data) + 4096, headers, media_type)
        return Response(data, 200, headers, media_type=media_type)

    async def admin_faults(request: Request) -> Response:
        if (denied := auth(request)) is not None:
            return denied
        if request.method == "POST":
            raw = (await request.body()).decode("utf-8", errors="replace")
            spec = raw
            if raw.lstrip().startswith("{"):
                try:
                    spec = str(json.loads(raw).get("spec") or "")
                except (ValueError, AttributeError):
                    return fail(400, 'expected {"spec": "ROUTE:KIND,..."} or a plain-text spec')
            try:
                world.faults.set_spec(spec.strip())
            except ValueError as exc:
                return fail(400, str(exc))
        return ok({"faults": world.faults.spec, "fault_counts": dict(world.fault_counts)})

    async def admin_state(request: Request) -> Response:
        if (denied := auth(request)) is not None:
            return denied
        return ok(world.summary())

    async def admin_advance(request: Request) -> Response:
        if (denied := auth(request)) is not None:
            return denied
        try:
            seconds = float(json.loads(await request.body() or b"{}").get("seconds", 0))
        except (ValueError, AttributeError, TypeError):
            return fail(400, 'expected {"seconds": N}')
        world.advance(seconds)
        return ok(world.summary())

    async def admin_finish(request: Request) -> Response:
        if (denied := auth(request)) is not None:
            return denied
        try:
            body = json.loads(await request.body() or b"{}")
            run_id = body.get("run_id") if isinstance(body, dict) else None
        except ValueError:
            return fail(400, 'expected {"run_id": "..."} or {}')
        if run_id:
            if world.get_run(str(run_id)) is None:
                return fail(404, f"Run not found: {run_id}")
            world.finish(str(run_id))
        else:
            world.finish_all()
        return ok(world.summary())

    async def admin_webhooks(request: Request) -> Response:
        if (denied := auth(request)) is not None:
            return denied
        sender = world.webhooks
        if sender is None:
            return fail(400, "webhooks are not configured (--webhook-url/--webhook-secret)")
        if request.method == "POST":
            return ok({"event_id": sender.ping()})
        return ok({**sender.summary(), "deliveries": [_delivery_row(r) for r in sender.records()]})

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = {404: "Not found", 405: "Method not allowed"}.get(status, MSG_INTERNAL)
        return fail(status, message)

    async def crash(request: Request, exc: Exception) -> Response:
        log.exception("simulator error on %s %s", request.method, request.url.path)
        return fail(500, MSG_INTERNAL)

    routes = [
        Route("/v1/run", create_run, methods=["POST"]),
        Route("/v1/run/{run_id}", get_run, methods=["GET"]),
        Route("/v1/canvas/{canvas_id}/dag", get_dag, methods=["GET"]),
        Route("/v1/canvas/{canvas_id}/tasks", get_tasks, methods=["GET"]),
        Route("/v1/canvas/{canvas_id}/tasks/{task_id}", get_task, methods=["GET"]),
        Route("/files/{token}", download, methods=["GET"]),
        Route("/_sim/faults", admin_faults, methods=["GET", "POST"]),
        Route("/_sim/state", admin_state, methods=["GET"]),
        Route("/_sim/advance", admin_advance, methods=["POST"]),
        Route("/_sim/finish", admin_finish, methods=["POST"]),
        Route("/_sim/webhooks", admin_webhooks, methods=["GET"]),
        Route("/_sim/webhooks/ping", admin_webhooks, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: crash})
    return SimMiddleware(app, world)
