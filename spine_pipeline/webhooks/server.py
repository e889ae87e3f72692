"""The receiver under uvicorn: in the foreground (`spine-pipeline webhooks serve`) or in a
thread (`WebhookServer`: tests, or a command that runs it beside others, as `dev` will).

uvicorn runs the h11 protocol, not httptools: h11 refuses a request head over
`MAX_HEAD_BYTES` (httptools buffered a 200 MiB header line whole), and it enforces
`Content-Length` framing, so the app's body cap is the only other size check needed.
Access logs stay off: the app logs each delivery's outcome itself, without headers.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from types import TracebackType

import uvicorn
from starlette.types import ASGIApp

from spine_pipeline.archive.stores import ObjectStore
from spine_pipeline.uvicorn_thread import UvicornThread, bind
from spine_pipeline.webhooks.app import WEBHOOK_PATH, create_app

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "WebhookServer", "serve"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
#: Longest request line plus headers: far above a delivery's (a few hundred bytes).
MAX_HEAD_BYTES = 16 * 1024


def _bind(host: str, port: int) -> socket.socket:
    return bind(host, port, backlog=1024)


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
        self._runner: UvicornThread | None = None
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
        if self._runner is not None:
            return self
        self._sock = _bind(self.host, self._requested_port)
        self.port = self._sock.getsockname()[1]
        self._runner = UvicornThread(
            _config(self.app, self.host), self._sock, name=f"spine-webhooks-{self.port}"
        )
        try:
            self._runner.start("webhook receiver")
        except BaseException:
            self._cleanup()
            raise
        return self

    def stop(self) -> None:
        """Stop serving (deliveries in flight finish first) and wait for the thread."""
        if self._runner is not None:
            self._runner.stop()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._runner = None

    def __enter__(self) -> WebhookServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
