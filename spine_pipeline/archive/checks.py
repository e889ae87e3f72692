"""Post-commit checks: read the committed files back and compare with what Spine reported.

They run against the bytes in the archive, not the in-memory tables, so they catch a bug
anywhere between the API answer and storage (a dropped row, a wrong partition, a failed
artifact download).
"""

from __future__ import annotations

import asyncio
import io
from collections import Counter
from collections.abc import Callable, Sequence

import pyarrow.compute as pc
import pyarrow.parquet as pq

from spine_pipeline.archive.archiver import RunOutcome, count_tasks
from spine_pipeline.archive.fetch import (
    NotTerminalError,
    TransientFetchError,
    fetch_canvas,
    fetch_run,
)
from spine_pipeline.archive.manifest import Manifest, ManifestLog
from spine_pipeline.archive.stores import ObjectStore
from spine_pipeline.spine import AsyncSpineClient, SpineError
from spine_pipeline.spine.redact import redact

CHECKS = {
    "counts_match_api": "Archived block, edge and task rows equal the counts in Spine's answers.",
    "artifacts_downloaded": "Every artifact of the run was downloaded (no download_error).",
}
_COUNTED = {"blocks": "block_count", "edges": "edge_count", "tasks": "task_count"}

CheckResults = dict[str, dict[str, tuple[bool, str]]]


def _rows_per_run(store: ObjectStore, manifest: Manifest, table: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for f in manifest.files:
        if f.table == table:
            ids = pq.read_table(io.BytesIO(store.get_bytes(f.key)), columns=["run_id"])["run_id"]
            counts.update(ids.to_pylist())
    return counts


def _artifact_errors(store: ObjectStore, manifest: Manifest) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    for f in manifest.files:
        if f.table != "artifacts":
            continue
        table = pq.read_table(
            io.BytesIO(store.get_bytes(f.key)), columns=["run_id", "artifact_id", "download_error"]
        )
        failed = table.filter(pc.is_valid(table["download_error"]))
        for run_id, artifact_id, error in zip(
            failed["run_id"].to_pylist(),
            failed["artifact_id"].to_pylist(),
            failed["download_error"].to_pylist(),
            strict=True,
        ):
            # The artifact id is the server's: redacted, as it becomes Dagster metadata.
            errors.setdefault(run_id, []).append(redact(f"{artifact_id}: {error}"))
    return errors


def check_batch(
    store: ObjectStore, manifest: Manifest, outcomes: Sequence[RunOutcome]
) -> CheckResults:
    """Evaluate every check for every archived run of a committed batch."""
    rows = {table: _rows_per_run(store, manifest, table) for table in _COUNTED}
    artifact_rows = _rows_per_run(store, manifest, "artifacts")
    errors = _artifact_errors(store, manifest)
    results: CheckResults = {}
    for o in outcomes:
        mismatches = [
            f"{table}: archived {rows[table][o.run_id]}, Spine reported {getattr(o, attr)}"
            for table, attr in _COUNTED.items()
            if rows[table][o.run_id] != getattr(o, attr)
        ]
        if artifact_rows[o.run_id] != o.artifact_count:
            mismatches.append(
                f"artifacts: archived {artifact_rows[o.run_id]}, Spine reported {o.artifact_count}"
            )
        run_errors = errors.get(o.run_id, [])
        results[o.run_id] = {
            "counts_match_api": (not mismatches, "; ".join(mismatches) or "all counts match"),
            "artifacts_downloaded": (
                not run_errors,
                "; ".join(run_errors) or f"{artifact_rows[o.run_id]} artifact(s) downloaded",
            ),
        }
    return results


def recheck_runs(
    store: ObjectStore, client_factory: Callable[[], AsyncSpineClient], run_ids: Sequence[str]
) -> CheckResults:
    """Re-run the checks for archived runs: committed rows vs what Spine answers now.

    Runs Spine no longer knows (retention) are compared with the counts recorded at
    archive time in the `runs` table instead.
    """
    log = ManifestLog(store)
    log.refresh()
    by_seq = {m.seq: m for m in log}
    results: CheckResults = {}

    async def reported(run_id: str) -> RunOutcome:
        async with client_factory() as client:
            run = await fetch_run(client, run_id)
            dag, tasks, _ = await fetch_canvas(client, run.canvas_id)
        dag_value = dag.value if dag is not None and isinstance(dag.value, dict) else {}
        return RunOutcome(
            run_id,
            "archived",
            block_count=_length(dag_value.get("nodes")),
            edge_count=_length(dag_value.get("edges")),
            task_count=count_tasks(tasks.value if tasks is not None else None),
            artifact_count=len(run.artifacts),
        )

    for run_id in run_ids:
        seq = log.committed_runs.get(run_id)
        if seq is None:
            results[run_id] = {name: (False, "run is not archived") for name in CHECKS}
            continue
        manifest = by_seq[seq]
        try:
            outcome = asyncio.run(reported(run_id))
        except (SpineError, NotTerminalError, TransientFetchError):
            outcome = _recorded_counts(store, manifest, run_id)
        results.update(check_batch(store, manifest, [outcome]))
    return results


def _length(value: object) -> int:
    return len(value) if isinstance(value, list) else 0


def _recorded_counts(store: ObjectStore, manifest: Manifest, run_id: str) -> RunOutcome:
    columns = ["run_id", "block_count", "edge_count", "task_count", "artifact_count"]
    for f in manifest.files:
        if f.table != "runs":
            continue
        table = pq.read_table(io.BytesIO(store.get_bytes(f.key)), columns=columns)
        for row in table.to_pylist():
            if row["run_id"] == run_id:
                return RunOutcome(
                    run_id,
                    "archived",
                    block_count=row["block_count"] or 0,
                    edge_count=row["edge_count"] or 0,
                    task_count=row["task_count"] or 0,
                    artifact_count=row["artifact_count"] or 0,
                )
    return RunOutcome(run_id, "archived")
