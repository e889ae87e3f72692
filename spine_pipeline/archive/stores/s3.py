"""S3 backend of the archive's object store (AWS S3, R2, MinIO, SeaweedFS via boto3).

Why it is built the way it is (details and measurements in docs/decisions.md):
- **No overwrite**: every write carries `If-None-Match: *` (PutObject and CompleteMultipartUpload);
  a 412 `PreconditionFailed` or 409 `ConditionalRequestConflict` becomes `AlreadyExists`.
- **Integrity**: single-part writes send `ChecksumSHA256` of the whole object, so the server
  rejects bytes that do not hash to what the caller computed; multipart parts each carry their
  own SHA-256 and the whole-file hash is checked client-side before completing. The hex digest is
  also stored as `x-amz-meta-sha256`.
- **Multipart is our own loop, not boto3's transfer manager**: the installed s3transfer accepts
  neither `IfNoneMatch` in `ExtraArgs` nor on CompleteMultipartUpload, and it turns a supplied
  `ChecksumSHA256` into a FULL_OBJECT multipart checksum, which AWS only accepts for CRC
  algorithms. The loop reads `chunk_size` at a time with at most `max_concurrency` parts in
  flight, so memory stays bounded.
- **Servers whose conditional complete is not atomic** (SeaweedFS 4.x checks `If-None-Match` on
  CompleteMultipartUpload outside its per-object lock; measured: concurrent completes can both
  win) get single streamed PutObjects up to S3's 5 GiB single-PUT limit, because their
  conditional PutObject *is* atomic. This is detected from the `Server` header unless set
  explicitly with `atomic_conditional_complete`.
- **Errors** are `StoreError` with one line built only from the operation, the object's URL,
  the S3 error code and HTTP status: never the server's message text or any credential.
- **Encryption at rest and retention** (optional, from the environment; see `S3WriteOptions`):
  `SPINE_S3_SSE` (`AES256` or `aws:kms`, plus `SPINE_S3_SSE_KMS_KEY_ID`) is sent on every write;
  `SPINE_S3_OBJECT_LOCK_DAYS` puts a governance-mode Object Lock retention on the commit log and
  the evidence (`manifests/`, `artifacts/`), so even credentials allowed to delete cannot remove
  a committed version before it expires. Table files are protected by the manifests' hashes and
  stay deletable, because `gc` must remove the files of batches that never committed.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import re
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from spine_pipeline.archive.layout import ARTIFACT_AREA, MANIFEST_PREFIX
from spine_pipeline.archive.stores.base import (
    MAX_KEY_BYTES,
    AlreadyExists,
    ObjectInfo,
    ObjectNotFound,
    RefusedEntry,
    StoreError,
    printable,
    validate_key,
    validate_prefix,
    validate_sha256_hex,
)
from spine_pipeline.settings import MAX_OBJECT_LOCK_DAYS, SSE_MODES, Settings
from spine_pipeline.spine.redact import register_secret

__all__ = ["S3Store", "S3WriteOptions", "parse_s3_uri"]

MB = 1024 * 1024
DEFAULT_MULTIPART_THRESHOLD = 64 * MB
DEFAULT_CHUNK_SIZE = 16 * MB
DEFAULT_MAX_CONCURRENCY = 4
DEFAULT_MAX_ATTEMPTS = 8
MAX_SINGLE_PUT = 5 * 1024 * MB  # S3's limit for one PutObject
MAX_PARTS = 10_000
_READ_CHUNK = 1024 * 1024
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_PRECONDITION_CODES = {"PreconditionFailed", "ConditionalRequestConflict"}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
# Servers known to evaluate If-None-Match on CompleteMultipartUpload outside their write lock.
_NON_ATOMIC_COMPLETE_SERVERS = ("seaweedfs",)
ENV_SSE = "SPINE_S3_SSE"
ENV_SSE_KMS_KEY_ID = "SPINE_S3_SSE_KMS_KEY_ID"
ENV_OBJECT_LOCK_DAYS = "SPINE_S3_OBJECT_LOCK_DAYS"
#: Keys that get the Object Lock retention: the commit log and the artifact evidence.
LOCKED_PREFIXES = (MANIFEST_PREFIX, ARTIFACT_AREA)
_MAX_LOCK_DAYS = MAX_OBJECT_LOCK_DAYS


@dataclass(frozen=True)
class S3WriteOptions:
    """Server-side encryption and Object Lock retention applied to every write.

    `sse` is `None` (the bucket's default), `"AES256"` (SSE-S3) or `"aws:kms"` (SSE-KMS, with
    `kms_key_id`, or the account's default `aws/s3` key when it is None). `object_lock_days`
    puts a GOVERNANCE-mode retention of that many days on keys under `LOCKED_PREFIXES`; the
    bucket must have Object Lock enabled (which also turns versioning on).
    """

    sse: str | None = None
    kms_key_id: str | None = None
    object_lock_days: int | None = None

    def __post_init__(self) -> None:
        if self.sse is not None and self.sse not in SSE_MODES:
            raise ValueError(f"{ENV_SSE} must be AES256 or aws:kms, got {self.sse!r}")
        if self.kms_key_id is not None and self.sse != "aws:kms":
            raise ValueError(f"{ENV_SSE_KMS_KEY_ID} is only valid with {ENV_SSE}=aws:kms")
        days = self.object_lock_days
        if days is not None and not (isinstance(days, int) and 1 <= days <= _MAX_LOCK_DAYS):
            raise ValueError(
                f"{ENV_OBJECT_LOCK_DAYS} must be a whole number of days from 1 to "
                f"{_MAX_LOCK_DAYS}, got {days!r}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> S3WriteOptions:
        """`SPINE_S3_SSE`, `SPINE_S3_SSE_KMS_KEY_ID`, `SPINE_S3_OBJECT_LOCK_DAYS`, as parsed by
        `spine_pipeline.settings` (from the process environment unless `environ` is given)."""
        settings = Settings.from_env() if environ is None else Settings.from_env(environ)
        return cls(
            sse=settings.s3_sse,
            kms_key_id=settings.s3_sse_kms_key_id,
            object_lock_days=settings.s3_object_lock_days,
        )

    def args_for(self, key: str, *, now: datetime | None = None) -> dict[str, Any]:
        """Extra PutObject / CreateMultipartUpload arguments for `key` (relative to the root)."""
        extra: dict[str, Any] = {}
        if self.sse is not None:
            extra["ServerSideEncryption"] = self.sse
            if self.kms_key_id is not None:
                extra["SSEKMSKeyId"] = self.kms_key_id
        if self.object_lock_days is not None and key.startswith(LOCKED_PREFIXES):
            until = (now or datetime.now(UTC)) + timedelta(days=self.object_lock_days)
            extra["ObjectLockMode"] = "GOVERNANCE"
            extra["ObjectLockRetainUntilDate"] = until
        return extra


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, prefix) of `s3://bucket[/prefix]`; the prefix has no leading/trailing `/`."""
    if not uri.lower().startswith("s3://"):
        raise ValueError("not an s3:// URI")
    rest = uri[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise ValueError(f"invalid S3 bucket name {bucket!r}")
    prefix = prefix.strip("/")
    if prefix:
        try:
            validate_key(prefix)
        except ValueError as exc:
            raise ValueError(f"invalid S3 prefix in archive URI: {exc}") from None
    return bucket, prefix


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _safe_endpoint(url: str | None) -> str:
    """The endpoint without any userinfo (a URL could carry credentials)."""
    if not url:
        return "the default AWS endpoint"
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _error_code(exc: ClientError) -> tuple[str, int]:
    error = exc.response.get("Error", {}) or {}
    meta = exc.response.get("ResponseMetadata", {}) or {}
    return str(error.get("Code", "Unknown")), int(meta.get("HTTPStatusCode", 0) or 0)


def _retried(exc: ClientError) -> bool:
    return int((exc.response.get("ResponseMetadata") or {}).get("RetryAttempts", 0) or 0) > 0


def _is_precondition(exc: ClientError) -> bool:
    code, status = _error_code(exc)
    return code in _PRECONDITION_CODES or status == 412


def _register_credentials(session: Any) -> None:
    """Mask the AWS secret key and session token in every message, like the Spine key.

    `client()` has just resolved them through boto3's chain (and the session caches them),
    so this looks nothing up again.
    """
    credentials = session.get_credentials()
    if credentials is not None:
        frozen = credentials.get_frozen_credentials()
        register_secret(frozen.secret_key)
        register_secret(frozen.token)


class S3Store:
    """An archive root at `s3://bucket/prefix` (see the module docstring for the guarantees).

    The client comes from boto3's default credential chain; the endpoint from boto3's own
    handling of `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`; the region from `AWS_REGION`
    (default `us-east-1`). A custom endpoint switches to path-style addressing.
    """

    def __init__(
        self,
        uri: str,
        *,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        atomic_conditional_complete: bool | None = None,
        client: Any = None,
        write_options: S3WriteOptions | None = None,
    ) -> None:
        self.bucket, self.prefix = parse_s3_uri(uri.strip())
        self.write_options = write_options or S3WriteOptions.from_env()
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        if chunk_size < 5 * MB:
            raise ValueError("chunk_size must be at least 5 MiB (S3's minimum part size)")
        self.multipart_threshold = max(multipart_threshold, 5 * MB)
        self.chunk_size = chunk_size
        self.max_concurrency = max(1, max_concurrency)
        self._atomic_complete = atomic_conditional_complete
        self._server: str | None = None
        self._lock = threading.Lock()
        self._client = client if client is not None else self._make_client(max_attempts)
        self.endpoint = _safe_endpoint(getattr(self._client.meta, "endpoint_url", None))

    def _make_client(self, max_attempts: int) -> Any:
        settings = Settings.from_env()  # boto3 itself reads the endpoint variables
        custom_endpoint = settings.s3_endpoint_url is not None
        region = settings.aws_region or "us-east-1"
        config = Config(
            region_name=region,
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=10,
            read_timeout=120,
            max_pool_connections=max(10, 2 * self.max_concurrency + 2),
            s3={"addressing_style": "path"} if custom_endpoint else None,
        )
        session = boto3.session.Session()
        try:
            client = session.client("s3", config=config)
        except BotoCoreError as exc:
            raise StoreError(f"cannot configure the S3 client: {type(exc).__name__}") from None
        _register_credentials(session)
        return client

    def __repr__(self) -> str:
        opts = self.write_options
        extra = f", sse={opts.sse!r}" if opts.sse else ""
        if opts.object_lock_days:
            extra += f", object_lock_days={opts.object_lock_days}"
        return f"S3Store({self.uri!r}, endpoint={self.endpoint!r}{extra})"

    # -- helpers --------------------------------------------------------------------------

    def _full(self, key: str) -> str:
        validate_key(key)
        full = f"{self.prefix}/{key}" if self.prefix else key
        if len(full.encode("utf-8")) > MAX_KEY_BYTES:
            raise ValueError(f"invalid key {key!r}: longer than {MAX_KEY_BYTES} bytes with prefix")
        return full

    def url(self, key: str) -> str:
        """`s3://bucket/prefix/key`."""
        return f"s3://{self.bucket}/{self._full(key)}"

    def _fail(self, op: str, key: str | None, exc: Exception) -> StoreError:
        """One secret-free line for any boto failure."""
        where = self.url(key) if key is not None else self.uri
        if isinstance(exc, ClientError):
            code, status = _error_code(exc)
            if code in _NOT_FOUND_CODES and key is not None:
                return ObjectNotFound(f"no such object: {where}")
            if code == "NoSuchBucket":
                return StoreError(f"S3 {op} {where} failed: bucket {self.bucket!r} does not exist")
            hint = ""
            if status == 403 or code in (
                "AccessDenied",
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "ExpiredToken",
            ):
                hint = "; check the AWS credentials and their permissions"
            return StoreError(f"S3 {op} {where} failed: {code} (HTTP {status}){hint}")
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return StoreError(f"S3 {op} {where} failed: no usable AWS credentials found")
        if isinstance(exc, BotoConnectionError):
            return StoreError(f"S3 {op} {where} failed: cannot reach {self.endpoint}")
        return StoreError(f"S3 {op} {where} failed: {type(exc).__name__}")

    def _call(self, op: str, key: str | None, fn: Any, /, **kwargs: Any) -> Any:
        try:
            response = fn(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            if isinstance(exc, ClientError) and _is_precondition(exc):
                raise
            raise self._fail(op, key, exc) from None
        self._note_server(response)
        return response

    def _note_server(self, response: Any) -> None:
        if self._server is None and isinstance(response, dict):
            headers = (response.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}
            self._server = str(headers.get("server", ""))

    def _head(self, full: str, key: str) -> dict[str, Any] | None:
        """HeadObject, or None if absent."""
        try:
            response = self._client.head_object(Bucket=self.bucket, Key=full)
        except ClientError as exc:
            code, status = _error_code(exc)
            if code in _NOT_FOUND_CODES or status == 404:
                self._note_server(exc.response)
                return None
            raise self._fail("head", key, exc) from None
        except BotoCoreError as exc:
            raise self._fail("head", key, exc) from None
        self._note_server(response)
        return response

    def _holds(self, full: str, key: str, sha256_hex: str) -> bool:
        head = self._head(full, key)
        return head is not None and (head.get("Metadata") or {}).get("sha256") == sha256_hex

    def atomic_conditional_complete(self) -> bool:
        """Whether the server applies If-None-Match atomically on CompleteMultipartUpload.

        Explicit setting wins; otherwise the `Server` header decides (known non-atomic servers:
        SeaweedFS). An unknown answer counts as not atomic: the fallback is always safe.
        """
        if self._atomic_complete is not None:
            return self._atomic_complete
        with self._lock:
            if self._server is None:
                try:
                    self._note_server(self._client.head_bucket(Bucket=self.bucket))
                except ClientError as exc:
                    self._note_server(exc.response)
                except BotoCoreError:
                    return False
            server = (self._server or "").lower()
        return not any(name in server for name in _NON_ATOMIC_COMPLETE_SERVERS)

    # -- writes ---------------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> None:
        """One conditional PutObject with the body's SHA-256."""
        full = self._full(key)
        digest = hashlib.sha256(data).digest()
        extra = {"ContentType": content_type} if content_type else {}
        extra.update(self.write_options.args_for(key))
        self._put_single(key, full, data, digest, extra)

    def _put_single(
        self, key: str, full: str, body: Any, digest: bytes, extra: dict[str, Any]
    ) -> None:
        try:
            self._call(
                "put",
                key,
                self._client.put_object,
                Bucket=self.bucket,
                Key=full,
                Body=body,
                IfNoneMatch="*",
                ChecksumSHA256=_b64(digest),
                Metadata={"sha256": digest.hex()},
                **extra,
            )
        except ClientError as exc:  # only preconditions get here
            # A retried PUT whose first attempt landed finds its own bytes: that is success.
            if _retried(exc) and self._holds(full, key, digest.hex()):
                return
            raise AlreadyExists(key) from None

    def put_file(
        self, key: str, path: Path, *, sha256_hex: str, content_type: str | None = None
    ) -> None:
        """Create `key` from a file, streamed; multipart above the threshold where that is safe."""
        full = self._full(key)
        expected = validate_sha256_hex(sha256_hex)
        try:
            size = os.stat(path).st_size
        except OSError as exc:
            raise StoreError(f"cannot read {os.fspath(path)!r}: {exc.strerror}") from None
        if self._head(full, key) is not None:  # cheap: do not upload gigabytes just to lose
            raise AlreadyExists(key)
        extra = {"ContentType": content_type} if content_type else {}
        extra.update(self.write_options.args_for(key))
        multipart = size >= self.multipart_threshold and (
            size > MAX_SINGLE_PUT or self.atomic_conditional_complete()
        )
        if multipart:
            self._put_multipart(key, full, path, size, expected, extra)
            return
        _check_file_hash(path, expected, key)
        try:
            with open(path, "rb") as body:
                self._put_single(key, full, body, bytes.fromhex(expected), extra)
        except OSError as exc:
            raise StoreError(f"cannot read {os.fspath(path)!r}: {exc.strerror}") from None

    def _put_multipart(
        self,
        key: str,
        full: str,
        path: Path,
        size: int,
        sha256_hex: str,
        extra: dict[str, Any],
    ) -> None:
        chunk = max(self.chunk_size, -(-size // MAX_PARTS))
        created = self._call(
            "create multipart upload",
            key,
            self._client.create_multipart_upload,
            Bucket=self.bucket,
            Key=full,
            ChecksumAlgorithm="SHA256",
            Metadata={"sha256": sha256_hex},
            **extra,
        )
        upload_id = created["UploadId"]
        completed = False
        try:
            parts = self._upload_parts(key, full, path, upload_id, chunk, sha256_hex)
            if not self.atomic_conditional_complete() and self._head(full, key) is not None:
                raise AlreadyExists(key)
            try:
                response = self._call(
                    "complete multipart upload",
                    key,
                    self._client.complete_multipart_upload,
                    Bucket=self.bucket,
                    Key=full,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    IfNoneMatch="*",
                )
            except ClientError as exc:  # precondition: the key exists
                if _retried(exc) and self._holds(full, key, sha256_hex):
                    completed = True
                    return
                raise AlreadyExists(key) from None
            completed = True
        finally:
            if not completed:
                self._abort(full, upload_id)
        self._confirm_winner(key, full, response.get("ETag"))

    def _upload_parts(
        self, key: str, full: str, path: Path, upload_id: str, chunk: int, sha256_hex: str
    ) -> list[dict[str, Any]]:
        """Read the file once, hashing it; upload at most `max_concurrency` parts at a time."""
        whole = hashlib.sha256()
        futures: list[Future[dict[str, Any]]] = []
        slots = threading.BoundedSemaphore(self.max_concurrency)
        try:
            source = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise StoreError(f"cannot read {os.fspath(path)!r}: {exc.strerror}") from None
        with source, ThreadPoolExecutor(self.max_concurrency, "s3-part") as pool:
            number = 0
            while True:
                slots.acquire()
                if any(f.done() and f.exception() for f in futures):
                    slots.release()
                    break
                try:
                    data = source.read(chunk)
                except OSError as exc:
                    slots.release()
                    raise StoreError(f"cannot read {os.fspath(path)!r}: {exc.strerror}") from None
                if not data and number > 0:
                    slots.release()
                    break
                whole.update(data)
                number += 1
                future = pool.submit(self._upload_part, key, full, upload_id, number, data)
                future.add_done_callback(lambda _f: slots.release())
                futures.append(future)
                del data
            wait(futures, return_when=FIRST_EXCEPTION)
        parts = [f.result() for f in futures]  # re-raises the first part failure
        if whole.hexdigest() != sha256_hex:
            raise StoreError(
                f"cannot store {key}: {os.fspath(path)!r} does not hash to the given sha256"
            )
        return parts

    def _upload_part(
        self, key: str, full: str, upload_id: str, number: int, data: bytes
    ) -> dict[str, Any]:
        checksum = _b64(hashlib.sha256(data).digest())
        response = self._call(
            "upload part",
            key,
            self._client.upload_part,
            Bucket=self.bucket,
            Key=full,
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
            ChecksumSHA256=checksum,
        )
        return {"ETag": response["ETag"], "PartNumber": number, "ChecksumSHA256": checksum}

    def _abort(self, full: str, upload_id: str) -> None:
        # Best effort; a bucket lifecycle rule for incomplete uploads catches the rest.
        with contextlib.suppress(ClientError, BotoCoreError):
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)

    def _confirm_winner(self, key: str, full: str, etag: str | None) -> None:
        """After a multipart win, the object must still be ours (detects a racing server)."""
        head = self._head(full, key)
        if head is None or (etag and head.get("ETag") != etag):
            raise StoreError(
                f"S3 put {self.url(key)}: the object changed right after this writer completed "
                "it; the server does not enforce If-None-Match atomically on multipart uploads"
            )

    def delete(self, key: str) -> None:
        """DeleteObject (idempotent, as in S3)."""
        full = self._full(key)
        self._call("delete", key, self._client.delete_object, Bucket=self.bucket, Key=full)

    # -- reads ----------------------------------------------------------------------------

    def get_bytes(self, key: str) -> bytes:
        """The whole object."""
        full = self._full(key)
        response = self._call("get", key, self._client.get_object, Bucket=self.bucket, Key=full)
        body = response["Body"]
        try:
            return body.read()
        except (BotoCoreError, OSError, ValueError) as exc:
            raise self._fail("get", key, exc) from None
        finally:
            body.close()

    def open_read(self, key: str) -> BinaryIO:
        """A buffered streaming reader; stream failures surface as `StoreError`."""
        full = self._full(key)
        response = self._call("get", key, self._client.get_object, Bucket=self.bucket, Key=full)
        raw = _BodyReader(response["Body"], lambda exc: self._fail("get", key, exc))
        return io.BufferedReader(raw, buffer_size=_READ_CHUNK)

    def exists(self, key: str) -> bool:
        """HeadObject."""
        return self._head(self._full(key), key) is not None

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """ListObjectsV2 under the root, sorted by key here (SeaweedFS does not list in order)."""
        validate_prefix(prefix)  # here, not on first next(): a bad prefix fails at the call
        return (e for e in self._list(prefix) if isinstance(e, ObjectInfo))

    def refused(self, prefix: str = "") -> Iterator[RefusedEntry]:
        """Objects under `prefix` whose names no archive writer makes (`validate_key` refuses
        them, so `list` skips them), in key order. Directory markers (`x/`) are not reported."""
        validate_prefix(prefix)
        return (e for e in self._list(prefix) if isinstance(e, RefusedEntry))

    def _list(self, prefix: str) -> Iterator[ObjectInfo | RefusedEntry]:
        root = f"{self.prefix}/" if self.prefix else ""
        found: list[ObjectInfo | RefusedEntry] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=root + prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    rel = item["Key"][len(root) :]
                    try:
                        validate_key(rel)
                    except ValueError:
                        if rel and not rel.endswith("/"):  # directory markers are not planted
                            found.append(
                                RefusedEntry(printable(rel), "not a name the archive writes")
                            )
                        continue
                    modified = item["LastModified"]
                    if modified.tzinfo is None:
                        modified = modified.replace(tzinfo=UTC)
                    found.append(ObjectInfo(rel, int(item["Size"]), modified.astimezone(UTC)))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("list", None, exc) from None
        found.sort(key=lambda entry: entry.key.encode("utf-8", "surrogatepass"))
        yield from found


class _BodyReader(io.RawIOBase):
    """A raw reader over a botocore StreamingBody that maps stream errors to StoreError."""

    def __init__(self, body: Any, fail: Any) -> None:
        self._body = body
        self._fail = fail

    def readable(self) -> bool:
        return True

    def readall(self) -> bytes:
        try:
            return self._body.read()
        except (BotoCoreError, OSError, ValueError) as exc:
            raise self._fail(exc) from None

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._body.read(len(buffer))
        except (BotoCoreError, OSError, ValueError) as exc:
            raise self._fail(exc) from None
        n = len(data)
        buffer[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                self._body.close()
            finally:
                super().close()


def _check_file_hash(path: Path, expected: str, key: str) -> None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_READ_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise StoreError(f"cannot read {os.fspath(path)!r}: {exc.strerror}") from None
    if digest.hexdigest() != expected:
        raise StoreError(
            f"cannot store {key}: {os.fspath(path)!r} does not hash to the given sha256"
        )
