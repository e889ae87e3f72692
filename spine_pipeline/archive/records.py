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
  keeps the exact original bytes (the rules are `spine.textfidelity`'s). Flattening maps row
  spans back onto those bytes (`raw_bytes` columns), so nothing is lost.

A third one is size: a document with string values of `rawjson.BIG_STRING_BYTES` or more (a
20 MiB block) is held *lean* (`RawDoc.bigs`): `text` has `""` in place of each big literal, and
the literal stays in the response body as a `BigString`, decoded to UTF-8 bytes only when a
column needs it. Small documents, the common case, take the ordinary path unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from spine_pipeline.spine import rawjson
from spine_pipeline.spine.envelope import parse_envelope
from spine_pipeline.spine.rawjson import BigString, LeanText, Span, mask_big_strings, parse_json
from spine_pipeline.spine.rawjson import loads as _loads
from spine_pipeline.spine.textfidelity import encode_original, normalise, original_text

__all__ = [
    "ArtifactOutcome",
    "BatchContext",
    "BigString",
    "FetchedRun",
    "RawDoc",
    "Span",
    "parse_json",
    "split_envelope",
]


def _lean(data: str | bytes | bytearray | memoryview) -> LeanText | None:
    """The lean form of a document with big string values, or None (the common case)."""
    limit = rawjson.BIG_STRING_BYTES
    if isinstance(data, str):
        if 4 * len(data) < limit:  # a character is at most 4 UTF-8 bytes
            return None
        raw = encode_original(data)
    else:
        if len(data) < limit:
            return None
        raw = data if isinstance(data, bytes) else bytes(data)
    return mask_big_strings(raw, limit)


@dataclass(frozen=True, repr=False)
class RawDoc:
    """One API response's `data` value: its exact JSON text and the parsed value.

    `text` is authoritative (flattening re-reads it to slice exact row JSON); `value` is a
    convenience and is not part of equality or hashing. `raw_bytes` is set only when the
    response was not valid UTF-8: then `text` has U+FFFD for each invalid byte and `raw_bytes`
    holds the exact bytes (same character offsets after a surrogateescape decode).
    `bigs` is set for a lean document: each entry is the offset in `text` of a `""` that
    stands for a big string literal, and the BigString (`value` holds the BigStrings too).
    `verbatim` marks a whole response body that was not the JSON envelope (`verbatim_body`):
    it is archived as text and nothing is derived from it.
    Build instances with `parse`, `from_envelope` or `verbatim_body` rather than by hand.
    """

    text: str
    value: Any = field(compare=False)
    raw_bytes: bytes | None = None
    bigs: tuple[tuple[int, BigString], ...] = ()
    verbatim: bool = False

    def __post_init__(self) -> None:
        # Safety net for hand-built instances: Arrow cannot hold lone surrogates.
        if self.raw_bytes is None:
            text, raw = normalise(self.text)
            if raw is not None:
                object.__setattr__(self, "text", text)
                object.__setattr__(self, "raw_bytes", raw)
        elif len(original_text(self.raw_bytes)) != len(self.text):
            raise ValueError("RawDoc.raw_bytes does not correspond to RawDoc.text")
        for pos, _ in self.bigs:
            if self.text[pos : pos + 2] != '""':
                raise ValueError("RawDoc.bigs do not correspond to RawDoc.text")

    def __repr__(self) -> str:
        lossy = ", lossy" if self.lossy else ""
        big = f", {len(self.bigs)} big strings" if self.bigs else ""
        return f"RawDoc(<{len(self.text)} chars{lossy}{big}>)"

    @classmethod
    def parse(cls, data: str | bytes | bytearray | memoryview) -> RawDoc:
        """Parse the JSON text (or UTF-8 bytes) of one `data` value, at any nesting depth.

        Raises `json.JSONDecodeError` (a `ValueError`) if it is not JSON; callers record that
        as a fetch error.
        """
        lean = _lean(data)
        if lean is not None:
            value, _ = parse_json(lean.text, bigs=lean.big_map())
            return cls(text=lean.text, value=value, raw_bytes=lean.original, bigs=lean.bigs)
        text, raw = normalise(data)
        return cls(text=text, value=_loads(text), raw_bytes=raw)

    @classmethod
    def verbatim_body(cls, body: str | bytes | bytearray | memoryview) -> RawDoc:
        """A response body kept as received because it is not a JSON envelope with `data`."""
        text, raw = normalise(body)
        return cls(text=text, value=None, raw_bytes=raw, verbatim=True)

    @classmethod
    def sliced(cls, value: Any, source: LeanText) -> RawDoc:
        """A `data` value with the exact text the envelope parser sliced for it.

        This is how a client response becomes a record (`archive.fetch.raw_doc`): the text,
        original bytes and big strings the client kept are reused, never parsed again.
        """
        return cls(text=source.text, value=value, raw_bytes=source.original, bigs=source.bigs)

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
        return original_text(self.raw_bytes)

    @cached_property
    def big_map(self) -> dict[int, BigString]:
        """Placeholder offset -> BigString (empty for an ordinary document)."""
        return dict(self.bigs)

    @property
    def lossy(self) -> bool:
        """True when `text` differs from the bytes received (invalid UTF-8 was replaced)."""
        return self.raw_bytes is not None or any(not b.utf8_valid for _, b in self.bigs)

    def original_bytes(self) -> bytes:
        """The exact bytes received (big string literals put back)."""
        if not self.bigs:
            return self.raw_bytes if self.raw_bytes is not None else self.text.encode("utf-8")
        return self._expand(self.original_text, lambda b: b.literal, "surrogateescape")

    def expanded_text(self) -> str:
        """The whole text with big strings put back as text: materialises them (odd cases)."""
        if not self.bigs:
            return self.text
        return self._expand(self.text, lambda b: b.lossy_literal(), "strict").decode("utf-8")

    def _expand(self, text: str, literal: Any, errors: str) -> bytes:
        parts: list[Any] = []
        prev = 0
        for pos, big in self.bigs:
            parts.append(text[prev:pos].encode("utf-8", errors))
            parts.append(literal(big))
            prev = pos + 2
        parts.append(text[prev:].encode("utf-8", errors))
        return b"".join(parts)


def split_envelope(
    body: str | bytes | bytearray | memoryview,
) -> tuple[dict[str, Any], RawDoc | None]:
    """Split an API body into its envelope members (success, error, ...) and the `data` RawDoc.

    The body is parsed by the client's envelope parser (`spine.envelope.parse_envelope`); the
    data text and bytes are sliced from the body, never re-serialised. A str body is taken
    as original text (see `textfidelity.normalise`). Raises `ValueError` if the body is not a
    JSON object.
    """
    if isinstance(body, str):
        raw = encode_original(body)
    else:
        raw = body if isinstance(body, bytes) else bytes(body)
    envelope = parse_envelope(raw)
    members = {k: v for k, v in envelope.members.items() if k != "data"}
    if envelope.data is None:
        return members, None
    return members, RawDoc.sliced(envelope.members["data"], envelope.data)


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
