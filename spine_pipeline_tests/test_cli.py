"""The `spine-pipeline` command: outputs, exit codes, and one-line errors."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from spine_pipeline.archive.layout import manifest_key, table_key
from spine_pipeline.cli import main


@pytest.fixture
def cli(simulator, tmp_path, monkeypatch):
    monkeypatch.setenv("SPINE_API_KEY", simulator.api_key)
    monkeypatch.setenv("SPINE_BASE_URL", simulator.base_url)
    monkeypatch.setenv("SPINE_ARCHIVE_URI", str(tmp_path / "archive"))
    monkeypatch.setenv("SPINE_AUDIT_DB", str(tmp_path / "audit.duckdb"))
    runner = CliRunner()

    def run(*args):
        return runner.invoke(main, list(args), catch_exceptions=False)

    return run


def _one_error_line(result):
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert lines, result.stderr
    assert "Traceback" not in result.stderr
    return lines


def test_submit_track_archive_status_verify(cli, simulator, tmp_path):
    attached = tmp_path / "notes.md"
    attached.write_text("# notes\n")
    submitted = cli(
        "submit",
        "--prompt",
        "[scenario:completed] CLI run",
        "--template",
        "memo",
        "--blocks",
        '["memo-block", "file-block"]',
        "--file",
        str(attached),
    )
    assert submitted.exit_code == 0, submitted.stderr
    run_id = submitted.stdout.strip()
    assert run_id in simulator.world.run_ids()
    assert cli("track", run_id).stdout.strip() == f"already tracked {run_id}"
    slow = cli("submit", "--prompt", "[scenario:slow] never ends").stdout.strip()

    archived = cli("archive", run_id, slow, "--wait", "--timeout", "3")
    assert archived.exit_code == 1
    assert f"archived {run_id} status=completed manifest=1" in archived.stdout
    (line,) = [x for x in _one_error_line(archived) if slow in x]
    assert "not terminal" in line

    again = cli("archive", run_id)
    assert again.exit_code == 0 and f"already_archived {run_id}" in again.stdout

    status = cli("status")
    assert status.exit_code == 0
    rows = {line.split()[0]: line.split()[1] for line in status.stdout.splitlines()[1:]}
    assert rows[run_id] == "archived" and rows[slow] == "in_flight"

    verified = cli("verify")
    assert verified.exit_code == 0 and verified.stdout.strip().endswith("OK")


def test_verify_fails_after_tampering_and_names_the_object(cli, tmp_path):
    run_id = cli("submit", "--prompt", "[scenario:completed] tamper").stdout.strip()
    assert cli("archive", run_id, "--wait", "--timeout", "20").exit_code == 0
    manifest = tmp_path / "archive" / manifest_key(1)
    manifest.chmod(0o600)
    manifest.write_bytes(manifest.read_bytes().replace(b'"seq": 1', b'"seq": 1 '))
    result = cli("verify")
    assert result.exit_code == 1
    assert manifest_key(1) in result.stderr


def test_gc_removes_only_old_uncommitted_files(cli, tmp_path):
    from spine_pipeline.archive.stores import open_store

    store = open_store(str(tmp_path / "archive"))
    orphan = table_key("runs", "2020-01-01", "orphan")
    store.put_bytes(orphan, b"uncommitted")
    young = cli("gc", "--dry-run")
    assert "1 uncommitted object(s) younger than the grace period kept" in young.stdout
    old = cli("gc", "--grace-hours", "0")
    assert f"removed {orphan}" in old.stdout
    assert not store.exists(orphan)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["submit", "--prompt", "x", "--template", "nope"], "Invalid template: nope"),
        (["archive", "00000000-0000-4000-8000-000000000000"], "Run not found"),
        (["submit", "--prompt", "x", "--file", "/no/such/file"], "cannot read upload file"),
    ],
)
def test_expected_failures_are_one_line(cli, args, needle):
    result = cli(*args)
    assert result.exit_code in (1, 2)
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_key_and_unreachable_endpoint(cli, monkeypatch):
    monkeypatch.setenv("SPINE_API_KEY", "sk_spine_wrong_key_123")
    result = cli("submit", "--prompt", "x")
    assert result.exit_code == 1
    (line,) = _one_error_line(result)
    assert "sk_spine_wrong_key_123" not in line
    monkeypatch.setenv("SPINE_BASE_URL", "http://127.0.0.1:9")
    result = cli("submit", "--prompt", "x")
    assert result.exit_code == 1 and "cannot reach Spine" in _one_error_line(result)[0]
    monkeypatch.delenv("SPINE_API_KEY")
    result = cli("submit", "--prompt", "x")
    assert result.exit_code == 2 and "SPINE_API_KEY is not set" in result.stderr


def test_bad_usage_exits_2(cli):
    assert cli("archive").exit_code == 2
    assert cli("submit", "--prompt", "x", "--blocks", "[oops").exit_code == 2
    assert cli("simulator", "--faults", "get:boom").exit_code == 2
    assert cli("simulator", "--run-seconds", "9:1").exit_code == 2
    assert cli("no-such-command").exit_code == 2


def test_simulator_command_serves_on_loopback():
    proc = subprocess.Popen(
        [sys.executable, "-m", "spine_pipeline.cli", "simulator", "--port", "0", "--seed", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert "Spine simulator listening on http://127.0.0.1:" in line
        assert "sk_spine_simulator" in line and "seed 3" in line
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            wchan = Path(f"/proc/{proc.pid}/wchan").read_text()
            proc.kill()
            signals = [ln for ln in status.splitlines() if ln.startswith(("State", "Sig"))]
            raise AssertionError(f"ignored SIGTERM: {signals}, wchan {wchan}") from None
    time.sleep(0.1)


# -- the machine's conditions: one line, no traceback, no secret (the traceback is in --debug) --

RUN_ID = "00000000-0000-4000-8000-0000000000aa"
_KEY = "odd-cli-errors-KEY-5c1d9e"  # registered by the client, like any configured key


@pytest.fixture
def offline_cli(tmp_path, monkeypatch):
    """The CLI on a local archive; Spine is never asked (the URL would refuse anyway)."""
    import logging

    from spine_pipeline.spine.redact import register_secret

    register_secret(_KEY)
    monkeypatch.setenv("SPINE_API_KEY", _KEY)
    monkeypatch.setenv("SPINE_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("SPINE_ARCHIVE_URI", str(tmp_path / "archive"))
    monkeypatch.setenv("SPINE_AUDIT_DB", str(tmp_path / "audit.duckdb"))
    product = logging.getLogger("spine_pipeline")
    handlers, level = list(product.handlers), product.level
    runner = CliRunner()
    yield lambda *args: runner.invoke(main, list(args), catch_exceptions=False)
    product.handlers[:] = handlers  # --debug installs a handler: leave none behind
    product.setLevel(level)


def _full(errno_code):
    import os

    def raiser(*args, **kwargs):
        raise OSError(errno_code, os.strerror(errno_code), f"/archive/{_KEY}/ledger")

    return raiser


@pytest.mark.parametrize("code", ["ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM"])
def test_a_failed_store_write_is_one_line_without_secret(offline_cli, monkeypatch, code):
    import errno
    import os

    from spine_pipeline.archive.stores.local import LocalStore

    monkeypatch.setattr(LocalStore, "put_bytes", _full(getattr(errno, code)))
    result = offline_cli("track", RUN_ID)
    assert result.exit_code == 1
    (line,) = _one_error_line(result)
    assert os.strerror(getattr(errno, code)) in line and "[Errno" not in line
    assert _KEY not in result.output and "***" in line


def test_disk_full_for_the_archive_workdir_is_one_line(offline_cli, monkeypatch):
    import errno

    from spine_pipeline.archive import archiver

    monkeypatch.setattr(archiver.tempfile, "TemporaryDirectory", _full(errno.ENOSPC))
    result = offline_cli("archive", RUN_ID)
    assert result.exit_code == 1
    assert "No space left on device" in _one_error_line(result)[0]


def test_permission_denied_on_the_archive_root_is_one_line(offline_cli, monkeypatch, tmp_path):
    import errno
    import os

    real_mkdir = os.mkdir

    def denied(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "archive")):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", denied)
    result = offline_cli("status")
    assert result.exit_code == 1
    assert "Permission denied" in _one_error_line(result)[0]


def test_an_unreachable_store_is_one_line(offline_cli, monkeypatch):
    import errno

    from spine_pipeline.archive.ledger import Ledger

    def refused(*args, **kwargs):
        raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")

    monkeypatch.setattr(Ledger, "track", refused)
    result = offline_cli("track", RUN_ID)
    assert result.exit_code == 1
    assert "Connection refused" in _one_error_line(result)[0]


def test_debug_prints_the_traceback_redacted(offline_cli, monkeypatch):
    import errno

    from spine_pipeline.archive.stores.local import LocalStore

    monkeypatch.setattr(LocalStore, "put_bytes", _full(errno.ENOSPC))
    result = offline_cli("--debug", "track", RUN_ID)
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and "OSError: [Errno" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: No space left on device")
    assert _KEY not in result.output


def test_the_configured_key_is_masked_even_without_a_client(tmp_path, monkeypatch):
    """`status` never builds a client; a path naming the key is still masked."""
    import uuid

    key = f"plain-{uuid.uuid4().hex}"
    monkeypatch.setenv("SPINE_API_KEY", key)
    monkeypatch.setenv("SPINE_ARCHIVE_URI", str(tmp_path / key / "archive"))
    (tmp_path / key).write_text("a file where the archive's parent directory should be")
    result = CliRunner().invoke(main, ["status"], catch_exceptions=False)
    assert result.exit_code == 1
    (line,) = _one_error_line(result)
    assert key not in result.output and "***" in line
