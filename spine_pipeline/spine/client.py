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
import logging
import mimetypes
import socket
import ssl
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import quote

import aiohttp
import httpx
import yarl
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import map_aiohttp_exceptions

from spine_pipeline.spine.bodies import (
    BodyTooLarge,
    aread_capped,
    aread_raw_capped,
    read_capped,
)
from spine_pipeline.spine.content_coding import (
    ACCEPT_ENCODING,
    ContentCodingError,
    IncompleteCodingError,
    StreamDecoder,
)
from spine_pipeline.spine.envelope import ApiResponse, unwrap
from spine_pipeline.spine.errors import (
    DownloadError,
    DownloadExpiredError,
    DownloadRefusedError,
    MalformedResponseError,
    ResponseTooLargeError,
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
from spine_pipeline.spine.url_policy import ArtifactUrlPolicy, IPAddress, Screened

USER_AGENT = "spine-pipeline/0.1 (+httpx)"
_CHUNK = 1 << 20
#: Largest decoded API reply body read (the biggest documented payloads are a few 20 MiB
#: blocks); past it the reply is refused (`ResponseTooLargeError`) without inflating more.
MAX_REPLY_BYTES = 256 * 1024 * 1024
# httpcore asks `import sniffio` on every lock/event it sets up (several per request); when
# sniffio is not installed, each failed import walks sys.path again. A None entry in
# sys.modules makes the same import fail at once, exactly as it would anyway.
if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
    sys.modules["sniffio"] = None  # type: ignore[assignment]
#: Retry notices (WARNING): the CLI prints them on stderr (`cli_errors.enable_notices`).
log = logging.getLogger(__name__)
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


class _Get:
    """A prepared API GET for `AsyncSpineClient`'s direct aiohttp path (`_get_direct`).

    It stands where an `httpx.Request` stands in a flow (`method`, `url`, `extensions`), but
    is only a `yarl.URL` joined onto the client's API root, which was parsed and checked once
    when the client was made: building and parsing an `httpx.Request` (URL, headers) for each
    of a poll pass's GETs cost more than the request itself. `url` is made only when a retry
    notice or an error names the request.
    """

    __slots__ = ("_url", "extensions", "target")
    method = "GET"

    def __init__(self, target: yarl.URL) -> None:
        self.target = target
        self.extensions: dict[str, Any] = {}
        self._url: httpx.URL | None = None

    @property
    def url(self) -> httpx.URL:
        if self._url is None:
            self._url = httpx.URL(str(self.target))
        return self._url


_Outgoing = httpx.Request | _Get


def _as_httpx(request: _Outgoing) -> httpx.Request:
    """The request an httpx client sends: a `_Get` goes only to `AsyncSpineClient._get_direct`."""
    if not isinstance(request, httpx.Request):
        raise TypeError("a prepared GET is sent by the direct aiohttp path, not by httpx")
    return request


@dataclass(frozen=True)
class _Send:
    request: _Outgoing


@dataclass(frozen=True)
class _Sleep:
    seconds: float


@dataclass(frozen=True)
class _Received:
    """A reply whose body was read within the cap (`bodies.read_capped`): what flows see."""

    status_code: int
    headers: httpx.Headers
    content: bytes


_Step = _Send | _Sleep
_Answer = _Received | httpx.Response
_Reply = _Answer | Exception | None
T = TypeVar("T")
Flow = Generator[_Step, _Reply, T]


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def _with_deadline(request: _Outgoing, timeout: httpx.Timeout, deadline: float | None) -> None:
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


def host_of(url: httpx.URL) -> str:
    """`host:port` of a request, what a retry notice or a failure names so a wrong
    SPINE_BASE_URL shows at once; never the userinfo, path or query (they may hold secrets)."""
    host = url.host
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"{host}:{url.port}" if url.port is not None else host


def _retry_notice(
    request: _Outgoing, reply: _Reply, attempt: int, policy: RetryPolicy, delay: float
) -> None:
    """Say that a call is being retried, and why, before sleeping: an unreachable or
    refusing API must not look like a silent hang for the whole backoff."""
    host = host_of(request.url)
    if isinstance(reply, Exception):
        reason = f"cannot reach Spine at {host} ({_describe(_dropped(reply) or reply)})"
    else:
        status = reply.status_code if reply is not None else "?"
        reason = f"HTTP {status} from {host}"
    log.warning(
        "%s %s: %s; retry %d of %d in %.1f s",
        request.method,
        request.url.path,
        reason,
        attempt + 1,
        policy.max_retries,
        delay,
    )


def _download_retry_notice(url: str, exc: Exception, attempt: int, policy: RetryPolicy) -> float:
    """Say that an artifact download is retried (naming only the host: a pre-signed URL's
    query is a credential), and return how long to wait first."""
    delay = policy.delay(attempt)
    try:
        host = host_of(httpx.URL(url))
    except httpx.InvalidURL:
        host = "?"
    log.warning(
        "artifact download from %s: %s; retry %d of %d in %.1f s",
        host,
        _describe(exc),
        attempt + 1,
        policy.max_retries,
        delay,
    )
    return delay


def _transport_failure(kind: RequestKind, request: _Outgoing, exc: Exception) -> SpineError:
    what = f"{request.method} {request.url.path}"
    host = host_of(request.url)
    if kind is RequestKind.CREATE and not never_sent(exc):
        return SubmitOutcomeUnknownError(
            f"submit outcome unknown: {what} failed after the request may have reached Spine "
            f"({_describe(exc)}); not retried to avoid a duplicate billable run",
            cause=_describe(exc),
        )
    dropped = _dropped(exc)
    if dropped is None and isinstance(exc, httpx.TimeoutException):
        return SpineTimeoutError(f"{what} to {host} timed out ({_describe(exc)})")
    return SpineConnectionError(
        f"{what} failed: cannot reach Spine at {host} ({_describe(dropped or exc)})"
    )


def _too_large(kind: RequestKind, request: _Outgoing, exc: BodyTooLarge) -> SpineError:
    """A refused reply body, as one line: never retried (the same reply would be refused)."""
    coding = f", Content-Encoding {exc.content_encoding}" if exc.content_encoding else ""
    what = f"{request.method} {request.url.path}"
    reason = f"reply body exceeds {exc.limit} bytes decoded{coding}; refused, not read further"
    if kind is RequestKind.CREATE:
        return SubmitOutcomeUnknownError(
            f"submit outcome unknown: {what} answered HTTP {exc.status_code} but its {reason}",
            cause=reason,
            request_id=exc.request_id,
        )
    return ResponseTooLargeError(
        f"{what}: {reason}", status_code=exc.status_code, request_id=exc.request_id
    )


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
        request: _Outgoing = build()
        _with_deadline(request, timeout, deadline)
        reply = yield _Send(request)
        retry_after: float | None = None
        if isinstance(reply, BodyTooLarge):
            raise _too_large(kind, request, reply)
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
                _retry_notice(request, reply, attempt, policy, delay)
                attempt += 1
                yield _Sleep(delay)
                continue
        if isinstance(reply, Exception):
            raise _transport_failure(kind, request, reply)
        assert reply is not None
        return _interpret(kind, request, reply)


def _interpret(kind: RequestKind, request: _Outgoing, response: _Answer) -> ApiResponse:
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


MAX_REDIRECTS = 5
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class _DownloadSink:
    """Writes a decoded download to a seekable file, hashing it, within the size cap."""

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
            raise _over_cap(self.max_bytes, "more than that after decoding")
        self.hash.update(chunk)
        self.fileobj.write(chunk)

    def feed(self, decoder: StreamDecoder, raw: bytes) -> None:
        try:
            for piece in decoder.feed(raw):
                self.write(piece)
        except ContentCodingError as exc:
            raise DownloadError(f"download corrupt: {exc}") from None

    def finish(self, response: httpx.Response, decoder: StreamDecoder) -> DownloadResult:
        """Complete if the bytes received (still encoded) are the `Content-Length` declared."""
        declared = response.headers.get("content-length")
        received = response.num_bytes_downloaded
        if declared is not None and declared.isdigit() and int(declared) != received:
            raise DownloadError(
                f"download truncated: got {received} of {declared} bytes declared by the server"
            )
        try:
            for piece in decoder.finish():
                self.write(piece)
        except IncompleteCodingError as exc:
            # All declared bytes came, so the server sent a broken stream: retrying won't help.
            what = "corrupt" if declared is not None else "truncated"
            raise DownloadError(f"download {what}: {exc}") from None
        self.fileobj.flush()
        return DownloadResult(
            size_bytes=self.size,
            sha256=self.hash.hexdigest(),
            content_type=response.headers.get("content-type"),
        )


def _over_cap(limit: int, what: str) -> DownloadRefusedError:
    return DownloadRefusedError(
        f"download stopped: the artifact is over the size cap of {limit} bytes "
        f"(SPINE_ARTIFACT_MAX_BYTES): {what}"
    )


@dataclass(frozen=True)
class _Target:
    screened: Screened
    address: IPAddress | None  # where to connect; None: by name (trusted, or a literal)


def _download_request(http: httpx.Client | httpx.AsyncClient, target: _Target) -> httpx.Request:
    """The GET for one hop: our headers only (never the API key), pinned when checked.

    A host whose addresses were checked is connected to at the checked address: the URL
    names the address, `Host` and TLS SNI/certificate checks name the host. Such requests
    say `Connection: close`, so a connection verified for one name is never pooled and
    reused for another name that resolves to the same address.
    """
    screened, address = target.screened, target.address
    url = screened.url
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": ACCEPT_ENCODING}
    extensions: dict[str, Any] = {}
    if not screened.trusted:
        headers["Connection"] = "close"
        if address is not None and screened.literal is None:
            headers["Host"] = url.netloc.decode("ascii")
            extensions["sni_hostname"] = url.raw_host.decode("ascii")
            url = url.copy_with(host=str(address))
    return http.build_request("GET", url, headers=headers, extensions=extensions)


def _next_hop(target: _Target, response: httpx.Response, hop: int) -> httpx.URL | None:
    """Where a redirect points, resolved against the URL asked for (not a pinned address)."""
    status = response.status_code
    if status not in _REDIRECT_STATUSES:
        return None
    location = response.headers.get("location")
    if not location:
        raise DownloadError(f"download failed with HTTP {status} and no Location")
    if hop >= MAX_REDIRECTS:
        raise DownloadRefusedError(f"download refused: more than {MAX_REDIRECTS} redirects")
    try:
        return target.screened.url.join(location)
    except (httpx.InvalidURL, ValueError):
        raise DownloadRefusedError(
            f"download refused: redirect {hop + 1} is not a valid URL"
        ) from None


def _start_body(response: httpx.Response, limit: int | None) -> StreamDecoder:
    """Status, coding and declared size of a final answer, checked before reading its body."""
    _check_download_status(response)
    try:
        decoder = StreamDecoder(response.headers.get("content-encoding"), _CHUNK)
    except ContentCodingError as exc:
        raise DownloadError(f"download unreadable: {exc}") from None
    declared = response.headers.get("content-length", "")
    if decoder.identity and limit is not None and declared.isdigit() and int(declared) > limit:
        raise _over_cap(limit, f"the server declared {declared} bytes")
    return decoder


def _check_download_status(response: httpx.Response) -> None:
    if response.status_code in (401, 403, 404, 410):
        raise DownloadExpiredError(
            f"download refused with HTTP {response.status_code} (expired or revoked URL)",
            status_code=response.status_code,
        )
    if response.status_code >= 300:
        raise DownloadError(f"download failed with HTTP {response.status_code}")


def _download_retryable(exc: Exception) -> bool:
    if isinstance(exc, DownloadExpiredError | DownloadRefusedError):
        return False
    if isinstance(exc, DownloadError):
        # 429 is "slow down and repeat" on object stores too (S3 sends 503 SlowDown or 429).
        return any(m in exc.message for m in ("truncated", "HTTP 5", "HTTP 429"))
    return exception_is_retryable(RequestKind.READ, exc)


def _getaddrinfo_within(host: str, port: int, timeout: float) -> list[Any]:
    """`socket.getaddrinfo` for the blocking client, given up on after `timeout` seconds.

    The lookup runs on a daemon thread, so a hung resolver costs the caller a timeout and
    never holds up the interpreter's exit.
    """
    box: list[Any] = []

    def lookup() -> None:
        try:
            box.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except Exception as exc:  # handed to the caller below
            box.append(exc)

    thread = threading.Thread(target=lookup, name="spine-dns", daemon=True)
    thread.start()
    thread.join(timeout)
    if not box:
        raise TimeoutError(host)
    if isinstance(box[0], Exception):
        raise box[0]
    return list(box[0])


def _lookup_failure(host: str, exc: BaseException) -> DownloadError:
    if isinstance(exc, TimeoutError):
        return DownloadError(f"download failed: resolving {host} timed out")
    reason = getattr(exc, "strerror", None) or type(exc).__name__
    return DownloadError(f"download failed: cannot resolve {host} ({reason})")


def _addresses(infos: list[Any]) -> list[str]:
    return [str(info[4][0]) for info in infos]


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
        artifact_max_bytes: int | None = None,
        artifact_allowed_hosts: Sequence[str] | None = None,
        max_reply_bytes: int = MAX_REPLY_BYTES,
    ) -> None:
        self.settings = SpineSettings.resolve(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            artifact_max_bytes=artifact_max_bytes,
            artifact_allowed_hosts=artifact_allowed_hosts,
        )
        self.artifact_policy = ArtifactUrlPolicy.for_api(
            self.settings.base_url, self.settings.artifact_allowed_hosts
        )
        self.retry = retry or RetryPolicy()
        self.create_retry = create_retry or self.retry
        self.max_reply_bytes = max_reply_bytes
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

    @property
    def _lookup_timeout(self) -> float:
        connect = self.settings.timeout.connect
        return connect if connect is not None else 10.0

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
        # Pre-signed download URLs get no API key: they may live on another host. Redirects
        # are followed by `download` itself, each hop checked by the artifact URL policy.
        self._download_http = httpx.Client(timeout=self.settings.timeout)

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
                    response = http.send(_as_httpx(step.request), stream=True)
                    try:
                        body = read_capped(response, self.max_reply_bytes)
                    finally:
                        response.close()
                    reply = _Received(response.status_code, response.headers, body)
                except (httpx.HTTPError, BodyTooLarge) as exc:
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
        """Stream an artifact URL into a seekable file, decoded and hashed; retries transients.

        Every hop, the first and each redirect, passes `artifact_policy` before any
        connection; the body is read raw (checked against `Content-Length` as sent) and
        stored decoded, stopped at `max_bytes` (default: SPINE_ARTIFACT_MAX_BYTES).
        """
        limit = self.settings.artifact_max_bytes if max_bytes is None else max_bytes
        sink = _DownloadSink(fileobj, expected_size, limit)
        attempt = 0
        while True:
            try:
                return self._download_once(url, sink)
            except (httpx.HTTPError, DownloadError) as exc:
                if not _download_retryable(exc) or attempt >= self.retry.max_retries:
                    raise _download_failure(exc) from None
                time.sleep(_download_retry_notice(url, exc, attempt, self.retry))
                attempt += 1
                sink.reset()

    def _download_once(self, url: str, sink: _DownloadSink) -> DownloadResult:
        location: str | httpx.URL = url
        hop = 0
        while True:
            target = self._target(location, hop)
            request = _download_request(self._download_http, target)
            response = self._download_http.send(request, stream=True)
            try:
                following = _next_hop(target, response, hop)
                if following is None:
                    decoder = _start_body(response, sink.max_bytes)
                    for raw in response.iter_raw(_CHUNK):
                        sink.feed(decoder, raw)
                    return sink.finish(response, decoder)
            finally:
                response.close()
            location, hop = following, hop + 1

    def _target(self, location: str | httpx.URL, hop: int) -> _Target:
        screened = self.artifact_policy.screen(location, hop=hop)
        if not screened.needs_resolution:
            return _Target(screened, None)
        host, port = screened.origin.host, screened.origin.port
        try:
            infos = _getaddrinfo_within(host, port, self._lookup_timeout)
        except (OSError, UnicodeError) as exc:  # TimeoutError is an OSError
            raise _lookup_failure(host, exc) from None
        return _Target(screened, self.artifact_policy.pin(screened, _addresses(infos), hop=hop))


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


def _client_timeout(phases: dict[str, float | None]) -> aiohttp.ClientTimeout:
    """httpx's timeout phases as aiohttp's, mapped exactly as httpx-aiohttp maps them."""
    return aiohttp.ClientTimeout(
        sock_connect=phases.get("connect"), sock_read=phases.get("read"), connect=phases.get("pool")
    )


async def _run_flow(flow: Flow[T], send: Callable[[_Outgoing], Awaitable[_Received]]) -> T:
    """Drive a sans-IO flow with an async `send`: the one loop both async paths share, so
    sleeps, transport errors and oversized bodies reach the flow the same way."""
    step = next(flow)
    while True:
        reply: _Reply = None
        if isinstance(step, _Sleep):
            await asyncio.sleep(step.seconds)
        else:
            try:
                reply = await send(step.request)
            except (httpx.HTTPError, BodyTooLarge) as exc:
                reply = exc
        try:
            step = flow.send(reply)
        except StopIteration as done:
            return done.value


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
            timeout=self.settings.timeout, limits=limits, verify=tls
        )

        # The poll pass's GETs (`get_run`) go to aiohttp directly (`_get_direct`), made in
        # the running loop on first use as httpx-aiohttp makes its own.
        self._max_connections = max_connections
        self._direct: aiohttp.ClientSession | None = None
        self._api_root = yarl.URL(self.settings.base_url)
        self._direct_headers = dict(self._headers)
        self._default_phases = _client_timeout(self.settings.timeout.as_dict())

    async def __aenter__(self) -> AsyncSpineClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._direct is not None:
            await self._direct.close()
            self._direct = None
        await self._http.aclose()
        await self._submit_http.aclose()
        await self._download_http.aclose()

    async def _drive(self, flow: Flow[T], http: httpx.AsyncClient) -> T:
        async def send(request: _Outgoing) -> _Received:
            response = await http.send(_as_httpx(request), stream=True)
            try:
                body = await aread_capped(response, self.max_reply_bytes)
            finally:
                await response.aclose()
            return _Received(response.status_code, response.headers, body)

        return await _run_flow(flow, send)

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
        """GET /v1/run/{id} on the direct aiohttp path: the poll pass's one request."""
        target = self._api_root.with_path(
            f"{self._api_root.raw_path}/run/{_segment(run_id, 'run_id')}", encoded=True
        )
        flow = api_flow(
            lambda: _Get(target), RequestKind.READ, self.retry, self.settings.timeout, deadline
        )
        return Run(await self._drive_direct(flow))

    def _session(self) -> aiohttp.ClientSession:
        """The aiohttp session of the direct GETs, configured as `_read_transport`'s was:
        the same TLS context, connection limit and keep-alive expiry, no proxies from the
        environment, bodies left encoded (`BoundedDecoder` inflates them within the cap).
        It keeps no cookies: nothing a server sets is ever sent back."""
        if self._direct is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                keepalive_timeout=httpx.Limits().keepalive_expiry,
                ssl=_tls_context(),
            )
            self._direct = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return self._direct

    async def _get_direct(self, request: _Get) -> _Received:
        """One API GET through aiohttp with the old path's rules, without httpx's objects.

        The same as `_http.send` through httpx-aiohttp + `aread_capped`: the phases of the
        timeout (capped to the deadline by the flow) map to aiohttp's as that transport maps
        them, redirects are not followed, aiohttp's errors become the same httpx exceptions
        (its own `map_aiohttp_exceptions`, so retries and error types cannot drift), and the
        body is read raw and inflated by `aread_raw_capped` (the same reader as `aread_capped`),
        refused past `max_reply_bytes`.
        """
        phases = request.extensions.get("timeout")
        timeout = self._default_phases if phases is None else _client_timeout(phases)
        with map_aiohttp_exceptions():
            async with self._session().get(
                request.target,
                headers=self._direct_headers,
                allow_redirects=False,
                timeout=timeout,
            ) as response:
                headers = httpx.Headers(response.raw_headers)
                body = await aread_raw_capped(
                    response.content.iter_any(), response.status, headers, self.max_reply_bytes
                )
        return _Received(response.status, headers, body)

    async def _drive_direct(self, flow: Flow[T]) -> T:
        """`_drive` for flows of `_Get`s: each is sent by `_get_direct`."""

        async def send(request: _Outgoing) -> _Received:
            assert isinstance(request, _Get)
            return await self._get_direct(request)

        return await _run_flow(flow, send)

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
        limit = self.settings.artifact_max_bytes if max_bytes is None else max_bytes
        sink = _DownloadSink(fileobj, expected_size, limit)
        attempt = 0
        while True:
            try:
                return await self._download_once(url, sink)
            except (httpx.HTTPError, DownloadError) as exc:
                if not _download_retryable(exc) or attempt >= self.retry.max_retries:
                    raise _download_failure(exc) from None
                await asyncio.sleep(_download_retry_notice(url, exc, attempt, self.retry))
                attempt += 1
                sink.reset()

    async def _download_once(self, url: str, sink: _DownloadSink) -> DownloadResult:
        location: str | httpx.URL = url
        hop = 0
        while True:
            target = await self._target(location, hop)
            request = _download_request(self._download_http, target)
            response = await self._download_http.send(request, stream=True)
            try:
                following = _next_hop(target, response, hop)
                if following is None:
                    decoder = _start_body(response, sink.max_bytes)
                    async for raw in response.aiter_raw(_CHUNK):
                        sink.feed(decoder, raw)
                    return sink.finish(response, decoder)
            finally:
                await response.aclose()
            location, hop = following, hop + 1

    async def _target(self, location: str | httpx.URL, hop: int) -> _Target:
        screened = self.artifact_policy.screen(location, hop=hop)
        if not screened.needs_resolution:
            return _Target(screened, None)
        host, port = screened.origin.host, screened.origin.port
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), self._lookup_timeout
            )
        except (OSError, UnicodeError) as exc:  # TimeoutError is an OSError
            raise _lookup_failure(host, exc) from None
        return _Target(screened, self.artifact_policy.pin(screened, _addresses(infos), hop=hop))


def _download_failure(exc: Exception) -> SpineError:
    if isinstance(exc, SpineError):
        return exc
    if isinstance(exc, httpx.RemoteProtocolError):
        return DownloadError(f"download truncated: the connection closed early ({_describe(exc)})")
    return DownloadError(f"download failed: {_describe(exc)}")
