"""Unwrap Spine's `{"success": ..., "data": ...}` envelope without losing a byte.

This is the one parser of response bodies: the client's typed views and the archive both
read what `parse_envelope` found. The typed views are conveniences; the archive needs the
exact text Spine sent. So the `data` value is located in the body and sliced out verbatim
(`data_text`), next to the parsed value. A body that is not valid UTF-8 is decoded with one
U+FFFD per invalid byte (`textfidelity`), and the exact bytes of `data` are kept next to its
text (`lean_original`), so the archive needs no second pass over the body.

A body with string values of `rawjson.BIG_STRING_BYTES` or more (a 20 MiB block) is never
decoded whole: it is masked (`mask_big_strings`), its small lean text is parsed, and each big
string stays in `body` as a `BigString`. `data` and `data_text` are then computed on first use
(the typed views need real strings, so they pay for them), while the archive reads the lean
form (`lean_data`, `lean_text`, `lean_original`, `bigs`) and never holds such a string as a
Python str.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spine_pipeline.spine.errors import MalformedResponseError, SpineAPIError, error_for_status
from spine_pipeline.spine.rawjson import (
    BigString,
    LeanText,
    json_error,
    mask_big_strings,
    parse_json,
    parse_key,
    scan_value,
    skip_ws,
)
from spine_pipeline.spine.textfidelity import lossy_decode

__all__ = ["MALFORMED_NOT_OBJECT", "ApiResponse", "Envelope", "parse_envelope", "unwrap"]

_UNSET: Any = object()
# Error bodies are kept for messages (truncated to 2,000 chars there); a huge one is cut first.
# Decoded with "replace" (not textfidelity's rule): a message is for people, not the archive.
_ERROR_BODY_BYTES = 16_384
MALFORMED_NOT_OBJECT = "Malformed response: expected a JSON object"


class ApiResponse:
    """One decoded API answer: the parsed `data`, its exact text, and the whole body.

    `source` is the exact text of `data` as `parse_envelope` sliced it (a `LeanText`: the
    text, its original bytes when the body was not valid UTF-8, and its big strings). For an
    ordinary body `data`/`data_text` are that value and text. For a body with big strings
    (`bigs` not empty) `lean_data`/`lean_text` hold them as BigStrings and `""` placeholders,
    and `data`/`data_text` are materialised (and cached) on first access.
    """

    __slots__ = (
        "_full",
        "_source",
        "_value",
        "_view",
        "body",
        "request_id",
        "status_code",
        "utf8_valid",
    )

    def __init__(
        self,
        status_code: int,
        data: Any,
        source: LeanText,
        body: bytes,
        request_id: str | None = None,
        utf8_valid: bool = True,
    ) -> None:
        self.status_code = status_code
        self.body = body
        self.request_id = request_id
        self.utf8_valid = utf8_valid
        self._value = data
        self._source = source
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
            return self._source.text
        return self._materialise()[1]

    @property
    def bigs(self) -> tuple[tuple[int, BigString], ...]:
        """Offset in `lean_text` of each big string's `""` placeholder, and the BigString."""
        return self._source.bigs

    @property
    def source(self) -> LeanText:
        """The exact text of `data` as parsed: lean text, original bytes, big strings."""
        return self._source

    @property
    def lean_data(self) -> Any:
        """`data` with big strings as BigStrings: what the archive reads (same as `data` else)."""
        return self._value

    @property
    def lean_text(self) -> str:
        """`data_text` with each big string literal replaced by `""` (offsets in `bigs`)."""
        return self._source.text

    @property
    def lean_original(self) -> bytes | None:
        """The exact bytes of `lean_text` when they are not valid UTF-8 (None when they are)."""
        return self._source.original

    def viewing(self, data: Any) -> ApiResponse:
        """The same response with `data` replaced, for a typed view over a lean value."""
        copy = ApiResponse(
            self.status_code,
            self._value,
            self._source,
            self.body,
            self.request_id,
            self.utf8_valid,
        )
        copy._view = data
        return copy

    def _materialise(self) -> tuple[Any, str]:
        if self._full is None:
            # The whole body decoded and parsed as `parse_envelope` does, without masking (and
            # without the original bytes: the lean form has them).
            text = lossy_decode(self.body)[0]
            members, data = _members(text, None)
            assert data is not None  # the lean parse found it
            self._full = (members["data"], text[data[0] : data[1]])
        return self._full


@dataclass(frozen=True)
class Envelope:
    """A response body parsed as a JSON object, with the exact text of its `data` member.

    `members` are the object's members as `json.loads` gives them (the last of duplicate
    keys wins; big string values are BigStrings). `data` is the source text of the `data`
    member that `members["data"]` came from: its text, its exact bytes if they are not valid
    UTF-8, and its big strings; None when there is no `data` member. `utf8_valid` is about
    the whole body.
    """

    members: dict[str, Any]
    data: LeanText | None
    utf8_valid: bool


def _value_at(text: str, pos: int, bigs: Mapping[int, BigString] | None) -> tuple[Any, int]:
    """The JSON value at pos and its end (placeholders of a lean text become their BigStrings)."""
    if bigs:
        value, span = parse_json(text, pos, whole=False, bigs=bigs)
        return value, span.end
    return scan_value(text, pos)


def _members(
    text: str, bigs: Mapping[int, BigString] | None
) -> tuple[dict[str, Any], tuple[int, int] | None]:
    """The members of a top-level JSON object and the source span of its (last) `data`."""
    pos = skip_ws(text, 0)
    if pos >= len(text) or text[pos] != "{":
        raise ValueError(MALFORMED_NOT_OBJECT)
    out: dict[str, Any] = {}
    data: tuple[int, int] | None = None
    pos = skip_ws(text, pos + 1)
    if pos < len(text) and text[pos] == "}":
        pos += 1
    else:
        while True:
            key, _, pos = parse_key(text, pos)
            value, end = _value_at(text, pos, bigs)
            out[key] = value
            if key == "data":
                data = (pos, end)
            pos = skip_ws(text, end)
            if pos < len(text) and text[pos] == ",":
                pos = skip_ws(text, pos + 1)
                continue
            if pos < len(text) and text[pos] == "}":
                pos += 1
                break
            raise json_error("Expecting ',' delimiter", text, pos)
    if skip_ws(text, pos) != len(text):
        raise json_error("Extra data", text, pos)
    return out, data


def parse_envelope(body: bytes) -> Envelope:
    """Parse a response body as a JSON object and slice out the exact text of its `data`.

    The data text is sliced from the body, never re-serialised. A body with big string values
    is parsed in its masked form (see the module docstring). Raises `ValueError` (often a
    `json.JSONDecodeError`) if the body is not a JSON object.
    """
    source = mask_big_strings(body)
    if source is None:
        text, utf8_valid = lossy_decode(body)
        source = LeanText(text, None if utf8_valid else body, ())
    else:
        utf8_valid = source.original is None and all(b.utf8_valid for _, b in source.bigs)
    members, data = _members(source.text, source.big_map() if source.bigs else None)
    return Envelope(members, None if data is None else source.slice(*data), utf8_valid)


def _message(value: Any) -> str | None:
    """An envelope `error` as message text (a big one is cut: messages are kept short)."""
    if isinstance(value, BigString):
        return value.head(2000)
    return value if isinstance(value, str) else None


def _error_text(body: bytes) -> str:
    """The body as message text: errors keep 2,000 characters, so a huge body is cut first."""
    return body[:_ERROR_BODY_BYTES].decode("utf-8", errors="replace")


def unwrap(status_code: int, body: bytes, request_id: str | None) -> ApiResponse:
    """Turn an HTTP answer into an `ApiResponse`, or raise the matching `SpineAPIError`."""
    envelope: Envelope | None
    try:
        envelope = parse_envelope(body)
    except (ValueError, RecursionError):
        envelope = None
    if status_code >= 400:
        message = f"HTTP {status_code}"
        error = _message(envelope.members.get("error")) if envelope is not None else None
        if error is not None:
            message = error
        raise error_for_status(
            status_code, message, request_id=request_id, response_body=_error_text(body)
        )
    if envelope is None:
        # The status code is an attribute of the error, not part of its message: callers
        # that show it add it once (an earlier message did, and fetch_errors read
        # "... (HTTP 200) (HTTP 200)"). The raw body is kept for archiving it verbatim.
        raise MalformedResponseError(
            MALFORMED_NOT_OBJECT,
            status_code=status_code,
            request_id=request_id,
            response_body=_error_text(body),
            raw_body=body,
        )
    if envelope.members.get("success") is False:
        error = _message(envelope.members.get("error"))
        raise SpineAPIError(
            error if error else f"HTTP {status_code}: success=false",
            status_code=status_code,
            request_id=request_id,
            response_body=_error_text(body),
        )
    if envelope.data is None:
        raise MalformedResponseError(
            "Malformed response: envelope has no 'data'",
            status_code=status_code,
            request_id=request_id,
            response_body=_error_text(body),
            raw_body=body,
        )
    return ApiResponse(
        status_code=status_code,
        data=envelope.members["data"],
        source=envelope.data,
        body=body,
        request_id=request_id,
        utf8_valid=envelope.utf8_valid,
    )
