"""The definitions load, validate with the dagster CLI, and contain what the design names."""

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from spine_pipeline.archive.arrow_schemas import schema_for
from spine_pipeline.catalog import load_catalog
from spine_pipeline.definitions import build_definitions
from spine_pipeline.defs.names import DEFAULT_OWNER

REPO = Path(__file__).resolve().parents[2]


def test_definitions_load_with_everything_wired(pipeline):
    defs = pipeline.defs
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"spine_run", "archive_batch", "audit_database", "credit_report"} <= keys
    assert {f"submit_{n}" for n in ("weekly_ai_infra_report", "eu_ai_act_memo")} <= keys
    assert defs.resolve_sensor_def("spine_poll_sensor").minimum_interval_seconds == 15
    schedules = {s.name for s in defs.schedules}
    assert {"weekly_ai_infra_report_schedule", "daily_credit_report"} <= schedules
    assert {n.name for n in defs.resolve_job_def("archive_spine_runs").nodes} == {"archive_batch"}
    audit_nodes = {n.name for n in defs.resolve_job_def("refresh_audit_db").nodes}
    assert audit_nodes == {
        "audit_database",
        "audit_database_no_overdue_runs",
        "audit_database_daily_credit_budget",
        "audit_database_monthly_credit_budget",
        "audit_database_no_credit_anomaly",
    }
    sensor = defs.resolve_sensor_def("spine_poll_sensor")
    assert {j.name for j in sensor.jobs} == {"archive_spine_runs", "refresh_audit_db"}
    hooks = defs.resolve_sensor_def("spine_webhook_sensor")
    assert hooks.minimum_interval_seconds == 5
    assert hooks.default_status == dg.DefaultSensorStatus.RUNNING
    assert {j.name for j in hooks.jobs} == {"archive_spine_runs", "refresh_audit_db"}
    checks = {k.to_user_string() for k in defs.resolve_asset_graph().asset_check_keys}
    for check in ("counts_match_api", "artifacts_downloaded"):
        assert {f"archive_batch:{check}", f"spine_run:{check}"} <= checks  # batch / on demand
    assert "audit_database:no_overdue_runs" in checks
    budget = {c for c in checks if "budget" in c.split(":")[1]}
    assert budget == {"audit_database:daily_credit_budget", "audit_database:monthly_credit_budget"}
    assert "audit_database:no_credit_anomaly" in checks
    assert "spine_run:archive_log_consistent_with_witness" in checks
    log_nodes = {n.name for n in defs.resolve_job_def("check_archive_log").nodes}
    assert log_nodes == {"spine_run_archive_log_consistent_with_witness"}
    assert {n.name for n in defs.resolve_job_def("recheck_spine_runs").nodes} == {"spine_run_check"}
    audit = defs.resolve_assets_def(dg.AssetKey("audit_database"))
    assert audit.op.pool == "spine_audit_db"
    repo = defs.get_repository_def()
    assert repo.get_job("submit_catalog")
    alerts = defs.resolve_sensor_def("spine_alert_sensor")
    assert alerts.default_status == dg.DefaultSensorStatus.RUNNING


def test_lineage_reads_requests_runs_audit_report(pipeline):
    graph = pipeline.defs.resolve_asset_graph()
    catalog = load_catalog(REPO / "data/requests.yaml")

    def parents(key):
        return {k.to_user_string() for k in graph.get(dg.AssetKey(key)).parent_keys}

    assert parents("spine_run") == {f"submit_{r.name}" for r in catalog}
    assert "spine_run" in parents("audit_database")
    assert parents("credit_report") == {"audit_database"}
    # Lineage only: the archive job neither contains nor waits for a submit asset.
    job = pipeline.defs.resolve_job_def("archive_spine_runs")
    assert {n.name for n in job.nodes} == {"archive_batch"}


def test_every_asset_has_an_owner_from_the_catalog_or_the_default(pipeline):
    graph = pipeline.defs.resolve_asset_graph()
    teams = {f"submit_{r.name}": r.team for r in load_catalog(REPO / "data/requests.yaml")}
    assert any(teams.values()) and not all(teams.values())  # both cases are exercised
    for key in graph.get_all_asset_keys():
        name = key.to_user_string()
        expected = f"team:{teams[name]}" if teams.get(name) else DEFAULT_OWNER
        assert graph.get(key).owners == [expected], name
    assert DEFAULT_OWNER == "team:data-platform"


def test_archive_and_audit_assets_declare_the_runs_column_schema(pipeline):
    graph = pipeline.defs.resolve_asset_graph()
    runs = schema_for("runs")
    for key in ("spine_run", "archive_batch", "audit_database"):
        schema = graph.get(dg.AssetKey(key)).metadata["dagster/column_schema"].schema
        assert [c.name for c in schema.columns] == runs.names, key
        by_name = {c.name: c for c in schema.columns}
        assert by_name["run_id"].constraints.nullable is False
        assert by_name["run_id"].type == "string"
        assert "Spine run id" in by_name["run_id"].description


def test_schedules_default_status_comes_from_the_catalog(tmp_path, monkeypatch):
    catalog = tmp_path / "requests.yaml"
    catalog.write_text(
        "requests:\n"
        "  - {name: daily_on, prompt: x, schedule: '0 6 * * *', enabled: true}\n"
        "  - {name: daily_off, prompt: y, schedule: '0 7 * * *'}\n"
    )
    monkeypatch.setenv("SPINE_CATALOG", str(catalog))
    monkeypatch.setenv("SPINE_API_KEY", "sk_spine_schedules_only")
    defs = build_definitions()
    on = defs.resolve_schedule_def("daily_on_schedule")
    off = defs.resolve_schedule_def("daily_off_schedule")
    assert on.default_status == dg.DefaultScheduleStatus.RUNNING
    assert off.default_status == dg.DefaultScheduleStatus.STOPPED
    # A tick asks for one run of the submit asset, confirmed (the schedule is the choice).
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(
            instance=instance, scheduled_execution_time=datetime(2026, 1, 5, 6, tzinfo=UTC)
        )
        data = on.evaluate_tick(context)
    (request,) = data.run_requests
    assert request.run_config == {"ops": {"submit_daily_on": {"config": {"confirm": True}}}}
    job = defs.resolve_job_def(on.job_name)
    assert {n.name for n in job.nodes} == {"submit_daily_on"}
    assert dg.validate_run_config(job, request.run_config)


def test_dagster_cli_validates_the_workspace(tmp_path):
    env = {**os.environ, "SPINE_API_KEY": "sk_spine_validate_only", "DAGSTER_HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "All code locations passed validation" in result.stderr + result.stdout
