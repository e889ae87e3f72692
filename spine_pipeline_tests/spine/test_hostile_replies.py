"""API replies from a hostile server: a decoded-size cap, and decoding exactly as before.

The server is `fixtures.hostile.HostileServer` on loopback. A gzip bomb is refused with a
one-line `ResponseTooLargeError` once its *decoded* size passes the client's cap, in bounded
memory (measured in a child process, so the peak RSS is the client's alone), and is never
asked for again; bodies within the cap decode to the same bytes httpx gave.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from spine_pipeline.spine import (
    NO_RETRY,
    AsyncSpineClient,
    ResponseTooLargeError,
    RetryPolicy,
    SpineClient,
    SpineConnectionError,
    SubmitOutcomeUnknownError,
)
from spine_pipeline.spine.client import MAX_REPLY_BYTES
from spine_pipeline_tests.fixtures.hostile import (
    HostileServer,
    Reply,
    gzip_bomb,
    gzip_bomb_bytes,
)

REPO = Path(__file__).resolve().parents[2]
FAST = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05, jitter=0.0)
RUN = {"run_id": "r1", "status": "completed", "canvas_id": "c1", "result": {"final_output": "x"}}
BOMB = 512 * 1024 * 1024  # decoded bytes: the unchanged client held all of it, twice over
CAP = 32 * 1024 * 1024
RSS_GROWTH_LIMIT_MIB = 300  # a memory bound (the cap plus slack), not a timing


def client(server: HostileServer, **kw: Any) -> SpineClient:
    kw.setdefault("retry", FAST)
    return SpineClient(api_key="sk_test_hostile", base_url=server.url, **kw)


def _one_line(message: str) -> None:
    assert "\n" not in message and "\r" not in message, message
    assert len(message) < 400, message


def _count(server: HostileServer, path: str) -> int:
    return sum(1 for r in server.requests if r.path == path)


# -- the cap -----------------------------------------------------------------------------------

_CHILD = r"""
import asyncio, json, resource, sys
from spine_pipeline.spine import NO_RETRY, AsyncSpineClient, SpineClient

url, cap = sys.argv[1], int(sys.argv[2])

def peak_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

def failure(exc):
    return [type(exc).__name__, str(exc)]

async def get_dag_async():
    async with AsyncSpineClient(api_key="sk_test_child", base_url=url, retry=NO_RETRY) as c:
        c.max_reply_bytes = cap  # an attribute: the client before the cap just ignores it
        try:
            await c.get_dag("bomb2")
        except Exception as exc:
            return failure(exc)
        return ["no error", ""]

before = peak_kib()
with SpineClient(api_key="sk_test_child", base_url=url, retry=NO_RETRY) as c:
    c.max_reply_bytes = cap
    try:
        c.get_run("bomb")
        sync = ["no error", ""]
    except Exception as exc:
        sync = failure(exc)
both = {"sync": sync, "async": asyncio.run(get_dag_async())}
print(json.dumps({**both, "growth_mib": (peak_kib() - before) / 1024}))
"""


def test_a_gzip_bomb_is_refused_with_one_line_in_bounded_memory() -> None:
    routes = {
        # 512 MiB of zeros in about half a MB, with an honest Content-Length.
        "/v1/run/bomb": Reply(
            headers=[("Content-Type", "application/json"), ("Content-Encoding", "gzip")],
            body=gzip_bomb_bytes(BOMB),
        ),
        # gzip of gzip: a few hundred bytes that httpx inflated in one step per layer.
        "/v1/canvas/bomb2/dag": Reply(
            headers=[("Content-Encoding", "gzip, gzip")], body=gzip_bomb_bytes(BOMB, 2)
        ),
    }
    with HostileServer(routes, max_seconds=120) as server:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, server.url, str(CAP)],
            capture_output=True,
            text=True,
            timeout=180,
            cwd=REPO,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        got = json.loads(done.stdout.strip().splitlines()[-1])
        assert _count(server, "/v1/run/bomb") == 1
        assert _count(server, "/v1/canvas/bomb2/dag") == 1
    for kind in ("sync", "async"):
        name, message = got[kind]
        assert name == "ResponseTooLargeError", got
        assert f"exceeds {CAP} bytes decoded" in message
        _one_line(message)
    assert "GET /v1/run/bomb" in got["sync"][1]
    assert "Content-Encoding gzip, gzip" in got["async"][1]
    assert got["growth_mib"] < RSS_GROWTH_LIMIT_MIB, got


def test_the_cap_is_a_module_constant_and_a_client_attribute() -> None:
    assert MAX_REPLY_BYTES == 256 * 1024 * 1024
    unused = "http://127.0.0.1:9"  # constructing a client connects nowhere
    with SpineClient(api_key="sk_test_hostile", base_url=unused) as c:
        assert c.max_reply_bytes == MAX_REPLY_BYTES
    with SpineClient(api_key="sk_test_hostile", base_url=unused, max_reply_bytes=1024) as c:
        assert c.max_reply_bytes == 1024


def test_a_refused_reply_is_not_asked_for_again() -> None:
    # Retries are on (FAST): the same reply would be refused again, so none is made.
    with HostileServer({"/v1/run/r1": gzip_bomb(8 << 20)}) as server:
        with client(server, max_reply_bytes=1 << 20) as c, pytest.raises(ResponseTooLargeError):
            c.get_run("r1")
        assert _count(server, "/v1/run/r1") == 1

        async def run() -> None:
            async with AsyncSpineClient(
                api_key="sk_test_hostile", base_url=server.url, retry=FAST, max_reply_bytes=1 << 20
            ) as ac:
                await ac.get_run("r1")

        with pytest.raises(ResponseTooLargeError) as caught:
            asyncio.run(run())
        assert _count(server, "/v1/run/r1") == 2
        assert caught.value.status_code == 200


def test_an_error_reply_over_the_cap_is_refused_too() -> None:
    with HostileServer({"/v1/run/r1": gzip_bomb(8 << 20, status=503)}) as server:
        with client(server, max_reply_bytes=1 << 20) as c, pytest.raises(ResponseTooLargeError):
            c.get_run("r1")
        assert _count(server, "/v1/run/r1") == 1


def test_a_plain_body_over_the_cap_is_refused() -> None:
    body = json.dumps({"success": True, "data": {"final_output": "x" * (2 << 20)}}).encode()
    with (
        HostileServer({"/v1/run/r1": Reply(body=body)}) as server,
        client(server, max_reply_bytes=1 << 20) as c,
        pytest.raises(ResponseTooLargeError) as caught,
    ):
        c.get_run("r1")
    assert "Content-Encoding" not in str(caught.value)
    _one_line(str(caught.value))


def test_a_submit_whose_reply_is_refused_is_outcome_unknown() -> None:
    # The run may have been created: the submit rule wins, and nothing is repeated.
    with HostileServer({"/v1/run": gzip_bomb(8 << 20)}) as server:
        with (
            client(server, max_reply_bytes=1 << 20) as c,
            pytest.raises(SubmitOutcomeUnknownError) as caught,
        ):
            c.create_run("hello")
        assert _count(server, "/v1/run") == 1
    assert "exceeds" in str(caught.value)
    _one_line(str(caught.value))


# -- within the cap: decoded exactly as before --------------------------------------------------


def _deflate(data: bytes, raw: bool) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
    return z.compress(data) + z.flush()


@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw-deflate", "gzip, gzip", "identity"])
@pytest.mark.parametrize("length", ["auto", "close", "chunked"])
def test_bodies_within_the_cap_decode_to_the_same_value(coding: str, length: str) -> None:
    doc = {**RUN, "result": {"final_output": "é" * 300_000 + "\u2028"}}
    body = json.dumps({"success": True, "data": doc}).encode("utf-8")
    encoded = {
        "gzip": lambda: gzip.compress(body),
        "deflate": lambda: _deflate(body, raw=False),
        "raw-deflate": lambda: _deflate(body, raw=True),
        "gzip, gzip": lambda: gzip.compress(gzip.compress(body)),
        "identity": lambda: body,
    }[coding]()
    header = "deflate" if coding == "raw-deflate" else coding
    reply = Reply(
        headers=[("Content-Encoding", header)],
        body=encoded,
        length=len(encoded) if length == "auto" else length,
        chunk_size=4096,
    )
    with HostileServer({"/v1/run/r1": reply}) as server:
        with client(server, max_reply_bytes=len(body)) as c:  # exactly at the cap: accepted
            assert c.get_run("r1").data == doc

        async def run() -> Any:
            async with AsyncSpineClient(
                api_key="sk_test_hostile", base_url=server.url, max_reply_bytes=len(body)
            ) as ac:
                return (await ac.get_run("r1")).data

        assert asyncio.run(run()) == doc


def test_a_corrupt_gzip_body_fails_as_it_did() -> None:
    reply = Reply(headers=[("Content-Encoding", "gzip")], body=b"this is not gzip at all")
    with (
        HostileServer({"/v1/run/r1": reply}) as server,
        client(server) as c,
        pytest.raises(SpineConnectionError) as caught,
    ):
        c.get_run("r1")
    assert "DecodingError" in str(caught.value)


def test_the_server_fixture_echoes_headers_and_stops() -> None:
    with HostileServer({"/v1/run/echo": Reply(echo_headers=True)}, max_seconds=30) as server:
        with client(server, retry=NO_RETRY) as c:
            got = c.get_run("echo").data
        names = [name for name, _ in got["headers"]]
        assert "x-api-key" in names and "user-agent" in names
        assert server.requests[-1].header("accept") == "application/json"
    server.stop()  # idempotent
