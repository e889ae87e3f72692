"""The poll pass's GET path: `AsyncSpineClient.get_run` through aiohttp directly.

Every protection of the httpx path must hold on it, checked against a real loopback server
(`fixtures.hostile.HostileServer`) through `poll_runs`, as the sensor calls it: a body over
the cap (plain or a gzip bomb) refused once and never retried, a trickling body cut by the
pass's deadline and by the read timeout, no redirect followed, a 401 whose reply echoes the
key never showing it, 429 retried (Retry-After honoured) then given up with the pass
stopping, and no cookie a server sets sent back.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from typing import Any

import pytest

from spine_pipeline.spine import (
    NO_RETRY,
    AsyncSpineClient,
    AuthenticationError,
    MalformedResponseError,
    RateLimitError,
    RetryPolicy,
    SpineTimeoutError,
)
from spine_pipeline.spine.poll_pass import PollPass, poll_runs
from spine_pipeline_tests.fixtures.hostile import (
    HostileServer,
    Reply,
    Request,
    envelope,
    gzip_bomb,
    json_reply,
    redirect,
    trickle,
)

FAST = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05, jitter=0.0)
KEY = "sk_spine_DIRECTpath_TOPSECRET_7f3a"
CAP = 1 << 20


def _run(run_id: str, status: str = "running") -> dict[str, Any]:
    return {"run_id": run_id, "status": status, "canvas_id": f"c-{run_id}"}


def _client(server: HostileServer, **kw: Any) -> AsyncSpineClient:
    kw.setdefault("retry", FAST)
    return AsyncSpineClient(api_key=KEY, base_url=server.url, **kw)


def _pass(server: HostileServer, ids: list[str], seconds: float = 20.0, **kw: Any) -> PollPass:
    async def go() -> PollPass:
        async with _client(server, **kw) as client:
            done = await poll_runs(client, ids, deadline=time.monotonic() + seconds, concurrency=4)
            # The GETs went the direct way, not through the httpx client.
            assert client._direct is not None
            return done

    return asyncio.run(go())


def _get(server: HostileServer, run_id: str, **kw: Any) -> Any:
    async def go() -> Any:
        async with _client(server, **kw) as client:
            return await client.get_run(run_id)

    return asyncio.run(go())


def _count(server: HostileServer, path: str) -> int:
    return sum(1 for p in server.paths() if p == path)


def _one_line(message: str) -> None:
    assert "\n" not in message and "\r" not in message, message
    assert len(message) < 400, message


def test_bodies_over_the_cap_are_refused_once_and_the_pass_goes_on() -> None:
    plain = json.dumps({"success": True, "data": {**_run("big"), "x": "y" * (2 * CAP)}})
    routes = {
        "/v1/run/bomb": gzip_bomb(64 << 20),  # 64 MiB of zeros in about 64 KB
        "/v1/run/big": Reply(body=plain.encode()),
        "/v1/run/ok": envelope(_run("ok")),
    }
    with HostileServer(routes) as server:
        done = _pass(server, ["bomb", "big", "ok"], max_reply_bytes=CAP)
        # Refused, not retried (the same reply would be refused again), one line each.
        assert _count(server, "/v1/run/bomb") == 1 and _count(server, "/v1/run/big") == 1
    bomb, big, ok = done.results
    for refused in (bomb, big):
        assert refused.polled and refused.run is None and refused.error is not None
        assert f"exceeds {CAP} bytes decoded" in refused.error
        _one_line(refused.error)
    assert "Content-Encoding gzip" in (bomb.error or "")
    assert "Content-Encoding" not in (big.error or "")
    assert ok.status == "running" and done.stopped_early is None


def test_a_trickling_body_is_cut_by_the_pass_deadline() -> None:
    body = json.dumps({"success": True, "data": {**_run("slow"), "note": "z" * 240}}).encode()
    # 4 bytes every 0.2 s: over 15 s for the whole body, each gap within every timeout.
    routes = {"/v1/run/slow": trickle(body, every=0.2, size=4)}
    with HostileServer(routes) as server:
        start = time.monotonic()
        done = _pass(server, ["slow"], seconds=0.6)
        took = time.monotonic() - start
    assert done.stopped_early == "deadline reached"
    assert [r.polled for r in done.results] == [False]
    assert took < len(body) / 4 * 0.2 / 2, took  # far short of the whole trickle


def test_a_trickling_body_past_the_read_timeout_is_a_timeout() -> None:
    body = json.dumps({"success": True, "data": _run("slow")}).encode()
    with (
        HostileServer({"/v1/run/slow": trickle(body, every=1.0, size=16)}) as server,
        pytest.raises(SpineTimeoutError, match="timed out") as caught,
    ):
        _get(server, "slow", timeout=0.3, retry=NO_RETRY)
    _one_line(str(caught.value))


def test_a_redirect_is_not_followed() -> None:
    routes = {
        "/v1/run/r1": redirect("/v1/run/r2"),
        "/v1/run/r2": envelope(_run("r2")),
    }
    with HostileServer(routes) as server:
        with pytest.raises(MalformedResponseError) as caught:
            _get(server, "r1")
        assert server.paths() == ["/v1/run/r1"]
        done = _pass(server, ["r1"])
        assert server.paths() == ["/v1/run/r1", "/v1/run/r1"]
    assert caught.value.status_code == 302
    assert done.results[0].run is None and done.results[0].error


def test_a_401_echoing_the_key_never_shows_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    reply = json_reply(
        {"success": False, "error": {"message": f"invalid key {KEY}"}},
        status=401,
        headers=[("X-Request-Id", f"req-{KEY}")],
    )
    with HostileServer({"/v1/run/r1": reply}) as server:
        with pytest.raises(AuthenticationError) as caught:
            _get(server, "r1")
        done = _pass(server, ["r1"])
        # Sent to the API, as the httpx path sends it; a 401 is not retried.
        assert server.requests[0].header("x-api-key") == KEY
        assert _count(server, "/v1/run/r1") == 2
    exc = caught.value
    for text in (str(exc), repr(exc), exc.response_body or "", exc.request_id or ""):
        assert KEY not in text
    assert done.results[0].error and KEY not in done.results[0].error
    assert KEY not in caplog.text


def test_429_is_retried_after_retry_after_then_given_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[float] = []

    def busy_twice(request: Request) -> Reply:
        seen.append(time.monotonic())
        if len(seen) <= 2:
            return json_reply({"success": False}, status=429, headers=[("Retry-After", "0.3")])
        return envelope(_run("r1"))

    caplog.set_level(logging.WARNING, logger="spine_pipeline.spine.client")
    with HostileServer({"/v1/run/r1": busy_twice}) as server:
        # Retry-After wins over the backoff (within the policy's max_delay, 1 s here).
        patient = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=1.0, jitter=0.0)
        assert _get(server, "r1", retry=patient).run_id == "r1"
    assert len(seen) == 3
    assert min(b - a for a, b in itertools.pairwise(seen)) >= 0.25
    assert caplog.text.count("HTTP 429 from 127.0.0.1") == 2 and KEY not in caplog.text

    always = json_reply({"success": False}, status=429, headers=[("Retry-After", "0")])
    with HostileServer({"/v1/run/r1": always, "/v1/run/r2": envelope(_run("r2"))}) as server:
        done = _pass(server, ["r1", "r2"], retry=FAST)
        assert _count(server, "/v1/run/r1") == 1 + FAST.max_retries
    assert done.stopped_early is not None
    assert done.stopped_early.startswith(RateLimitError.__name__)


def test_cookies_a_server_sets_are_never_sent_back() -> None:
    routes = {
        "/v1/run/r1": envelope(_run("r1"), headers=[("Set-Cookie", "session=tracking; Path=/")]),
        "/v1/run/r2": envelope(_run("r2")),
    }
    with HostileServer(routes) as server:
        # By name: aiohttp's default jar would keep a cookie from a host name (not from an
        # IP address), so this fails if the session kept cookies.
        by_name = f"http://localhost:{server.port}"

        async def go() -> None:
            async with AsyncSpineClient(api_key=KEY, base_url=by_name, retry=FAST) as client:
                await client.get_run("r1")
                await client.get_run("r2")

        asyncio.run(go())
        second = server.requests[-1]
    assert second.path == "/v1/run/r2" and second.header("cookie") is None
