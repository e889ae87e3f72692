"""Unwrap Spine's `{"success": ..., "data": ...}` envelope without losing a byte.

The typed views are conveniences; the archive needs the exact text Spine sent. So the
`data` value is located in the body and sliced out verbatim (`data_text`), next to the
parsed value. Bodies that are not valid UTF-8 are decoded with replacement characters for
the parsed view, and the original bytes stay on `ApiResponse.body`.

A body with string values of `rawjson.BIG_STRING_BYTES` or more (a 20 MiB block) is never
decoded whole: it is masked (`mask_big_strings`), its small lean text is parsed, and each big
string stays in `body` as a `BigString`. `data` and `data_text` are then computed on first use
(the typed views need real strings, so they pay for them), while the archive reads the lean
form (`lean_data`, `lean_text`, `bigs`) and never holds such a string as a Python str.
"""

from __future__ import annotations

import json
from typing import Any

from spine_pipeline.spine.errors import MalformedResponseError, SpineAPIError, error_for_status
from spine_pipeline.spine.rawjson import (
    BigString,
    LeanText,
    mask_big_strings,
    parse_json,
    scan_value,
)

_WS = " \t\n\r"
_UNSET: Any = object()
# Error bodies are kept for messages (truncated to 2,000 chars there); a huge one is cut first.
_ERROR_BODY_BYTES = 16_384
MALFORMED_NOT_OBJECT = "Malformed response: expected a JSON object"


class ApiResponse:
    """One decoded API answer: the parsed `data`, its exact text, and the whole body.

    For an ordinary body `data`/`data_text` are computed once, here. For a body with big
    strings (`bigs` not empty) `lean_data`/`lean_text` hold them as BigStrings and `""`
    placeholders, and `data`/`data_text` are materialised (and cached) on first access.
    """

    __slots__ = (
        "_full",
        "_text",
        "_value",
        "_view",
        "bigs",
        "body",
        "lean_original",
        "request_id",
        "status_code",
        "utf8_valid",
    )

    def __init__(
        self,
        status_code: int,
        data: Any,
        data_text: str,
        body: bytes,
        request_id: str | None = None,
        utf8_valid: bool = True,
        *,
        bigs: tuple[tuple[int, BigString], ...] = (),
        lean_original: bytes | None = None,
    ) -> None:
        self.status_code = status_code
        self.body = body
        self.request_id = request_id
        self.utf8_valid = utf8_valid
        self.bigs = bigs
        self.lean_original = lean_original
        self._value = data
        self._text = data_text
        self._view: Any = _UNSET
        self._full: tuple[Any, str] | None = None

    def __repr__(self) -> str:
        lean = f", {len(self.bigs)} big strings" if self.bigs else ""
        return (
            f"ApiResponse(status_code={self.status_code}, request_id={self.request_id!r}, "
            f"utf8_valid={self.utf8_valid}, <{len(self.body)} bytes{lean}>)"
        )

    @property
    def data(self) -> Any:
        """The parsed `data`, as `json.loads` gives it (real strings, however big)."""
        if self._view is not _UNSET:
            return self._view
        if not self.bigs:
            return self._value
        return self._materialise()[0]

    @property
    def data_text(self) -> str:
        """The exact text of `data` (U+FFFD for each invalid byte)."""
        if not self.bigs:
            return self._text
        return self._materialise()[1]

    @property
    def lean_data(self) -> Any:
        """`data` with big strings as BigStrings: what the archive reads (same as `data` else)."""
        return self._value

    @property
    def lean_text(self) -> str:
        """`data_text` with each big string literal replaced by `""` (offsets in `bigs`)."""
        return self._text

    def viewing(self, data: Any) -> ApiResponse:
        """The same response with `data` replaced, for a typed view over a lean value."""
        copy = ApiResponse(
            self.status_code,
            self._value,
            self._text,
            self.body,
            self.request_id,
            self.utf8_valid,
            bigs=self.bigs,
            lean_original=self.lean_original,
        )
        copy._view = data
        return copy

    def _materialise(self) -> tuple[Any, str]:
        if self._full is None:
            envelope, data_text = _slice_data(_decode(self.body)[0])
            assert data_text is not None  # the lean parse found it
            self._full = (envelope["data"], data_text)
        return self._full


def _decode(body: bytes) -> tuple[str, bool]:
    try:
        return body.decode("utf-8"), True
    except UnicodeDecodeError:
        return body.decode("utf-8", errors="replace"), False


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


def _slice_lean(lean: LeanText) -> tuple[dict[str, Any], LeanText | None]:
    """`_slice_data` for a lean text: the envelope and the lean text of its (last) `data`."""
    value, span = parse_json(lean.text, bigs=lean.big_map())
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    data = span.last_member("data")
    return value, None if data is None else lean.slice(data.start, data.end)


def _message(value: Any) -> str | None:
    """An envelope `error` as message text (a big one is cut: messages are kept short)."""
    if isinstance(value, BigString):
        return value.head(2000)
    return value if isinstance(value, str) else None


def unwrap(status_code: int, body: bytes, request_id: str | None) -> ApiResponse:
    """Turn an HTTP answer into an `ApiResponse`, or raise the matching `SpineAPIError`."""
    envelope: dict[str, Any] | None
    lean_data: LeanText | None = None
    data_text: str | None = None
    try:
        lean = mask_big_strings(body)
    except ValueError:  # a big string literal that is not a valid JSON string
        lean, envelope = None, None
        text = body[:_ERROR_BODY_BYTES].decode("utf-8", errors="replace")
        utf8_valid = False
    else:
        if lean is None:
            text, utf8_valid = _decode(body)
            try:
                envelope, data_text = _slice_data(text)
            except (ValueError, RecursionError):
                envelope, data_text = None, None
        else:
            text = body[:_ERROR_BODY_BYTES].decode("utf-8", errors="replace")
            utf8_valid = lean.original is None and all(b.utf8_valid for _, b in lean.bigs)
            try:
                envelope, lean_data = _slice_lean(lean)
            except (ValueError, RecursionError):
                envelope = None
    if status_code >= 400:
        message = f"HTTP {status_code}"
        error = _message(envelope.get("error")) if envelope is not None else None
        if error is not None:
            message = error
        raise error_for_status(status_code, message, request_id=request_id, response_body=text)
    if envelope is None:
        # The status code is an attribute of the error, not part of its message: callers
        # that show it add it once (an earlier message did, and fetch_errors read
        # "... (HTTP 200) (HTTP 200)"). The raw body is kept for archiving it verbatim.
        raise MalformedResponseError(
            MALFORMED_NOT_OBJECT,
            status_code=status_code,
            request_id=request_id,
            response_body=text,
            raw_body=body,
        )
    if envelope.get("success") is False:
        error = _message(envelope.get("error"))
        raise SpineAPIError(
            error if error else f"HTTP {status_code}: success=false",
            status_code=status_code,
            request_id=request_id,
            response_body=text,
        )
    if lean is not None and lean_data is not None:
        return ApiResponse(
            status_code=status_code,
            data=envelope["data"],
            data_text=lean_data.text,
            body=body,
            request_id=request_id,
            utf8_valid=utf8_valid,
            bigs=lean_data.bigs,
            lean_original=lean_data.original,
        )
    if "data" not in envelope or data_text is None:
        raise MalformedResponseError(
            "Malformed response: envelope has no 'data'",
            status_code=status_code,
            request_id=request_id,
            response_body=text,
            raw_body=body,
        )
    return ApiResponse(
        status_code=status_code,
        data=envelope["data"],
        data_text=data_text,
        body=body,
        request_id=request_id,
        utf8_valid=utf8_valid,
    )
