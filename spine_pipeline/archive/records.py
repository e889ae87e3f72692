"""Input records for the archive: one terminal Spine run, exactly as it was fetched.

The archive is a system of record, so these records keep the *text* Spine sent (`RawDoc.text`),
not just a parsed view: flattening slices row JSON out of that text instead of re-serialising,
which keeps every byte, key order, number spelling and unknown field.

Two hostile-input problems are solved here, once, for every consumer:

* **Nesting depth.** `json.loads` raises `RecursionError` past ~1,000 levels and task trees are
  nested JSON. `parse_json` is an iterative parser (explicit stack) that also records the source
  span of every value; `RawDoc.parse` uses the fast C parser first and falls back to it. An
  iterative parser was chosen over "raise the recursion limit in a thread with a big stack":
  it has no depth ceiling, cannot overflow the C stack (a segfault, not an exception) and needs
  no thread or platform-specific stack sizing.
* **Invalid UTF-8.** Arrow strings must be valid UTF-8, so `RawDoc.text` replaces every invalid
  byte with U+FFFD (one per byte, so character offsets match the original) and `RawDoc.raw_bytes`
  keeps the exact original bytes. Flattening maps row spans back onto those bytes (`raw_bytes`
  columns), so nothing is lost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from spine_pipeline.spine.rawjson import Span, json_error, parse_json, parse_key, skip_ws
from spine_pipeline.spine.rawjson import loads as _loads
from spine_pipeline.spine.rawjson import scan_value as _scan_value

__all__ = [
    "ArtifactOutcome",
    "BatchContext",
    "FetchedRun",
    "RawDoc",
    "Span",
    "parse_json",
    "split_envelope",
]

_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _lossy_decode(raw: bytes) -> str:
    """UTF-8 decode with one U+FFFD per invalid byte, so offsets match the surrogateescape view."""
    escaped = raw.decode("utf-8", "surrogateescape")
    return _ESCAPED_BYTE.sub("\ufffd", escaped)


def _encode_original(text: str) -> bytes:
    """Bytes of a (possibly surrogate-carrying) original-text slice."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _normalise(data: str | bytes | bytearray | memoryview) -> tuple[str, bytes | None]:
    """Return (valid Unicode text, original bytes if the text is not their exact decoding)."""
    if isinstance(data, str):
        if data.isascii():
            return data, None
        try:
            data.encode("utf-8")
            return data, None
        except UnicodeEncodeError:
            raw = _encode_original(data)  # e.g. text decoded with surrogateescape
    else:
        raw = bytes(data)
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return _lossy_decode(raw), raw


@dataclass(frozen=True, repr=False)
class RawDoc:
    """One API response's `data` value: its exact JSON text and the parsed value.

    `text` is authoritative (flattening re-reads it to slice exact row JSON); `value` is a
    convenience and is not part of equality or hashing. `raw_bytes` is set only when the
    response was not valid UTF-8: then `text` has U+FFFD for each invalid byte and `raw_bytes`
    holds the exact bytes (same character offsets after a surrogateescape decode).
    Build instances with `parse` or `from_envelope` rather than by hand.
    """

    text: str
    value: Any = field(compare=False)
    raw_bytes: bytes | None = None

    def __post_init__(self) -> None:
        # Safety net for hand-built instances: Arrow cannot hold lone surrogates.
        if self.raw_bytes is None:
            text, raw = _normalise(self.text)
            if raw is not None:
                object.__setattr__(self, "text", text)
                object.__setattr__(self, "raw_bytes", raw)
        elif len(self.raw_bytes.decode("utf-8", "surrogateescape")) != len(self.text):
            raise ValueError("RawDoc.raw_bytes does not correspond to RawDoc.text")

    def __repr__(self) -> str:
        lossy = ", lossy" if self.raw_bytes is not None else ""
        return f"RawDoc(<{len(self.text)} chars{lossy}>)"

    @classmethod
    def parse(cls, data: str | bytes | bytearray | memoryview) -> RawDoc:
        """Parse the JSON text (or UTF-8 bytes) of one `data` value, at any nesting depth.

        Raises `json.JSONDecodeError` (a `ValueError`) if it is not JSON; callers record that
        as a fetch error.
        """
        text, raw = _normalise(data)
        return cls(text=text, value=_loads(text), raw_bytes=raw)

    @classmethod
    def from_envelope(cls, body: str | bytes | bytearray | memoryview) -> RawDoc:
        """The `data` member of a `{"success": ..., "data": ...}` body, sliced byte-exactly."""
        doc = split_envelope(body)[1]
        if doc is None:
            raise ValueError("Malformed response: envelope has no 'data'")
        return doc

    @cached_property
    def original_text(self) -> str:
        """The original characters, invalid bytes as lone surrogates (offsets match `text`)."""
        if self.raw_bytes is None:
            return self.text
        return self.raw_bytes.decode("utf-8", "surrogateescape")

    @property
    def lossy(self) -> bool:
        """True when `text` differs from the bytes received (invalid UTF-8 was replaced)."""
        return self.raw_bytes is not None

    def original_bytes(self) -> bytes:
        """The exact bytes received."""
        return self.raw_bytes if self.raw_bytes is not None else self.text.encode("utf-8")


def split_envelope(
    body: str | bytes | bytearray | memoryview,
) -> tuple[dict[str, Any], RawDoc | None]:
    """Split an API body into its envelope members (success, error, ...) and the `data` RawDoc.

    The data text and bytes are sliced from the body, never re-serialised. Raises `ValueError`
    if the body is not a JSON object.
    """
    text, raw = _normalise(body)
    pos = skip_ws(text, 0)
    if pos >= len(text) or text[pos] != "{":
        raise ValueError("Malformed response: expected a JSON object")
    out: dict[str, Any] = {}
    data_span: tuple[int, int] | None = None
    data_value: Any = None
    pos = skip_ws(text, pos + 1)
    if pos < len(text) and text[pos] == "}":
        pos += 1
    else:
        while True:
            key, _, pos = parse_key(text, pos)
            value, end = _scan_value(text, pos)
            if key == "data":
                data_span, data_value = (pos, end), value
            else:
                out[key] = value
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
    if data_span is None:
        return out, None
    a, b = data_span
    data_raw: bytes | None = None
    if raw is not None:
        original = raw.decode("utf-8", "surrogateescape")[a:b]
        if original != text[a:b]:
            data_raw = _encode_original(original)
    return out, RawDoc(text=text[a:b], value=data_value, raw_bytes=data_raw)


@dataclass(frozen=True)
class ArtifactOutcome:
    """One artifact after the download attempt.

    `raw` is the artifact object as the API gave it, minus `download_url` (a pre-signed URL
    with a signature that expires; it must never reach the archive). The constructor drops
    a `download_url` key defensively. `raw` is compared but not hashed (dicts are unhashable).
    """

    artifact_id: str
    type: str | None
    name: str | None
    reported_size_bytes: int | None
    size_bytes: int | None
    sha256: str | None
    storage_uri: str | None
    content_type: str | None
    downloaded_at: datetime | None
    download_error: str | None
    raw: dict[str, Any] = field(hash=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.raw, dict) and "download_url" in self.raw:
            object.__setattr__(
                self, "raw", {k: v for k, v in self.raw.items() if k != "download_url"}
            )


@dataclass(frozen=True)
class FetchedRun:
    """Everything fetched for one terminal run; the unit that `flatten_run` turns into rows.

    Lists are compared but excluded from the hash. `terminal_at` (UTC) decides the `dt=`
    partition; naive datetimes are taken as UTC.
    """

    run_id: str
    run: RawDoc
    dag: RawDoc | None
    tasks: RawDoc | None
    artifacts: list[ArtifactOutcome] = field(hash=False)
    fetch_errors: list[str] = field(hash=False)
    request_name: str | None
    submitted_at: datetime | None
    terminal_at: datetime


@dataclass(frozen=True)
class BatchContext:
    """The archive batch: its id and load time are stamped on every row (dlt-style load id)."""

    batch_id: str
    archived_at: datetime
