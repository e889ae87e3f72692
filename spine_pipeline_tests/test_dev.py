"""`spine-pipeline dev` with a webhook secret: the receiver runs, the simulator delivers to it,
and both are gone when `dagster dev` ends (its process replaced by a stand-in)."""

import re
import socket
import time
from pathlib import Path

import pytest

from spine_pipeline import dev
from spine_pipeline.archive.stores import open_store
from spine_pipeline.spine import SpineClient
from spine_pipeline.webhooks.inbox import Inbox

REPO = Path(__file__).resolve().parents[1]
SECRET = "whsec_dev_session"


@pytest.fixture
def dev_env(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)  # workspace.yaml
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    monkeypatch.setenv("SPINE_ARCHIVE_URI", str(tmp_path / "archive"))
    monkeypatch.delenv("SPINE_API_KEY", raising=False)
    monkeypatch.setattr(dev, "SIMULATOR_PORT", 0)  # free ports: tests run side by side
    monkeypatch.setattr(dev, "WEBHOOK_PORT", 0)
    return tmp_path / "archive"


def _stored_types(archive, run_id):
    events, _ = Inbox(open_store(str(archive))).since(None)
    return {e.type for e in events if e.run_id == run_id}


def test_dev_runs_the_receiver_and_its_simulator_delivers_to_it(dev_env, monkeypatch):
    monkeypatch.setenv("SPINE_WEBHOOK_SECRET", SECRET)
    lines, seen = [], {}

    def dagster_dev(command, env):
        with SpineClient(api_key=env["SPINE_API_KEY"], base_url=env["SPINE_BASE_URL"]) as c:
            run_id = c.create_run("[scenario:completed] delivered in a dev session").run_id
        deadline = time.monotonic() + 30
        while "run.started" not in _stored_types(dev_env, run_id):
            assert time.monotonic() < deadline, "the run.started delivery never reached the inbox"
            time.sleep(0.05)
        seen["ok"] = True
        return 0

    monkeypatch.setattr(dev, "run_child", dagster_dev)
    assert dev.run_dev(3000, say=lines.append) == 0
    assert seen == {"ok": True}
    (url,) = [m.group(1) for line in lines if (m := re.search(r"receiver: (\S+)", line))]
    assert any(f"sending signed webhooks to {url}" in line for line in lines)
    assert SECRET not in "\n".join(lines)
    host, port = re.match(r"http://([\d.]+):(\d+)/webhooks/spine$", url).groups()
    with pytest.raises(OSError):  # stopped with the session
        socket.create_connection((host, int(port)), timeout=2).close()


def test_dev_without_a_secret_runs_no_receiver(dev_env, monkeypatch):
    monkeypatch.delenv("SPINE_WEBHOOK_SECRET", raising=False)
    lines = []
    monkeypatch.setattr(dev, "run_child", lambda command, env: 0)
    assert dev.run_dev(3000, say=lines.append) == 0
    assert not [line for line in lines if "webhook" in line]
    assert any(line.startswith("simulator: ") for line in lines)
