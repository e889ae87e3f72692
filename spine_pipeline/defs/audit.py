"""Audit wiring: the DuckDB audit database refresh and the daily credit report.

The refresh is its own job (`refresh_audit_db`), requested by the poll sensor when committed
manifests are ahead of the audit database and no refresh is queued or running: a burst of
archive batches is ingested by one or two refreshes, not one per batch (each refresh
verifies, ingests, re-indexes and checkpoints, and only one may write at a time). Its op is
in the `spine_audit_db` pool, limited to one (see docs/operations.md). Readers never block:
the library publishes snapshots.

The checks on `audit_database` run after every refresh: overdue runs, the credit budgets
(`daily_credit_budget`, `monthly_credit_budget`: WARN from 80 % of the budget, ERROR from
100 %, the levels of `audit.reports.budget_status`) and the newest day's credit anomaly
(the `credit_usage_daily` view's rule). A failing one reaches `SPINE_ALERT_WEBHOOK_URL`
through `spine_alert_sensor`.

Both jobs here run on the in-process executor: each is one step (plus its checks), and a
subprocess per step cost more than the step (docs/decisions.md).
"""

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import dagster as dg
from dagster_duckdb import DuckDBResource

from spine_pipeline.archive.layout import credit_report_key
from spine_pipeline.archive.stores import AlreadyExists
from spine_pipeline.audit import (
    Budgets,
    budget_status,
    connect_readonly,
    headline_markdown,
    refresh_audit_db,
    render_credit_report_html,
    run_sql,
)
from spine_pipeline.audit.ducklake import publish_if_configured
from spine_pipeline.defs.archive import SCHEMA_TABLE, SPINE_RUN, archive_batch, schema_metadata
from spine_pipeline.defs.names import ARCHIVE_JOB, AUDIT_JOB, DEFAULT_OWNER
from spine_pipeline.defs.resources import ArchiveResource
from spine_pipeline.settings import Settings

AUDIT_POOL = "spine_audit_db"


@dg.asset(
    # spine_run: lineage (requests -> runs -> audit); unpartitioned downstream of the
    # partitioned runs, so every partition maps to it and none is required to exist.
    deps=[archive_batch, SPINE_RUN],
    group_name="spine_audit",
    kinds={"duckdb"},
    owners=[DEFAULT_OWNER],
    metadata=schema_metadata(),
    pool=AUDIT_POOL,
    description="The DuckDB audit database: committed manifests ingested incrementally "
    "(hash-checked), submissions, report views and the full-text index.",
)
def audit_database(archive: ArchiveResource, audit_db: DuckDBResource) -> dg.MaterializeResult:
    report = refresh_audit_db(archive.uri, audit_db.database, store=archive.store())
    _, counted = run_sql(audit_db.database, f"SELECT count(*) FROM {SCHEMA_TABLE}")
    # SPINE_AUDIT_CATALOG set: the same manifests also go to the DuckLake catalog.
    lake = publish_if_configured(archive.uri, store=archive.store())
    catalog: dict[str, str | int] = (
        {"catalog_last_seq": lake.last_seq, "catalog": lake.summary()} if lake else {}
    )
    return dg.MaterializeResult(
        metadata={
            **catalog,
            "dagster/row_count": int(counted[0][0]),  # every archived run
            **schema_metadata(),
            "new_manifests": len(report.manifests),
            "last_seq": report.last_seq,
            "rows": dict(report.rows) or "none",
            "runs_in_flight": report.inflight,
            "bytes_verified": report.bytes_verified,
            "snapshot": report.snapshot,
            "seconds": round(report.seconds, 3),
            "summary": report.summary(),
        }
    )


@dg.asset_check(
    asset=audit_database,
    description="No run has been in flight for more than 3 h (it is still polled and archived "
    "if it ends within 24 h; then it is abandoned).",
)
def no_overdue_runs(audit_db: DuckDBResource) -> dg.AssetCheckResult:
    _, rows = run_sql(
        audit_db.database,
        "SELECT run_id, request_name, hours FROM overdue_runs WHERE state = 'in_flight' "
        "ORDER BY hours DESC",
    )
    return dg.AssetCheckResult(
        passed=not rows,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "overdue_runs": len(rows),
            "oldest": dg.MetadataValue.md(
                "\n".join(
                    f"- `{r[0]}` ({r[1] or 'untracked request'}): {r[2]} h" for r in rows[:20]
                )
                or "none"
            ),
        },
    )


BUDGETS = {"daily_credit_budget": "daily", "monthly_credit_budget": "monthly"}
_BUDGET_VARIABLE = {"daily": "SPINE_CREDIT_BUDGET_DAILY", "monthly": "SPINE_CREDIT_BUDGET_MONTHLY"}
_SEVERITY = {"warn": dg.AssetCheckSeverity.WARN, "alert": dg.AssetCheckSeverity.ERROR}


def _budget_check(name: str, period: str) -> dg.AssetChecksDefinition:
    variable = _BUDGET_VARIABLE[period]

    @dg.asset_check(
        asset=audit_database,
        name=name,
        description=f"Credits spent this {'day' if period == 'daily' else 'month'} (UTC) "
        f"against {variable}: WARN from 80 %, ERROR from 100 %; passes when it is not set.",
    )
    def _check(audit_db: DuckDBResource) -> dg.AssetCheckResult:
        env = Budgets.from_env()
        budgets = Budgets(daily=env.daily) if period == "daily" else Budgets(monthly=env.monthly)
        con = connect_readonly(audit_db.database, stemmer=False)
        try:
            statuses = budget_status(con, budgets)
        finally:
            con.close()
        if not statuses:
            return dg.AssetCheckResult(passed=True, description=f"no budget: {variable} not set")
        (status,) = statuses
        description = (
            f"{status.period}: {status.spent:,} of {status.budget:,.0f} credits "
            f"({status.fraction:.0%}) {status.level.upper()}"
        )
        return dg.AssetCheckResult(
            passed=status.level == "ok",
            severity=_SEVERITY.get(status.level, dg.AssetCheckSeverity.WARN),
            description=description,
            metadata={
                "period": status.period,
                "spent": status.spent,
                "budget": status.budget,
                "fraction": round(status.fraction, 4),
                "level": status.level,
            },
        )

    return _check


budget_checks = [_budget_check(name, period) for name, period in BUDGETS.items()]


@dg.asset_check(
    asset=audit_database,
    description="The newest day's credits are not anomalous (the credit_usage_daily rule: "
    "above 3x the trailing 7-day median); WARN when they are.",
)
def no_credit_anomaly(audit_db: DuckDBResource) -> dg.AssetCheckResult:
    _, rows = run_sql(
        audit_db.database,
        "SELECT day, credits, trailing_7d_median, anomaly FROM credit_usage_daily "
        "ORDER BY day DESC LIMIT 1",
    )
    if not rows:
        return dg.AssetCheckResult(passed=True, description="no runs yet")
    day, credits, median, anomaly = rows[0]
    described = (
        f"{day}: {int(credits or 0):,} credits, trailing 7-day median "
        f"{'none' if median is None else f'{median:,.0f}'}"
    )
    return dg.AssetCheckResult(
        passed=not anomaly,
        severity=dg.AssetCheckSeverity.WARN,
        description=("ANOMALY " if anomaly else "") + described,
        metadata={
            "day": str(day),
            "credits": int(credits or 0),
            "trailing_7d_median": float(median) if median is not None else "none",
        },
    )


@dg.asset(
    deps=[audit_database],
    group_name="spine_audit",
    kinds={"html"},
    owners=[DEFAULT_OWNER],
    description="Daily credit-usage report (inline SVG chart, top requests, budgets, "
    "anomalies), written into the archive root under reports/credits/.",
)
def credit_report(archive: ArchiveResource, audit_db: DuckDBResource) -> dg.MaterializeResult:
    html = render_credit_report_html(audit_db.database)
    now = datetime.now(UTC)
    key = credit_report_key(now)
    store = archive.store()
    try:
        store.put_bytes(key, html.encode("utf-8"), content_type="text/html; charset=utf-8")
    except AlreadyExists:
        key = credit_report_key(now, microseconds=True)
        store.put_bytes(key, html.encode("utf-8"), content_type="text/html; charset=utf-8")
    return dg.MaterializeResult(
        metadata={
            "headline": dg.MetadataValue.md(headline_markdown(audit_db.database)),
            "report": dg.MetadataValue.path(store.url(key)),
            "bytes": len(html),
        }
    )


archive_job = dg.define_asset_job(
    ARCHIVE_JOB,
    selection=dg.AssetSelection.assets(archive_batch),
    description="Archive a batch of terminal Spine runs (requested by the poll sensor).",
    executor_def=dg.in_process_executor,  # one op: no step process besides the run worker
)
audit_job = dg.define_asset_job(
    AUDIT_JOB,
    selection=dg.AssetSelection.assets(audit_database),
    description="Ingest newly committed manifests into the DuckDB audit database (requested "
    "by the poll sensor when the archive is ahead; one at a time).",
    executor_def=dg.in_process_executor,
)

AUDIT_STALE_SECONDS = 3600.0  # a refresh "running" this long has probably lost its worker
_IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dataclass(frozen=True)
class AuditLag:
    """Whether the sensor should request a refresh now, and why (for its log line)."""

    request: bool
    reason: str
    ingested_seq: int
    warning: str | None = None


def ingested_seq(instance: dg.DagsterInstance) -> int:
    """The last manifest the audit database ingested, from its latest materialisation."""
    event = instance.get_latest_materialization_event(audit_database.key)
    materialization = event.asset_materialization if event else None
    value = materialization.metadata.get("last_seq") if materialization else None
    try:
        return int(value.value) if value is not None else 0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


def audit_lag(instance: dg.DagsterInstance, committed_seq: int, now: float) -> AuditLag:
    """Request a refresh when manifests wait, none is in progress and none failed just now."""
    seq = ingested_seq(instance)
    if committed_seq <= seq:
        return AuditLag(False, f"audit database at manifest {seq}", seq)
    running = instance.get_run_records(
        dg.RunsFilter(job_name=AUDIT_JOB, statuses=_IN_PROGRESS), limit=1
    )
    if running:
        record = running[0]
        age = now - (record.start_time or record.create_timestamp.timestamp())
        warning = (
            f"audit refresh {record.dagster_run.run_id} has been in progress for "
            f"{age / 60:.0f} min; if its worker died, enable run monitoring (docs/operations.md)"
            if age > AUDIT_STALE_SECONDS
            else None
        )
        return AuditLag(False, "a refresh is already in progress", seq, warning)
    latest = instance.get_run_records(dg.RunsFilter(job_name=AUDIT_JOB), limit=1)
    if latest and latest[0].dagster_run.status == dg.DagsterRunStatus.FAILURE:
        retry = Settings.from_env().audit_retry_seconds  # SPINE_AUDIT_RETRY_SECONDS
        ended = latest[0].end_time or now
        if now - ended < retry:
            return AuditLag(False, f"last refresh failed; retrying after {retry:.0f}s", seq)
    return AuditLag(True, f"manifests {seq + 1}-{committed_seq} to ingest", seq)


def audit_refresh_request(lag: AuditLag, committed_seq: int) -> dg.RunRequest:
    return dg.RunRequest(
        job_name=AUDIT_JOB,
        run_key=f"audit-{committed_seq}-{int(time.time() * 1000)}",
        tags={"spine/manifests": f"{lag.ingested_seq + 1}-{committed_seq}"},
    )


credit_report_schedule = dg.ScheduleDefinition(
    name="daily_credit_report",
    target=dg.AssetSelection.assets(credit_report),
    cron_schedule="0 7 * * *",
    execution_timezone="UTC",
    description="Render the credit-usage report every morning.",
)
