"""Audit wiring: the DuckDB audit database refresh and the daily credit report.

The refresh runs after every archive batch (it is part of `archive_spine_runs`) and is the
only writer of the audit database: its op is in the `spine_audit_db` pool, limited to one
at a time (see docs/operations.md). Readers never block: the library publishes snapshots.
"""

from datetime import UTC, datetime

import dagster as dg
from dagster_duckdb import DuckDBResource

from spine_pipeline.archive.store import AlreadyExists
from spine_pipeline.audit import (
    headline_markdown,
    refresh_audit_db,
    render_credit_report_html,
    run_sql,
)
from spine_pipeline.defs.archive import archive_batch
from spine_pipeline.defs.resources import ArchiveResource

AUDIT_POOL = "spine_audit_db"


@dg.asset(
    deps=[archive_batch],
    group_name="spine_audit",
    kinds={"duckdb"},
    pool=AUDIT_POOL,
    description="The DuckDB audit database: committed manifests ingested incrementally "
    "(hash-checked), submissions, report views and the full-text index.",
)
def audit_database(archive: ArchiveResource, audit_db: DuckDBResource) -> dg.MaterializeResult:
    report = refresh_audit_db(archive.uri, audit_db.database, store=archive.store())
    return dg.MaterializeResult(
        metadata={
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


@dg.asset(
    deps=[audit_database],
    group_name="spine_audit",
    kinds={"html"},
    description="Daily credit-usage report (inline SVG chart, top requests, budgets, "
    "anomalies), written into the archive root under reports/credits/.",
)
def credit_report(archive: ArchiveResource, audit_db: DuckDBResource) -> dg.MaterializeResult:
    html = render_credit_report_html(audit_db.database)
    now = datetime.now(UTC)
    key = f"reports/credits/{now:%Y-%m-%d}/credits-{now:%H%M%S}.html"
    store = archive.store()
    try:
        store.put_bytes(key, html.encode("utf-8"), content_type="text/html; charset=utf-8")
    except AlreadyExists:
        key = f"reports/credits/{now:%Y-%m-%d}/credits-{now:%H%M%S%f}.html"
        store.put_bytes(key, html.encode("utf-8"), content_type="text/html; charset=utf-8")
    return dg.MaterializeResult(
        metadata={
            "headline": dg.MetadataValue.md(headline_markdown(audit_db.database)),
            "report": dg.MetadataValue.path(store.url(key)),
            "bytes": len(html),
        }
    )


archive_job = dg.define_asset_job(
    "archive_spine_runs",
    selection=dg.AssetSelection.assets(archive_batch, audit_database),
    description="Archive a batch of terminal Spine runs (requested by the poll sensor), "
    "then refresh the audit database.",
)
credit_report_schedule = dg.ScheduleDefinition(
    name="daily_credit_report",
    target=dg.AssetSelection.assets(credit_report),
    cron_schedule="0 7 * * *",
    execution_timezone="UTC",
    description="Render the credit-usage report every morning.",
)
