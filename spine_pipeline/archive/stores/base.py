"""The object store's interface, exceptions and key rules, shared by every backend.

Why this exists: every byte of the archive goes through a store, and the archive's first rule
is that nothing in it is ever overwritten. Every write is create-if-absent; losing the race
raises `AlreadyExists` and leaves the existing bytes untouched. Keys are validated here, once,
for both backends, so a hostile name (`../x`, `/abs`, NUL) never reaches a filesystem or a
bucket.

Backends (`local.LocalStore`, `s3.S3Store`) build on this module and never import the
factory; `open_store` in the package `__init__` imports them and picks one for a URI.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from spine_pipeline.archive.layout import TEMP_PREFIX

__all__ = [
    "MAX_KEY_BYTES",
    "TEMP_PREFIX",
    "AlreadyExists",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "RefusedEntry",
    "StoreError",
    "UntrustedObject",
    "hash_object",
    "printable",
    "validate_key",
    "validate_prefix",
    "validate_sha256_hex",
]

#: S3's own limit on a key's UTF-8 length; applied to both backends so a key valid on one is
#: valid on the other (the root prefix adds to it on S3 and is checked there).
MAX_KEY_BYTES = 1024
#: Longest single path segment most local filesystems accept.
MAX_SEGMENT_BYTES = 255
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object, as `list()` reports it."""

    key: str
    size: int
    last_modified: datetime  # timezone-aware, UTC


@dataclass(frozen=True)
class RefusedEntry:
    """Something under the root that `list()` does not report because the store never trusts it.

    Local: a symlink (to a file or a directory) or another non-regular entry; S3: an object
    whose name no archive writer makes (`validate_key` refuses it). `key` is its path under
    the root made printable (`printable`), so one entry is always one line of output.
    """

    key: str
    reason: str


class AlreadyExists(Exception):
    """Create-if-absent lost: an object already exists under this key (and was left intact)."""


class StoreError(Exception):
    """Any other storage failure. One clear line; never contains a credential."""


class ObjectNotFound(StoreError):
    """The key does not exist (reads only)."""


class UntrustedObject(StoreError):
    """Something stands at the key (or on its path) that the store refuses to follow or read:
    a symlink, or an entry that is not a regular file. It is never an object of the archive."""


@runtime_checkable
class ObjectStore(Protocol):
    """What the archive needs from storage; both backends implement exactly this."""

    uri: str

    def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> None:
        """Create `key` with `data`; raise `AlreadyExists` if it exists."""
        ...

    def put_file(
        self, key: str, path: Path, *, sha256_hex: str, content_type: str | None = None
    ) -> None:
        """Create `key` from a (large) file, streamed; the content must hash to `sha256_hex`."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """The whole object; `ObjectNotFound` if absent."""
        ...

    def open_read(self, key: str) -> BinaryIO:
        """A streaming reader (bounded memory), to be closed by the caller."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object exists under `key`."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with `prefix` (a plain string prefix), sorted by key."""
        ...

    def refused(self, prefix: str = "") -> Iterator[RefusedEntry]:
        """Entries under `prefix` that `list()` skips because the store never trusts them
        (symlinks, non-regular files, names no writer makes), sorted by key; for `verify`
        and `gc` to report, never to read."""
        ...

    def delete(self, key: str) -> None:
        """Remove `key` if present (idempotent). Only for GC of never-committed files."""
        ...

    def url(self, key: str) -> str:
        """Absolute local path or `s3://bucket/prefix/key`, for DuckDB and other readers."""
        ...


def hash_object(store: ObjectStore, key: str, *, max_bytes: int | None = None) -> tuple[str, int]:
    """(sha256 hex, size) of the stored object, streamed in 1 MiB chunks (bounded memory).

    With `max_bytes`, reading stops after `max_bytes + 1` bytes: an object longer than the
    bytes it is compared with cannot match them, so a huge planted object costs no more to
    reject than the expected size. The size returned is then `max_bytes + 1`.
    """
    digest = hashlib.sha256()
    size = 0
    with store.open_read(key) as fh:
        while True:
            want = _HASH_CHUNK if max_bytes is None else min(_HASH_CHUNK, max_bytes + 1 - size)
            if want <= 0:
                break
            chunk = fh.read(want)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def printable(text: str) -> str:
    """`text` as it is if printable, else escaped like a Python literal (one safe line).

    Names read from a directory are attacker-controlled: a newline or a terminal escape in a
    symlink's name must not forge or hide a line of `verify` output.
    """
    return text if text.isprintable() else repr(text)[1:-1]


def _show(text: str) -> str:
    """A short, single-line, escaped rendering of untrusted text for error messages."""
    shown = repr(text)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def validate_key(key: str) -> str:
    """Return `key` if it is a safe relative `/`-separated key, else raise `ValueError`.

    Rejected: non-strings, empty, absolute, backslashes, NUL/control characters, empty
    segments (`a//b`, trailing `/`), `.`/`..` segments, non-UTF-8 text, over-long keys or
    segments, and segments using the reserved temporary-file prefix.
    """
    if not isinstance(key, str):
        raise ValueError(f"invalid key {key!r}: not a string")
    if key == "":
        raise ValueError("invalid key '': empty")
    if key.startswith("/"):
        raise ValueError(f"invalid key {_show(key)}: absolute")
    if "\\" in key:
        raise ValueError(f"invalid key {_show(key)}: backslash")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise ValueError(f"invalid key {_show(key)}: NUL or control character")
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"invalid key {_show(key)}: not valid UTF-8") from None
    if len(encoded) > MAX_KEY_BYTES:
        raise ValueError(f"invalid key {_show(key)}: longer than {MAX_KEY_BYTES} bytes")
    for segment in key.split("/"):
        _check_segment(key, segment)
    return key


def _check_segment(key: str, segment: str) -> None:
    if segment == "":
        raise ValueError(f"invalid key {_show(key)}: empty path segment")
    if segment in (".", ".."):
        raise ValueError(f"invalid key {_show(key)}: '{segment}' segment")
    if len(segment.encode("utf-8")) > MAX_SEGMENT_BYTES:
        raise ValueError(f"invalid key {_show(key)}: segment longer than {MAX_SEGMENT_BYTES} bytes")
    if segment.startswith(TEMP_PREFIX):
        raise ValueError(f"invalid key {_show(key)}: segment uses reserved prefix {TEMP_PREFIX!r}")


def validate_prefix(prefix: str) -> str:
    """Return `prefix` if it is a safe listing prefix, else raise `ValueError`.

    A prefix is a plain string prefix of keys (`tables/ru` matches `tables/runs/...`), so only
    its complete segments (before the last `/`) must be valid key segments.
    """
    if not isinstance(prefix, str):
        raise ValueError(f"invalid prefix {prefix!r}: not a string")
    if prefix == "":
        return prefix
    if prefix.startswith("/") or "\\" in prefix:
        raise ValueError(f"invalid prefix {_show(prefix)}: absolute or backslash")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in prefix):
        raise ValueError(f"invalid prefix {_show(prefix)}: NUL or control character")
    try:
        prefix.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"invalid prefix {_show(prefix)}: not valid UTF-8") from None
    for segment in prefix.split("/")[:-1]:
        _check_segment(prefix, segment)
    return prefix


def validate_sha256_hex(sha256_hex: str) -> str:
    """Return the lower-case hex digest, or raise `ValueError` if it is not 64 hex digits."""
    if not isinstance(sha256_hex, str) or len(sha256_hex) != 64:
        raise ValueError("invalid sha256_hex: expected 64 hex digits")
    try:
        bytes.fromhex(sha256_hex)
    except ValueError:
        raise ValueError("invalid sha256_hex: expected 64 hex digits") from None
    return sha256_hex.lower()
