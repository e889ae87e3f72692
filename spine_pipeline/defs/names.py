"""The names of the Dagster objects other code refers to: jobs, sensor, ops, run-config paths.

One home for them, so the in-process driver, the demo, the soak and the benchmarks launch
exactly what the definitions declare instead of repeating string literals that can drift.
These names are contracts: renaming one orphans sensor cursors and run history.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from spine_pipeline.archive.ledger import TrackedRun

POLL_SENSOR = "spine_poll_sensor"
#: The fast sensor that reads only the webhook inbox and hands runs whose end an event
#: announced (and Spine confirmed) to archiving.
WEBHOOK_SENSOR = "spine_webhook_sensor"
ARCHIVE_JOB = "archive_spine_runs"
AUDIT_JOB = "refresh_audit_db"
SUBMIT_ALL_JOB = "submit_catalog"
#: The job that runs `ARCHIVE_LOG_CHECK` alone (no batch, no partition).
ARCHIVE_LOG_JOB = "check_archive_log"
#: The asset check on `spine_run`: the archive's log against its checkpoint and witnesses.
ARCHIVE_LOG_CHECK = "archive_log_consistent_with_witness"
#: The asset (and op) that archives one batch; its config holds the batch's Spine run ids.
ARCHIVE_BATCH_OP = "archive_batch"
#: The sensor that posts failed asset checks and overdue runs to SPINE_ALERT_WEBHOOK_URL.
ALERT_SENSOR = "spine_alert_sensor"
#: The owner of every asset that has no team of its own (a submit asset's catalog entry may
#: name one): the team that runs the pipeline.
DEFAULT_OWNER = "team:data-platform"


def submit_asset_name(request_name: str) -> str:
    """The submit asset (and op) of a catalog request: a contract, like the job names."""
    return f"submit_{request_name}"


def submit_run_config(request_names: Iterable[str]) -> dict[str, object]:
    """Run config that confirms the submits of these requests (each costs credits).

    Every submit asset requires `confirm: true` in its config, so that a run launched
    without it (the UI's "Materialize all" among them) is refused before anything is billed;
    the schedules, the `submit_catalog` launch of the demo and the soak pass this.
    """
    return {"ops": {submit_asset_name(n): {"config": {"confirm": True}} for n in request_names}}


def archive_run_config(run_ids: list[str], tracked: Iterable[TrackedRun] = ()) -> dict[str, object]:
    """The run config of one `archive_spine_runs` run for these Spine run ids.

    `tracked` are the runs' tracking records as the caller already holds them (the poll
    sensor does): the archive run then names and times the runs from its config instead of
    reading the ledger again per run. Only records of `run_ids` go in, without empty fields.
    """
    config: dict[str, object] = {"run_ids": list(run_ids)}
    wanted = set(run_ids)
    records = [t.compact() for t in tracked if t.run_id in wanted]
    if records:
        config["tracked"] = records
    return {"ops": {ARCHIVE_BATCH_OP: {"config": config}}}


def archive_run_ids(run_config: dict[str, object]) -> list[str]:
    """The Spine run ids in an archive run's config (the inverse of `archive_run_config`)."""
    ops = run_config.get("ops")
    if not isinstance(ops, dict):
        return []
    config = (ops.get(ARCHIVE_BATCH_OP) or {}).get("config") or {}
    return [str(r) for r in config.get("run_ids") or []]
