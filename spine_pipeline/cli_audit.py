"""Audit commands of `spine-pipeline`: sql, search, cited, report credits, audit rebuild/refresh.

Registered on the main group by `spine_pipeline/cli.py`. Every expected failure (missing
database, broken archive, refused SQL, a timeout) is one line on stderr and exit code 1; bad
SQL keeps DuckDB's own lines (message, candidates, caret), as docs/contracts.md section 7 says.
Files written (`sql --output`, `report credits --html`) are private (0600 whatever the
umask), never written through a symlink, and appear whole or not at all.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import click

from spine_pipeline.cli_errors import expected_errors, fail
from spine_pipeline.private_file import atomic_output
from spine_pipeline.progress import progress_display

if TYPE_CHECKING:
    from spine_pipeline.audit.sql import SqlStream, Written

DATE = click.DateTime(formats=["%Y-%m-%d"])


def _db(db: str | None) -> str:
    from spine_pipeline.settings import Settings

    return db or Settings.from_env().audit_db


def _day(value: datetime | None) -> date | None:
    return value.date() if value is not None else None


_db_option = click.option(
    "--db", default=None, metavar="PATH", help="audit database (default: $SPINE_AUDIT_DB)"
)


@contextlib.contextmanager
def private_output(path: Path) -> Iterator[BinaryIO]:
    """A binary file for `path`, written by `private_file.atomic_output` (0600, atomic); a
    symlink at `path` is one error line, exit 1."""
    if path.is_symlink():
        fail(f"refusing to write {path}: it is a symlink")
    with atomic_output(path) as f:
        yield f


class _Echo(io.TextIOBase):
    """stdout through click.echo, for the streaming writers."""

    def write(self, text: str) -> int:
        click.echo(text, nl=False)
        return len(text)


# ----------------------------------------------------------------------------- audit


@click.group("audit")
def audit() -> None:
    """Build the DuckDB audit database from the archive."""


def _print_ingest(report: Any) -> None:
    click.echo(f"{report.db_path}: {report.summary()}")


@audit.command("rebuild")
@click.option("--archive", default=None, metavar="URI", help="default: $SPINE_ARCHIVE_URI")
@_db_option
@expected_errors
def audit_rebuild(archive: str | None, db: str | None) -> None:
    """Recreate the audit database from the archive's manifests alone."""
    from spine_pipeline.audit import rebuild_audit_db

    with progress_display() as progress:
        report = rebuild_audit_db(archive, _db(db), progress=progress)
    _print_ingest(report)


@audit.command("refresh")
@click.option("--archive", default=None, metavar="URI", help="default: $SPINE_ARCHIVE_URI")
@_db_option
@expected_errors
def audit_refresh(archive: str | None, db: str | None) -> None:
    """Ingest manifests committed since the last refresh."""
    from spine_pipeline.audit import refresh_audit_db
    from spine_pipeline.audit.ducklake import publish_if_configured

    with progress_display() as progress:
        report = refresh_audit_db(archive, _db(db), progress=progress)
    _print_ingest(report)
    published = publish_if_configured(archive)  # SPINE_AUDIT_CATALOG set: publish there too
    if published is not None:
        click.echo(f"{published.catalog}: {published.summary()}")


@audit.command("publish")
@click.option("--archive", default=None, metavar="URI", help="default: $SPINE_ARCHIVE_URI")
@click.option(
    "--catalog",
    default=None,
    metavar="ducklake:...",
    help="DuckLake catalog (default: $SPINE_AUDIT_CATALOG)",
)
@click.option("--rebuild", is_flag=True, help="recreate a catalog file from the manifests alone")
@expected_errors
def audit_publish(archive: str | None, catalog: str | None, rebuild: bool) -> None:
    """Publish committed manifests to the DuckLake catalog (docs/audit.md)."""
    from spine_pipeline.audit.ducklake import publish_catalog

    report = publish_catalog(catalog, archive, rebuild=rebuild)
    click.echo(f"{report.catalog}: {report.summary()}")


# ----------------------------------------------------------------------------- sql


@click.command("sql")
@click.argument("query")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json", "parquet"]),
    default="table",
    show_default=True,
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write to FILE instead of stdout (required for parquet)",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="stop the query after this long (its output included)",
)
@click.option(
    "--max-rows",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="at most N rows (default: 100,000 on stdout, no limit with --output)",
)
@_db_option
@expected_errors
def sql(
    query: str,
    fmt: str,
    output: Path | None,
    timeout: float,
    max_rows: int | None,
    db: str | None,
) -> None:
    """Run one read-only SQL query over the audit database.

    A query is SELECT, WITH, VALUES, DESCRIBE, SHOW, SUMMARIZE or EXPLAIN of one. Results
    stream: --output FILE takes any size in bounded memory.
    """
    from spine_pipeline.audit import sql as sqlmod

    mapped = _dot_command(query)
    if mapped is None:
        return
    query = mapped
    if fmt == "parquet" and output is None:
        raise click.UsageError("--format parquet needs --output FILE")
    if max_rows is None and output is None:
        max_rows = sqlmod.DEFAULT_MAX_ROWS
    try:
        with sqlmod.stream_sql(_db(db), query, timeout=timeout) as stream:
            if output is None:
                written = _sql_to_stdout(stream, fmt, max_rows)
            else:
                with private_output(output) as f:
                    written = _sql_to_file(stream, fmt, max_rows, f)
                click.echo(f"wrote {written.rows} row(s) to {output}", err=True)
    except sqlmod.SqlError as exc:
        fail(str(exc))  # DuckDB's whole text: its candidates and caret are the help
    if written.capped:
        more = "--output FILE" if output is None else "a larger --max-rows"
        click.echo(
            f"note: showing the first {written.rows:,} rows (--max-rows); use {more} for all",
            err=True,
        )


SQL_HELP = (
    "sql takes one read-only SQL query: SHOW TABLES, DESCRIBE runs, SELECT ... FROM runs "
    "(also .tables, .schema [TABLE]; docs/audit.md lists the tables)"
)
_ALL_COLUMNS = (
    "SELECT table_name, column_name, data_type FROM duckdb_columns() WHERE NOT internal "
    "ORDER BY table_name, column_index"
)


def _dot_command(query: str) -> str | None:
    """The SQL a duckdb-shell dot command stands for (`.tables`, `.schema [T]`,
    `.describe T`), said on stderr so the user learns it; `.help` prints what to type and
    gives None (nothing to run); any other dot command is bad usage (exit 2). A first-time
    user types them out of habit and would otherwise get a parser error at the dot."""
    from spine_pipeline.audit.sql import visible

    text = query.strip().rstrip(";").strip()
    if not text.startswith("."):
        return query
    command, _, rest = text.partition(" ")
    table = rest.strip()
    if command == ".help":
        click.echo(SQL_HELP)
        return None
    if command == ".describe" and not table:
        raise click.UsageError(f".describe needs a table, e.g. .describe runs; {SQL_HELP}")
    ident = '"' + table.replace('"', '""') + '"'
    sql = {
        ".tables": "SHOW TABLES",
        ".schema": f"DESCRIBE {ident}" if table else _ALL_COLUMNS,
        ".describe": f"DESCRIBE {ident}",
    }.get(command)
    if sql is None:
        raise click.UsageError(f"{command[:40]!r} is not available here; {SQL_HELP}")
    click.echo(visible(f"note: {command} is {sql}"), err=True)
    return sql


def _sql_to_stdout(stream: SqlStream, fmt: str, max_rows: int | None) -> Written:
    from spine_pipeline.audit import sql as sqlmod

    if fmt == "table":
        rows, written = sqlmod.collect(stream, max_rows)
        click.echo(sqlmod.format_table(stream.columns, rows), nl=False)
        return written
    writer = sqlmod.write_csv if fmt == "csv" else sqlmod.write_json
    return writer(stream, _Echo(), max_rows)


def _sql_to_file(stream: SqlStream, fmt: str, max_rows: int | None, f: BinaryIO) -> Written:
    from spine_pipeline.audit import sql as sqlmod

    if fmt == "parquet":
        return sqlmod.write_parquet(stream, f)
    text = io.TextIOWrapper(f, encoding="utf-8", newline="", write_through=False)
    try:
        if fmt == "table":
            rows, written = sqlmod.collect(stream, max_rows)
            text.write(sqlmod.format_table(stream.columns, rows))
        else:
            writer = sqlmod.write_csv if fmt == "csv" else sqlmod.write_json
            written = writer(stream, text, max_rows)
        text.flush()
    finally:
        text.detach()
    return written


# ----------------------------------------------------------------------------- search


@click.command("search")
@click.argument("text")
@click.option(
    "--type",
    "block_type",
    default=None,
    metavar="BLOCK_TYPE",
    help="only this block type (e.g. web-research-block), or final_output / source_title",
)
@click.option("--since", type=DATE, default=None, help="runs terminal on or after YYYY-MM-DD")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@_db_option
@expected_errors
def search(
    text: str, block_type: str | None, since: datetime | None, limit: int, db: str | None
) -> None:
    """Full-text search over block content, final outputs and source titles.

    Every word must match (stemmed); put words in double quotes for an exact phrase.
    """
    from spine_pipeline.audit import search as do_search
    from spine_pipeline.audit.sql import visible

    _check_search_type(_db(db), block_type)
    hits = do_search(_db(db), text, block_type=block_type, since=_day(since), limit=limit)
    if not hits:
        click.echo("no matches")
        return
    for h in hits:
        if h.kind == "final_output":
            where = "final_output"
        else:
            where = f"block {h.block_id} {h.block_type or '?'}"
            if h.block_name:
                where += f" {h.block_name!r}"
            if h.kind == "source_title":
                where += " (source title)"
        # archived content may carry terminal escape sequences: shown, never sent raw
        click.echo(visible(f"{h.run_id}  {where}  score={h.score:.2f}"))
        click.echo(visible(f"    {h.snippet}"))
        click.echo(visible(f"    {h.canvas_url or '(no canvas)'}"))


#: What `search --type` takes besides a block type: the other documents searched.
SEARCH_DOCUMENT_KINDS = ("final_output", "source_title")


def _check_search_type(db_path: str, block_type: str | None) -> None:
    """A `--type` that names nothing searchable is bad usage (exit 2, the valid types
    named), not a silent "no matches". A type Spine added after this release is valid once
    the archive holds a block of it."""
    from spine_pipeline.audit.duck import AuditError, reading
    from spine_pipeline.spine.models import BLOCK_TYPES

    valid = (*BLOCK_TYPES, *SEARCH_DOCUMENT_KINDS)
    if block_type is None or block_type in valid:
        return
    try:
        with reading(db_path) as con:
            seen = con.execute("SELECT 1 FROM blocks WHERE type = ? LIMIT 1", [block_type])
            held = seen.fetchone() is not None
    except AuditError:  # no database yet: the type is what is wrong first
        held = False
    if not held:
        raise click.BadParameter(
            f"{block_type!r:.80} is not a block type; use one of {', '.join(valid)}",
            param_hint="'--type'",
        )


@click.command("cited")
@click.argument("domain")
@click.option("--since", type=DATE, default=None, help="runs terminal on or after YYYY-MM-DD")
@_db_option
@expected_errors
def cited(domain: str, since: datetime | None, db: str | None) -> None:
    """Runs and blocks whose sources cite DOMAIN (or its subdomains)."""
    from spine_pipeline.audit import cited as do_cited
    from spine_pipeline.audit.sql import format_table

    rows = do_cited(_db(db), domain, since=_day(since))
    if not rows:
        click.echo(f"no sources cite {domain}")
        return
    click.echo(
        format_table(
            ["run_id", "block_id", "block_type", "url", "title", "canvas_url"],
            [(r.run_id, r.block_id, r.block_type, r.url, r.title, r.canvas_url) for r in rows],
            width=40,
            full=("run_id", "block_id", "canvas_url"),
        ),
        nl=False,
    )
    click.echo(f"{len({r.run_id for r in rows})} run(s), {len(rows)} citation(s)")


# ----------------------------------------------------------------------------- report


@click.group("report")
def report() -> None:
    """Reports over the audit database."""


@report.command("credits")
@click.option(
    "--by",
    type=click.Choice(["day", "template", "model", "request"]),
    default="day",
    show_default=True,
)
@click.option("--since", type=DATE, default=None, help="from YYYY-MM-DD (UTC day)")
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="also write the self-contained HTML report to FILE",
)
@click.option("--budget-daily", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--budget-monthly", type=click.FloatRange(min=0, min_open=True), default=None)
@_db_option
@expected_errors
def report_credits(
    by: str,
    since: datetime | None,
    html_path: Path | None,
    budget_daily: float | None,
    budget_monthly: float | None,
    db: str | None,
) -> None:
    """Credit usage by day, template, model or request, with budgets and anomalies.

    Budgets default to $SPINE_CREDIT_BUDGET_DAILY / $SPINE_CREDIT_BUDGET_MONTHLY.
    """
    from spine_pipeline.audit.duck import reading
    from spine_pipeline.audit.html_report import render_report_data_html
    from spine_pipeline.audit.reports import Budgets, credit_report_table, report_data
    from spine_pipeline.audit.sql import format_table

    budgets = Budgets.from_env(budget_daily, budget_monthly)
    with reading(_db(db)) as con:
        table = credit_report_table(con, by, _day(since))
        data = report_data(con, since=_day(since), budgets=budgets)
    click.echo(format_table(table.columns, table.rows), nl=False)
    if by == "model":
        click.echo("note: Spine reports run totals only; a run counts under every model it used.")
    click.echo(f"total: {data.total_credits:,} credits over {data.total_runs:,} runs")
    for b in data.budget_status:
        spent = f"{b.spent:,} of {b.budget:,.0f} ({b.fraction:.0%})"
        click.echo(f"budget {b.period}: {spent} {b.level.upper()}")
    if data.anomalies.rows:
        days = sorted({str(r[0]) for r in data.anomalies.rows})
        click.echo(f"anomalous days (credits > 3x trailing 7-day median): {', '.join(days)}")
    if html_path is not None:
        from spine_pipeline.audit.html_report import page_links
        from spine_pipeline.evidence.show import page_dirs
        from spine_pipeline.settings import Settings

        settings = Settings.from_env()
        dirs = page_dirs(settings.archive_uri, settings.dagster_home)
        pages = page_links(data.run_details, html_path, dirs)
        with private_output(html_path) as f:
            f.write(render_report_data_html(data, pages).encode("utf-8"))
        click.echo(f"wrote {html_path}", err=True)
