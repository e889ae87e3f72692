"""Payload values to typed column values: a value of the wrong type is null, never an error.

The archive keeps every payload exactly in `raw_json`, so a typed column may be strict:
integers are JSON integers within int64 (not floats, not booleans, not beyond the range),
strings are strings, and anything else is null. Big strings (`BigString`) stay UTF-8 bytes
in large text columns and are materialised only for the small ones.

An integer of the right type but out of its column's range (credits beyond int64, a
duration no datetime can add) is a different case from a wrong type: it looks like data, so
`checked_int` nulls it *and* names it in the run's `fetch_errors`, where an auditor sees it.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from spine_pipeline.spine.rawjson import BigString, dumps_iterative
from spine_pipeline.spine.spool import release_resident
from spine_pipeline.spine.textfidelity import SURROGATE, replace_surrogates

__all__ = [
    "BUFFERS",
    "MAX_DURATION_MS",
    "Buffer",
    "as_bool",
    "as_duration_ms",
    "as_int",
    "as_str",
    "as_text",
    "as_utc",
    "checked_int",
    "content_fields",
    "count_of",
    "dumps_compact",
    "first_str",
]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
#: The longest duration Python's datetime arithmetic can hold (`timedelta.max`), in ms.
MAX_DURATION_MS = timedelta.max // timedelta(milliseconds=1)
Buffer = bytes | bytearray | memoryview
BUFFERS = (bytes, bytearray, memoryview)


def as_str(v: Any) -> str | None:
    """A string value as str (a BigString is materialised: only small columns use this)."""
    if isinstance(v, str):
        return v
    return v.text() if isinstance(v, BigString) else None


def as_text(v: Any) -> str | Buffer | None:
    """A string value for a large_string column: a BigString stays bytes (its UTF-8 value)."""
    if isinstance(v, str):
        return v
    return v.utf8() if isinstance(v, BigString) else None


def as_int(v: Any) -> int | None:
    """Integers only (not bools, not floats), within int64; anything else is null."""
    return v if type(v) is int and INT64_MIN <= v <= INT64_MAX else None


def _shown_int(v: int) -> str:
    """An integer for a message (a huge one by its size: str() of it may even raise)."""
    return str(v) if v.bit_length() <= 128 else f"an integer of {v.bit_length()} bits"


def checked_int(
    v: Any, what: str, problems: list[str], *, lo: int = INT64_MIN, hi: int = INT64_MAX
) -> int | None:
    """`as_int` within [lo, hi]; an integer outside is null and named in `problems`."""
    if type(v) is int and not lo <= v <= hi:
        problems.append(
            f"{what}: {_shown_int(v)} is out of range ({lo} to {hi}); "
            "column left null, the value is kept in raw_json"
        )
        return None
    return as_int(v)


def as_duration_ms(v: Any, problems: list[str]) -> int | None:
    """A `duration_ms` that datetime arithmetic can use (`terminal_at` adds it to a time)."""
    return checked_int(v, "duration_ms", problems, lo=-MAX_DURATION_MS, hi=MAX_DURATION_MS)


def as_bool(v: Any) -> bool | None:
    return v if isinstance(v, bool) else None


def first_str(*values: Any) -> str | None:
    """The first string among the values (the fallback order of a column's sources)."""
    for v in values:
        if isinstance(v, str | BigString):
            return as_str(v)
    return None


def as_utc(dt: datetime | None) -> datetime | None:
    """An aware UTC datetime; a naive one is taken as UTC."""
    if dt is None:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def count_of(v: Any) -> int:
    """len for a list, 0 for absent/null, 1 for any other single value."""
    if isinstance(v, list):
        return len(v)
    return 0 if v is None else 1


def content_fields(content: Any) -> tuple[str | Buffer | None, int | None, str | None]:
    """(content, UTF-8 length, sha256 hex) of a string content; nulls otherwise.

    A big content stays UTF-8 bytes: decoded once, hashed and stored from the same buffer.
    The body it was decoded from leaves the resident set before the hash reads the value
    (`spine.spool`), so one copy of it is resident at a time.
    """
    if isinstance(content, BigString):
        data = content.utf8()
        release_resident()
        return data, memoryview(data).nbytes, hashlib.sha256(data).hexdigest()
    if not isinstance(content, str):
        return None, None, None
    try:
        data = content.encode("utf-8")
    except UnicodeEncodeError:
        content = replace_surrogates(content)
        data = content.encode("utf-8")
    return content, len(data), hashlib.sha256(data).hexdigest()


def _default(value: Any) -> Any:
    return value.text() if isinstance(value, BigString) else str(value)


def dumps_compact(value: Any) -> str:
    """Compact JSON of an already-parsed value (used only where no source text exists)."""
    try:
        s = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_default)
    except RecursionError:
        s = dumps_iterative(value)
    except ValueError:  # circular structure: not JSON-derived, keep a readable trace
        s = json.dumps(repr(value), ensure_ascii=False)
    if SURROGATE.search(s):  # lone surrogates: escape them so the text stays exact
        try:
            s = json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=_default)
        except (RecursionError, ValueError):
            s = replace_surrogates(s)
    return s
