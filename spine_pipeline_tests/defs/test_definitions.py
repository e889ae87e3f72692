"""The definitions load, validate with the dagster CLI, and contain what the design names."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

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
    assert audit_nodes == {"audit_database", "audit_database_no_overdue_runs"}
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
    assert "spine_run:archive_log_consistent_with_witness" in checks
    log_nodes = {n.name for n in defs.resolve_job_def("check_archive_log").nodes}
    assert log_nodes == {"spine_run_archive_log_consistent_with_witness"}
    assert {n.name for n in defs.resolve_job_def("recheck_spine_runs").nodes} == {"spine_run_check"}
    audit = defs.resolve_assets_def(dg.AssetKey("audit_database"))
    assert audit.op.pool == "spine_audit_db"
    repo = defs.get_repository_def()
    assert repo.get_job("submit_catalog")


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
