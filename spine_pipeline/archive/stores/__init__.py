"""The archive's object store: one small interface, a local-disk and an S3 backend.

- `base`: the `ObjectStore` interface, `ObjectInfo`, `RefusedEntry`, the exceptions
  (`AlreadyExists`, `StoreError`, `ObjectNotFound`, `UntrustedObject`), the key rules and
  `hash_object`, re-exported here;
- `local.LocalStore`: a local path (or `file://` URI);
- `s3.S3Store`: `s3://bucket/prefix` (boto3).

Backends import only `base`, and only this factory imports the backends, so there is no
import circle. It imports them when asked for one, so a local archive never loads boto3.
"""

from __future__ import annotations

from typing import Any

from spine_pipeline.archive.stores.base import (
    MAX_KEY_BYTES,
    TEMP_PREFIX,
    AlreadyExists,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    RefusedEntry,
    StoreError,
    UntrustedObject,
    hash_object,
    printable,
    validate_key,
    validate_prefix,
    validate_sha256_hex,
)

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
    "open_store",
    "printable",
    "validate_key",
    "validate_prefix",
    "validate_sha256_hex",
]


def open_store(uri: str, *, s3_client: Any = None) -> ObjectStore:
    """The store for `uri` (`SPINE_ARCHIVE_URI`): `s3://bucket[/prefix]` for S3, else a path.

    Local roots are created (0700) if missing; S3 clients are created without a network call
    (or `s3_client` is used: a boto3 client, e.g. from dagster-aws's `S3Resource`).
    """
    if not isinstance(uri, str) or uri.strip() == "":
        raise ValueError("archive URI is empty")
    uri = uri.strip()
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme == "s3":
        from spine_pipeline.archive.stores.s3 import S3Store

        return S3Store(uri, client=s3_client)
    if scheme in ("", "file"):
        from spine_pipeline.archive.stores.local import LocalStore

        return LocalStore(uri)
    raise ValueError(f"unsupported archive URI scheme {scheme!r}: use a path or s3://bucket/prefix")
