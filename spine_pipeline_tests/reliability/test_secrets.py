"""Invariant 5 end to end: the demo on S3 with canary credentials leaves them nowhere.

The short soak runs the same scan over everything it wrote (`test_soak.py`). Here: the demo
(submit catalog, sensor, archive runs, audit refresh) plus the daily credit report, with a
canary Spine key and a canary AWS secret, every logger at DEBUG; then every log line, the
Dagster instance (run storage, event logs), every archive object (Parquet decoded), the
manifests and ledger, the HTML report and the audit database (decoded) are searched.
"""

import uuid
from pathlib import Path

import dagster as dg
from click.testing import CliRunner

from spine_pipeline.archive.layout import REPORTS_PREFIX
from spine_pipeline.archive.ledger import Ledger
from spine_pipeline.archive.read import read_committed
from spine_pipeline.archive.stores import open_store
from spine_pipeline.cli import main
from spine_pipeline.defs.names import ARCHIVE_JOB, archive_run_config
from spine_pipeline.demo import run_demo, summary_lines
from spine_pipeline.driver import evaluate_poll_sensor, execute_run, prepare_dagster_home
from spine_pipeline.settings import Settings
from spine_pipeline.simulator import SimulatorConfig, SimulatorServer
from spine_pipeline_tests.fixtures.hostile import EchoConfig, echoing_spine
from spine_pipeline_tests.reliability.conftest import CANARY_API_KEY, CANARY_AWS_SECRET
from spine_pipeline_tests.reliability.logs import capture_logs
from spine_pipeline_tests.reliability.secret_scan import SecretScanner

REPO = Path(__file__).resolve().parents[2]


def test_demo_and_credit_report_leak_no_secret(canary_s3_server, tmp_path, monkeypatch, capfd):
    server = canary_s3_server
    bucket = server.make_bucket()
    uri = f"s3://{bucket}/demo"
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    env = {
        "AWS_ENDPOINT_URL_S3": server.endpoint_url,
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": CANARY_AWS_SECRET,
        "AWS_REGION": server.region,
        "SPINE_ARCHIVE_URI": uri,
        "SPINE_AUDIT_DB": str(tmp_path / "audit.duckdb"),
        "SPINE_CATALOG": str(REPO / "data" / "requests.yaml"),
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "SPINE_POLL_MIN_INTERVAL_SECONDS": "0.5",
        "SPINE_POLL_MAX_INTERVAL_SECONDS": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    lines: list[str] = []
    config = SimulatorConfig(seed=5, run_seconds=(0.5, 2.0), api_key=CANARY_API_KEY)
    with SimulatorServer(config, port=0) as sim, capture_logs() as logs:
        monkeypatch.setenv("SPINE_API_KEY", sim.api_key)
        monkeypatch.setenv("SPINE_BASE_URL", sim.base_url)
        prepare_dagster_home()
        from spine_pipeline.definitions import build_definitions

        defs = build_definitions()
        with dg.DagsterInstance.get() as instance:
            report = run_demo(defs, instance, uri, timeout=120, tick_every=1.0, say=lines.append)
            lines.extend(summary_lines(report, Settings.from_env()))
            credit = defs.resolve_implicit_global_asset_job_def().execute_in_process(
                instance=instance, asset_selection=[dg.AssetKey("credit_report")]
            )
    assert report.submitted and sorted(report.archived) == sorted(report.submitted)
    assert report.verify_ok and credit.success

    scanner = SecretScanner({"spine api key": CANARY_API_KEY, "aws secret": CANARY_AWS_SECRET})
    scanner.tree(tmp_path)  # DAGSTER_HOME (sqlite run storage, event logs), audit db files
    store = open_store(uri, s3_client=server.client())
    scanner.store(store)  # Parquet (decoded), manifests, ledger, artifacts, HTML reports
    out, err = capfd.readouterr()
    scanner.text("log lines (DEBUG)", logs.getvalue())
    scanner.text("stdout/stderr", out + err)
    scanner.text("demo output", "\n".join(lines))
    keys = [i.key for i in store.list(REPORTS_PREFIX)]
    assert keys and keys[0].endswith(".html")
    assert any(p.suffix == ".db" for p in (tmp_path / "dagster_home").rglob("*"))
    assert scanner.scanned["values"] > 1000 and scanner.scanned["log_chars"] > 10_000
    assert scanner.hits == [], scanner.hits[:20]


def test_the_scan_finds_a_planted_secret_in_every_format_it_decodes(tmp_path):
    """Control: a scan that finds nothing must be able to find something."""
    import sqlite3

    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    planted = "sk_spine_PLANTEDpl4nt3d0000"
    filler = [f"row {i} " + "x" * 50 for i in range(2000)]
    pq.write_table(  # no min/max statistics: they would keep the value in the clear
        pa.table({"c": [*filler, f"row 1000 {planted}"]}),
        tmp_path / "t.parquet",
        compression="zstd",
        write_statistics=False,
    )
    assert planted.encode() not in (tmp_path / "t.parquet").read_bytes()  # compressed away
    con = sqlite3.connect(tmp_path / "events.db")
    con.execute("create table e (body text)")
    con.executemany("insert into e values (?)", [(f + planted[-5:],) for f in filler])
    con.execute("insert into e values (?)", ("x" * 5000 + planted,))  # overflow pages
    con.commit()
    con.close()
    duck = duckdb.connect(str(tmp_path / "audit.duckdb"))
    duck.execute("create table runs as select 'y' || range as v from range(50000)")
    duck.execute(f"insert into runs values ('{planted}')")
    duck.close()
    scanner = SecretScanner({"planted": planted})
    scanner.tree(tmp_path)
    scanner.text("log", f"INFO something {planted[9:]}")
    places = {where.split(":")[0].rsplit("/", 1)[-1] for _, where in scanner.hits}
    assert {"t.parquet", "events.db", "audit.duckdb", "log"} <= places, scanner.hits


# -- a server that echoes the key (any shape) in X-Request-ID, status line and error bodies ---


def _echoing(tmp_path, monkeypatch) -> tuple[str, str, str, EchoConfig]:
    """A key that only registration can mask, a run that archives and one that fails."""
    key = f"odd-{uuid.uuid4().hex}-KEY"
    ok_run, bad_run = str(uuid.uuid4()), str(uuid.uuid4())
    config = EchoConfig(key, ok_runs={ok_run}, run_status=503, create_status=500)
    for name in ("SPINE_POLL_MIN_INTERVAL_SECONDS", "SPINE_POLL_MAX_INTERVAL_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPINE_API_KEY", key)
    monkeypatch.setenv("SPINE_ARCHIVE_URI", str(tmp_path / "archive"))
    monkeypatch.setenv("SPINE_AUDIT_DB", str(tmp_path / "audit.duckdb"))
    return key, ok_run, bad_run, config


def _assert_errors_recorded(archive: Path, ok_run: str) -> None:
    """The scans below are not vacuous: the server's failures were recorded, masked."""
    store = open_store(str(archive))
    runs = read_committed(store, "runs", columns=["run_id", "fetch_errors"]).to_pylist()
    (run,) = [r for r in runs if r["run_id"] == ok_run]
    assert run["fetch_errors"] and any("***" in e for e in run["fetch_errors"])
    errors = read_committed(store, "artifacts", columns=["download_error"]).to_pylist()
    assert errors and all(e["download_error"] for e in errors)


def test_cli_against_a_server_echoing_the_key_prints_and_stores_no_secret(tmp_path, monkeypatch):
    key, ok_run, bad_run, config = _echoing(tmp_path, monkeypatch)
    runner = CliRunner()
    with echoing_spine(config) as server:
        monkeypatch.setenv("SPINE_BASE_URL", server.url)
        results = {
            "submit": runner.invoke(main, ["submit", "--prompt", "x"], catch_exceptions=False),
            "archive": runner.invoke(main, ["archive", ok_run, bad_run], catch_exceptions=False),
            "status": runner.invoke(main, ["status"], catch_exceptions=False),
            "refresh": runner.invoke(main, ["audit", "refresh"], catch_exceptions=False),
        }
    assert results["submit"].exit_code == 1 and "outcome unknown" in results["submit"].stderr
    assert results["archive"].exit_code == 1
    assert f"archived {ok_run}" in results["archive"].stdout
    assert f"error: run {bad_run}: failed" in results["archive"].stderr
    assert results["status"].exit_code == 0 and results["refresh"].exit_code == 0
    scanner = SecretScanner({"spine api key": key})
    for name, result in results.items():
        assert "Traceback" not in result.stderr
        scanner.text(f"{name} stdout/stderr", result.stdout + result.stderr)
    scanner.tree(tmp_path)  # ledger (the unknown submit), Parquet, manifests, audit database
    _assert_errors_recorded(tmp_path / "archive", ok_run)
    assert (tmp_path / "audit.duckdb").exists()
    assert scanner.hits == [], scanner.hits


def test_poll_sensor_warning_hides_a_key_echoed_in_x_request_id(tmp_path, monkeypatch, capfd):
    """The sensor's log goes to Dagster's console logger (stderr); the HTTP stack's to logging."""
    key, _, bad_run, config = _echoing(tmp_path, monkeypatch)
    Ledger(open_store(str(tmp_path / "archive"))).track(bad_run, source="test")
    with echoing_spine(config) as server, capture_logs() as logs:
        monkeypatch.setenv("SPINE_BASE_URL", server.url)
        from spine_pipeline.definitions import build_definitions

        with dg.instance_for_test() as instance:
            evaluate_poll_sensor(build_definitions(), instance, None)
    out, err = capfd.readouterr()
    text = logs.getvalue() + out + err
    assert "polling stopped early" in text and "request id ***" in text, text[-2000:]
    assert key not in text


def test_archive_run_leaves_no_echoed_key_in_dagster_events_or_the_archive(tmp_path, monkeypatch):
    key, ok_run, bad_run, config = _echoing(tmp_path, monkeypatch)
    with echoing_spine(config) as server, capture_logs() as logs:
        monkeypatch.setenv("SPINE_BASE_URL", server.url)
        from spine_pipeline.definitions import build_definitions

        defs = build_definitions()
        (tmp_path / "dagster").mkdir()
        with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
            result = execute_run(
                defs, instance, ARCHIVE_JOB, archive_run_config([ok_run, bad_run]), {}
            )
            assert result.success
            events = [str(e) for e in result.all_events]
            records = instance.get_records_for_run(result.run_id).records
            events += [str(r.event_log_entry) for r in records]
    materialized = [e for e in result.get_asset_materialization_events() if e.partition == ok_run]
    metadata = materialized[0].materialization.metadata
    assert "***" in str(metadata["fetch_errors"].value)
    scanner = SecretScanner({"spine api key": key})
    scanner.text("dagster events", "\n".join(events))
    scanner.text("log lines", logs.getvalue())
    scanner.tree(tmp_path)  # Dagster's SQLite event log and run storage, the archive
    _assert_errors_recorded(tmp_path / "archive", ok_run)
    assert any(bad_run in e and "not archived" in e for e in events)
    assert scanner.hits == [], scanner.hits
