"""One uvicorn server on a pre-bound socket, in a daemon thread: the simulator and the webhook
receiver both run this way in tests, the demo and `dev`.

Why a module: starting uvicorn off the main thread has a few traps (no signal handlers off
the main thread, `started` is the only readiness signal, a failed bind or a crash inside the
thread must surface to the caller, a stuck shutdown must be forced), and two copies of that
dance drift. Binding the socket first (port 0 picks a free port) means the port is known
before the thread starts and no other process can take it in between.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

__all__ = ["UvicornThread", "bind"]

START_SECONDS = 15.0


def bind(host: str, port: int, *, backlog: int) -> socket.socket:
    """A listening, non-blocking TCP socket on `host:port` (IPv6 when `host` has a colon)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class UvicornThread:
    """Serve `config` on `sock` in a daemon thread named `name`; the socket stays the
    caller's (closed by the caller after `stop`)."""

    def __init__(self, config: uvicorn.Config, sock: socket.socket, name: str) -> None:
        self._server = uvicorn.Server(config)
        self._sock = sock
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # surfaced to start()
            self._errors.append(exc)

    def start(self, what: str) -> None:
        """Start and wait until requests are accepted; `RuntimeError` naming `what` if the
        server dies or does not start in time (it is stopped first)."""
        self._thread.start()
        deadline = time.monotonic() + START_SECONDS
        while not self._server.started:
            if self._errors or not self._thread.is_alive():
                reason = self._errors[0] if self._errors else "thread exited"
                raise RuntimeError(f"{what} failed to start: {reason}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{what} did not start within {START_SECONDS:g} s")
            time.sleep(0.005)

    def stop(self) -> None:
        """Stop serving (requests in flight get uvicorn's graceful shutdown), then force."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(timeout=5)
