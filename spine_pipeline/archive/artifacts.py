"""Artifact bytes: downloaded right after a run ends, stored once by content hash.

Pre-signed URLs expire, so a refused download (403/404/410) fetches the run again for fresh
URLs before giving up. Bytes stream through a temp file (bounded memory, hashed on the way)
into `artifacts/sha256/<2 hex>/<sha256>`; identical bytes from any run are stored once. An
artifact that still cannot be fetched is recorded with `download_error`, never dropped.
Names from the API are data: they never touch a path.

What may be fetched (https, or the API's own origin, or an allow-listed host; never a
private or metadata address) and how big it may be (SPINE_ARTIFACT_MAX_BYTES, after content
decoding) is the client's rule (`spine/url_policy.py`, `AsyncSpineClient.download`); a
refusal is a `DownloadRefusedError`, recorded on the artifact's row at once, and the run
commits like any other.

A run is committed once, so a recorded `download_error` is final: only persistent failures
may end there. Transient ones (5xx, 429, a dropped or truncated transfer) get more rounds
after the client's own retries, and a refresh of the run that fails raises
`TransientFetchError`, which leaves the whole run for a later attempt.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

from spine_pipeline.archive.fetch import TransientFetchError
from spine_pipeline.archive.layout import artifact_key
from spine_pipeline.archive.records import ArtifactOutcome
from spine_pipeline.archive.stores import (
    AlreadyExists,
    ObjectNotFound,
    ObjectStore,
    UntrustedObject,
    hash_object,
)
from spine_pipeline.spine import (
    ArtifactRef,
    AsyncSpineClient,
    DownloadError,
    DownloadExpiredError,
    Run,
    SpineError,
)
from spine_pipeline.spine.errors import DownloadRefusedError

URL_REFRESHES = 4
TRANSIENT_ROUNDS = 3  # rounds of the client's retries for a transient failure


async def _store_file(
    store: ObjectStore, path: Path, sha256: str, size: int, content_type: str | None
) -> tuple[str | None, str | None]:
    """(key, None) once the content address holds exactly these bytes, else (None, why not).

    An object already at the address is hashed before it is reused: existing is not proof
    (an insider, or a bug, may have planted other bytes there). Stores are write-once, and
    with S3 Object Lock the address may not even be deletable, so other bytes there are never
    replaced: the artifact is refused (a download error on its row, the run still commits)
    and `verify` names the planted object (docs/decisions.md, "Trust").
    """
    key = artifact_key(sha256)
    for _ in range(2):  # a second round only if the object vanished between put and check
        try:
            if not await asyncio.to_thread(store.exists, key):
                await asyncio.to_thread(
                    store.put_file, key, path, sha256_hex=sha256, content_type=content_type
                )
                return key, None
        except AlreadyExists:
            pass  # same bytes stored by another writer, or not: checked below
        except UntrustedObject as exc:
            return None, f"not stored: {exc}"
        try:
            stored, stored_size = await asyncio.to_thread(hash_object, store, key, max_bytes=size)
        except ObjectNotFound:
            continue
        except UntrustedObject as exc:
            return None, f"not stored: {exc}"
        if stored == sha256 and stored_size == size:
            return key, None
        return None, (
            f"not stored: {key} already holds other bytes (not these {size} bytes); the "
            "planted object was neither trusted nor replaced (see verify)"
        )
    return None, f"not stored: {key} is taken but holds no readable object"


async def download_artifact(
    client: AsyncSpineClient,
    store: ObjectStore,
    ref: ArtifactRef,
    refresh: Callable[[], Awaitable[Run]],
    workdir: Path,
    *,
    max_bytes: int | None = None,
) -> ArtifactOutcome:
    """Download one artifact into the store; the outcome says what happened, errors included."""
    url = ref.download_url
    error: str | None = None
    transient_rounds = TRANSIENT_ROUNDS
    for attempt in range(URL_REFRESHES + 1):
        if not url:
            error = "no download_url in the run result"
            break
        with tempfile.NamedTemporaryFile(dir=workdir, prefix="artifact-", delete=True) as fh:
            try:
                got = await client.download(url, fh, max_bytes=max_bytes)
            except DownloadExpiredError as exc:
                error = f"URL refused: {exc.message}"
                if attempt == URL_REFRESHES:
                    break
                url = await _fresh_url(refresh, ref)
                continue
            except DownloadError as exc:
                error = exc.message
                if _transient(exc) and transient_rounds > 1 and attempt < URL_REFRESHES:
                    transient_rounds -= 1
                    continue
                break
            key, refused = await _store_file(
                store, Path(fh.name), got.sha256, got.size_bytes, got.content_type
            )
            mismatch = None
            if ref.size_bytes is not None and ref.size_bytes != got.size_bytes:
                mismatch = (
                    f"size mismatch: run reported size_bytes={ref.size_bytes}, "
                    f"downloaded {got.size_bytes} bytes (bytes kept)"
                )
            if refused is not None:
                mismatch = f"{mismatch}; {refused}" if mismatch else refused
            return ArtifactOutcome(
                artifact_id=ref.id or "",
                type=ref.type,
                name=ref.name,
                reported_size_bytes=ref.size_bytes,
                size_bytes=got.size_bytes,
                sha256=got.sha256,
                storage_uri=key,
                content_type=got.content_type,
                downloaded_at=datetime.now(UTC),
                download_error=mismatch,
                raw=ref.raw,
            )
    return ArtifactOutcome(
        artifact_id=ref.id or "",
        type=ref.type,
        name=ref.name,
        reported_size_bytes=ref.size_bytes,
        size_bytes=None,
        sha256=None,
        storage_uri=None,
        content_type=None,
        downloaded_at=None,
        download_error=error,
        raw=ref.raw,
    )


async def _fresh_url(refresh: Callable[[], Awaitable[Run]], ref: ArtifactRef) -> str | None:
    """GET the run again: Spine mints new pre-signed URLs on every read."""
    try:
        run = await refresh()
    except SpineError as exc:  # not an answer about the artifact: try the run again later
        raise TransientFetchError(f"refreshing the URL of artifact {ref.id}: {exc}") from None
    for candidate in run.artifacts:
        if candidate.id == ref.id and candidate.name == ref.name:
            return candidate.download_url
    return None


def _transient(exc: DownloadError) -> bool:
    """A failure another round may not repeat (the client has already retried it)."""
    if isinstance(exc, DownloadRefusedError):  # our own rule: another round decides the same
        return False
    message = exc.message
    return message.startswith("download failed:") or any(
        m in message for m in ("truncated", "HTTP 5", "HTTP 429")
    )
