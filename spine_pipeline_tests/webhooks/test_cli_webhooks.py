"""`spine-pipeline webhooks serve`: refuses to start without a secret, and as a real process
killed mid-stream (SIGKILL) and restarted, loses no delivery it acknowledged."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from spine_pipeline.archive.stores import open_store
from spine_pipeline.cli import main
from spine_pipeline.webhooks.inbox import Inbox
from spine_pipeline_tests.fixtures.ports import free_port
from spine_pipeline_tests.webhooks.helpers import SECRET, body_of, entry_keys, envelope, headers_for


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "error: SPINE_WEBHOOK_SECRET is not set; the receiver cannot verify deliveries"),
        (
            {"SPINE_WEBHOOK_SECRET": "whsec_ok,whsec bad-CANARY"},
            "error: SPINE_WEBHOOK_SECRET must be one or more secrets separated by commas "
            "(printable ASCII, no spaces, none empty); value not shown",
        ),
        (
            {"SPINE_WEBHOOK_SECRET": "whsec_ok", "SPINE_TRACK_FROM_WEBHOOKS": "yes"},
            "error: SPINE_TRACK_FROM_WEBHOOKS must be 0 or 1, got 'yes'",
        ),
    ],
)
def test_serve_refuses_to_start_without_a_usable_secret(tmp_path: Path, env, message) -> None:
    env = {"SPINE_ARCHIVE_URI": str(tmp_path / "archive"), "SPINE_WEBHOOK_SECRET": "", **env}
    result = CliRunner().invoke(main, ["webhooks", "serve", "--port", "0"], env=env)
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [message]
    assert "CANARY" not in result.output
    assert not (tmp_path / "archive").exists() or not any((tmp_path / "archive").iterdir())


def test_serve_reports_a_port_in_use_on_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = {"SPINE_ARCHIVE_URI": str(tmp_path / "archive"), "SPINE_WEBHOOK_SECRET": SECRET}
        result = CliRunner().invoke(main, ["webhooks", "serve", "--port", str(port)], env=env)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


class Receiver:
    """`spine-pipeline webhooks serve` as a child process (its output in a file)."""

    def __init__(self, port: int, env: dict[str, str], log: Path) -> None:
        self.port, self.env, self.log = port, env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "spine_pipeline.cli",
                    "webhooks",
                    "serve",
                    "--port",
                    str(self.port),
                ],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise AssertionError("receiver did not start:\n" + self.log.read_text())

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def test_a_receiver_killed_mid_stream_loses_nothing_it_acknowledged(
    tmp_path: Path, archive_uri: str
) -> None:
    env = {
        **os.environ,
        "SPINE_ARCHIVE_URI": archive_uri,
        "SPINE_WEBHOOK_SECRET": f"whsec_previous,{SECRET}",
    }
    env.pop("SPINE_API_KEY", None)
    port = free_port()
    receiver = Receiver(port, env, tmp_path / "receiver.log")
    receiver.start()
    docs = [envelope("run.completed", f"run-{i:03d}") for i in range(40)]
    acked: list[str] = []
    refused: list[int] = []
    url = f"http://127.0.0.1:{port}/webhooks/spine"

    def sender() -> None:
        # Like Spine: retry each delivery (same id, fresh signature) until it gets a 2xx.
        with httpx.Client(timeout=5) as client:
            for doc in docs:
                body = body_of(doc)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    try:
                        response = client.post(
                            url, content=body, headers=headers_for(body, doc=doc)
                        )
                    except httpx.HTTPError:
                        time.sleep(0.02)
                        continue
                    if 200 <= response.status_code < 300:
                        acked.append(doc["id"])
                        break
                    refused.append(response.status_code)
                    time.sleep(0.02)

    thread = threading.Thread(target=sender)
    try:
        thread.start()
        for kills in range(2):
            while len(acked) < 10 * (kills + 1):
                assert thread.is_alive()
                time.sleep(0.005)
            receiver.kill()
            time.sleep(0.2)  # deliveries fail meanwhile; the sender keeps retrying
            receiver.start()
        thread.join(120)
    finally:
        receiver.kill()
    assert acked == [d["id"] for d in docs]
    assert not [s for s in refused if s != 503]
    store = open_store(archive_uri)
    events, _ = Inbox(store).since(None)
    assert [e.event_id for e in events] == acked  # each once, in order
    assert len(entry_keys(store)) == len(docs)
    assert not any(e.duplicate for e in events)
    log = (tmp_path / "receiver.log").read_text()
    assert "webhook receiver listening on" in log
    assert SECRET not in log and "whsec_previous" not in log


def test_the_secrets_are_parsed_in_order_and_kept_out_of_repr() -> None:
    from spine_pipeline.settings import Settings

    settings = Settings.from_env(
        {"SPINE_WEBHOOK_SECRET": "whsec_NEWCANARY, whsec_OLDCANARY,whsec_NEWCANARY"}
    )
    assert settings.webhook_secrets == ("whsec_NEWCANARY", "whsec_OLDCANARY")
    assert "CANARY" not in repr(settings) and "CANARY" not in str(settings)
    assert Settings.from_env({"SPINE_TRACK_FROM_WEBHOOKS": "0"}).track_from_webhooks is False
    assert Settings.from_env({}).webhook_secrets == ()
