"""The receiver app in process (httpx's ASGITransport, or driven by hand for streaming): every refusal (and that nothing refused is stored), the body
cap whatever Content-Length says, duplicates, store failures, and no secret in any output."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from spine_pipeline.archive.stores import StoreError, open_store
from spine_pipeline.webhooks.app import MAX_BODY, create_app
from spine_pipeline.webhooks.signature import sign, signature_hex
from spine_pipeline_tests.webhooks.helpers import (
    SECRET,
    VECTOR_BODY,
    VECTOR_T,
    VECTOR_V1,
    AsgiClient,
    body_of,
    entry_keys,
    envelope,
    headers_for,
    ledger_keys,
)

T = VECTOR_T
PATH = "/webhooks/spine"


@pytest.fixture
def store(tmp_path):
    return open_store(str(tmp_path / "archive"))


@pytest.fixture
def client(store):
    return AsgiClient(create_app(store, [SECRET], clock=lambda: float(T)))


def _post(client, body: bytes, headers=None, **kw):
    return client.post(
        PATH, content=body, headers=headers_for(body, t=T) if headers is None else headers, **kw
    )


def _doc(*args, **kw):
    doc = envelope(*args, **kw)
    doc["created"] = T
    return doc


# -- accepted ------------------------------------------------------------------------------------


def test_an_accepted_delivery_is_stored_before_the_200(client, store) -> None:
    doc = _doc("run.completed", "run-a")
    body = body_of(doc)
    response = _post(client, body, headers_for(body, t=T, doc=doc))
    assert response.status_code == 200
    assert response.json() == {
        "received": True,
        "id": doc["id"],
        "stored": True,
        "duplicate": False,
    }
    [key] = entry_keys(store)
    record = json.loads(store.get_bytes(key))
    assert record["body"].encode() == body
    assert record["received_at"].startswith("2025-04-21T16:00:00")
    assert record["signature_t"] == T
    assert record["headers"]["spine-event-id"] == doc["id"]


def test_ping_and_unknown_types_are_recorded_and_acknowledged(client, store) -> None:
    assert _post(client, VECTOR_BODY).status_code == 200
    odd = body_of(_doc("invoice.paid", None))
    assert _post(client, odd).status_code == 200
    bodies = {json.loads(store.get_bytes(k))["body"].encode() for k in entry_keys(store)}
    assert bodies == {VECTOR_BODY, odd}


def test_duplicates_by_id_and_by_run_and_type(client, store) -> None:
    doc = _doc("run.completed", "run-a")
    first = _post(client, body_of(doc))
    assert first.json()["stored"] is True
    before = ledger_keys(store)
    again = _post(client, body_of(doc))
    assert again.status_code == 200
    assert again.json() == {"received": True, "id": doc["id"], "stored": False, "duplicate": True}
    assert ledger_keys(store) == before
    resend = _doc("run.completed", "run-a")
    response = _post(client, body_of(resend))
    assert response.status_code == 200
    assert response.json() == {
        "received": True,
        "id": resend["id"],
        "stored": True,
        "duplicate": True,
    }
    assert len(entry_keys(store)) == 2


def test_rotated_secrets_are_both_accepted(store) -> None:
    client = AsgiClient(create_app(store, ["whsec_new", "whsec_old"], clock=lambda: float(T)))
    for secret in ("whsec_old", "whsec_new"):
        body = body_of(_doc("run.started", f"run-{secret}"))
        assert _post(client, body, headers_for(body, secret=secret, t=T)).status_code == 200
    body = body_of(_doc("run.started", "run-retired"))
    assert _post(client, body, headers_for(body, secret=SECRET, t=T)).status_code == 401


# -- refused, and nothing stored ---------------------------------------------------------------


def _refusal_cases():
    good = body_of(_doc("run.completed", "run-a"))
    sig = sign(SECRET, T, good)

    def signed(body: bytes) -> tuple[bytes, dict[str, str]]:
        return body, {"Spine-Signature": sign(SECRET, T, body), "Content-Type": "application/json"}

    flipped = bytearray(good)
    flipped[10] ^= 1
    return {
        "no signature": (good, {}, 401, "missing Spine-Signature header"),
        "empty signature": (good, {"Spine-Signature": ""}, 401, "missing Spine-Signature header"),
        "malformed signature": (
            good,
            {"Spine-Signature": "sha256=abc"},
            401,
            "malformed Spine-Signature header: no t",
        ),
        "t not an integer": (
            good,
            {"Spine-Signature": f"t=x{T},v1=ab"},
            401,
            "malformed Spine-Signature header: t is not an integer",
        ),
        "wrong secret": (
            good,
            {"Spine-Signature": sign("whsec_wrong", T, good)},
            401,
            "no matching signature",
        ),
        "several v1, none valid": (
            good,
            {"Spine-Signature": f"t={T},v1={'0' * 64},v1={VECTOR_V1}"},
            401,
            "no matching signature",
        ),
        "body changed by one byte": (
            bytes(flipped),
            {"Spine-Signature": sig},
            401,
            "no matching signature",
        ),
        "stale": (
            good,
            {"Spine-Signature": sign(SECRET, T - 301, good)},
            400,
            "signature timestamp too old",
        ),
        "future": (
            good,
            {"Spine-Signature": sign(SECRET, T + 301, good)},
            400,
            "signature timestamp in the future",
        ),
        "malformed JSON": (*signed(b'{"id": "evt_1", "type": '), 400, "malformed JSON"),
        "JSON array": (*signed(b"[]"), 400, "JSON body is not an object"),
        "missing id": (*signed(b'{"type": "run.completed"}'), 400, "missing id"),
        "missing type": (*signed(b'{"id": "evt_1"}'), 400, "missing type"),
        "not UTF-8": (*signed(b'{"id": "evt_1", "type": "\xff"}'), 400, "body is not UTF-8"),
        "run id not a key segment": (
            *signed(body_of(_doc("run.completed", "../manifests"))),
            400,
            "invalid run_id",
        ),
        "empty body": (*signed(b""), 400, "malformed JSON"),
    }


@pytest.mark.parametrize("case", list(_refusal_cases()))
def test_refusals_are_4xx_with_a_short_reason_and_store_nothing(client, store, case) -> None:
    body, headers, status, reason = _refusal_cases()[case]
    response = _post(client, body, headers)
    assert response.status_code == status
    assert response.json() == {"error": reason}
    assert ledger_keys(store) == []


def test_two_signature_headers_are_refused(client, store) -> None:
    body = body_of(_doc())
    response = client.post(
        PATH,
        content=body,
        headers=[("Spine-Signature", sign(SECRET, T, body)), ("Spine-Signature", "t=1,v1=00")],
    )
    assert response.status_code == 401 and ledger_keys(store) == []


def test_only_post_and_only_the_two_paths(client) -> None:
    assert client.get(PATH).status_code == 405
    assert client.put(PATH, content=b"{}").status_code == 405
    assert client.post("/webhooks/other", content=b"{}").status_code == 404
    assert client.get("/healthz").json() == {"status": "ok"}


# -- the body cap ------------------------------------------------------------------------------


def _asgi(app, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> tuple[int, dict, int]:
    """Drive the app directly: (status, JSON body, request bytes it consumed)."""
    sent: list[dict] = []
    consumed = 0
    queue = list(chunks)

    async def receive():
        nonlocal consumed
        if queue:
            chunk = queue.pop(0)
            consumed += len(chunk)
            return {"type": "http.request", "body": chunk, "more_body": bool(queue)}
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "raw_path": PATH.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8787),
    }
    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return sent[0]["status"], json.loads(body), consumed


def _big_signed(size: int) -> tuple[bytes, bytes]:
    doc = _doc("run.completed", "run-big")
    doc["data"]["object"]["final_output"] = ""
    base = len(body_of(doc))
    doc["data"]["object"]["final_output"] = "x" * (size - base)
    body = body_of(doc)
    assert len(body) == size
    return body, sign(SECRET, T, body).encode()


CHUNK = 64 * 1024


def _chunks(body: bytes) -> list[bytes]:
    return [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]


def test_a_body_of_exactly_the_cap_is_accepted(store) -> None:
    app = create_app(store, [SECRET], clock=lambda: float(T))
    body, sig = _big_signed(MAX_BODY)
    headers = [(b"content-length", str(len(body)).encode()), (b"spine-signature", sig)]
    status, answer, _ = _asgi(app, headers, _chunks(body))
    assert status == 200 and answer["stored"] is True


def test_a_declared_length_over_the_cap_is_413_before_reading(store) -> None:
    app = create_app(store, [SECRET], clock=lambda: float(T))
    body, sig = _big_signed(MAX_BODY + 1)
    headers = [(b"content-length", str(len(body)).encode()), (b"spine-signature", sig)]
    status, answer, consumed = _asgi(app, headers, _chunks(body))
    assert status == 413 and answer == {"error": f"body over {MAX_BODY} bytes"}
    assert consumed == 0
    assert ledger_keys(store) == []


@pytest.mark.parametrize("declared", [None, b"100", b"0"])
def test_a_body_over_the_cap_is_413_whatever_content_length_says(store, declared) -> None:
    app = create_app(store, [SECRET], clock=lambda: float(T))
    body, sig = _big_signed(2 * MAX_BODY)  # validly signed: only the size is wrong
    headers = [(b"spine-signature", sig)]
    if declared is not None:
        headers.append((b"content-length", declared))
    status, answer, consumed = _asgi(app, headers, _chunks(body))
    assert status == 413 and answer == {"error": f"body over {MAX_BODY} bytes"}
    assert consumed <= MAX_BODY + CHUNK  # it stopped reading at the cap
    assert ledger_keys(store) == []


@pytest.mark.parametrize("declared", [b"-1", b"12a", b"1e3", b"\xd9\xa1"])
def test_a_malformed_content_length_is_400(store, declared) -> None:
    app = create_app(store, [SECRET], clock=lambda: float(T))
    status, answer, consumed = _asgi(app, [(b"content-length", declared)], [b"{}"])
    assert status == 400 and answer == {"error": "malformed Content-Length"} and consumed == 0


def test_the_cap_is_configurable(store) -> None:
    client = AsgiClient(create_app(store, [SECRET], max_body=100, clock=lambda: float(T)))
    body = body_of(_doc())
    assert len(body) > 100
    assert _post(client, body).status_code == 413


# -- store failures: never 2xx -----------------------------------------------------------------


class BrokenStore:
    def __init__(self, inner, exc: Exception) -> None:
        self.inner, self.exc, self.uri = inner, exc, inner.uri

    def put_bytes(self, key, data, *, content_type=None):
        raise self.exc

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.mark.parametrize(
    "exc",
    [
        StoreError("S3 put failed: SlowDown"),
        PermissionError(13, "Permission denied"),
        RuntimeError("bug"),
    ],
)
def test_a_store_failure_is_503_and_the_retry_is_stored(store, exc) -> None:
    body = body_of(_doc("run.completed", "run-a"))
    broken = AsgiClient(create_app(BrokenStore(store, exc), [SECRET], clock=lambda: float(T)))
    response = _post(broken, body)
    assert response.status_code == 503
    assert response.json() == {"error": "inbox unavailable, retry later"}
    assert entry_keys(store) == []
    healthy = AsgiClient(create_app(store, [SECRET], clock=lambda: float(T)))
    assert _post(healthy, body).json()["stored"] is True


# -- nothing secret anywhere -----------------------------------------------------------------


def test_no_secret_signature_or_body_in_responses_or_logs(store, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    client = AsgiClient(create_app(store, [SECRET, "whsec_second_secret"], clock=lambda: float(T)))
    secret_body = body_of(_doc("run.completed", "run-a", final_output="CONFIDENTIAL-OUTPUT"))
    texts = []
    cases = [
        *list(_refusal_cases().values()),
        (secret_body, headers_for(secret_body, t=T), 200, None),
        (secret_body, headers_for(secret_body, t=T), 200, None),
        (secret_body, {"Spine-Signature": sign("whsec_wrong", T, secret_body)}, 401, None),
    ]
    for body, headers, status, _ in cases:
        response = _post(client, body, headers)
        assert response.status_code == status
        texts.append(response.text)
    broken = AsgiClient(
        create_app(BrokenStore(store, StoreError("down")), [SECRET], clock=lambda: float(T))
    )
    texts.append(_post(broken, body_of(_doc())).text)
    texts.extend(r.getMessage() for r in caplog.records)
    texts.extend(str(r.exc_info) for r in caplog.records if r.exc_info)
    joined = "\n".join(texts)
    assert "refused" in joined  # the refusals were logged
    for forbidden in (
        SECRET,
        "whsec_second_secret",
        "CONFIDENTIAL-OUTPUT",
        signature_hex(SECRET, T, secret_body),
        VECTOR_V1,
    ):
        assert forbidden not in joined


# -- shape of the app --------------------------------------------------------------------------


def test_it_mounts_in_another_asgi_app(store) -> None:
    outer = Starlette(
        routes=[Mount("/hooks", app=create_app(store, [SECRET], clock=lambda: float(T)))]
    )
    client = AsgiClient(outer)
    body = body_of(_doc())
    assert (
        client.post("/hooks" + PATH, content=body, headers=headers_for(body, t=T)).status_code
        == 200
    )
    assert client.get("/hooks/healthz").status_code == 200
    assert len(entry_keys(store)) == 1


@pytest.mark.parametrize("secrets", [[], [""], "whsec_as_a_string", [None]])
def test_it_refuses_to_exist_without_a_secret(store, secrets) -> None:
    with pytest.raises(ValueError, match="secret"):
        create_app(store, secrets)


def test_the_real_clock_is_the_default(store) -> None:
    client = AsgiClient(create_app(store, [SECRET]))
    body = body_of(envelope())
    assert _post(client, body, headers_for(body)).status_code == 200
    assert _post(client, body, headers_for(body, t=T)).status_code == 400  # 2025 is stale now
