"""The Spine API client: sync and async, one request flow.

The retry and error rules live once, in generator "flows" that yield what to do next
(send this request, sleep this long) and receive the outcome (a response or a transport
exception). `SpineClient` and `AsyncSpineClient` only drive those flows with blocking or
awaitable I/O, so the two can never disagree about when a submit is safe to repeat.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib.util
import json
import mimetypes
import ssl
import sys
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import quote

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from spine_pipeline.spine.envelope import ApiResponse, unwrap
from spine_pipeline.spine.errors import (
    DownloadError,
    DownloadExpiredError,
    MalformedResponseError,
    SpineConnectionError,
    SpineError,
    SpineTimeoutError,
    SubmitOutcomeUnknownError,
)
from spine_pipeline.spine.models import CanvasDAG, CreatedRun, Run, Task, TaskTree
from spine_pipeline.spine.redact import Secret, redact, redact_http_logs, redacted_field
from spine_pipeline.spine.retry import (
    RequestKind,
    RetryPolicy,
    exception_is_retryable,
    never_sent,
    parse_retry_after,
    status_is_retryable,
)
from spine_pipeline.spine.settings import SpineSettings

USER_AGENT = "spine-pipeline/0.1 (+httpx)"
_CHUNK = 1 << 20
# httpcore asks `import sniffio` on every lock/event it sets up (several per request); when
# sniffio is not installed, each failed import walks sys.path again. A None entry in
# sys.modules makes the same import fail at once, exactly as it would anyway.
if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
    sys.modules["sniffio"] = None  # type: ignore[assignment]
# httpx logs each reply's status line and httpcore its headers, both chosen by the server.
redact_http_logs()


@dataclass(frozen=True)
class UploadFile:
    """A file to attach to a run. Held as bytes so a retried submit resends all of it."""

    name: str
    content: bytes
    content_type: str = "application/octet-stream"

    @classmethod
    def from_path(cls, path: str | Path, content_type: str | None = None) -> UploadFile:
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise FileNotFoundError(f"cannot read upload file {str(p)!r}: {exc.strerror}") from None
        guessed = content_type or mimetypes.guess_type(p.name)[0] or "application/octet-stream"
        return cls(name=p.name, content=data, content_type=guessed)


@dataclass(frozen=True)
class DownloadResult:
    """What an artifact download produced: verified byte count, sha256, content type."""

    size_bytes: int
    sha256: str
    content_type: str | None


@dataclass(frozen=True)
class _Send:
    request: httpx.Request


@dataclass(frozen=True)
class _Sleep:
    seconds: float


_Step = _Send | _Sleep
_Reply = httpx.Response | Exception | None
T = TypeVar("T")
Flow = Generator[_Step, _Reply, T]


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def _with_deadline(request: httpx.Request, timeout: httpx.Timeout, deadline: float | None) -> None:
    """Cap every phase of the request's timeout to what is left before `deadline`."""
    left = _remaining(deadline)
    if left is None:
        return
    if left <= 0:
        raise SpineTimeoutError(f"deadline passed before {request.method} {request.url.path}")
    capped = {
        phase: min(value, left) if value is not None else left
        for phase, value in timeout.as_dict().items()
    }
    request.extensions["timeout"] = capped


def _describe(exc: Exception) -> str:
    return redact(f"{type(exc).__name__}: {exc}") if str(exc) else type(exc).__name__


def _transport_failure(kind: RequestKind, request: httpx.Request, exc: Exception) -> SpineError:
    what = f"{request.method} {request.url.path}"
    if kind is RequestKind.CREATE and not never_sent(exc):
        return SubmitOutcomeUnknownError(
            f"submit outcome unknown: {what} failed after the request may have reached Spine "
            f"({_describe(exc)}); not retried to avoid a duplicate billable run",
            cause=_describe(exc),
        )
    dropped = _dropped(exc)
    if dropped is None and isinstance(exc, httpx.TimeoutException):
        return SpineTimeoutError(f"{what} timed out ({_describe(exc)})")
    return SpineConnectionError(f"{what} failed: cannot reach Spine ({_describe(dropped or exc)})")


def _dropped(exc: Exception) -> aiohttp.ClientConnectionError | None:
    """The connection the server closed or reset, which httpx-aiohttp reports as a timeout.

    Its exception map turns every `aiohttp.ClientConnectionError` (server disconnected,
    connection reset) into `httpx.ConnectTimeout`; the aiohttp error is kept as the cause.
    """
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientConnectionError) and not isinstance(
        cause, aiohttp.ServerTimeoutError
    ):
        return cause
    return None


def api_flow(
    build: Any,
    kind: RequestKind,
    policy: RetryPolicy,
    timeout: httpx.Timeout,
    deadline: float | None = None,
) -> Flow[ApiResponse]:
    """The request/retry/unwrap protocol for one API call; `build()` makes a fresh request."""
    attempt = 0
    while True:
        request: httpx.Request = build()
        _with_deadline(request, timeout, deadline)
        reply = yield _Send(request)
        retry_after: float | None = None
        if isinstance(reply, Exception):
            retryable = exception_is_retryable(kind, reply)
        else:
            assert reply is not None
            retryable = status_is_retryable(kind, reply.status_code)
            retry_after = parse_retry_after(reply.headers.get("retry-after"))
        if retryable and attempt < policy.max_retries:
            delay = policy.delay(attempt, retry_after)
            left = _remaining(deadline)
            if left is None or delay < left:
                attempt += 1
                yield _Sleep(delay)
                continue
        if isinstance(reply, Exception):
            raise _transport_failure(kind, request, reply)
        assert reply is not None
        return _interpret(kind, request, reply)


def _interpret(kind: RequestKind, request: httpx.Request, response: httpx.Response) -> ApiResponse:
    # Redacted as it is read: the server chooses it, and it reaches errors, reprs and logs.
    request_id = redacted_field(response.headers.get("x-request-id"))
    status = response.status_code
    if kind is RequestKind.CREATE and status >= 500:
        raise SubmitOutcomeUnknownError(
            f"submit outcome unknown: POST {request.url.path} answered HTTP {status}; the run may "
            "have been created, so it is not retried",
            cause=f"HTTP {status}",
            request_id=request_id,
        )
    try:
        answer = unwrap(status, response.content, request_id)
    except MalformedResponseError as exc:
        if kind is RequestKind.CREATE:
            raise SubmitOutcomeUnknownError(
                f"submit outcome unknown: {exc.message} (HTTP {exc.status_code})",
                cause=exc.message,
                request_id=request_id,
            ) from None
        raise
    if kind is RequestKind.CREATE and not (
        isinstance(answer.data, dict) and isinstance(answer.data.get("run_id"), str)
    ):
        raise SubmitOutcomeUnknownError(
            "submit outcome unknown: Spine accepted the request but returned no run_id",
            cause="no run_id",
            request_id=request_id,
        )
    return answer


class _DownloadSink:
    """Writes a download to a seekable file, hashing as it goes, and checks its size."""

    def __init__(self, fileobj: IO[bytes], expected_size: int | None, max_bytes: int | None):
        self.fileobj = fileobj
        self.expected_size = expected_size
        self.max_bytes = max_bytes
        self.reset()

    def reset(self) -> None:
        self.fileobj.seek(0)
        self.fileobj.truncate()
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.max_bytes is not None and self.size > self.max_bytes:
            raise DownloadError(f"download exceeds the limit of {self.max_bytes} bytes")
        self.hash.update(chunk)
        self.fileobj.write(chunk)

    def finish(self, response: httpx.Response) -> DownloadResult:
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) != self.size:
            raise DownloadError(
                f"download truncated: got {self.size} of {declared} bytes declared by the server"
            )
        self.fileobj.flush()
        return DownloadResult(
            size_bytes=self.size,
            sha256=self.hash.hexdigest(),
            content_type=response.headers.get("content-type"),
        )


def _check_download_status(response: httpx.Response) -> None:
    if response.status_code in (401, 403, 404, 410):
        raise DownloadExpiredError(
            f"download refused with HTTP {response.status_code} (expired or revoked URL)",
            status_code=response.status_code,
        )
    if response.status_code >= 400:
        raise DownloadError(f"download failed with HTTP {response.status_code}")


def _download_retryable(exc: Exception) -> bool:
    if isinstance(exc, DownloadExpiredError):
        return False
    if isinstance(exc, DownloadError):
        # 429 is "slow down and repeat" on object stores too (S3 sends 503 SlowDown or 429).
        return any(m in exc.message for m in ("truncated", "HTTP 5", "HTTP 429"))
    return exception_is_retryable(RequestKind.READ, exc)


class _Base:
    """Settings, request building and the typed methods shared by both clients."""

    def __init__(
        self,
        *,
        api_key: str | Secret | None = None,
        base_url: str | None = None,
        timeout: httpx.Timeout | float | None = None,
        retry: RetryPolicy | None = None,
        create_retry: RetryPolicy | None = None,
    ) -> None:
        self.settings = SpineSettings.resolve(api_key=api_key, base_url=base_url, timeout=timeout)
        self.retry = retry or RetryPolicy()
        self.create_retry = create_retry or self.retry
        self._headers = {
            "X-API-KEY": self.settings.api_key.get(),
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.settings.base_url!r}, api_key=***)"

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    def _url(self, path: str) -> str:
        return self.settings.base_url + path

    def _get_flow(self, path: str, deadline: float | None) -> Flow[ApiResponse]:
        url = self._url(path)

        def build() -> httpx.Request:
            return httpx.Request("GET", url, headers=self._headers)

        return api_flow(build, RequestKind.READ, self.retry, self.settings.timeout, deadline)

    def _create_flow(
        self,
        prompt: str,
        template: str | None,
        blocks: Sequence[str] | None,
        agent_instructions: str | None,
        files: Sequence[UploadFile | str | Path],
        webhook_url: str | None,
        deadline: float | None,
    ) -> Flow[ApiResponse]:
        form: dict[str, str] = {"prompt": prompt}
        if template is not None:
            form["template"] = template
        if blocks is not None:
            form["blocks"] = json.dumps(list(blocks))
        if agent_instructions is not None:
            form["agent_instructions"] = agent_instructions
        if webhook_url is not None:
            form["webhook_url"] = webhook_url
        uploads = [f if isinstance(f, UploadFile) else UploadFile.from_path(f) for f in files]
        url = self._url("/run")

        def build() -> httpx.Request:
            # Rebuilt per attempt from bytes: a retried submit carries every byte again.
            multipart = [("files", (u.name, u.content, u.content_type)) for u in uploads]
            return _multipart_request(url, self._headers, form, multipart)

        return api_flow(
            build, RequestKind.CREATE, self.create_retry, self.settings.timeout, deadline
        )


def _multipart_request(
    url: str, headers: dict[str, str], form: dict[str, str], files: list[tuple[str, Any]]
) -> httpx.Request:
    """A multipart/form-data POST, even when no file is attached."""
    fields: list[tuple[str, Any]] = [(k, (None, v.encode("utf-8"))) for k, v in form.items()]
    return httpx.Request("POST", url, headers=headers, files=fields + files)


def _segment(value: str, what: str) -> str:
    """A path parameter, percent-encoded so an odd id can never change the route."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string")
    return quote(value, safe="")


class SpineClient(_Base):
    """Blocking client. Use as a context manager or call `close()`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._http = httpx.Client(timeout=self.settings.timeout)
        # Submits never reuse a pooled connection: a stale keep-alive socket would turn a
        # safe-to-retry failure into an ambiguous one.
        self._submit_http = httpx.Client(
            timeout=self.settings.timeout, limits=httpx.Limits(max_keepalive_connections=0)
        )
        # Pre-signed download URLs get no API key: they may live on another host.
        self._download_http = httpx.Client(timeout=self.settings.timeout, follow_redirects=True)

    def __enter__(self) -> SpineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()
        self._submit_http.close()
        self._download_http.close()

    def _drive(self, flow: Flow[T], http: httpx.Client) -> T:
        step = next(flow)
        while True:
            reply: _Reply = None
            if isinstance(step, _Sleep):
                time.sleep(step.seconds)
            else:
                try:
                    reply = http.send(step.request)
                except httpx.HTTPError as exc:
                    reply = exc
            try:
                step = flow.send(reply)
            except StopIteration as done:
                return done.value

    def create_run(
        self,
        prompt: str,
        *,
        template: str | None = None,
        blocks: Sequence[str] | None = None,
        agent_instructions: str | None = None,
        files: Sequence[UploadFile | str | Path] = (),
        webhook_url: str | None = None,
        deadline: float | None = None,
    ) -> CreatedRun:
        """POST /v1/run. Raises SubmitOutcomeUnknownError when it may have been billed."""
        flow = self._create_flow(
            prompt, template, blocks, agent_instructions, files, webhook_url, deadline
        )
        return CreatedRun(self._drive(flow, self._submit_http))

    def get_run(self, run_id: str, *, deadline: float | None = None) -> Run:
        flow = self._get_flow(f"/run/{_segment(run_id, 'run_id')}", deadline)
        return Run(self._drive(flow, self._http))

    def get_dag(self, canvas_id: str, *, deadline: float | None = None) -> CanvasDAG:
        flow = self._get_flow(f"/canvas/{_segment(canvas_id, 'canvas_id')}/dag", deadline)
        return CanvasDAG(self._drive(flow, self._http))

    def get_tasks(self, canvas_id: str, *, deadline: float | None = None) -> TaskTree:
        flow = self._get_flow(f"/canvas/{_segment(canvas_id, 'canvas_id')}/tasks", deadline)
        return TaskTree(self._drive(flow, self._http))

    def get_task(self, canvas_id: str, task_id: str, *, deadline: float | None = None) -> Task:
        path = f"/canvas/{_segment(canvas_id, 'canvas_id')}/tasks/{_segment(task_id, 'task_id')}"
        return Task(self._drive(self._get_flow(path, deadline), self._http))

    def download(
        self,
        url: str,
        fileobj: IO[bytes],
        *,
        expected_size: int | None = None,
        max_bytes: int | None = None,
    ) -> DownloadResult:
        """Stream a pre-signed URL into a seekable file, hashing it; retries transient faults."""
        sink = _DownloadSink(fileobj, expected_size, max_bytes)
        attempt = 0
        while True:
            try:
                with self._download_http.stream("GET", url) as response:
                    _check_download_status(response)
                    for chunk in response.iter_bytes(_CHUNK):
                        sink.write(chunk)
                    return sink.finish(response)
            except (httpx.HTTPError, DownloadError) as exc:
                if not _download_retryable(exc) or attempt >= self.retry.max_retries:
                    raise _download_failure(exc) from None
                time.sleep(self.retry.delay(attempt))
                attempt += 1
                sink.reset()


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One TLS context per process, shared by every async client and its pools.

    httpx builds a new one for every client created without one (it loads certifi's CA
    bundle each time), and each sensor tick creates a client. A context is safe to share.
    """
    return httpx.create_ssl_context()


def _read_transport(max_connections: int, tls: ssl.SSLContext) -> httpx.AsyncBaseTransport:
    """aiohttp's HTTP/1.1 (C parser) under httpx for the API's GETs: half the CPU per request.

    Through httpcore a 1,000-run poll tick was bound by the client's CPU; through aiohttp
    it takes about half (docs/decisions.md, docs/benchmarks.md). Only idempotent reads go
    this way: httpx-aiohttp maps a connection dropped after the request was sent to
    `httpx.ConnectTimeout`, which for a submit would read as "never sent" and be repeated.
    """
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    return AiohttpTransport(verify=tls, limits=limits)


class AsyncSpineClient(_Base):
    """Asyncio client with the same rules; the poll sensor uses it for bounded concurrency."""

    def __init__(self, *, max_connections: int = 64, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        tls = _tls_context()
        self._http = httpx.AsyncClient(
            timeout=self.settings.timeout, transport=_read_transport(max_connections, tls)
        )
        self._submit_http = httpx.AsyncClient(
            timeout=self.settings.timeout,
            limits=httpx.Limits(max_keepalive_connections=0),
            verify=tls,
        )
        self._download_http = httpx.AsyncClient(
            timeout=self.settings.timeout, follow_redirects=True, limits=limits, verify=tls
        )

    async def __aenter__(self) -> AsyncSpineClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._submit_http.aclose()
        await self._download_http.aclose()

    async def _drive(self, flow: Flow[T], http: httpx.AsyncClient) -> T:
        step = next(flow)
        while True:
            reply: _Reply = None
            if isinstance(step, _Sleep):
                await asyncio.sleep(step.seconds)
            else:
                try:
                    reply = await http.send(step.request)
                except httpx.HTTPError as exc:
                    reply = exc
            try:
                step = flow.send(reply)
            except StopIteration as done:
                return done.value

    async def create_run(
        self,
        prompt: str,
        *,
        template: str | None = None,
        blocks: Sequence[str] | None = None,
        agent_instructions: str | None = None,
        files: Sequence[UploadFile | str | Path] = (),
        webhook_url: str | None = None,
        deadline: float | None = None,
    ) -> CreatedRun:
        flow = self._create_flow(
            prompt, template, blocks, agent_instructions, files, webhook_url, deadline
        )
        return CreatedRun(await self._drive(flow, self._submit_http))

    async def get_run(self, run_id: str, *, deadline: float | None = None) -> Run:
        flow = self._get_flow(f"/run/{_segment(run_id, 'run_id')}", deadline)
        return Run(await self._drive(flow, self._http))

    async def get_dag(self, canvas_id: str, *, deadline: float | None = None) -> CanvasDAG:
        flow = self._get_flow(f"/canvas/{_segment(canvas_id, 'canvas_id')}/dag", deadline)
        return CanvasDAG(await self._drive(flow, self._http))

    async def get_tasks(self, canvas_id: str, *, deadline: float | None = None) -> TaskTree:
        flow = self._get_flow(f"/canvas/{_segment(canvas_id, 'canvas_id')}/tasks", deadline)
        return TaskTree(await self._drive(flow, self._http))

    async def get_task(
        self, canvas_id: str, task_id: str, *, deadline: float | None = None
    ) -> Task:
        path = f"/canvas/{_segment(canvas_id, 'canvas_id')}/tasks/{_segment(task_id, 'task_id')}"
        return Task(await self._drive(self._get_flow(path, deadline), self._http))

    async def download(
        self,
        url: str,
        fileobj: IO[bytes],
        *,
        expected_size: int | None = None,
        max_bytes: int | None = None,
    ) -> DownloadResult:
        """Async twin of `SpineClient.download` (file writes are small, blocking, buffered)."""
        sink = _DownloadSink(fileobj, expected_size, max_bytes)
        attempt = 0
        while True:
            try:
                async with self._download_http.stream("GET", url) as response:
                    _check_download_status(response)
                    async for chunk in response.aiter_bytes(_CHUNK):
                        sink.write(chunk)
                    return sink.finish(response)
            except (httpx.HTTPError, DownloadError) as exc:
                if not _download_retryable(exc) or attempt >= self.retry.max_retries:
                    raise _download_failure(exc) from None
                await asyncio.sleep(self.retry.delay(attempt))
                attempt += 1
                sink.reset()


def _download_failure(exc: Exception) -> SpineError:
    if isinstance(exc, SpineError):
        return exc
    if isinstance(exc, httpx.RemoteProtocolError):
        return DownloadError(f"download truncated: the connection closed early ({_describe(exc)})")
    return DownloadError(f"download failed: {_describe(exc)}")
