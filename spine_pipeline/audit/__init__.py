"""The DuckDB audit database: ingest from committed manifests, report views, search, SQL.

A plain library (no Dagster): the CLI, the tests and the Dagster definitions all call it.

    refresh_audit_db(archive_uri, db_path) -> IngestReport   # incremental; publishes a snapshot
    rebuild_audit_db(archive_uri, db_path) -> IngestReport   # from the archive alone
    connect_readonly(db_path) -> DuckDBPyConnection          # sandboxed, never a lock error
    credit_report(db_path, by, since) -> Table
    render_credit_report_html(db_path, since=, budgets=) -> str
    headline_markdown(db_path) -> str
    search(db_path, text, block_type, since) -> list[SearchHit]
    cited(db_path, domain) -> list[CitedSource]
    run_sql(db_path, query) -> (columns, rows)

The DuckLake catalog (`SPINE_AUDIT_CATALOG`) is `spine_pipeline.audit.ducklake`:
`publish_catalog(catalog, archive_uri)`, `reading_catalog(catalog, as_of_manifest=N)`.
"""

from __future__ import annotations

from spine_pipeline.audit.duck import AuditError, connect_readonly, load_extension
from spine_pipeline.audit.html_report import render_credit_report_html
from spine_pipeline.audit.ingest import IngestError, IngestReport
from spine_pipeline.audit.refresh import rebuild_audit_db, refresh_audit_db
from spine_pipeline.audit.reports import (
    BY_CHOICES,
    Budgets,
    BudgetStatus,
    Table,
    budget_status,
    credit_report,
    headline_markdown,
    load_report_data,
)
from spine_pipeline.audit.search import CitedSource, SearchHit, cited, search
from spine_pipeline.audit.sql import SqlRefused, run_sql

__all__ = [
    "BY_CHOICES",
    "AuditError",
    "BudgetStatus",
    "Budgets",
    "CitedSource",
    "IngestError",
    "IngestReport",
    "SearchHit",
    "SqlRefused",
    "Table",
    "budget_status",
    "cited",
    "connect_readonly",
    "credit_report",
    "headline_markdown",
    "load_extension",
    "load_report_data",
    "rebuild_audit_db",
    "refresh_audit_db",
    "render_credit_report_html",
    "run_sql",
    "search",
]
