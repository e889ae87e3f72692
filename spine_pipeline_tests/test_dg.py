"""The `dg` CLI on this project (`[tool.dg]` in pyproject.toml), and `spine-pipeline dev`
(which runs `dg dev`) stopping every process it started when it is sent SIGTERM."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spine_pipeline_tests.fixtures.ports import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPINE_", "DAGSTER_"))}
    env.update(
        {
            "VIRTUAL_ENV": sys.prefix,
            "DAGSTER_HOME": str(tmp_path / "dagster_home"),
            "SPINE_ARCHIVE_URI": str(tmp_path / "archive"),
            "SPINE_AUDIT_DB": str(tmp_path / "audit.duckdb"),
            # Real-Spine mode, so `dev` starts no simulator on its fixed port; nothing is polled.
            "SPINE_API_KEY": "sk_spine_dev_probe",
            "SPINE_BASE_URL": "http://127.0.0.1:9",
        }
    )
    (tmp_path / "dagster_home").mkdir()
    return env


def _dg(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "dg"), *args],
        cwd=REPO,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_dg_check_defs(tmp_path):
    done = _dg(tmp_path, "check", "defs")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "All definitions loaded successfully" in out
    assert "virtual environment does not match" not in out


def test_dg_list_defs(tmp_path):
    done = _dg(tmp_path, "list", "defs", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    listed = done.stdout
    for name in ("archive_batch", "audit_database", "spine_poll_sensor", "archive_spine_runs"):
        assert name in listed, f"{name} missing from dg list defs"


def _processes_with(marker: str) -> dict[int, str]:
    """pid -> command line of every process whose environment holds `marker`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() not in (entry / "environ").read_bytes():
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            found[int(entry.name)] = cmd.strip()
    return found


@contextlib.contextmanager
def _reaped(proc: subprocess.Popen[bytes], marker: str) -> Iterator[None]:
    """SIGKILL `proc` and every process whose environment holds `marker` when the block ends.

    Pass or fail: a test that stops early must not leave a `dagster dev` tree or a
    `sleep 300` running on a machine other test runs share.
    """
    try:
        yield
    finally:
        for pid in _processes_with(marker):
            if pid != os.getpid():
                with contextlib.suppress(ProcessLookupError):  # exited since it was listed
                    os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


@pytest.mark.timeout(300)
def test_dev_sigterm_leaves_no_process_behind(tmp_path):
    env = _env(tmp_path)
    marker = f"DAGSTER_HOME={env['DAGSTER_HOME']}"
    port = free_port()
    log = (tmp_path / "dev.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "spine-pipeline"), "dev", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    with _reaped(proc, marker):
        deadline = time.monotonic() + 240
        while True:
            children = {pid: cmd for pid, cmd in _processes_with(marker).items() if pid != proc.pid}
            # dg dev -> dagster dev -> webserver and daemon: the whole tree is up.
            if any("webserver" in c for c in children.values()) and any(
                "daemon" in c for c in children.values()
            ):
                break
            assert proc.poll() is None, (tmp_path / "dev.log").read_text(errors="replace")
            assert time.monotonic() < deadline, f"dg dev's children never all started: {children}"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        deadline = time.monotonic() + 5  # reaped by their parents a moment after
        while (left := _processes_with(marker)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, f"outlived spine-pipeline dev: {left}"


def test_run_child_kills_a_group_that_ignores_sigterm(tmp_path):
    """The grace period ends in SIGKILL for a child (and its children) deaf to SIGTERM."""
    marker = f"SPINE_DEV_PROBE={tmp_path}"
    script = (
        "import os, sys, spine_pipeline.dev as d\n"
        "d.STOP_GRACE_SECONDS = 1.0\n"
        "print('ready', flush=True)\n"
        "sys.exit(d.run_child(['sh', '-c', 'trap \"\" TERM; sleep 300 & sleep 300; wait'],"
        " dict(os.environ)))\n"
    )
    env = {**os.environ, "SPINE_DEV_PROBE": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, cwd=REPO
    )
    with _reaped(proc, marker):
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 30
        while len([c for c in _processes_with(marker).values() if "sleep" in c]) < 2:
            assert time.monotonic() < deadline, "the child's sleeps never started"
            time.sleep(0.1)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert time.monotonic() - started < 15
        assert not [c for c in _processes_with(marker).values() if "sleep" in c]


def test_run_child_forwards_a_sigterm_that_arrives_while_the_child_starts(tmp_path):
    """A signal between "start the child" and "child started" must not orphan the child.

    The SIGTERM is sent from inside Popen, before the child exists: the old order (start the
    child, then install the handlers) let it kill the parent with the child still running.
    """
    marker = f"SPINE_DEV_PROBE={tmp_path}"
    script = (
        "import os, signal, subprocess, sys, spine_pipeline.dev as d\n"
        "real = subprocess.Popen\n"
        "def popen(*a, **kw):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    return real(*a, **kw)\n"
        "d.subprocess.Popen = popen\n"
        "d.STOP_GRACE_SECONDS = 1.0\n"
        "sys.exit(d.run_child(['sh', '-c', 'sleep 300'], dict(os.environ)))\n"
    )
    env = {**os.environ, "SPINE_DEV_PROBE": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=REPO)
    with _reaped(proc, marker):
        assert proc.wait(timeout=60) == 0
        assert not [c for c in _processes_with(marker).values() if "sleep" in c]
