"""The receiver under uvicorn: in the foreground (`spine-pipeline webhooks serve`) or in a
thread (`WebhookServer`: tests, or a command that runs it beside others, as `dev` will).

uvicorn runs the h11 protocol, not httptools: h11 refuses a request head over
`MAX_HEAD_BYTES` (httptools buffered a 200 MiB header line whole), and it enforces
`Content-Length` framing, so the app's body cap is the only other size check needed.
Access logs stay off: the app logs each delivery's outcome itself, without headers.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp

from spine_pipeline.archive.stores import ObjectStore
from spine_pipeline.webhooks.app import WEBHOOK_PATH, create_app

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "WebhookServer", "serve"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
#: Longest request line plus headers: far above a delivery's (a few hundred bytes).
MAX_HEAD_BYTES = 16 * 1024


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _config(app: ASGIApp, host: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        http="h11",  # see the module docstring: a bounded request head
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_keep_alive=30,
        timeout_graceful_shutdown=5,
    )


def serve(
    store: ObjectStore,
    secrets: Sequence[str],
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    say: Callable[[str], None] = print,
) -> None:
    """Serve the receiver in the foreground until SIGINT/SIGTERM (uvicorn handles both,
    finishing the deliveries in flight: an event is stored before its 2xx, so stopping
    never loses one that was acknowledged)."""
    app = create_app(store, secrets)
    sock = _bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    say(
        f"webhook receiver listening on http://{shown}:{bound_port}{WEBHOOK_PATH} "
        f"({len(secrets)} secret(s)), storing in {store.uri}"
    )
    try:
        uvicorn.Server(_config(app, host)).run(sockets=[sock])
    finally:
        sock.close()


class WebhookServer:
    """The receiver (or any ASGI app) on loopback in a daemon thread; port 0 picks a free one.

    `with WebhookServer(create_app(store, secrets)) as server: post(server.url, ...)`.
    """

    def __init__(self, app: ASGIApp, *, host: str = DEFAULT_HOST, port: int = 0) -> None:
        self.app = app
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("webhook receiver is not running")
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The delivery URL (`.../webhooks/spine`)."""
        return f"{self.base_url}{WEBHOOK_PATH}"

    def start(self) -> WebhookServer:
        if self._thread is not None:
            return self
        self._sock = _bind(self.host, self._requested_port)
        self.port = self._sock.getsockname()[1]
        server = uvicorn.Server(_config(self.app, self.host))
        self._server = server
        errors: list[BaseException] = []
        sock = self._sock

        def run() -> None:
            try:
                server.run(sockets=[sock])
            except BaseException as exc:  # surfaced to start() below
                errors.append(exc)

        self._thread = threading.Thread(target=run, name=f"spine-webhooks-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            if errors or not self._thread.is_alive():
                self._cleanup()
                raise RuntimeError(f"webhook receiver failed to start: {errors[:1] or 'exited'}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("webhook receiver did not start within 15 s")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        """Stop serving (deliveries in flight finish first) and wait for the thread."""
        server, thread = self._server, self._thread
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout=10)
            if thread.is_alive() and server is not None:
                server.force_exit = True
                thread.join(timeout=5)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._server = None
        self._thread = None

    def __enter__(self) -> WebhookServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
