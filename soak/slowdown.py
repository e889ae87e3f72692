"""A loopback proxy in front of an S3 endpoint that answers `503 SlowDown` to a share of requests.

Why: S3 throttles with 503 SlowDown and clients must back off and retry; SeaweedFS never does,
so the soak puts this proxy between the archive and SeaweedFS. It forwards every other request
byte for byte (the Host header is kept, so SigV4 signatures stay valid), forces
`Connection: close` so each connection carries exactly one request, and closes the client
connection without an answer while the upstream is down (a stopped S3 server). It binds to
127.0.0.1 only and serves at most `max_connections` connections at a time.
"""

from __future__ import annotations

import contextlib
import random
import socket
import socketserver
import threading
from collections import Counter
from urllib.parse import parse_qs, unquote, urlsplit

from spine_pipeline.archive.layout import ARTIFACT_AREA, TABLE_PREFIX

_MAX_HEAD = 64 * 1024
_CHUNK = 64 * 1024
_SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message>"
    b"<RequestId>soak-slowdown</RequestId></Error>"
)


class SlowDownProxy:
    """`endpoint_url` forwards to `upstream`; `rate` of requests get 503 SlowDown instead.

    `counts` tallies `requests`, `slowdown` (injected 503s), `upstream_down` (connections
    closed because the upstream refused) and `forwarded`.
    """

    def __init__(
        self, upstream: str, *, rate: float = 0.05, seed: int = 0, max_connections: int = 64
    ) -> None:
        parts = urlsplit(upstream)
        if parts.hostname is None or parts.port is None:
            raise ValueError("upstream must be http://host:port")
        self.upstream = (parts.hostname, parts.port)
        self.rate = rate
        self.counts: Counter[str] = Counter()
        self._rng = random.Random(f"{seed}:slowdown")
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_connections)
        self._server: socketserver.ThreadingTCPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def endpoint_url(self) -> str:
        if self._server is None:
            raise RuntimeError("proxy is not running")
        host, port = self._server.server_address[:2]
        assert isinstance(host, str)  # AF_INET gives a str; typeshed allows bytes too
        return f"http://{host}:{port}"

    def set_rate(self, rate: float) -> None:
        """Change the share of requests that get 503 (0 turns injection off)."""
        with self._lock:
            self.rate = rate

    def _decide(self) -> bool:
        with self._lock:
            self.counts["requests"] += 1
            hit = self.rate > 0 and self._rng.random() < self.rate
            if hit:
                self.counts["slowdown"] += 1
            return hit

    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def start(self) -> SlowDownProxy:
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with proxy._slots:
                    proxy._handle(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="s3-slowdown-proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._server = None

    def __enter__(self) -> SlowDownProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- one connection, one request ------------------------------------------------------

    def _handle(self, client: socket.socket) -> None:
        client.settimeout(120)
        reader = client.makefile("rb")
        try:
            head = _read_head(reader)
            if head is None:
                return
            request_line, headers = head
            method = request_line.split(b" ", 1)[0].upper()
            names = {k.lower(): v for k, v in headers}
            chunked = b"chunked" in names.get(b"transfer-encoding", b"").lower()
            if not chunked and self._decide():
                self._slow_down(client, reader, method, names)
                return
            if chunked:
                self._count("requests")
            self._count(f"by_kind:{_kind(request_line)}")
            self._forward(client, reader, request_line, headers)
        except (OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                reader.close()
            with contextlib.suppress(OSError):
                client.close()

    def _slow_down(
        self, client: socket.socket, reader: object, method: bytes, names: dict[bytes, bytes]
    ) -> None:
        expect = names.get(b"expect", b"").lower() == b"100-continue"
        length = int(names.get(b"content-length", b"0") or 0)
        if not expect and length:
            _drain(reader, length)
        body = b"" if method == b"HEAD" else _SLOWDOWN_BODY
        response = (
            b"HTTP/1.1 503 Slow Down\r\n"
            b"Content-Type: application/xml\r\n"
            b"Retry-After: 0\r\n"
            + f"Content-Length: {len(_SLOWDOWN_BODY)}\r\n".encode()
            + b"Connection: close\r\n\r\n"
            + body
        )
        client.sendall(response)

    def _forward(
        self,
        client: socket.socket,
        reader: object,
        request_line: bytes,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            self._count("upstream_down")
            return  # the client sees a closed connection, as with a dead server
        self._count("forwarded")
        upstream.settimeout(120)
        kept = [(k, v) for k, v in headers if k.lower() not in (b"connection", b"keep-alive")]
        head = request_line + b"\r\n"
        head += b"".join(k + b": " + v + b"\r\n" for k, v in kept)
        head += b"Connection: close\r\n\r\n"
        with upstream:
            upstream.sendall(head)
            pump = threading.Thread(
                target=_copy_to_socket, args=(reader, upstream), daemon=True, name="s3-proxy-up"
            )
            pump.start()
            while True:
                data = upstream.recv(_CHUNK)
                if not data:
                    break
                client.sendall(data)
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_WR)


def _kind(request_line: bytes) -> str:
    """`METHOD area` of an S3 request, e.g. `GET ledger/tracked` or `LIST manifests`."""
    parts = request_line.decode("latin-1").split(" ")
    method, target = parts[0], parts[1] if len(parts) > 1 else "/"
    url = urlsplit(target)
    query = parse_qs(url.query)
    segments = [unquote(x) for x in url.path.split("/") if x]
    if "list-type" in query or (method == "GET" and len(segments) <= 1):
        prefix = query.get("prefix", [""])[0].split("/")
        return "LIST " + "/".join(prefix[1:3])
    area = "/".join(segments[2:4]) if len(segments) > 3 else "/".join(segments[2:3])
    if area.startswith((TABLE_PREFIX, ARTIFACT_AREA)):
        area = area.split("/")[0]
    return f"{method} {area}"


def _read_head(reader: object) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
    """The request line and headers, or None if the client closed first."""
    lines: list[bytes] = []
    size = 0
    while True:
        line = reader.readline(_MAX_HEAD)  # type: ignore[attr-defined]
        if not line:
            return None
        size += len(line)
        if size > _MAX_HEAD:
            raise ValueError("request head too large")
        if line in (b"\r\n", b"\n"):
            break
        lines.append(line.rstrip(b"\r\n"))
    if not lines:
        return None
    headers = []
    for raw in lines[1:]:
        name, _, value = raw.partition(b":")
        headers.append((name.strip(), value.strip()))
    return lines[0], headers


def _drain(reader: object, length: int) -> None:
    while length > 0:
        data = reader.read(min(length, _CHUNK))  # type: ignore[attr-defined]
        if not data:
            return
        length -= len(data)


def _copy_to_socket(reader: object, sock: socket.socket) -> None:
    """Client to upstream: buffered bytes first, then whatever else the client sends."""
    with contextlib.suppress(OSError, ValueError):
        while True:
            data = reader.read1(_CHUNK)  # type: ignore[attr-defined]
            if not data:
                break
            sock.sendall(data)
