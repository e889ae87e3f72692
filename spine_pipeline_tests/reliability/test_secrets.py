"""Invariant 5 end to end: the demo on S3 with canary credentials leaves them nowhere.

The short soak runs the same scan over everything it wrote (`test_soak.py`). Here: the demo
(submit catalog, sensor, archive runs, audit refresh) plus the daily credit report, with a
canary Spine key and a canary AWS secret, every logger at DEBUG; then every log line, the
Dagster instance (run storage, event logs), every archive object (Parquet decoded), the
manifests and ledger, the HTML report and the audit database (decoded) are searched.
"""

from pathlib import Path

import dagster as dg

from spine_pipeline.archive.layout import REPORTS_PREFIX
from spine_pipeline.archive.stores import open_store
from spine_pipeline.demo import run_demo, summary_lines
from spine_pipeline.driver import prepare_dagster_home
from spine_pipeline.settings import Settings
from spine_pipeline.simulator import SimulatorConfig, SimulatorServer
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
