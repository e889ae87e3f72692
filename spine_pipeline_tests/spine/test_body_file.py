"""Reply bodies past `bodies.FILE_BYTES` are gathered in a temporary file: the same bytes.

The threshold is lowered so that small replies take the file path; the decoded value, the
cap and the errors must be exactly those of the in-memory path.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import tempfile
from typing import Any

import pytest

from spine_pipeline.spine import (
    AsyncSpineClient,
    ResponseTooLargeError,
    RetryPolicy,
    SpineClient,
    SpineConnectionError,
    bodies,
)
from spine_pipeline_tests.fixtures.hostile import HostileServer, Reply

FAST = RetryPolicy(max_retries=1, base_delay=0.01, max_delay=0.05, jitter=0.0)
# Raw é and escaped pairs, a lone surrogate escape, a 4-byte character at many offsets.
FINAL = ("caf\u00e9 \U0001f680 " * 7 + "x") * 3000
DOC = {"run_id": "r1", "status": "completed", "canvas_id": "c1", "result": {"final_output": FINAL}}


def _get(server: HostileServer, cap: int) -> tuple[bytes, bytes]:
    """The run's exact data text through the sync and the async client."""
    with SpineClient(
        api_key="sk_test_hostile", base_url=server.url, retry=FAST, max_reply_bytes=cap
    ) as c:
        sync = c.get_run("r1").response.body

    async def run() -> bytes:
        async with AsyncSpineClient(
            api_key="sk_test_hostile", base_url=server.url, retry=FAST, max_reply_bytes=cap
        ) as ac:
            return (await ac.get_run("r1")).response.body

    return sync, asyncio.run(run())


@pytest.mark.parametrize("coding", ["identity", "gzip"])
@pytest.mark.parametrize("ensure_ascii", [False, True])
def test_a_body_gathered_in_a_file_is_byte_exact(monkeypatch, coding: str, ensure_ascii: bool):
    monkeypatch.setattr(bodies, "FILE_BYTES", 4097)  # odd: pieces straddle the switch
    body = json.dumps({"success": True, "data": DOC}, ensure_ascii=ensure_ascii).encode()
    encoded = gzip.compress(body) if coding == "gzip" else body
    reply = Reply(headers=[("Content-Encoding", coding)], body=encoded, chunk_size=1000)
    with HostileServer({"/v1/run/r1": reply}) as server:
        assert _get(server, len(body)) == (body, body)  # exactly at the cap: accepted
        with pytest.raises(ResponseTooLargeError):
            _get(server, len(body) - 1)


def test_no_temporary_file_is_one_line_transport_error(monkeypatch):
    def refuse(*args: Any, **kw: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bodies, "FILE_BYTES", 4096)
    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    body = json.dumps({"success": True, "data": DOC}).encode()
    with (
        HostileServer({"/v1/run/r1": Reply(body=body)}) as server,
        pytest.raises(SpineConnectionError) as caught,
    ):
        _get(server, len(body))
    message = str(caught.value)
    assert "No space left on device" in message and "\n" not in message
