"""The names of the Dagster objects other code refers to: jobs, sensor, ops, run-config paths.

One home for them, so the in-process driver, the demo, the soak and the benchmarks launch
exactly what the definitions declare instead of repeating string literals that can drift.
These names are contracts: renaming one orphans sensor cursors and run history.
"""

POLL_SENSOR = "spine_poll_sensor"
ARCHIVE_JOB = "archive_spine_runs"
AUDIT_JOB = "refresh_audit_db"
SUBMIT_ALL_JOB = "submit_catalog"
#: The asset (and op) that archives one batch; its config holds the batch's Spine run ids.
ARCHIVE_BATCH_OP = "archive_batch"


def archive_run_config(run_ids: list[str]) -> dict[str, object]:
    """The run config of one `archive_spine_runs` run for these Spine run ids."""
    return {"ops": {ARCHIVE_BATCH_OP: {"config": {"run_ids": list(run_ids)}}}}


def archive_run_ids(run_config: dict[str, object]) -> list[str]:
    """The Spine run ids in an archive run's config (the inverse of `archive_run_config`)."""
    ops = run_config.get("ops")
    if not isinstance(ops, dict):
        return []
    config = (ops.get(ARCHIVE_BATCH_OP) or {}).get("config") or {}
    return [str(r) for r in config.get("run_ids") or []]
