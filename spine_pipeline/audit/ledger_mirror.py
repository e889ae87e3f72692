"""The ledger, mirrored into the audit database: submissions, in-flight runs, webhook events.

`submissions` gets each `ledger/submissions/` record once, by object key; `webhook_events`
each webhook inbox entry once, one row per event id; `ledger_tracked` keeps every tracking
record a refresh has read (they are write-once, so each is fetched once, whatever the
history), and `inflight_runs` is replaced on every refresh by the
ledger's own rule (`archive.ledger.in_flight`, the sensor's look-back window) over them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from spine_pipeline.archive.layout import (
    SUBMISSIONS_PREFIX,
    WEBHOOK_EVENTS_PREFIX,
    parse_submission_day,
    parse_webhook_event_key,
    submissions_day_prefix,
    webhook_events_day_prefix,
)
from spine_pipeline.archive.ledger import (
    Ledger,
    TrackedRun,
    decode_tracked,
    in_flight,
    inflight_since,
    parse_ts,
)
from spine_pipeline.archive.stores import ObjectStore
from spine_pipeline.audit.ddl import run_facts_select
from spine_pipeline.audit.duck import sql_str
from spine_pipeline.audit.ingest import IngestReport, get_state, set_state
from spine_pipeline.webhooks.inbox import decode_record

log = logging.getLogger(__name__)

_TS = pa.timestamp("us", tz="UTC")


def sync_run_facts(con: duckdb.DuckDBPyConnection, run_ids: list[str]) -> None:
    """Re-derive the ledger fallbacks of `run_facts_stored` for runs with new submissions."""
    if not run_ids:
        return
    where = "AND run_id IN (SELECT unnest($ids::VARCHAR[]))"
    con.execute(
        f"""UPDATE run_facts_stored SET request_name = f.request_name, template = f.template,
  submitted_at = f.submitted_at
FROM ({run_facts_select("WHERE r.run_id IN (SELECT unnest($ids::VARCHAR[]))", where)}) f
WHERE run_facts_stored.run_id = f.run_id""",
        {"ids": sorted(set(run_ids))},
    )


def _insert_rows(con: duckdb.DuckDBPyConnection, table: str, rows: list[tuple[Any, ...]]) -> None:
    """Insert `rows` (tuples in the table's column order) with one statement.

    `executemany` runs one INSERT per row: for the 1,000 tracking records of a burst that was
    a fifth of the refresh after it (docs/benchmarks.md, "Burst"). The row builders here keep
    each column to one Python type (or None), so Arrow infers it; DuckDB casts on insert.
    """
    columns = {f"c{i}": pa.array(list(values)) for i, values in enumerate(zip(*rows, strict=True))}
    con.register("_audit_rows", pa.table(columns))
    try:
        con.execute(f"INSERT INTO {table} SELECT * FROM _audit_rows")
    finally:
        con.unregister("_audit_rows")


def _str_list(value: Any) -> list[str] | None:
    if isinstance(value, list):
        return [v if isinstance(v, str) else json.dumps(v) for v in value]
    return None


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _listed_since(
    store: ObjectStore, prefix: str, day_prefix: Callable[[date], str], since: str | None
) -> list[str]:
    """Keys under `prefix`: all of them, or (after a first refresh) those of the day partitions
    from the day before `since` (a late writer's day) to tomorrow (a clock a little ahead)."""
    if since is None:
        return [i.key for i in store.list(prefix)]
    start = date.fromisoformat(since) - timedelta(days=1)
    end = datetime.now(UTC).date() + timedelta(days=1)
    return [
        i.key
        for n in range((end - start).days + 1)
        for i in store.list(day_prefix(start + timedelta(days=n)))
    ]


def _unix_time(value: int | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def mirror_submissions(
    con: duckdb.DuckDBPyConnection, store: ObjectStore, report: IngestReport, bulk: bool = False
) -> None:
    """New `ledger/submissions/` records, by object key (each key is ingested once)."""
    since = get_state(con, "submissions_day")
    listing = _listed_since(store, SUBMISSIONS_PREFIX, submissions_day_prefix, since)
    keys = [k for k in listing if k.endswith(".json")]
    if not keys:
        return
    known = {
        r[0]
        for r in con.execute(
            "SELECT ledger_key FROM submissions WHERE ledger_key IN (SELECT unnest(?))", [keys]
        ).fetchall()
    }
    rows = []
    for key in keys:
        if key in known:
            continue
        raw = store.get_bytes(key)
        text = raw.decode("utf-8", errors="replace")
        try:
            doc = json.loads(text)
        except ValueError:
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        ts = parse_ts(doc.get("submitted_at"))
        rows.append(
            (
                key,
                _opt_str(doc.get("request_name")),
                _opt_str(doc.get("run_id")),
                ts,
                _opt_str(doc.get("outcome")),
                _opt_str(doc.get("error")),
                _opt_str(doc.get("prompt")),
                _opt_str(doc.get("template")),
                _str_list(doc.get("blocks")),
                _opt_str(doc.get("agent_instructions")),
                _str_list(doc.get("files")),
                _opt_str(doc.get("source")),
                _opt_str(doc.get("canvas_id")),
                text,
            )
        )
    days = [d for k in keys if (d := parse_submission_day(k))]
    con.execute("BEGIN TRANSACTION")
    try:
        if rows:
            _insert_rows(con, "submissions", rows)
            if not bulk:
                sync_run_facts(con, [r[2] for r in rows if r[2] is not None])
        if days:
            latest = max(days + ([since] if since else []))
            set_state(con, "submissions_day", latest)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    report.submissions += len(rows)


def mirror_webhook_events(
    con: duckdb.DuckDBPyConnection, store: ObjectStore, report: IngestReport
) -> None:
    """New webhook inbox entries, one row per event id, each entry fetched once.

    Entries are write-once and named by receive day, so a refresh lists the recent days and
    fetches only keys it has not stored. An entry `decode_record` refuses (not written by a
    receiver) is skipped with a warning; an event id already in the table is not added again.
    """
    since = get_state(con, "webhooks_day")
    listing = _listed_since(store, WEBHOOK_EVENTS_PREFIX, webhook_events_day_prefix, since)
    keys = [k for k in listing if parse_webhook_event_key(k) is not None]
    if not keys:
        return
    known = {
        r[0]
        for r in con.execute(
            "SELECT ledger_key FROM webhook_events WHERE ledger_key IN (SELECT unnest(?))", [keys]
        ).fetchall()
    }
    records = []
    for key in keys:
        if key in known:
            continue
        record = decode_record(store.get_bytes(key), key)
        if record is None:
            log.warning("skipping webhook inbox entry %s: not a readable record", key)
            continue
        records.append(record)
    ids = [r.event_id for r in records]
    stored = (
        {
            r[0]
            for r in con.execute(
                "SELECT event_id FROM webhook_events "
                "WHERE event_id IN (SELECT unnest(?::VARCHAR[]))",
                [ids],
            ).fetchall()
        }
        if ids
        else set()
    )
    rows = []
    for record in records:
        if record.event_id in stored:
            continue
        stored.add(record.event_id)
        rows.append(
            (
                record.event_id,
                record.type,
                record.run_id,
                _unix_time(record.created),
                record.received_at,
                record.livemode,
                record.api_version,
                record.duplicate,
                record.duplicate_of,
                record.body_text,
                record.key,
            )
        )
    days = [p.dt for k in keys if (p := parse_webhook_event_key(k))]
    con.execute("BEGIN TRANSACTION")
    try:
        if rows:
            _insert_rows(con, "webhook_events", rows)
        set_state(con, "webhooks_day", max(days + ([since] if since else [])))
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    report.webhook_events += len(rows)


def _tracked_row(key: str, text: str, record: TrackedRun | None) -> tuple[Any, ...]:
    """One `ledger_tracked` row; a record the ledger cannot use is kept as not valid."""
    if record is None:
        return (key, None, None, None, None, None, False, text)
    return (
        key,
        record.run_id,
        record.request_name,
        record.submitted_time,
        record.tracked_time,
        record.source,
        True,
        text,
    )


def refresh_inflight(
    con: duckdb.DuckDBPyConnection, store: ObjectStore, report: IngestReport
) -> None:
    """Replace the in-flight snapshot with the ledger's in-flight runs as of now.

    The same listing, decoding and rule as the poll sensor (`archive.ledger`), with archived
    meaning ingested into `runs`. Tracking records are write-once, so only keys missing
    from `ledger_tracked` are fetched: the S3 requests of a refresh grow with new records,
    not with the look-back window; the others are decoded from their stored text.
    """
    ledger = Ledger(store)
    now = datetime.now(UTC)
    keys = list(ledger.tracked_keys(since=inflight_since(now)))
    stored: dict[str, str] = (
        dict(
            con.execute(
                "SELECT ledger_key, raw_json FROM ledger_tracked "
                "WHERE ledger_key IN (SELECT unnest(?))",
                [keys],
            ).fetchall()
        )
        if keys
        else {}
    )
    fresh = []
    records = []
    for key in keys:
        text = stored.get(key)
        if text is None:
            text = store.get_bytes(key).decode("utf-8", errors="replace")
            record = decode_tracked(text)
            fresh.append(_tracked_row(key, text, record))
        else:
            record = decode_tracked(text)
        if record is not None:
            records.append(record)
    candidates = sorted({r.run_id for r in records})
    archived = {
        r[0]
        for r in con.execute(
            "SELECT DISTINCT run_id FROM runs WHERE run_id IN (SELECT unnest(?::VARCHAR[]))",
            [candidates],
        ).fetchall()
    }
    abandoned = ledger.abandoned() if records else set()
    flying = list(in_flight(records, archived, abandoned).values())
    table = pa.table(
        {
            "run_id": pa.array([t.run_id for t in flying], pa.string()),
            "request_name": pa.array([t.request_name for t in flying], pa.string()),
            "submitted_at": pa.array([t.submitted_time for t in flying], _TS),
            "tracked_at": pa.array([t.tracked_time for t in flying], _TS),
        }
    )
    con.execute("BEGIN TRANSACTION")
    try:
        if fresh:
            _insert_rows(con, "ledger_tracked", fresh)
        con.execute("DELETE FROM inflight_runs")
        con.register("_audit_inflight", table)
        try:
            con.execute(
                "INSERT INTO inflight_runs SELECT run_id, request_name, submitted_at, "
                "tracked_at, ? FROM _audit_inflight",
                [now],
            )
        finally:
            con.unregister("_audit_inflight")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    report.inflight = len(flying)
    report.tracked_read += len(fresh)


def adopt_ledger_records(con: duckdb.DuckDBPyConnection, published: Path, uri: str) -> None:
    """Copy into a reused spare the ledger records the published snapshot already read.

    The spare is one refresh behind; without this it would GET again every submission and
    tracking record the previous refresh read (they are write-once, so the copy is exact).
    A published snapshot of another archive or without the tables is ignored.
    """
    try:
        con.execute(f"ATTACH {sql_str(str(published))} AS _published (READ_ONLY)")
    except duckdb.Error as exc:
        log.warning("not adopting ledger records from %s: %s", published, exc)
        return
    try:
        row = con.execute(
            "SELECT value FROM _published.audit_state WHERE key = 'archive_uri'"
        ).fetchone()
        if not row or row[0] != uri:
            return
        have = {
            r[0]: set(r[1])
            for r in con.execute(
                "SELECT table_name, list(column_name) FROM duckdb_columns() "
                "WHERE database_name = '_published' GROUP BY table_name"
            ).fetchall()
        }
        con.execute("BEGIN TRANSACTION")
        try:
            for table in ("submissions", "ledger_tracked", "webhook_events"):
                if table not in have:
                    continue
                cols = ", ".join(
                    f'"{c}"'
                    for (c,) in con.execute(
                        "SELECT column_name FROM duckdb_columns() WHERE table_name = ? "
                        "AND database_name = current_database() ORDER BY column_index",
                        [table],
                    ).fetchall()
                    if c in have[table]
                )
                added = con.execute(
                    f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _published.{table} "
                    f"WHERE ledger_key NOT IN (SELECT ledger_key FROM {table}) "
                    "RETURNING run_id"
                ).fetchall()
                if table == "submissions":
                    sync_run_facts(con, [r[0] for r in added if r[0] is not None])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    finally:
        con.execute("DETACH _published")


# ----------------------------------------------------------------------------- entry points
