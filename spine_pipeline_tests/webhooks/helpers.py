"""Deliveries as Spine sends them: envelopes, signed headers, and what an inbox holds."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from spine_pipeline.archive.layout import LEDGER_PREFIX, WEBHOOKS_PREFIX
from spine_pipeline.webhooks.signature import sign

SECRET = "whsec_test_secret"
VECTOR_T = 1745251200
VECTOR_BODY = (
    b'{"id":"evt_00000000000000000000000000000001","type":"webhook.ping","created":1745251200,'
    b'"livemode":false,"api_version":"2026-04-01","data":{"object":{}}}'
)
VECTOR_V1 = "42a3e5093968800c4409c32d42e15eed8e91ee7a05c4a2e7baa18ee4597b920e"


def event_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


def envelope(
    event_type: str = "run.completed",
    run_id: str | None = "run-1",
    *,
    eid: str | None = None,
    status: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    if run_id is not None:
        obj = {"run_id": run_id, "canvas_id": "c-1", "status": status or event_type.split(".")[-1]}
        if event_type == "run.completed":
            obj |= {"duration_ms": 10736, "artifacts": [], "final_output": "2 + 2 equals 4."}
    doc = {
        "id": eid or event_id(),
        "type": event_type,
        "created": int(time.time()),
        "livemode": False,
        "api_version": "2026-04-01",
        "data": {"object": obj},
    }
    doc.update(extra)
    return doc


def body_of(doc: dict[str, Any]) -> bytes:
    # Spine's own spacing, so the stored body is visibly the bytes sent, not a re-serialisation.
    return json.dumps(doc, separators=(", ", ": ")).encode("utf-8")


def headers_for(
    body: bytes, *, secret: str = SECRET, t: int | None = None, doc: Any = None
) -> dict[str, str]:
    t = int(time.time()) if t is None else t
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Spine-Webhooks/1.0",
        "Spine-Signature": sign(secret, t, body),
    }
    if isinstance(doc, dict):
        headers["Spine-Event-Id"] = str(doc.get("id"))
        headers["Spine-Event-Type"] = str(doc.get("type"))
    return headers


def webhook_keys(store: Any) -> list[str]:
    return [i.key for i in store.list(WEBHOOKS_PREFIX)]


def ledger_keys(store: Any) -> list[str]:
    return [i.key for i in store.list(LEDGER_PREFIX)]


def entry_keys(store: Any) -> list[str]:
    return [k for k in webhook_keys(store) if "/events/" in k]


class AsgiClient:
    """A synchronous client for an ASGI app in process (httpx's ASGITransport)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def request(self, method: str, url: str, **kw: Any) -> Any:
        import asyncio

        import httpx

        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                return await c.request(method, url, **kw)

        return asyncio.run(go())

    def post(self, url: str, **kw: Any) -> Any:
        return self.request("POST", url, **kw)

    def get(self, url: str, **kw: Any) -> Any:
        return self.request("GET", url, **kw)

    def put(self, url: str, **kw: Any) -> Any:
        return self.request("PUT", url, **kw)
