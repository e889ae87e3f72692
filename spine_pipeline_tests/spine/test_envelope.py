"""Envelope unwrapping keeps the exact `data` text and maps every failure to one error type."""

import json

import pytest

from spine_pipeline.spine import (
    AuthenticationError,
    BadRequestError,
    MalformedResponseError,
    NotFoundError,
    RateLimitError,
    ServerError,
    SpineAPIError,
    rawjson,
)
from spine_pipeline.spine.envelope import unwrap
from spine_pipeline.spine.rawjson import dumps_iterative, loads


def test_data_text_is_the_exact_source_slice():
    data_src = '{ "content" : "  caf\\u00e9 \\r\\n",\n "n": 1.50, "x": [ ] }'
    body = ('{"success": true,  "data": ' + data_src + ' , "extra": 1}').encode()
    answer = unwrap(200, body, "req-1")
    assert answer.data_text == data_src
    assert answer.data["content"] == "  café \r\n"
    assert answer.request_id == "req-1"
    assert answer.body == body


def test_invalid_utf8_keeps_original_bytes():
    body = b'{"success":true,"data":{"c":"ok \xff\xfe end"}}'
    answer = unwrap(200, body, None)
    assert not answer.utf8_valid
    assert answer.body == body
    assert answer.data["c"] == "ok \ufffd\ufffd end"


def test_invalid_utf8_is_one_replacement_per_byte_and_the_data_bytes_are_kept():
    # A truncated 3-byte sequence: errors="replace" would give one U+FFFD; the archive's rule
    # (textfidelity) gives one per byte, so text offsets match byte offsets.
    body = b'{"success":true,"data":{"c":"a\xe2\x82b \xff"}, "error":null}'
    answer = unwrap(200, body, None)
    assert answer.data == {"c": "a\ufffd\ufffdb \ufffd"}
    assert answer.data_text == '{"c":"a\ufffd\ufffdb \ufffd"}'
    assert answer.lean_original == b'{"c":"a\xe2\x82b \xff"}'
    assert unwrap(200, b'{"success":true,"data":{"c":"ok"}}', None).lean_original is None


def test_deeply_nested_data_parses_without_recursion_error():
    depth = 6000
    data = '{"c":' * depth + "1" + "}" * depth
    answer = unwrap(200, ('{"success":true,"data":' + data + "}").encode(), None)
    assert answer.data_text == data
    node, seen = answer.data, 0
    while isinstance(node, dict):
        node, seen = node["c"], seen + 1
    assert (seen, node) == (depth, 1)
    assert dumps_iterative(answer.data) == data
    assert loads(dumps_iterative(answer.data))["c"]["c"]["c"] is not None


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (404, NotFoundError),
        (429, RateLimitError),
        (500, ServerError),
        (503, ServerError),
        (403, SpineAPIError),
        (422, SpineAPIError),
    ],
)
def test_status_codes_map_to_the_hierarchy(status, cls):
    body = json.dumps({"success": False, "error": "Run not found: abc"}).encode()
    with pytest.raises(cls) as info:
        unwrap(status, body, "rid-9")
    assert type(info.value) is cls
    assert info.value.status_code == status
    assert info.value.error_message == "Run not found: abc"
    assert info.value.request_id == "rid-9"
    assert "rid-9" in str(info.value)


def test_error_without_envelope_says_http_code():
    with pytest.raises(ServerError, match="HTTP 502"):
        unwrap(502, b"<html>bad gateway</html>", None)


@pytest.mark.parametrize("body", [b"not json", b"[1,2]", b'{"success":true}', b""])
def test_malformed_2xx_bodies(body):
    with pytest.raises(MalformedResponseError):
        unwrap(200, body, None)


def test_success_false_on_200_is_an_api_error():
    with pytest.raises(SpineAPIError, match="quota exceeded") as info:
        unwrap(200, b'{"success": false, "error": "quota exceeded"}', None)
    assert info.value.status_code == 200


def test_server_echoing_a_key_is_redacted():
    body = b'{"success": false, "error": "bad key sk_spine_live_abcdef123"}'
    with pytest.raises(AuthenticationError) as info:
        unwrap(401, body, None)
    assert "sk_spine_live_abcdef123" not in str(info.value)
    assert "sk_spine_live_abcdef123" not in (info.value.response_body or "")


def test_malformed_body_message_names_no_status_and_keeps_the_raw_body():
    # The status is an attribute: callers that show it add "(HTTP 200)" once (fetch_errors
    # used to read "... (HTTP 200) (HTTP 200)"). The text is spine-sdk's.
    body = b'{"success":true,"data":{"nodes":[\n<!-- upstream timeout -->'
    with pytest.raises(MalformedResponseError) as info:
        unwrap(200, body, "rid")
    assert info.value.message == "Malformed response: expected a JSON object"
    assert info.value.status_code == 200
    assert info.value.raw_body == body
    assert str(info.value) == "Malformed response: expected a JSON object (request id rid)"


def test_a_body_with_big_strings_is_lean_until_the_view_asks(monkeypatch):
    monkeypatch.setattr(rawjson, "BIG_STRING_BYTES", 64)
    monkeypatch.setattr(rawjson, "CHUNK_BYTES", 16)
    content = 'caf\u00e9 \U0001f600 "quoted"\n' * 20
    data_src = json.dumps({"id": "a", "content": content, "n": 1.50}, ensure_ascii=False)
    body = ('{"success": true, "data": ' + data_src + "}").encode()
    answer = unwrap(200, body, None)
    assert len(answer.bigs) == 1 and answer.utf8_valid
    assert answer.lean_text == '{"id": "a", "content": "", "n": 1.5}'
    assert isinstance(answer.lean_data["content"], rawjson.BigString)
    assert answer.data == json.loads(data_src) and answer.data_text == data_src
    view = answer.viewing({"replaced": True})
    assert view.data == {"replaced": True} and view.lean_data is answer.lean_data


def test_big_invalid_utf8_body_is_lean_and_not_utf8_valid(monkeypatch):
    monkeypatch.setattr(rawjson, "BIG_STRING_BYTES", 16)
    body = b'{"success":true,"data":{"c":"' + b"x" * 40 + b'\xff end"}}'
    answer = unwrap(200, body, None)
    assert answer.bigs and not answer.utf8_valid
    assert answer.data["c"] == "x" * 40 + "\ufffd end"
