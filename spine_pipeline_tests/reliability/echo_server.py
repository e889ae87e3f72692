"""A loopback Spine that echoes the API key back in everything but its JSON data.

Hostile (or broken) servers and proxies echo request headers: here the key comes back in
`X-Request-ID`, in the HTTP status line's reason phrase and in every error body. Each run
id chooses what its GET answers (`ok_runs` get a completed run with one artifact; any
other id the `run_status` error), canvases answer `canvas_status` and downloads
`download_status`, so one server can drive a run that fails, one archived with
`fetch_errors` and `download_error`, and a submit whose outcome is unknown.

It serves 127.0.0.1 only, in a daemon thread, and answers `Retry-After: 0` so the client's
retries cost no time. The key it echoes is given to it (like the simulator's), so it works
whatever shape the key has.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class EchoConfig:
    key: str
    ok_runs: set[str] = field(default_factory=set)
    run_status: int = 503
    create_status: int = 500
    canvas_status: int = 404
    download_status: int = 410


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the secret scans read this process's stderr."""

    def _send(self, status: int, body: dict[str, Any]) -> None:
        key = self.server.config.key
        data = json.dumps(body).encode()
        self.send_response(status, f"Echo {key}")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Request-ID", key)
        self.send_header("X-Echo-Api-Key", self.headers.get("X-API-KEY", ""))
        if status == 429 or status >= 500:
            self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int) -> None:
        key = self.server.config.key
        self._send(status, {"success": False, "error": f"rejected; you sent X-API-KEY: {key}"})

    def _run(self, run_id: str) -> dict[str, Any]:
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        return {
            "run_id": run_id,
            "status": "completed",
            "canvas_id": f"canvas-{run_id[:8]}",
            "duration_ms": 1000,
            "result": {
                "final_output": "done",
                "artifacts": [
                    {
                        "id": "art-1",
                        "type": "file",
                        "name": "report.pdf",
                        "download_url": f"{base}/files/{run_id}",
                        "size_bytes": 10,
                    }
                ],
            },
            "metadata": {"credits_consumed": 3, "template_used": "report"},
        }

    def do_GET(self) -> None:
        config = self.server.config
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        if parts[:2] == ["v1", "run"] and len(parts) == 3:
            if parts[2] in config.ok_runs:
                self._send(200, {"success": True, "data": self._run(parts[2])})
            else:
                self._error(config.run_status)
        elif parts[:2] == ["v1", "canvas"]:
            self._error(config.canvas_status)
        elif parts[0] == "files":
            self._error(config.download_status)
        else:
            self._error(404)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(min(length, 1 << 20))
        self._error(self.server.config.create_status)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, config: EchoConfig) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.config = config

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Silent: a client closing a kept-alive connection is not news (stderr is scanned)."""


@dataclass
class EchoServer:
    config: EchoConfig
    base_url: str


@contextmanager
def echo_server(config: EchoConfig) -> Iterator[EchoServer]:
    """Serve `config` on 127.0.0.1 (a free port) until the block ends."""
    server = _Server(config)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield EchoServer(config, f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
