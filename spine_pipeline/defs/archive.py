"""Archive wiring: the batched archive asset/job and the per-Spine-run partitions.

A burst of terminal runs becomes a few Dagster runs (up to `batch_size` Spine runs each),
but every Spine run stays visible on its own: `spine_run` is an asset partitioned by run
id, and each archive batch reports one materialisation per Spine run (status, credits,
counts, canvas link and that run's check verdicts).

The checks run at archive time are reported once per batch, on `archive_batch`, naming
every failing run: a check evaluation per Spine run would cost two more event-log writes
per run, which on Dagster's SQLite storage were most of the time of a 1,000-run burst
(docs/benchmarks.md). Per-run check results remain available on demand
(`recheck_spine_runs`, partitioned checks on `spine_run`).

Verifiable history: with `SPINE_SIGNING_KEY` each batch ends with a signed checkpoint of the
manifest log, shown in the batch's and each run's metadata (or "unsigned" when there is no
key, so an unsigned archive is visible rather than silent). `archive_log_consistent_with_witness`
(job `check_archive_log`) compares the archive's log with its newest checkpoint and with every
witness (`archive/log_status.py`), catching a rollback or fork between batches.

The run page: each `spine_run` materialisation names (`page`) the command that writes the
run's offline page from the committed files, `spine-pipeline show RUN_ID`. Pages are rendered
on demand, not here: rendering one costs more CPU than archiving the run, and most are never
opened (docs/benchmarks.md, "Burst").
"""

import warnings
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime

import dagster as dg

from spine_pipeline.archive.archiver import Archiver, RunOutcome
from spine_pipeline.archive.arrow_schemas import TABLES, schema_for
from spine_pipeline.archive.checks import CHECKS, CheckResults, check_batch
from spine_pipeline.archive.layout import checkpoint_key
from spine_pipeline.archive.ledger import Ledger, TrackedRun, tracked_from_doc
from spine_pipeline.archive.log_status import LogStatus, log_status, status_keys
from spine_pipeline.archive.manifest import Manifest
from spine_pipeline.archive.signing import SigningError
from spine_pipeline.archive.stores import ObjectStore
from spine_pipeline.archive.tlog import SignedCheckpoint, Witness
from spine_pipeline.defs.names import (
    ARCHIVE_BATCH_OP,
    ARCHIVE_JOB,
    ARCHIVE_LOG_CHECK,
    ARCHIVE_LOG_JOB,
    DEFAULT_OWNER,
    archive_run_ids,
)
from spine_pipeline.defs.resources import ArchiveResource, SpineResource
from spine_pipeline.evidence.show import show_command
from spine_pipeline.settings import Settings
from spine_pipeline.spine import canvas_url
from spine_pipeline.spine.redact import redact

spine_runs = dg.DynamicPartitionsDefinition(name="spine_runs")

#: The archive table whose columns Dagster shows for the archive assets (one row per Spine
#: run); the other tables' row counts are in each materialisation's `rows_by_table`.
SCHEMA_TABLE = "runs"


def table_schema(table: str) -> dg.TableSchema:
    """An archive table's Arrow schema (`archive/arrow_schemas.py`) as Dagster's TableSchema,
    so the UI shows the contract's columns, types, nullability and descriptions."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=f.name,
                type=str(f.type),
                description=(f.metadata or {}).get(b"description", b"").decode() or None,
                constraints=dg.TableColumnConstraints(nullable=f.nullable),
            )
            for f in schema_for(table)
        ]
    )


def schema_metadata() -> dict[str, dg.TableSchemaMetadataValue]:
    """`dagster/column_schema` of the archive assets (definition and materialisations)."""
    return {"dagster/column_schema": dg.MetadataValue.table_schema(table_schema(SCHEMA_TABLE))}


SPINE_RUN = dg.AssetKey("spine_run")
spine_run = dg.AssetSpec(
    SPINE_RUN,
    partitions_def=spine_runs,
    group_name="spine_archive",
    kinds={"parquet"},
    owners=[DEFAULT_OWNER],
    metadata=schema_metadata(),
    description="One archived Spine run (partition = run id): rows in every archive table, "
    "artifact bytes, committed by a manifest. Materialised by `archive_batch`.",
)


def spine_run_with_requests(submit_keys: Iterable[dg.AssetKey]) -> dg.AssetSpec:
    """`spine_run` downstream of the catalog's submit assets, so the graph reads requests ->
    runs -> audit -> report.

    Lineage only: `spine_run` is materialised by `archive_batch` (logged events), never by
    a step of its own, so nothing launches or waits for the submit assets when a run is
    archived, and a run submitted elsewhere (`track`, the CLI) is archived the same way.
    The upstream assets are unpartitioned, so no partition mapping is involved.
    """
    return spine_run.replace_attributes(deps=list(submit_keys))


# Partitioned check specs are a Dagster preview feature (1.13): one result per Spine run is
# exactly what auditors need, so we accept the preview and silence its warning here only.
warnings.filterwarnings("ignore", category=dg.PreviewWarning, module=__name__)
spine_run_checks = [
    dg.AssetCheckSpec(name, asset=SPINE_RUN, description=doc, partitions_def=spine_runs)
    for name, doc in CHECKS.items()
]


@dg.multi_asset_check(specs=spine_run_checks, required_resource_keys={"spine", "archive"})
def spine_run_check(context: dg.AssetCheckExecutionContext) -> Iterator[dg.AssetCheckResult]:
    """Re-run the checks on demand for the selected partitions, against the archive."""
    from spine_pipeline.archive.checks import recheck_runs

    archive: ArchiveResource = context.resources.archive
    spine: SpineResource = context.resources.spine
    if not (context.has_partition_key or context.has_partition_key_range):
        raise dg.Failure(description="select the spine_run partitions (run ids) to check")
    run_ids = list(context.partition_keys)
    results = recheck_runs(archive.store(), spine.async_client, run_ids)
    for run_id, checks in results.items():
        for name, (passed, detail) in checks.items():
            yield dg.AssetCheckResult(
                asset_key=SPINE_RUN,
                check_name=name,
                passed=passed,
                metadata={"run_id": run_id, "detail": detail},
            )


BATCH_CHECKS = [
    dg.AssetCheckSpec(name, asset=ARCHIVE_BATCH_OP, description=f"Every run of the batch: {doc}")
    for name, doc in CHECKS.items()
]
_LISTED_FAILURES = 50


class TrackedRecord(dg.Config):
    """A run's tracking record, as the poll sensor read it from the ledger."""

    run_id: str
    tracked_at: str
    request_name: str | None = None
    submitted_at: str | None = None
    source: str | None = None


class ArchiveBatchConfig(dg.Config):
    """The Spine runs this Dagster run archives (set by the poll sensor).

    `tracked` carries the runs' tracking records so that the run need not read the ledger
    again (a HEAD and a GET per run); runs without one (a manual launch, a run queued by an
    older sensor) are looked up in the ledger.
    """

    run_ids: list[str]
    tracked: list[TrackedRecord] | None = None

    def tracked_runs(self) -> list[TrackedRun]:
        """The given records the ledger's decoding rule accepts."""
        docs = ({k: v for k, v in vars(r).items() if v is not None} for r in self.tracked or ())
        return [t for t in map(tracked_from_doc, docs) if t is not None]


#: Archive runs `handed_since` reads at most (newest first): far more than two sensors
#: request within the re-request grace.
_HANDED_RUNS_READ = 2000


def handed_since(instance: dg.DagsterInstance, since: float) -> dict[str, float]:
    """Spine run id -> when the newest archive run naming it was created, for the archive
    runs created since `since` (Unix time), whatever their status and whoever asked.

    The two sensors keep separate cursors; this is what they share, so that a run one of
    them handed (its archive run queued, running or just done) is not handed again by the
    other before the re-request grace (`poll_plan.may_hand`).
    """
    records = instance.get_run_records(
        dg.RunsFilter(job_name=ARCHIVE_JOB, created_after=datetime.fromtimestamp(since, UTC)),
        limit=_HANDED_RUNS_READ,
    )
    handed: dict[str, float] = {}
    for record in records:
        created = record.create_timestamp.timestamp()
        for run_id in archive_run_ids(dict(record.dagster_run.run_config)):
            handed[run_id] = max(handed.get(run_id, 0.0), created)
    return handed


def _verdict(result: tuple[bool, str] | None) -> str:
    if result is None:
        return "not evaluated"
    passed, detail = result
    return "pass" if passed else f"FAIL: {detail[:300]}"


def _run_metadata(
    o: RunOutcome, checks: dict[str, tuple[bool, str]]
) -> dict[str, dg.MetadataValue | str | int | None]:
    # Status and canvas id are what the server sent: redacted before the event log keeps them.
    link = redact(canvas_url(o.canvas_id) or "")
    return {
        "status": redact(o.status or "unknown"),
        "credits_consumed": o.credits if o.credits is not None else "unknown",
        "block_count": o.block_count,
        "edge_count": o.edge_count,
        "task_count": o.task_count,
        "artifact_count": o.artifact_count,
        "artifact_errors": o.artifact_errors,
        "manifest_seq": o.seq,
        "canvas": dg.MetadataValue.url(link) if link else "none",
        "fetch_errors": o.message or "none",
        **{f"check_{name}": _verdict(checks.get(name)) for name in CHECKS},
    }


def _batch_check(name: str, evaluations: CheckResults) -> dg.AssetCheckResult:
    """One result for the batch: passed if every archived run passed; failures named."""
    failures = {
        run_id: result[name][1]
        for run_id, result in evaluations.items()
        if name in result and not result[name][0]
    }
    listed = "\n".join(
        f"- `{run_id}`: {detail[:300]}"
        for run_id, detail in sorted(failures.items())[:_LISTED_FAILURES]
    )
    more = len(failures) - _LISTED_FAILURES
    return dg.AssetCheckResult(
        check_name=name,
        passed=not failures,
        metadata={
            "runs_checked": len(evaluations),
            "runs_failed": len(failures),
            "failures": dg.MetadataValue.md(
                (listed + (f"\n- ... and {more} more" if more > 0 else "")) or "none"
            ),
        },
    )


@dg.asset(
    group_name="spine_archive",
    kinds={"parquet", "spine"},
    owners=[DEFAULT_OWNER],
    metadata=schema_metadata(),
    description="Archives a batch of terminal Spine runs: fetch, download artifacts, write "
    "Parquet, commit a manifest. Idempotent, so retries are safe.",
    retry_policy=dg.RetryPolicy(max_retries=2, delay=30),
    check_specs=BATCH_CHECKS,
)
def archive_batch(
    context: dg.AssetExecutionContext,
    config: ArchiveBatchConfig,
    spine: SpineResource,
    archive: ArchiveResource,
) -> dg.MaterializeResult:
    store = archive.store()
    requests = Ledger(store).archive_requests(config.run_ids, config.tracked_runs())
    archiver = Archiver(store, spine.async_client)
    result = archiver.archive(requests)
    checkpoint = _checkpoint_metadata(store, archiver.publisher is not None, result.checkpoint)
    archived = result.by_outcome("archived")
    known = set(context.instance.get_dynamic_partitions(spine_runs.name))
    missing = [o.run_id for o in archived if o.run_id not in known]
    if missing:
        context.instance.add_dynamic_partitions(spine_runs.name, missing)
    evaluations = check_batch(store, result.manifest, archived) if result.manifest else {}
    written = _rows_by_table(result.manifest)
    for o in archived:
        metadata = {
            **_run_metadata(o, evaluations.get(o.run_id, {})),
            "page": show_command(o.run_id),
            # The run's row in `runs`; the column schema is the asset's definition metadata
            # (not repeated per run: the event log writes one event per run).
            "dagster/row_count": 1,
            **checkpoint,
        }
        context.log_event(dg.AssetMaterialization(SPINE_RUN, partition=o.run_id, metadata=metadata))
    failed = [o for o in result.outcomes if o.outcome in ("failed", "not_terminal")]
    for o in failed:
        context.log.warning("run %s not archived (%s): %s", o.run_id, o.outcome, o.message)
    if failed and not archived and not result.by_outcome("already_archived"):
        raise dg.Failure(
            description=f"none of the {len(failed)} run(s) could be archived; they stay in flight",
            metadata={"failures": {o.run_id: o.message[:500] for o in failed}},
        )
    return dg.MaterializeResult(
        metadata={
            "manifest_seq": result.manifest.seq if result.manifest else "none (nothing new)",
            "batch_id": result.manifest.batch_id if result.manifest else "none",
            "archived": len(archived),
            "already_archived": len(result.by_outcome("already_archived")),
            "failed": len(failed),
            "failures": {o.run_id: o.message[:300] for o in failed} or "none",
            **{k: float(v) for k, v in result.metrics.items()},
            "dagster/row_count": written.get(SCHEMA_TABLE, 0),
            "rows_by_table": dg.MetadataValue.json(written),
            **schema_metadata(),
            **checkpoint,
        },
        check_results=[_batch_check(name, evaluations) for name in CHECKS],
    )


def _rows_by_table(manifest: Manifest | None) -> dict[str, int]:
    """Rows the batch's manifest committed, per archive table (every table, 0 included)."""
    rows = {table: 0 for table in TABLES}
    for entry in manifest.files if manifest else ():
        rows[entry.table] = rows.get(entry.table, 0) + entry.rows
    return rows


UNSIGNED = "unsigned: set SPINE_SIGNING_KEY"


def _checkpoint_metadata(
    store: ObjectStore, signed: bool, checkpoint: SignedCheckpoint | None
) -> dict[str, dg.MetadataValue | str | int]:
    """The checkpoint a batch ended with, as metadata (the same for the batch and its runs)."""
    if not signed:
        return {"checkpoint": UNSIGNED}
    if checkpoint is None:
        return {"checkpoint": "unchanged (no new manifest)"}
    where = store.url(checkpoint_key(checkpoint.size))
    shown = checkpoint.to_json()
    return {
        "checkpoint": dg.MetadataValue.url(where)
        if "://" in where
        else dg.MetadataValue.path(where),
        "checkpoint_size": checkpoint.size,
        "checkpoint_root": checkpoint.root.hex(),
        "checkpoint_time": str(shown["time"] or "none"),
        "checkpoint_key_ids": ", ".join(checkpoint.key_ids),
    }


@dg.asset_check(
    asset=SPINE_RUN,
    name=ARCHIVE_LOG_CHECK,
    description="The archive's newest checkpoint verifies and describes its manifest log, and "
    "every witness's newest checkpoint is a state of that log (no rollback, no fork). Warns "
    "when there is no witness (SPINE_WITNESS_URI) to catch a rollback.",
)
def archive_log_consistent_with_witness(archive: ArchiveResource) -> dg.AssetCheckResult:
    settings = Settings.from_env()
    try:
        keys = status_keys(settings.verify_key, settings.signing_key)
    except SigningError as exc:
        return _log_result(None, False, dg.AssetCheckSeverity.ERROR, str(exc))
    witnesses = [Witness.open(uri) for uri in settings.witness_uris]
    status = log_status(archive.store(), keys, witnesses)
    passed, severity, description = _log_verdict(status)
    return _log_result(status, passed, severity, description)


def _log_verdict(status: LogStatus) -> tuple[bool, dg.AssetCheckSeverity, str]:
    """(passed, severity, one-line description): errors for contradictions, warnings for
    what leaves a rollback undetectable (no witness, no key, nothing checkpointed yet)."""
    error, warn = dg.AssetCheckSeverity.ERROR, dg.AssetCheckSeverity.WARN
    if status.problems:
        return False, error, "; ".join(status.problems)
    if not status.witnesses:
        return False, warn, "no witness: set SPINE_WITNESS_URI so a rollback can be detected"
    if not status.verified:
        return False, warn, "checkpoints not verified: set SPINE_VERIFY_KEY or SPINE_SIGNING_KEY"
    if status.size and status.newest is None:
        unsigned = f"none of the log's {status.size} manifests is checkpointed yet"
        return False, warn, f"{unsigned}: the next batch with SPINE_SIGNING_KEY checkpoints them"
    empty = [w.uri for w in status.witnesses if w.newest is None]
    if status.newest is not None and empty:
        return False, warn, f"witness {', '.join(empty)} holds no checkpoint of this log yet"
    agreed = f"log of {status.size} manifests, newest checkpoint verified, witnesses agree"
    if status.uncheckpointed:
        agreed += f" ({status.uncheckpointed} newer manifest(s) not checkpointed yet)"
    return True, error, agreed


def _log_result(
    status: LogStatus | None, passed: bool, severity: dg.AssetCheckSeverity, description: str
) -> dg.AssetCheckResult:
    metadata: dict[str, dg.MetadataValue | str | int] = {}
    if status is not None:
        metadata = {
            "archive_size": status.size,
            "archive_root": status.root.hex() if status.root else "unreadable",
            "checkpoint_size": status.newest.size if status.newest else "none",
            "witness_sizes": dg.MetadataValue.json(
                {w.uri: w.newest.size if w.newest else None for w in status.witnesses}
            ),
        }
    return dg.AssetCheckResult(
        asset_key=SPINE_RUN,
        check_name=ARCHIVE_LOG_CHECK,
        passed=passed,
        severity=severity,
        description=description,
        metadata=metadata,
    )


archive_log_job = dg.define_asset_job(
    ARCHIVE_LOG_JOB,
    selection=dg.AssetSelection.checks(archive_log_consistent_with_witness),
    description="Check the archive's transparency log against its checkpoint and witnesses "
    "(no batch; schedule it to catch a rollback between batches).",
)
recheck_job = dg.define_asset_job(
    "recheck_spine_runs",
    selection=dg.AssetSelection.checks_for_assets(SPINE_RUN)
    - dg.AssetSelection.checks(archive_log_consistent_with_witness),
    description="Re-run the spine_run checks for one partition (tag dagster/partition) "
    "against the archive.",
)
