"""Unwrap Spine's `{"success": ..., "data": ...}` envelope without losing a byte.

The typed views are conveniences; the archive needs the exact text Spine sent. So the
`data` value is located in the body and sliced out verbatim (`data_text`), next to the
parsed value. Bodies that are not valid UTF-8 are decoded with replacement characters for
the parsed view, and the original bytes stay on `ApiResponse.body`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from spine_pipeline.spine.errors import MalformedResponseError, SpineAPIError, error_for_status
from spine_pipeline.spine.rawjson import scan_value

_WS = " \t\n\r"


@dataclass(frozen=True, eq=False)
class ApiResponse:
    """One decoded API answer: the parsed `data`, its exact text, and the whole body."""

    status_code: int
    data: Any
    data_text: str
    body: bytes = field(repr=False)
    request_id: str | None = None
    utf8_valid: bool = True


def _skip_ws(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _WS:
        pos += 1
    return pos


def _slice_data(text: str) -> tuple[dict[str, Any], str | None]:
    """Parse a top-level JSON object, returning it and the exact source text of its `data`."""
    pos = _skip_ws(text, 0)
    if not text.startswith("{", pos):
        raise ValueError("not a JSON object")
    pos = _skip_ws(text, pos + 1)
    out: dict[str, Any] = {}
    data_text: str | None = None
    if text.startswith("}", pos):
        return out, None
    while True:
        if not text.startswith('"', pos):
            raise ValueError("expected a key")
        key, pos = json.decoder.scanstring(text, pos + 1)  # type: ignore[attr-defined]
        pos = _skip_ws(text, pos)
        if not text.startswith(":", pos):
            raise ValueError("expected ':'")
        pos = _skip_ws(text, pos + 1)
        value, end = scan_value(text, pos)
        out[key] = value
        if key == "data":
            data_text = text[pos:end]
        pos = _skip_ws(text, end)
        if text.startswith(",", pos):
            pos = _skip_ws(text, pos + 1)
            continue
        if text.startswith("}", pos):
            break
        raise ValueError("expected ',' or '}'")
    if _skip_ws(text, pos + 1) != len(text):
        raise ValueError("extra data after the JSON object")
    return out, data_text


def unwrap(status_code: int, body: bytes, request_id: str | None) -> ApiResponse:
    """Turn an HTTP answer into an `ApiResponse`, or raise the matching `SpineAPIError`."""
    try:
        text = body.decode("utf-8")
        utf8_valid = True
    except UnicodeDecodeError:
        text = body.decode("utf-8", errors="replace")
        utf8_valid = False
    try:
        envelope, data_text = _slice_data(text)
    except (ValueError, RecursionError):
        envelope, data_text = None, None
    if status_code >= 400:
        message = f"HTTP {status_code}"
        if envelope is not None and isinstance(envelope.get("error"), str):
            message = envelope["error"]
        raise error_for_status(status_code, message, request_id=request_id, response_body=text)
    if envelope is None:
        raise MalformedResponseError(
            f"Malformed response: expected a JSON object (HTTP {status_code})",
            status_code=status_code,
            request_id=request_id,
            response_body=text,
        )
    if envelope.get("success") is False:
        error = envelope.get("error")
        raise SpineAPIError(
            error if isinstance(error, str) and error else f"HTTP {status_code}: success=false",
            status_code=status_code,
            request_id=request_id,
            response_body=text,
        )
    if "data" not in envelope or data_text is None:
        raise MalformedResponseError(
            "Malformed response: envelope has no 'data'",
            status_code=status_code,
            request_id=request_id,
            response_body=text,
        )
    return ApiResponse(
        status_code=status_code,
        data=envelope["data"],
        data_text=data_text,
        body=body,
        request_id=request_id,
        utf8_valid=utf8_valid,
    )
