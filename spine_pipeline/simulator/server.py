"""Run the simulator with uvicorn: in a background thread (tests, demo) or the foreground (CLI)."""

from __future__ import annotations

import logging
import signal
import socket
from types import TracebackType

import uvicorn

from spine_pipeline.uvicorn_thread import UvicornThread, bind

from .app import build_app
from .config import SimulatorConfig, redact_url
from .webhooks import WebhookSender
from .world import World

log = logging.getLogger("spine_pipeline.simulator")

HOST = "127.0.0.1"


def _bind(port: int) -> socket.socket:
    return bind(HOST, port, backlog=4096)


def _uvicorn_config(app: object) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=HOST,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_keep_alive=30,
        timeout_graceful_shutdown=2,
        backlog=4096,
    )


class SimulatorServer:
    """A simulator on 127.0.0.1 served by uvicorn in a daemon thread.

    Usage: ``with SimulatorServer(config, port=0) as sim: ...`` (port 0 picks a free port).
    """

    def __init__(self, config: SimulatorConfig | None = None, port: int = 0) -> None:
        self.config = config or SimulatorConfig()
        self.world = World(self.config)
        self.app = build_app(self.world)
        self._requested_port = port
        self.port: int | None = None
        self._runner: UvicornThread | None = None
        self._sock: socket.socket | None = None
        self.webhooks: WebhookSender | None = None
        """The webhook sender when ``webhook_url`` is configured (its records outlive stop)."""

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no ``/v1``: the SDK appends it)."""
        if self.port is None:
            raise RuntimeError("simulator is not running")
        return f"http://{HOST}:{self.port}"

    @property
    def api_key(self) -> str:
        """The only key this simulator accepts."""
        return self.config.api_key

    def set_faults(self, spec: str) -> None:
        """Replace the active fault rules (raises ValueError on a bad spec)."""
        self.world.faults.set_spec(spec)

    def start(self) -> SimulatorServer:
        """Bind, start serving in a background thread and wait until requests are accepted."""
        if self._runner is not None:
            return self
        self._sock = _bind(self._requested_port)
        self.port = self._sock.getsockname()[1]
        self.world.base_url = self.base_url
        try:
            _start_webhooks(self)
        except BaseException:
            self._cleanup()
            raise
        assert self._sock is not None
        self._runner = UvicornThread(
            _uvicorn_config(self.app), self._sock, name=f"spine-simulator-{self.port}"
        )
        try:
            self._runner.start("simulator")
        except BaseException:
            self._cleanup()
            raise
        log.info("Spine simulator listening on %s (seed %s)", self.base_url, self.config.seed)
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        if self._runner is not None:
            self._runner.stop()
        self._cleanup()

    def _stop_webhooks(self) -> None:
        if self.webhooks is not None:
            self.webhooks.stop()

    def _cleanup(self) -> None:
        self._stop_webhooks()
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._runner = None

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.base_url if self.port else "stopped"
        return f"<SimulatorServer {where} seed={self.config.seed}>"


def _start_webhooks(server: SimulatorServer) -> None:
    """Start the webhook sender before requests are served, so no ``run.started`` is missed."""
    if not server.config.webhook_url:
        return
    if server.webhooks is None:
        server.webhooks = WebhookSender(server.world)
        server.world.webhooks = server.webhooks
    server.webhooks.start()


def _stoppable() -> None:
    """Let SIGTERM and SIGINT stop this process even if its parent ignored or blocked them.

    Both an ignored disposition and a blocked mask survive exec, and uvicorn only installs
    its handlers once it runs: until then a `terminate()` could be lost.
    """
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def serve_forever(config: SimulatorConfig | None = None, port: int = 8765) -> None:
    """Serve in the foreground until Ctrl+C (what ``spine-pipeline simulator`` calls)."""
    config = config or SimulatorConfig()
    _stoppable()
    world = World(config)
    app = build_app(world)
    sock = _bind(port)
    bound = sock.getsockname()[1]
    world.base_url = f"http://{HOST}:{bound}"
    sender: WebhookSender | None = None
    if config.webhook_url:
        sender = WebhookSender(world).start()
        world.webhooks = sender
    print(
        f"Spine simulator listening on {world.base_url} "
        f"(API key: {config.api_key}, seed {config.seed})",
        flush=True,
    )
    if sender is not None:
        print(f"Sending signed webhooks to {redact_url(config.webhook_url)}", flush=True)
    try:
        uvicorn.Server(_uvicorn_config(app)).run(sockets=[sock])
    finally:
        sock.close()
        if sender is not None:
            sender.stop()
