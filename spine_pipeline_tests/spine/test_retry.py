"""The retry rules as a protocol: which outcomes are repeated, and how long the client waits.

The flow is driven here with real `httpx.Response`/exception objects, so the exact sleep
the client would take is visible without timing anything.
"""

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from spine_pipeline.spine import RetryPolicy, SubmitOutcomeUnknownError
from spine_pipeline.spine.client import _Send, _Sleep, api_flow
from spine_pipeline.spine.errors import RateLimitError, ServerError, SpineConnectionError
from spine_pipeline.spine.retry import RequestKind, parse_retry_after

OK = b'{"success": true, "data": {"run_id": "r1", "status": "running"}}'
TIMEOUT = httpx.Timeout(5.0)
POLICY = RetryPolicy(max_retries=3, base_delay=0.5, max_delay=30.0, jitter=0.0)


def _request(kind):
    method = "POST" if kind is RequestKind.CREATE else "GET"
    return lambda: httpx.Request(method, "http://spine.test/v1/run")


def drive(kind, replies, policy=POLICY):
    """Feed replies to the flow; return (result or exception, list of sleeps, sends)."""
    flow = api_flow(_request(kind), kind, policy, TIMEOUT)
    sleeps, sends = [], 0
    replies = list(replies)
    step = next(flow)
    try:
        while True:
            if isinstance(step, _Sleep):
                sleeps.append(step.seconds)
                step = flow.send(None)
            else:
                assert isinstance(step, _Send)
                sends += 1
                step = flow.send(replies.pop(0))
    except StopIteration as done:
        return done.value, sleeps, sends
    except Exception as exc:
        return exc, sleeps, sends


def resp(status, body=b"{}", headers=None):
    return httpx.Response(status, content=body, headers=headers or {})


def test_get_retries_429_honouring_retry_after_seconds():
    result, sleeps, sends = drive(
        RequestKind.READ, [resp(429, headers={"Retry-After": "7"}), resp(200, OK)]
    )
    assert result.data["run_id"] == "r1"
    assert sleeps == [7.0] and sends == 2


def test_get_retry_after_http_date():
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True)
    result, sleeps, _ = drive(
        RequestKind.READ, [resp(503, headers={"Retry-After": when}), resp(200, OK)]
    )
    assert result.data["status"] == "running"
    assert 17 <= sleeps[0] <= 20


def test_retry_after_is_capped_and_parsed():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("garbage") is None
    assert parse_retry_after(None) is None
    past = format_datetime(datetime.now(UTC) - timedelta(seconds=60), usegmt=True)
    assert parse_retry_after(past) == 0.0
    assert RetryPolicy(max_delay=30).delay(0, retry_after=120.0) == 30.0


def test_get_backoff_is_exponential_and_capped():
    policy = RetryPolicy(max_retries=6, base_delay=1.0, max_delay=10.0, jitter=0.0)
    result, sleeps, sends = drive(RequestKind.READ, [resp(500)] * 6 + [resp(200, OK)], policy)
    assert sleeps == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert sends == 7 and result.data["run_id"] == "r1"


def test_jitter_stays_within_bounds():
    policy = RetryPolicy(base_delay=1.0, jitter=0.1)
    delays = {policy.delay(2) for _ in range(50)}
    assert all(3.6 <= d <= 4.4 for d in delays) and len(delays) > 1


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_get_gives_up_after_the_budget(status):
    result, sleeps, sends = drive(RequestKind.READ, [resp(status)] * 4)
    assert isinstance(result, ServerError) and sends == 4 and len(sleeps) == 3


@pytest.mark.parametrize(
    "exc",
    [
        httpx.ConnectError("refused"),
        httpx.ReadError("reset"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
    ],
)
def test_get_retries_transport_errors(exc):
    result, _, sends = drive(RequestKind.READ, [exc, resp(200, OK)])
    assert result.data["run_id"] == "r1" and sends == 2


def test_create_retries_429_then_succeeds():
    result, sleeps, sends = drive(
        RequestKind.CREATE, [resp(429, headers={"Retry-After": "2"}), resp(200, OK)]
    )
    assert result.data["run_id"] == "r1" and sleeps == [2.0] and sends == 2


def test_create_429_exhausted_is_a_rate_limit_rejection():
    result, _, sends = drive(RequestKind.CREATE, [resp(429)] * 4)
    assert isinstance(result, RateLimitError) and sends == 4


@pytest.mark.parametrize("exc", [httpx.ConnectError("refused"), httpx.ConnectTimeout("syn")])
def test_create_retries_when_the_request_never_left(exc):
    result, _, sends = drive(RequestKind.CREATE, [exc, exc, resp(200, OK)])
    assert result.data["run_id"] == "r1" and sends == 3


def test_create_connection_refused_for_good_is_a_connection_error_not_unknown():
    result, _, sends = drive(RequestKind.CREATE, [httpx.ConnectError("refused")] * 4)
    assert isinstance(result, SpineConnectionError) and sends == 4


@pytest.mark.parametrize(
    "reply",
    [
        resp(500),
        resp(502),
        resp(503, headers={"Retry-After": "1"}),
        httpx.ReadError("reset"),
        httpx.ReadTimeout("slow"),
        httpx.WriteError("broken pipe"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        resp(200, b"<html>"),
        resp(200, b'{"success": true, "data": {}}'),
    ],
)
def test_create_never_retries_an_ambiguous_failure(reply):
    result, sleeps, sends = drive(RequestKind.CREATE, [reply, resp(200, OK)])
    assert isinstance(result, SubmitOutcomeUnknownError)
    assert sends == 1 and sleeps == []
    assert "not retried" in str(result) or "unknown" in str(result)


def test_deadline_stops_retries_early():
    flow = api_flow(
        _request(RequestKind.READ), RequestKind.READ, POLICY, TIMEOUT, time.monotonic() + 1.0
    )
    step = next(flow)
    assert isinstance(step, _Send)
    assert step.request.extensions["timeout"]["read"] <= 1.0
    with pytest.raises(RateLimitError):
        flow.send(resp(429, headers={"Retry-After": "5"}))
