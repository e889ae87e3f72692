"""Committed manifests -> the audit database, incrementally, idempotently, verified.

Per new manifest, in one transaction: the chain link is checked (`ManifestLog`), every
listed file is fetched once, its size and sha256 compared with the manifest, and only then
parsed and inserted; the manifest row and the search postings of its runs go in with it.
A manifest is therefore ingested wholly or not at all, and never twice (the `manifests`
primary key and an explicit check of the run ids refuse a repeat). A rebuild, unseen until
published, takes BULK_GROUP manifests per transaction. Only the keys a
manifest lists are read, never a glob, so files of uncommitted batches stay invisible.

Bytes are fetched once and the very bytes that were hashed are parsed (no hash-then-read
race): locally from the file, on S3 by DuckDB's httpfs (`read_blob`) with a secret built
from boto3's credential chain.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from spine_pipeline.archive.ledger import SUBMISSIONS, TRACKED, Ledger, parse_ts
from spine_pipeline.archive.manifest import (
    Manifest,
    ManifestError,
    ManifestLog,
    manifest_key,
    sha256_hex,
)
from spine_pipeline.archive.store import ObjectStore, open_store
from spine_pipeline.audit.duck import AuditError, configure_s3, load_extension, sql_str
from spine_pipeline.audit.schema import (
    DATA_TABLES,
    data_columns,
    ensure_schema,
    recount_search_stats,
    refill_run_facts,
    run_facts_select,
)
from spine_pipeline.audit.snapshot import paths_for, prepare_spare, publish, writer_lock
from spine_pipeline.settings import Settings

log = logging.getLogger(__name__)

_DT = re.compile(r"/dt=(\d{4}-\d{2}-\d{2})/")
_SUB_DT = re.compile(r"^ledger/submissions/dt=(\d{4}-\d{2}-\d{2})/")
INFLIGHT_LOOKBACK_DAYS = 3


class IngestError(AuditError):
    """The archive cannot be ingested as it is (broken chain, tampered file, duplicate)."""


@dataclass
class IngestReport:
    """What one refresh did: what Dagster shows as metadata and the CLI prints."""

    db_path: str
    manifests: list[int] = field(default_factory=list)  # new to readers
    caught_up: list[int] = field(default_factory=list)  # re-ingested into the reused spare
    rows: Counter[str] = field(default_factory=Counter)
    submissions: int = 0
    inflight: int = 0
    tracked_read: int = 0  # tracking records fetched (only those no earlier refresh read)
    last_seq: int = 0
    snapshot: str = ""  # new | reused | copied
    seconds: float = 0.0
    bytes_verified: int = 0

    def summary(self) -> str:
        rows = ", ".join(f"{t}={n}" for t, n in sorted(self.rows.items()) if n)
        return (
            f"ingested {len(self.manifests)} manifest(s) (last seq {self.last_seq}), "
            f"{self.submissions} submission record(s), {self.inflight} run(s) in flight; "
            f"rows: {rows or 'none'}; {self.seconds:.2f} s"
        )


def _normal_uri(uri: str) -> str:
    uri = uri.strip()
    if uri.lower().startswith("s3://"):
        return uri.rstrip("/")
    return str(Path(uri.removeprefix("file://")).absolute())


class _Fetcher:
    """Gets the bytes of an archive object: from disk, or from S3 through DuckDB httpfs."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._con: duckdb.DuckDBPyConnection | None = None

    def get(self, key: str) -> bytes:
        url = self.store.url(key)
        if not url.startswith("s3://"):
            try:
                return Path(url).read_bytes()
            except FileNotFoundError:
                raise IngestError(f"{key}: listed by a manifest but missing") from None
        if self._con is None:
            self._con = duckdb.connect(":memory:")
            configure_s3(self._con)
        try:
            row = self._con.execute("SELECT content FROM read_blob(?)", [url]).fetchone()
        except duckdb.Error as exc:
            msg = str(exc).splitlines()[0]
            if "404" in msg or "No files found" in msg or "not found" in msg.lower():
                raise IngestError(f"{key}: listed by a manifest but missing") from None
            raise IngestError(f"{key}: could not read from S3 ({msg})") from None
        return bytes(row[0]) if row and row[0] is not None else b""

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


def _state(con: duckdb.DuckDBPyConnection, key: str) -> str | None:
    row = con.execute("SELECT value FROM audit_state WHERE key = ?", [key]).fetchone()
    return row[0] if row else None


def _set_state(con: duckdb.DuckDBPyConnection, key: str, value: str) -> None:
    con.execute("INSERT OR REPLACE INTO audit_state VALUES (?, ?)", [key, value])


def _anchor(con: duckdb.DuckDBPyConnection) -> tuple[int, str | None]:
    row = con.execute("SELECT seq, sha256 FROM manifests ORDER BY seq DESC LIMIT 1").fetchone()
    return (int(row[0]), str(row[1])) if row else (0, None)


def _new_manifests(con: duckdb.DuckDBPyConnection, store: ObjectStore) -> list[Manifest]:
    """Manifests after the last ingested one, with the chain checked from that anchor.

    The anchor itself is re-read and re-hashed: a manifest changed after it was ingested is
    refused here rather than silently chained onto. A rebuild checks the chain from seq 1.
    """
    last_seq, last_sha = _anchor(con)
    try:
        if last_seq == 0:
            manifest_log = ManifestLog(store)
        else:
            key = manifest_key(last_seq)
            if not store.exists(key):
                raise IngestError(f"{key}: ingested earlier but now missing from the archive")
            if sha256_hex(store.get_bytes(key)) != last_sha:
                raise IngestError(f"{key}: changed since it was ingested (sha256 mismatch)")
            stub = Manifest(last_seq, "", "", None, "", (), (), (), sha256=last_sha)
            manifest_log = ManifestLog(store, manifests=[stub])
        return manifest_log.refresh()
    except ManifestError as exc:
        raise IngestError(f"refusing to ingest: {exc}") from None


def _verified_table(fetcher: _Fetcher, manifest: Manifest, entry: Any) -> pa.Table:
    data = fetcher.get(entry.key)
    if len(data) != entry.bytes:
        raise IngestError(
            f"{entry.key}: size {len(data)} does not match manifest {manifest.seq} "
            f"({entry.bytes} bytes); refusing to ingest"
        )
    actual = hashlib.sha256(data).hexdigest()
    if actual != entry.sha256:
        raise IngestError(
            f"{entry.key}: sha256 {actual} does not match manifest {manifest.seq} "
            f"({entry.sha256}); refusing to ingest"
        )
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as exc:
        raise IngestError(f"{entry.key}: not readable Parquet ({exc})") from None
    if table.num_rows != entry.rows:
        raise IngestError(f"{entry.key}: {table.num_rows} rows, manifest says {entry.rows}")
    return table


def _insert(
    con: duckdb.DuckDBPyConnection, table: str, arrow: pa.Table, dt: str | None, seq: int
) -> None:
    cols = [c for c in data_columns(table) if c in arrow.column_names]
    names = ", ".join(f'"{c}"' for c in cols)
    con.register("_audit_src", arrow.select(cols))
    try:
        con.execute(
            f"INSERT INTO {table} ({names}, dt, manifest_seq) "
            f"SELECT {names}, ?::DATE, ? FROM _audit_src",
            [dt, seq],
        )
    finally:
        con.unregister("_audit_src")


def _load_manifest(
    con: duckdb.DuckDBPyConnection,
    fetcher: _Fetcher,
    manifest: Manifest,
    report: IngestReport,
    bulk: bool,
) -> Counter[str]:
    """Verify and insert the manifest's files and its row (in the caller's transaction)."""
    run_ids = set(manifest.run_ids)
    seen_runs: set[str] = set()
    rows: Counter[str] = Counter()
    for entry in manifest.files:
        if entry.table not in DATA_TABLES:
            log.warning("manifest %s: skipping unknown table %s", manifest.seq, entry.key)
            continue
        arrow = _verified_table(fetcher, manifest, entry)
        report.bytes_verified += entry.bytes
        file_runs = set(arrow.column("run_id").to_pylist()) if arrow.num_rows else set()
        if not file_runs <= run_ids:
            extra = sorted(str(r) for r in file_runs - run_ids)[:3]
            raise IngestError(
                f"{entry.key}: rows of runs the manifest does not name ({', '.join(extra)})"
            )
        if entry.table == "runs":
            seen_runs |= file_runs
            if not bulk:
                _refuse_repeated_runs(con, manifest.seq, arrow)
        m = _DT.search(entry.key)
        _insert(con, entry.table, arrow, m.group(1) if m else None, manifest.seq)
        rows[entry.table] += arrow.num_rows
    if seen_runs != run_ids:
        missing = sorted(run_ids - seen_runs)[:3]
        raise IngestError(f"manifest {manifest.seq}: no runs row for run(s) {', '.join(missing)}")
    con.execute(
        "INSERT INTO manifests VALUES (?, ?, ?::TIMESTAMPTZ, ?, ?, ?, ?, ?, ?, now())",
        [
            manifest.seq,
            manifest.batch_id,
            manifest.committed_at or None,
            manifest.sha256,
            manifest.prev_sha256,
            len(manifest.runs),
            len(manifest.files),
            len(manifest.artifacts),
            manifest.schema_version,
        ],
    )
    return rows


# A rebuild (a new file nobody reads until it is published) ingests this many manifests
# per transaction and indexes them together: per-statement and per-commit costs were about
# 40 % of a rebuild's time at one manifest per transaction.
BULK_GROUP = 50


def _ingest_group(
    con: duckdb.DuckDBPyConnection,
    fetcher: _Fetcher,
    group: list[Manifest],
    report: IngestReport,
    published_seq: int,
    bulk: bool = False,
) -> None:
    """Ingest manifests in one transaction: all of them or none.

    A refresh passes one manifest at a time, so each is visible wholly or not at all; a
    rebuild passes up to BULK_GROUP (nothing is published until every one is in).
    """
    first, last = group[0].seq, group[-1].seq
    per_manifest: list[Counter[str]] = []
    con.execute("BEGIN TRANSACTION")
    try:
        for manifest in group:
            per_manifest.append(_load_manifest(con, fetcher, manifest, report, bulk))
        if not bulk:
            con.execute(
                "INSERT INTO run_facts_stored "
                f"{run_facts_select('WHERE r.manifest_seq BETWEEN $first AND $last')}",
                {"first": first, "last": last},
            )
        docs = _index_manifests(con, first, last, bulk)
        _set_state(con, "last_seq", str(last))
        con.execute("COMMIT")
    except duckdb.ConstraintException as exc:
        con.execute("ROLLBACK")
        which = f"manifest {first}" if first == last else f"manifests {first}-{last}"
        raise IngestError(
            f"{which}: would duplicate rows already ingested "
            f"({str(exc).splitlines()[0]}); refusing to ingest"
        ) from None
    except BaseException:
        con.execute("ROLLBACK")
        raise
    report.last_seq = last
    for manifest, rows in zip(group, per_manifest, strict=True):
        if manifest.seq <= published_seq:
            report.caught_up.append(manifest.seq)
        else:
            report.manifests.append(manifest.seq)
            report.rows.update(rows)
    if last > published_seq:  # a group is all new or (a refresh's single manifest) not
        report.rows["search_docs"] += docs


def _refuse_repeated_runs(con: duckdb.DuckDBPyConnection, seq: int, runs: pa.Table) -> None:
    """Refuse a manifest whose runs file repeats a run, or names one already ingested.

    `runs` has no primary key (schema.UNKEYED_TABLES), so this keeps each run exactly once:
    a semi-join of the file's ids against the run_id column (6 ms at 100,000 runs). A
    rebuild checks once at the end instead (`_refuse_repeated_runs_bulk`).
    """
    ids = runs.column("run_id").to_pylist()
    repeated = sorted(str(r) for r, n in Counter(ids).items() if n > 1)
    if not repeated:
        con.register("_audit_ids", runs.select(["run_id"]))
        try:
            repeated = [
                r[0]
                for r in con.execute(
                    "SELECT run_id FROM runs WHERE run_id IN (SELECT run_id FROM _audit_ids) "
                    "ORDER BY run_id LIMIT 3"
                ).fetchall()
            ]
        finally:
            con.unregister("_audit_ids")
    if repeated:
        raise IngestError(
            f"manifest {seq}: would duplicate rows already ingested (run "
            f"{', '.join(repeated[:3])}); refusing to ingest"
        )


def _refuse_repeated_runs_bulk(con: duckdb.DuckDBPyConnection) -> None:
    """The rebuild's check, once over the whole table (nothing is published if it fails)."""
    repeated = con.execute(
        "SELECT run_id, max(manifest_seq) FROM runs GROUP BY run_id HAVING count(*) > 1 "
        "ORDER BY 2, 1 LIMIT 3"
    ).fetchall()
    if repeated:
        raise IngestError(
            f"manifest {repeated[0][1]}: would duplicate rows already ingested (run "
            f"{', '.join(r[0] for r in repeated)}); refusing to ingest"
        )


def _row_shift(con: duckdb.DuckDBPyConnection, table: str, first: int, last: int) -> int | None:
    """What turns the row ids of the manifests' rows in `table` into their committed ones.

    Inside the ingest transaction DuckDB numbers new rows from a large offset; at commit they
    are appended in order after the rows already there (the tables are append-only), so the
    committed row id is the count of the other rows plus the offset within these manifests.
    """
    # count(*) of a table is known without a scan; the filter on manifest_seq is pruned to
    # the last row groups (the column grows with insertion order).
    row = con.execute(
        f"SELECT (SELECT count(*) FROM {table}) - count(*) - min(rowid) FROM {table} "
        "WHERE manifest_seq BETWEEN $first AND $last",
        {"first": first, "last": last},
    ).fetchone()
    return int(row[0]) if row and row[0] is not None else None


def _index_manifests(
    con: duckdb.DuckDBPyConnection, first: int, last: int, bulk: bool = False
) -> int:
    """Add the manifests' block contents, final outputs and source titles to the index.

    DuckDB's `PRAGMA create_fts_index` rebuilds from scratch (about 20 s per 200,000
    documents here), so the index is kept incrementally in tables of the same shape, with the
    fts extension's Porter stemmer; see docs/decisions.md. Each document keeps a pointer to
    the row of its text, and the per-term document frequencies and corpus statistics BM25
    needs are updated here, in the manifest's transaction (`bulk`, a rebuild nobody reads
    until it is published, leaves them to one recount at the end).
    """
    shift = {t: _row_shift(con, t, first, last) for t in ("blocks", "runs", "block_sources")}
    con.execute(
        """CREATE OR REPLACE TEMP TABLE _new_docs AS
SELECT (SELECT coalesce(max(doc_id), 0) FROM search_docs) + row_number() OVER () AS doc_id, *
FROM (
  SELECT 'block' AS kind, run_id, block_id, ordinal AS block_ordinal, NULL::BIGINT AS source_idx,
    type AS block_type, dt, audit_words(content) AS words, rowid + $bs AS text_row,
    rowid + $bs AS block_row
  FROM blocks WHERE manifest_seq BETWEEN $first AND $last AND content IS NOT NULL
  UNION ALL
  SELECT 'final_output', run_id, NULL, NULL, NULL, NULL, dt, audit_words(final_output),
    rowid + $rs, NULL
  FROM runs WHERE manifest_seq BETWEEN $first AND $last AND final_output IS NOT NULL
  UNION ALL
  SELECT 'source_title', s.run_id, s.block_id, s.block_ordinal, s.idx, b.type, s.dt,
    audit_words(s.title), s.rowid + $ss, b.rowid + $bs
  FROM block_sources s LEFT JOIN blocks b
    ON b.run_id = s.run_id AND b.ordinal = s.block_ordinal
    AND b.manifest_seq BETWEEN $first AND $last
  WHERE s.manifest_seq BETWEEN $first AND $last AND s.title IS NOT NULL
)""",
        {
            "first": first,
            "last": last,
            "bs": shift["blocks"],
            "rs": shift["runs"],
            "ss": shift["block_sources"],
        },
    )
    con.execute(
        "INSERT INTO search_docs (doc_id, kind, run_id, block_id, block_ordinal, source_idx, "
        "block_type, dt, len, text_row, block_row) "
        "SELECT doc_id, kind, run_id, block_id, block_ordinal, source_idx, block_type, dt, "
        "len(words), text_row, block_row FROM _new_docs"
    )
    postings = """
WITH tok AS (SELECT doc_id, unnest(words) AS word FROM _new_docs),
stems AS (SELECT word, audit_term(word) AS term FROM (SELECT DISTINCT word FROM tok))
SELECT term, doc_id, count(*) AS tf FROM tok JOIN stems USING (word) GROUP BY term, doc_id"""
    if bulk:
        con.execute(f"INSERT INTO search_postings {postings}")
    else:
        con.execute(f"CREATE OR REPLACE TEMP TABLE _new_postings AS {postings}")
        con.execute("INSERT INTO search_postings SELECT term, doc_id, tf FROM _new_postings")
        con.execute(
            """CREATE OR REPLACE TEMP TABLE _new_df AS
SELECT term, count(*) AS df FROM _new_postings GROUP BY term"""
        )
        con.execute(
            "UPDATE search_terms SET df = search_terms.df + n.df FROM _new_df n "
            "WHERE search_terms.term = n.term"
        )
        con.execute(
            "INSERT INTO search_terms SELECT term, df FROM _new_df "
            "WHERE term NOT IN (SELECT term FROM search_terms)"
        )
        con.execute(
            "UPDATE search_stats SET docs = docs + n, total_len = total_len + l "
            "FROM (SELECT count(*) AS n, coalesce(sum(len(words)), 0) AS l FROM _new_docs)"
        )
        con.execute("DROP TABLE _new_postings")
        con.execute("DROP TABLE _new_df")
    (count,) = con.execute("SELECT count(*) FROM _new_docs").fetchone() or (0,)
    con.execute("DROP TABLE _new_docs")
    return int(count)


def _sync_run_facts(con: duckdb.DuckDBPyConnection, run_ids: list[str]) -> None:
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


# ----------------------------------------------------------------------------- ledger


def _str_list(value: Any) -> list[str] | None:
    if isinstance(value, list):
        return [v if isinstance(v, str) else json.dumps(v) for v in value]
    return None


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _ingest_submissions(
    con: duckdb.DuckDBPyConnection, store: ObjectStore, report: IngestReport, bulk: bool = False
) -> None:
    """New `ledger/submissions/` records, by object key (each key is ingested once)."""
    since = _state(con, "submissions_day")
    if since is None:
        listing = [i.key for i in store.list(SUBMISSIONS)]
    else:
        start = date.fromisoformat(since) - timedelta(days=1)
        end = datetime.now(UTC).date() + timedelta(days=1)
        listing = [
            i.key
            for n in range((end - start).days + 1)
            for i in store.list(f"{SUBMISSIONS}dt={start + timedelta(days=n):%Y-%m-%d}/")
        ]
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
    days = [m.group(1) for k in keys if (m := _SUB_DT.match(k))]
    con.execute("BEGIN TRANSACTION")
    try:
        if rows:
            con.executemany(
                "INSERT INTO submissions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
            )
            if not bulk:
                _sync_run_facts(con, [r[2] for r in rows if r[2] is not None])
        if days:
            latest = max(days + ([since] if since else []))
            _set_state(con, "submissions_day", latest)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    report.submissions += len(rows)


def _tracked_keys(store: ObjectStore, since: date) -> list[str]:
    """Tracking-record keys of the days from `since` to tomorrow, one per run, oldest first.

    The same listing and the same first-record-wins rule as `Ledger.tracked(since=...)`
    (which GETs every record it lists; here only the listing is repeated every refresh).
    """
    today = datetime.now(UTC).date()
    days = [since + timedelta(days=i) for i in range((today - since).days + 2)]
    first: dict[str, str] = {}
    for day in days:
        for info in store.list(f"{TRACKED}dt={day:%Y-%m-%d}/"):
            first.setdefault(info.key.rsplit("/", 1)[-1].removesuffix(".json"), info.key)
    return list(first.values())


def _tracked_row(key: str, raw: bytes) -> tuple[Any, ...]:
    """One `ledger_tracked` row; a record the ledger cannot parse is kept as not valid."""
    text = raw.decode("utf-8", errors="replace")
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or "tracked_at" not in doc or not _opt_str(doc.get("run_id")):
        return (key, None, None, None, None, None, False, text)
    return (
        key,
        doc["run_id"],
        _opt_str(doc.get("request_name")),
        parse_ts(doc.get("submitted_at")),
        parse_ts(doc.get("tracked_at")),
        _opt_str(doc.get("source")),
        True,
        text,
    )


def _refresh_inflight(
    con: duckdb.DuckDBPyConnection, store: ObjectStore, report: IngestReport
) -> None:
    """Replace the in-flight snapshot: recently tracked runs not archived nor abandoned.

    Tracking records are write-once, so only keys missing from `ledger_tracked` are fetched:
    the S3 requests of a refresh grow with new records, not with the lookback window.
    """
    since = datetime.now(UTC).date() - timedelta(days=INFLIGHT_LOOKBACK_DAYS)
    keys = _tracked_keys(store, since)
    known = (
        {
            r[0]
            for r in con.execute(
                "SELECT ledger_key FROM ledger_tracked WHERE ledger_key IN (SELECT unnest(?))",
                [keys],
            ).fetchall()
        }
        if keys
        else set()
    )
    fresh = [_tracked_row(k, store.get_bytes(k)) for k in keys if k not in known]
    abandoned = sorted(Ledger(store).abandoned()) if keys else []
    now = datetime.now(UTC)
    con.execute("BEGIN TRANSACTION")
    try:
        if fresh:
            con.executemany("INSERT INTO ledger_tracked VALUES (?, ?, ?, ?, ?, ?, ?, ?)", fresh)
        con.execute("DELETE FROM inflight_runs")
        if keys:
            con.execute(
                # Two records naming one run in their bodies: the later key wins (as the
                # ledger's listing order with INSERT OR REPLACE did).
                """INSERT INTO inflight_runs
SELECT run_id, request_name, submitted_at, tracked_at, $now FROM ledger_tracked
WHERE ledger_key IN (SELECT unnest($keys)) AND valid
  AND run_id NOT IN (SELECT run_id FROM runs)
  AND run_id NOT IN (SELECT unnest($abandoned::VARCHAR[]))
QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY ledger_key DESC) = 1""",
                {"now": now, "keys": keys, "abandoned": abandoned},
            )
        (report.inflight,) = con.execute("SELECT count(*) FROM inflight_runs").fetchone() or (0,)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    report.tracked_read += len(fresh)


def _adopt_ledger_records(con: duckdb.DuckDBPyConnection, published: Path, uri: str) -> None:
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
            for table in ("submissions", "ledger_tracked"):
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
                    _sync_run_facts(con, [r[0] for r in added if r[0] is not None])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    finally:
        con.execute("DETACH _published")


# ----------------------------------------------------------------------------- entry points


def ingest_into(
    con: duckdb.DuckDBPyConnection,
    store: ObjectStore,
    archive_uri: str,
    report: IngestReport,
    published_seq: int = 0,
    published: Path | None = None,
    bulk: bool = False,
) -> None:
    """Bring an open read-write audit database up to date with the archive.

    Manifests up to `published_seq` are already visible to readers (a reused spare catches
    up on them); only later ones count as new in the report. `published` (the snapshot a
    reused spare lags behind) lends its ledger records, so none is fetched twice. `bulk`
    (a new file, unseen until published) derives the search statistics and run facts once
    at the end instead of per manifest.
    """
    load_extension(con, "fts")
    ensure_schema(con)
    uri = _normal_uri(archive_uri)
    recorded = _state(con, "archive_uri")
    if recorded is not None and recorded != uri:
        raise IngestError(
            f"the audit database was built from {recorded}, not {uri}; "
            "run `spine-pipeline audit rebuild`"
        )
    _set_state(con, "archive_uri", uri)
    fetcher = _Fetcher(store)
    try:
        manifests = _new_manifests(con, store)
        size = BULK_GROUP if bulk else 1
        for i in range(0, len(manifests), size):
            _ingest_group(con, fetcher, manifests[i : i + size], report, published_seq, bulk)
    finally:
        fetcher.close()
    report.last_seq = _anchor(con)[0]
    if published is not None:
        _adopt_ledger_records(con, published, uri)
    _ingest_submissions(con, store, report, bulk)
    _refresh_inflight(con, store, report)
    if bulk:
        _refuse_repeated_runs_bulk(con)
        con.execute("BEGIN TRANSACTION")
        try:
            recount_search_stats(con)
            refill_run_facts(con)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise


def cluster_search_index(con: duckdb.DuckDBPyConnection) -> None:
    """Rewrite the postings sorted by term, so row-group statistics prune a term's scan.

    Terms are hashes, so appended postings span the whole range and every search scans the
    column (about 0.9 s per 200 M postings here); sorted, a search reads a few row groups
    (about 0.05 s). Sorting 200 M postings takes about 40 s, so only a rebuild does it;
    refreshes append an unsorted tail until the next rebuild.
    """
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            "CREATE TABLE search_postings_sorted AS "
            "SELECT * FROM search_postings ORDER BY term, doc_id"
        )
        con.execute("DROP TABLE search_postings")
        con.execute("ALTER TABLE search_postings_sorted RENAME TO search_postings")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


CHECKPOINT_THRESHOLD = "256MB"


def _published_seq(published: Path) -> int:
    """The last manifest readers can see now (0 without a published snapshot)."""
    if not published.exists():
        return 0
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"ATTACH {sql_str(str(published))} AS pub (READ_ONLY)")
        row = con.execute("SELECT max(seq) FROM pub.manifests").fetchone()
    except duckdb.Error:
        return 0
    finally:
        con.close()
    return int(row[0]) if row and row[0] is not None else 0


def _run(
    archive_uri: str | None,
    db_path: str | os.PathLike[str] | None,
    *,
    fresh: bool,
    store: ObjectStore | None,
) -> IngestReport:
    settings = Settings.from_env()
    archive_uri = archive_uri or settings.archive_uri
    paths = paths_for(db_path or settings.audit_db)
    store = store or open_store(archive_uri)
    started = time.perf_counter()
    report = IngestReport(db_path=str(paths.published))
    with writer_lock(paths):
        published_seq = 0 if fresh else _published_seq(paths.published)
        spare, how = prepare_spare(paths, fresh=fresh)
        report.snapshot = how
        con = duckdb.connect(str(spare))
        try:
            con.execute("SET TimeZone = 'UTC'")
            # One transaction per manifest; at DuckDB's default 16 MB WAL threshold nearly
            # every commit also checkpointed (half of a rebuild's time). The explicit
            # CHECKPOINT below still runs before the snapshot is published.
            con.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
            ingest_into(
                con,
                store,
                archive_uri,
                report,
                published_seq,
                published=paths.published if how == "reused" else None,
                bulk=how == "new",
            )
            if how == "new":
                cluster_search_index(con)
            con.execute("CHECKPOINT")
        finally:
            con.close()
        publish(paths)
    report.seconds = time.perf_counter() - started
    return report


def refresh_audit_db(
    archive_uri: str | None = None,
    db_path: str | os.PathLike[str] | None = None,
    *,
    store: ObjectStore | None = None,
) -> IngestReport:
    """Ingest manifests committed since the last refresh and publish a new snapshot.

    Defaults come from SPINE_ARCHIVE_URI / SPINE_AUDIT_DB. Idempotent: with nothing new it
    only refreshes the submissions and in-flight tables. Raises IngestError (the published
    snapshot untouched) on a broken chain, a tampered or missing file, or a duplicate run.
    """
    return _run(archive_uri, db_path, fresh=False, store=store)


def rebuild_audit_db(
    archive_uri: str | None = None,
    db_path: str | os.PathLike[str] | None = None,
    *,
    store: ObjectStore | None = None,
) -> IngestReport:
    """Recreate the audit database from the archive alone (full chain check from seq 1)."""
    return _run(archive_uri, db_path, fresh=True, store=store)
