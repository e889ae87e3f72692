"""The receiver as a real uvicorn server on loopback: the body cap over the wire, and two
receivers sharing one archive (each event stored once), on both archive backends."""

from __future__ import annotations

import json
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from spine_pipeline.archive.stores import open_store
from spine_pipeline.webhooks.app import MAX_BODY, create_app
from spine_pipeline.webhooks.inbox import Inbox
from spine_pipeline.webhooks.server import WebhookServer
from spine_pipeline.webhooks.signature import sign
from spine_pipeline_tests.webhooks.helpers import (
    SECRET,
    body_of,
    entry_keys,
    envelope,
    headers_for,
    ledger_keys,
)


@pytest.fixture
def local_store(tmp_path):
    return open_store(str(tmp_path / "archive"))


@pytest.fixture
def server(local_store):
    with WebhookServer(create_app(local_store, [SECRET])) as running:
        yield running


def _raw(server: WebhookServer, head: bytes, body_parts: list[bytes] = ()) -> tuple[int, bytes]:
    """Send a request by hand (headers as given, body parts in a thread that tolerates the
    server closing early) and return (status, response body)."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=20)

    def pump() -> None:
        try:
            for part in body_parts:
                sock.sendall(part)
        except OSError:
            pass  # the server answered and closed: it stopped reading, as it should

    try:
        sock.sendall(head)
        sender = threading.Thread(target=pump, daemon=True)
        sender.start()
        data = b""
        while b"\r\n\r\n" not in data or len(data) < _expected_len(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        sender.join(20)
    finally:
        sock.close()
    head_text, sep, rest = data.partition(b"\r\n\r\n")
    status = int(head_text.split(b" ", 2)[1])
    return status, rest[: _expected_len(data) - len(head_text) - len(sep)]


def _expected_len(data: bytes) -> int:
    head, sep, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + len(sep) + int(value)
    return len(data) + 1


def _head(sig: str, extra: str) -> bytes:
    return (
        f"POST /webhooks/spine HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Spine-Signature: {sig}\r\n{extra}\r\n"
    ).encode()


def _big() -> tuple[bytes, str]:
    doc = envelope("run.completed", "run-big", final_output="x" * (2 * MAX_BODY))
    body = body_of(doc)
    return body, sign(SECRET, int(__import__("time").time()), body)


def test_an_accepted_delivery_over_the_wire(server, local_store) -> None:
    doc = envelope("run.completed", "run-a")
    body = body_of(doc)
    response = httpx.post(server.url, content=body, headers=headers_for(body, doc=doc))
    assert response.status_code == 200 and response.json()["stored"] is True
    assert httpx.get(f"{server.base_url}/healthz").json() == {"status": "ok"}
    [event], _ = Inbox(local_store).since(None)
    assert event.body == body


def test_a_declared_length_over_the_cap_is_413_without_the_body(server, local_store) -> None:
    body, sig = _big()
    status, answer = _raw(server, _head(sig, f"Content-Length: {len(body)}\r\n"))
    assert status == 413 and json.loads(answer) == {"error": f"body over {MAX_BODY} bytes"}
    assert ledger_keys(local_store) == []


def test_a_chunked_body_over_the_cap_is_413(server, local_store) -> None:
    body, sig = _big()
    parts = [
        f"{len(body[i : i + 65536]):x}\r\n".encode() + body[i : i + 65536] + b"\r\n"
        for i in range(0, len(body), 65536)
    ] + [b"0\r\n\r\n"]
    status, answer = _raw(server, _head(sig, "Transfer-Encoding: chunked\r\n"), parts)
    assert status == 413 and json.loads(answer) == {"error": f"body over {MAX_BODY} bytes"}
    assert ledger_keys(local_store) == []


def test_a_lying_content_length_never_gets_more_than_it_declared(server, local_store) -> None:
    body, sig = _big()  # validly signed over 2 MiB, announced as 100 bytes
    status, answer = _raw(server, _head(sig, "Content-Length: 100\r\n"), [body])
    # The app sees the first 100 bytes only (no match); the rest is a malformed next request.
    assert status == 401 and json.loads(answer) == {"error": "no matching signature"}
    assert ledger_keys(local_store) == []


def test_an_oversized_request_head_is_refused_unbuffered(server, local_store) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=20)
    sent = 0
    try:
        sock.sendall(b"POST /webhooks/spine HTTP/1.1\r\nHost: x\r\nX-Big: ")
        with pytest.raises(OSError):  # reset long before 64 MiB are taken
            for _ in range(64):
                sock.sendall(b"a" * (1 << 20))
                sent += 1
    finally:
        sock.close()
    assert sent < 8
    assert ledger_keys(local_store) == []


def test_malformed_json_after_a_valid_signature_over_the_wire(server, local_store) -> None:
    body = b'{"id": "evt_1", "type": "run.completed", '
    response = httpx.post(server.url, content=body, headers=headers_for(body))
    assert response.status_code == 400 and response.json() == {"error": "malformed JSON"}
    assert ledger_keys(local_store) == []


def test_two_receivers_on_one_archive_store_each_event_once(archive_uri) -> None:
    # Behind one URL, a load balancer may hand a retry to the other receiver while the
    # first is still storing: every event goes to both at once here.
    docs = [envelope("run.completed", f"run-{i}") for i in range(12)]
    resends = [envelope("run.completed", f"run-{i}") for i in range(0, 12, 3)]
    with (
        WebhookServer(create_app(open_store(archive_uri), [SECRET])) as a,
        WebhookServer(create_app(open_store(archive_uri), [SECRET])) as b,
        httpx.Client(timeout=30) as client,
    ):

        def deliver(job: tuple[str, dict]) -> tuple[str, dict]:
            url, doc = job
            body = body_of(doc)
            response = client.post(url, content=body, headers=headers_for(body, doc=doc))
            assert response.status_code == 200, response.text
            return doc["id"], response.json()

        jobs = [(s.url, d) for d in docs + resends for s in (a, b)]
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(deliver, jobs))
    stored_by = {}
    for eid, answer in answers:
        stored_by.setdefault(eid, []).append(answer["stored"])
    assert all(sorted(flags) == [False, True] for flags in stored_by.values()), stored_by
    store = open_store(archive_uri)
    events, _ = Inbox(store).since(None)
    ids = [e.event_id for e in events]
    assert sorted(ids) == sorted(d["id"] for d in docs + resends)
    assert len(entry_keys(store)) == len(ids)
    # One first event per run, whichever receiver stored it; the resends are flagged.
    firsts = [e for e in events if not e.duplicate]
    assert sorted(e.run_id for e in firsts) == sorted(f"run-{i}" for i in range(12))
