"""A user's first hour (issue 19): errors that say what to do next, progress on stderr."""

import io
import json
import logging
import os
import socket

import duckdb
import pytest
from click.testing import CliRunner

from spine_pipeline.cli import main
from spine_pipeline.settings import ConfigurationError
from spine_pipeline.spine import DownloadError, RetryPolicy, SpineClient, SpineConnectionError


def _closed_port() -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """The CLI on a fresh local archive and audit database; Spine refuses connections."""
    monkeypatch.setenv("SPINE_API_KEY", "sk_first_hour_key")
    monkeypatch.setenv("SPINE_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("SPINE_ARCHIVE_URI", str(tmp_path / "archive"))
    monkeypatch.setenv("SPINE_AUDIT_DB", str(tmp_path / "audit.duckdb"))
    runner = CliRunner()
    notices = logging.getLogger("spine_pipeline.spine.client")
    handlers = list(notices.handlers)
    yield lambda *args: runner.invoke(main, list(args), catch_exceptions=False)
    notices.handlers[:] = handlers  # the CLI installs its notice handler: leave none behind


def _error_line(result):
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# ----------------------------------------------------------------------------- status


def test_status_of_an_unknown_run_id_exits_1_naming_it(cli):
    result = cli("status", "no-such-run")
    assert result.exit_code == 1
    assert "no-such-run" in _error_line(result) and "track RUN_ID" in result.stderr
    assert result.stdout == ""
    assert cli("track", "known-run").exit_code == 0
    mixed = cli("status", "known-run", "no-such-run")
    assert mixed.exit_code == 1
    assert mixed.stdout.splitlines()[1].split()[:2] == ["known-run", "in_flight"]
    assert "no-such-run" in _error_line(mixed) and "known-run" not in _error_line(mixed)
    assert cli("status", "known-run").exit_code == 0
    assert cli("status").exit_code == 0  # listing everything is never an error


# ----------------------------------------------------------------------------- search, sql


@pytest.fixture
def audit_db(cli, tmp_path):
    result = cli("audit", "rebuild")
    assert result.exit_code == 0, result.output
    return tmp_path / "audit.duckdb"


def test_search_type_is_validated_naming_the_valid_types(cli, audit_db, tmp_path):
    # a block type Spine added later, archived faithfully, stays searchable (below)
    con = duckdb.connect(str(audit_db))
    con.execute("INSERT INTO blocks (run_id, block_id, type) VALUES ('r', 'b', 'future-block')")
    con.close()
    bad = cli("search", "anything", "--type", "web-reserch-block")
    assert bad.exit_code == 2
    assert "Invalid value for '--type'" in bad.stderr
    assert "web-research-block" in bad.stderr and "final_output" in bad.stderr
    for good in ("web-research-block", "final_output", "source_title"):
        assert cli("search", "anything", "--type", good).exit_code == 0, good
    assert cli("search", "anything", "--type", "future-block").exit_code == 0
    no_db = cli("search", "x", "--type", "nope", "--db", str(tmp_path / "none.duckdb"))
    assert no_db.exit_code == 2 and "web-research-block" in no_db.stderr  # the type first


def test_sql_dot_commands_map_to_sql_or_say_what_to_type(cli, audit_db):
    tables = cli("sql", ".tables", "--format", "json")
    assert tables.exit_code == 0, tables.stderr
    assert {"name": "runs"} in json.loads(tables.stdout)  # stdout stays one JSON array
    assert "note: .tables is SHOW TABLES" in tables.stderr
    schema = cli("sql", ".schema runs;")
    assert schema.exit_code == 0 and "credits_consumed" in schema.stdout
    assert cli("sql", ".describe blocks").exit_code == 0
    everything = cli("sql", ".schema", "--format", "csv")
    assert everything.exit_code == 0 and "block_sources,url," in everything.stdout
    shown = cli("sql", ".help")
    assert shown.exit_code == 0 and "SHOW TABLES" in shown.stdout
    assert len(shown.stdout.splitlines()) == 1
    for bad in (".quit", ".describe"):
        result = cli("sql", bad)
        assert result.exit_code == 2 and "SHOW TABLES" in result.stderr, bad
    missing = cli("sql", '.schema no"such')
    assert missing.exit_code == 1 and "Catalog Error" in missing.stderr


# ----------------------------------------------------------------------------- configuration


def test_a_missing_key_tells_cli_users_to_set_the_variable(cli, monkeypatch):
    monkeypatch.delenv("SPINE_API_KEY")
    result = cli("submit", "--prompt", "x")
    assert result.exit_code == 2
    line = _error_line(result)
    assert "export SPINE_API_KEY=" in line and "pass api_key" not in line
    # the library's callers may pass the key, so their message says so
    with pytest.raises(ConfigurationError, match=r"SPINE_API_KEY is not set \(pass api_key"):
        SpineClient()


# ----------------------------------------------------------------------------- unreachable API


def test_a_retry_names_the_host_and_so_does_the_failure(caplog):
    port = _closed_port()
    fast = RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.01, jitter=0.0)
    caplog.set_level(logging.WARNING, logger="spine_pipeline.spine.client")
    client = SpineClient(api_key="k", base_url=f"http://127.0.0.1:{port}", retry=fast)
    with pytest.raises(SpineConnectionError, match=f"Spine at 127.0.0.1:{port} "):
        client.get_run("some-run")
    notices = [r.getMessage() for r in caplog.records if r.name == "spine_pipeline.spine.client"]
    assert len(notices) == 2
    assert all(f"cannot reach Spine at 127.0.0.1:{port}" in n for n in notices)
    assert notices[0].startswith("GET /v1/run/some-run:") and "retry 1 of 2" in notices[0]

    # an artifact download names the host only: a pre-signed URL's query is a credential
    caplog.clear()
    signed = f"http://127.0.0.1:{port}/artifact?X-Amz-Signature=s3cr3t-signature"
    with client, pytest.raises(DownloadError):  # closes the client
        client.download(signed, io.BytesIO())
    notices = [r.getMessage() for r in caplog.records if r.name == "spine_pipeline.spine.client"]
    assert len(notices) == 2
    assert notices[0].startswith(f"artifact download from 127.0.0.1:{port}: ")
    assert not any("s3cr3t" in n or "/artifact" in n for n in notices)


def test_an_unreachable_base_url_is_said_before_the_retries_not_after(cli, monkeypatch):
    """Each retry's notice (naming the host) is on stderr before its wait, so the user
    learns of the wrong SPINE_BASE_URL at the first failure, not after the whole backoff.
    The CLI's default policy, made fast: the order is what is tested, not the clock."""
    from spine_pipeline.spine import client as client_module

    fast = RetryPolicy(max_retries=4, base_delay=0.01, max_delay=0.01, jitter=0.0)
    monkeypatch.setattr(client_module, "RetryPolicy", lambda: fast)
    host = os.environ["SPINE_BASE_URL"].removeprefix("http://")
    result = cli("submit", "--prompt", "x")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 5, lines
    for n, line in enumerate(lines[:4], 1):
        assert line.startswith(f"note: POST /v1/run: cannot reach Spine at {host} (")
        assert line.endswith(f"; retry {n} of 4 in 0.0 s")
    assert lines[4].startswith(f"error: POST /v1/run failed: cannot reach Spine at {host} (")
    assert "sk_first_hour_key" not in result.output


# ----------------------------------------------------------------------------- progress


def test_long_commands_print_plain_steps_on_stderr_off_a_terminal(simulator, cli, monkeypatch):
    monkeypatch.setenv("SPINE_API_KEY", simulator.api_key)
    monkeypatch.setenv("SPINE_BASE_URL", simulator.base_url)
    run_id = cli("submit", "--prompt", "[scenario:completed] progress").stdout.strip()
    archived = cli("archive", run_id, "--wait", "--timeout", "30")
    assert archived.exit_code == 0, archived.stderr
    assert f"waiting for runs: 1/1 {run_id} completed; all terminal" in archived.stderr
    assert "archiving: 1 run(s)" in archived.stderr
    assert archived.stdout.startswith(f"archived {run_id}") and "waiting" not in archived.stdout

    verified = cli("verify")
    assert verified.exit_code == 0
    assert "verify: manifests: 0/1 manifests/" in verified.stderr
    assert "verify: manifests: 1/1" in verified.stderr
    assert len(verified.stdout.splitlines()) == 1  # the verdict only

    gc = cli("gc", "--dry-run")
    assert "gc: areas: 1/1 would remove 0 object(s)" in gc.stderr and "gc:" not in gc.stdout

    rebuilt = cli("audit", "rebuild")
    assert rebuilt.exit_code == 0
    assert "audit: ingesting manifests: 1/1" in rebuilt.stderr
    assert len(rebuilt.stdout.splitlines()) == 1 and "audit:" not in rebuilt.stdout
