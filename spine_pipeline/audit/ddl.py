"""The audit database's tables and report views (docs/contracts.md 4.4).

The seven data tables are generated from the archive's Arrow schemas, so every archived
column is queryable and a column added to the archive appears here without a code change
(new columns are added by `ensure_schema`). Each data table also gets `dt` (the Hive
partition date: the UTC day the run became terminal) and `manifest_seq`.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from spine_pipeline.archive.arrow_schemas import TABLES

# 2: no primary key on the tables that grow (UNKEYED_TABLES); 3: `checkpoints`, and the
# manifests' signature and checkpoint columns (ADDED_COLUMNS); 4: `webhook_events`
AUDIT_SCHEMA_VERSION = 4
DATA_TABLES = tuple(TABLES)  # runs, blocks, block_sources, edges, tasks, artifacts, run_errors
OVERDUE_HOURS = 3
ANOMALY_FACTOR = 3


def duck_type(t: pa.DataType) -> str:
    """The DuckDB type an Arrow column of the archive is stored as."""
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    if pa.types.is_large_string(t) or pa.types.is_string(t):
        return "VARCHAR"
    if pa.types.is_large_binary(t) or pa.types.is_binary(t):
        return "BLOB"
    if pa.types.is_int64(t) or pa.types.is_int32(t):
        return "BIGINT"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"{duck_type(t.value_type)}[]"
    if pa.types.is_floating(t):
        return "DOUBLE"
    raise TypeError(f"no DuckDB type for archive column type {t}")


def _columns(table: str) -> list[tuple[str, str]]:
    cols = [(f.name, duck_type(f.type)) for f in TABLES[table]]
    return [*cols, ("dt", "DATE"), ("manifest_seq", "BIGINT")]


def _create_data_table(table: str, name: str | None = None) -> str:
    cols = ",\n  ".join(f'"{col}" {typ}' for col, typ in _columns(table))
    return f"CREATE TABLE IF NOT EXISTS {name or table} (\n  {cols}\n)"


# No primary key on the tables that grow with the archive (runs, submissions,
# ledger_tracked, webhook_events): DuckDB rewrites a table's whole ART index at every
# checkpoint, which made each refresh grow with the archive (figures in docs/decisions.md).
# Their keys are kept unique by the ingest instead: a manifest repeating a run is refused,
# and ledger records (webhook events: event ids) are inserted only under keys not yet
# present.
UNKEYED_TABLES = ("runs", "submissions", "ledger_tracked", "webhook_events")


_FIXED_TABLES = [
    """CREATE TABLE IF NOT EXISTS manifests (
  seq BIGINT PRIMARY KEY,
  batch_id VARCHAR NOT NULL,
  committed_at TIMESTAMPTZ,
  sha256 VARCHAR NOT NULL,
  prev_sha256 VARCHAR,
  run_count BIGINT NOT NULL,
  file_count BIGINT NOT NULL,
  artifact_count BIGINT NOT NULL,
  schema_version VARCHAR,
  ingested_at TIMESTAMPTZ NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS submissions (
  ledger_key VARCHAR NOT NULL,
  request_name VARCHAR,
  run_id VARCHAR,
  submitted_at TIMESTAMPTZ,
  outcome VARCHAR,
  error VARCHAR,
  prompt VARCHAR,
  template VARCHAR,
  blocks VARCHAR[],
  agent_instructions VARCHAR,
  files VARCHAR[],
  source VARCHAR,
  canvas_id VARCHAR,
  raw_json VARCHAR NOT NULL
)""",
    # Tracked runs that no manifest names and that are not abandoned, as of the last refresh.
    """CREATE TABLE IF NOT EXISTS inflight_runs (
  run_id VARCHAR PRIMARY KEY,
  request_name VARCHAR,
  submitted_at TIMESTAMPTZ,
  tracked_at TIMESTAMPTZ,
  observed_at TIMESTAMPTZ NOT NULL
)""",
    # Tracking records read from `ledger/tracked/`, one row per object key. The objects are
    # write-once, so each key is fetched once (by any snapshot) and `inflight_runs` is built
    # from here: a refresh GETs only records it has not seen, not the whole lookback window.
    # `valid` is false for a record the ledger would skip (not a JSON object with a run id).
    """CREATE TABLE IF NOT EXISTS ledger_tracked (
  ledger_key VARCHAR NOT NULL,
  run_id VARCHAR,
  request_name VARCHAR,
  submitted_at TIMESTAMPTZ,
  tracked_at TIMESTAMPTZ,
  source VARCHAR,
  valid BOOLEAN NOT NULL,
  raw_json VARCHAR NOT NULL
)""",
    # Webhook deliveries from the inbox (`ledger/webhooks/events/`), one row per event id
    # (the ingest inserts an id only once; `webhooks/inbox.py` stores each id once). created:
    # the envelope's Unix time; duplicate: a resend of a (run_id, type) stored under
    # duplicate_of; raw_body: the signed body, verbatim.
    """CREATE TABLE IF NOT EXISTS webhook_events (
  event_id VARCHAR NOT NULL,
  type VARCHAR NOT NULL,
  run_id VARCHAR,
  created TIMESTAMPTZ,
  received_at TIMESTAMPTZ NOT NULL,
  livemode BOOLEAN,
  api_version VARCHAR,
  duplicate BOOLEAN NOT NULL,
  duplicate_of VARCHAR,
  raw_body VARCHAR NOT NULL,
  ledger_key VARCHAR NOT NULL
)""",
    # The archive's signed checkpoints, one row per checkpoint the audit ingested (each refresh
    # or rebuild ingests the archive's newest one): the audit's memory of the largest state
    # of the log it has seen, so a later rollback or fork is refused (`audit/history.py`).
    # root: hex; key_ids: the verify keys that checked the note (empty when unverified).
    """CREATE TABLE IF NOT EXISTS checkpoints (
  origin VARCHAR NOT NULL,
  size BIGINT PRIMARY KEY,
  root VARCHAR NOT NULL,
  checkpoint_time TIMESTAMPTZ,
  key_ids VARCHAR[] NOT NULL,
  note VARCHAR NOT NULL,
  ingested_at TIMESTAMPTZ NOT NULL,
  verified BOOLEAN NOT NULL
)""",
    # Ingest bookkeeping: one row per key.
    """CREATE TABLE IF NOT EXISTS audit_state (
  key VARCHAR PRIMARY KEY,
  value VARCHAR
)""",
    # Search index: one document per block content, run final_output and source title.
    # doc_id is unique by construction (max + row_number, one writer); no index to maintain.
    """CREATE TABLE IF NOT EXISTS search_docs (
  doc_id BIGINT NOT NULL,
  kind VARCHAR NOT NULL,
  run_id VARCHAR NOT NULL,
  block_id VARCHAR,
  block_ordinal BIGINT,
  source_idx BIGINT,
  block_type VARCHAR,
  dt DATE,
  len BIGINT NOT NULL
)""",
    # term = md5_number_lower(stem(word, 'porter')): stable across DuckDB versions.
    """CREATE TABLE IF NOT EXISTS search_postings (
  term UBIGINT NOT NULL,
  doc_id BIGINT NOT NULL,
  tf BIGINT NOT NULL
)""",
    # BM25's corpus statistics, kept by the ingest in the manifest's transaction, so a search
    # reads a few rows instead of counting postings: df = documents with the term (= its
    # postings), and the document count and total length (avgdl = total_len / docs).
    """CREATE TABLE IF NOT EXISTS search_terms (
  term UBIGINT NOT NULL,
  df BIGINT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS search_stats (
  docs BIGINT NOT NULL,
  total_len BIGINT NOT NULL
)""",
]

# Columns added to fixed tables after their first layout, by `ensure_schema` on every database
# (new or old), so both have one column order. manifests: key_id of the manifest's signature
# (NULL: unsigned, or ingested before the audit recorded it); signature_verified (true:
# checked with SPINE_VERIFY_KEY at ingest; false: not checked; NULL: unsigned);
# checkpoint_size: the first checkpoint the audit ingested that covers the manifest.
ADDED_COLUMNS = {
    "manifests": (
        ("key_id", "VARCHAR"),
        ("signature_verified", "BOOLEAN"),
        ("checkpoint_size", "BIGINT"),
    ),
}

# Columns added to search_docs after its first layout (filled for old rows on open).
# text_row: rowid of the row holding the document's text (blocks, runs or block_sources by
# kind); block_row: rowid of the block (block and source_title documents). Row ids of these
# append-only tables do not change; readers still check the row's key and fall back to a
# key join if it does not match.
SEARCH_DOC_POINTERS = (("text_row", "BIGINT"), ("block_row", "BIGINT"))

# One row per run with the attributes reports group by (request name falls back to the
# ledger's submission record when the archive did not know it). Materialised in
# `run_facts_stored` (the `run_facts` view reads it) by the ingest, in the transaction that
# adds the run or its submission record, so reports need no join. Several accepted
# submissions naming one run (not expected) resolve deterministically (min), so a refresh
# and a rebuild agree.
RUN_FACTS_SELECT = """SELECT r.run_id, r.dt AS day, r.status,
  coalesce(r.request_name, s.request_name) AS request_name,
  coalesce(r.template, s.template, r.template_used) AS template,
  r.template_used, r.models_used, coalesce(r.credits_consumed, 0) AS credits,
  r.credits_consumed IS NULL AS credits_missing,
  r.duration_ms, r.error_count, r.block_count, r.artifact_count,
  coalesce(r.submitted_at, s.submitted_at) AS submitted_at, r.terminal_at, r.archived_at,
  r.canvas_url, r.batch_id, r.manifest_seq
FROM {runs} r
LEFT JOIN (
  SELECT run_id, min(request_name) AS request_name, min(template) AS template,
    min(submitted_at) AS submitted_at
  FROM {submissions} WHERE run_id IS NOT NULL {submissions_where} GROUP BY run_id
) s USING (run_id)
{runs_where}"""


def run_facts_select(
    runs_where: str = "",
    submissions_where: str = "",
    *,
    runs: str = "runs",
    submissions: str = "submissions",
) -> str:
    """RUN_FACTS_SELECT for the runs matching `runs_where` (a WHERE clause on `r`).

    `runs` and `submissions` are the relations read (the DuckLake catalog passes its own:
    its runs carry no manifest_seq column and it has no submissions, `audit/ducklake.py`).
    """
    return RUN_FACTS_SELECT.format(
        runs_where=runs_where,
        submissions_where=submissions_where,
        runs=runs,
        submissions=submissions,
    )


# Tokenizer shared by indexing and querying: accents stripped, lower case, split on anything
# that is not a letter or digit, English stop words dropped, Porter stem (fts extension).
STOPWORDS = [
    *("a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into"),
    *("is", "it", "no", "not", "of", "on", "or", "such", "that", "the", "their", "then"),
    *("there", "these", "they", "this", "to", "was", "will", "with"),
]

MACROS = [
    "CREATE OR REPLACE MACRO audit_words(txt) AS "
    "list_filter(regexp_split_to_array(lower(strip_accents(coalesce(txt, ''))), "
    "'[^a-z0-9]+'), w -> w <> '' AND NOT list_contains(" + repr(STOPWORDS) + ", w))",
    # Needs the fts extension loaded (its Porter stemmer) where it is called.
    "CREATE OR REPLACE MACRO audit_term(w) AS md5_number_lower(stem(w, 'porter'))",
]


def views() -> list[str]:
    """The report views (also the DuckLake catalog's, `audit/ducklake.py`)."""
    return _views()


def _views() -> list[str]:
    h = OVERDUE_HOURS
    k = ANOMALY_FACTOR
    return [
        # See RUN_FACTS_SELECT; materialised by the ingest.
        "CREATE OR REPLACE VIEW run_facts AS SELECT * FROM run_facts_stored",
        # Trailing median over the days with runs among the 7 calendar days before each day.
        f"""CREATE OR REPLACE VIEW credit_usage_daily AS
SELECT *, coalesce(credits > {k} * trailing_7d_median AND trailing_7d_median > 0, false)
  AS anomaly
FROM (
  SELECT *, round(credits / runs, 2) AS credits_per_run,
    median(credits) OVER (ORDER BY day RANGE BETWEEN INTERVAL 7 DAY PRECEDING
      AND INTERVAL 1 DAY PRECEDING) AS trailing_7d_median
  FROM (
    SELECT day, count(*) AS runs, sum(credits) AS credits,
      count(*) FILTER (WHERE status = 'completed') AS completed_runs,
      count(*) FILTER (WHERE status = 'partial') AS partial_runs,
      count(*) FILTER (WHERE status = 'failed') AS failed_runs,
      count(*) FILTER (WHERE credits_missing) AS runs_without_credits
    FROM run_facts GROUP BY day
  )
)""",
        """CREATE OR REPLACE VIEW credit_usage_by_template AS
SELECT day, coalesce(template, '(unknown)') AS template, count(*) AS runs,
  sum(credits) AS credits
FROM run_facts GROUP BY ALL""",
        # Spine reports only a run total: a run is counted once under every model it used,
        # with its whole total. Do not sum credits_of_runs across models.
        """CREATE OR REPLACE VIEW credit_usage_by_model AS
SELECT day, model, count(*) AS runs, sum(credits) AS credits_of_runs,
  count(*) FILTER (WHERE n_models > 1) AS runs_shared_with_other_models
FROM (
  SELECT day, credits, coalesce(len(models_used), 0) AS n_models,
    unnest(CASE WHEN len(models_used) > 0 THEN list_distinct(models_used)
           ELSE ['(unknown)'] END) AS model
  FROM run_facts
) GROUP BY ALL""",
        """CREATE OR REPLACE VIEW credit_usage_by_request AS
SELECT day, coalesce(request_name, '(ad hoc)') AS request_name, count(*) AS runs,
  sum(credits) AS credits, max(credits) AS max_run_credits
FROM run_facts GROUP BY ALL""",
        """CREATE OR REPLACE VIEW run_outcomes AS
WITH f AS (SELECT coalesce(status, '(none)') AS status, * EXCLUDE (status) FROM run_facts),
msg AS (
  SELECT coalesce(r.status, '(none)') AS status, e.error, count(*) AS n
  FROM run_errors e JOIN runs r USING (run_id) WHERE e.error IS NOT NULL GROUP BY ALL
),
top AS (
  SELECT status, list(error ORDER BY n DESC, error)[1:10] AS top_errors FROM msg GROUP BY status
)
SELECT f.status, count(*) AS runs, sum(f.credits) AS credits, sum(f.error_count) AS errors,
  count(*) FILTER (WHERE f.error_count > 0) AS runs_with_errors,
  min(f.terminal_at) AS first_terminal_at, max(f.terminal_at) AS last_terminal_at,
  any_value(top.top_errors) AS top_errors
FROM f LEFT JOIN top USING (status) GROUP BY f.status""",
        # Per run: which runs failed or ran partial, and why.
        """CREATE OR REPLACE VIEW run_failures AS
SELECT f.run_id, f.status, f.request_name, f.template, f.credits, f.terminal_at,
  f.canvas_url, f.error_count,
  (SELECT list(e.error ORDER BY e.idx) FROM run_errors e WHERE e.run_id = f.run_id) AS errors,
  r.fetch_errors
FROM run_facts f JOIN runs r USING (run_id)
WHERE f.status IS DISTINCT FROM 'completed' OR f.error_count > 0""",
        f"""CREATE OR REPLACE VIEW overdue_runs AS
SELECT run_id, 'archived' AS state, request_name, status, submitted_at, terminal_at,
  duration_ms, round(duration_ms / 3600000.0, 2) AS hours, canvas_url
FROM run_facts WHERE duration_ms > {h} * 3600000
UNION ALL
SELECT run_id, 'in_flight' AS state, request_name, NULL AS status, submitted_at,
  NULL AS terminal_at,
  epoch_ms(now() - coalesce(submitted_at, tracked_at)) AS duration_ms,
  round(epoch_ms(now() - coalesce(submitted_at, tracked_at)) / 3600000.0, 2) AS hours,
  NULL AS canvas_url
FROM inflight_runs i
WHERE now() - coalesce(submitted_at, tracked_at) > INTERVAL {h} HOUR
  AND run_id NOT IN (SELECT run_id FROM runs)""",
        # Archived runs that ended completed or failed and whose `run.<status>` delivery never
        # reached the inbox, among the runs that became terminal since its first delivery
        # (before that nothing was listening). Partial runs have no event to miss.
        """CREATE OR REPLACE VIEW runs_without_terminal_event AS
SELECT f.run_id, f.status, 'run.' || f.status AS expected_event, f.request_name,
  f.terminal_at, f.archived_at,
  (SELECT list_sort(list_distinct(list(w.type))) FROM webhook_events w
   WHERE w.run_id = f.run_id) AS events_received
FROM run_facts f
WHERE f.status IN ('completed', 'failed')
  AND coalesce(f.terminal_at, f.archived_at) >= (SELECT min(received_at) FROM webhook_events)
  AND NOT EXISTS (
    SELECT 1 FROM webhook_events w WHERE w.run_id = f.run_id AND w.type = 'run.' || f.status
  )""",
        """CREATE OR REPLACE VIEW credit_anomalies AS
SELECT f.day, f.run_id, f.request_name, f.template, f.credits, d.credits AS day_credits,
  d.trailing_7d_median, round(d.credits / d.trailing_7d_median, 2) AS day_ratio,
  f.canvas_url
FROM run_facts f JOIN credit_usage_daily d USING (day)
WHERE d.anomaly""",
        """CREATE OR REPLACE VIEW cited_sources AS
SELECT s.run_id, s.block_id, s.idx, s.url,
  lower(regexp_extract(s.url, '^[a-zA-Z][a-zA-Z0-9+.-]*://(?:[^/@?#]*@)?([^/:?#]+)', 1))
    AS domain,
  s.title, b.name AS block_name, b.type AS block_type, r.canvas_url, r.dt AS day
FROM block_sources s
JOIN runs r USING (run_id)
LEFT JOIN blocks b ON b.run_id = s.run_id AND b.ordinal = s.block_ordinal""",
    ]


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create missing tables and columns, then (re)create the macros and views."""
    for table in DATA_TABLES:
        con.execute(_create_data_table(table))
        have = {
            r[0]
            for r in con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE table_name = ? "
                "AND database_name = current_database()",
                [table],
            ).fetchall()
        }
        for name, typ in _columns(table):
            if name not in have:
                con.execute(f'ALTER TABLE {table} ADD COLUMN "{name}" {typ}')
    for ddl in _FIXED_TABLES:
        con.execute(ddl)
    for table, added in ADDED_COLUMNS.items():
        have = set(_columns_of(con, table))
        for name, typ in added:
            if name not in have:
                con.execute(f'ALTER TABLE {table} ADD COLUMN "{name}" {typ}')
    _drop_growing_keys(con)
    _ensure_search_layout(con)
    _ensure_run_facts(con)
    for ddl in MACROS + _views():
        con.execute(ddl)
    con.execute(
        "INSERT OR REPLACE INTO audit_state VALUES ('schema_version', ?)",
        [str(AUDIT_SCHEMA_VERSION)],
    )


def _table_ddl(table: str, name: str) -> str:
    if table in DATA_TABLES:
        return _create_data_table(table, name)
    prefix = f"CREATE TABLE IF NOT EXISTS {table} ("
    (ddl,) = (d for d in _FIXED_TABLES if d.startswith(prefix))
    return ddl.replace(prefix, f"CREATE TABLE {name} (", 1)


def _drop_growing_keys(con: duckdb.DuckDBPyConnection) -> None:
    """Migrate a database of an older layout: recreate UNKEYED_TABLES without their key.

    DuckDB cannot drop a constraint, so the rows are copied (in order: the search index
    points at row ids) into a new table of the current layout; once per file.
    """
    keyed = [
        r[0]
        for r in con.execute(
            "SELECT DISTINCT table_name FROM duckdb_constraints() "
            "WHERE database_name = current_database() AND constraint_type = 'PRIMARY KEY' "
            "AND list_contains(?, table_name)",
            [list(UNKEYED_TABLES)],
        ).fetchall()
    ]
    if not keyed:
        return
    con.execute("BEGIN TRANSACTION")
    try:
        for table in keyed:
            con.execute(_table_ddl(table, "_audit_migrating"))
            con.execute(f"INSERT INTO _audit_migrating BY NAME SELECT * FROM {table}")
            con.execute(f"DROP TABLE {table}")
            con.execute(f"ALTER TABLE _audit_migrating RENAME TO {table}")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def data_columns(table: str) -> list[str]:
    """Columns of a data table that come from the archive files (not dt/manifest_seq)."""
    return [f.name for f in TABLES[table]]


def _columns_of(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [
        r[0]
        for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = ? "
            "AND database_name = current_database() ORDER BY column_index",
            [table],
        ).fetchall()
    ]


def _ensure_search_layout(con: duckdb.DuckDBPyConnection) -> None:
    """Migrate an index of an older layout: pointers, per-term df and corpus stats.

    Cheap when nothing is missing (a few counts); on the first refresh after an upgrade it
    fills what is missing from the index itself (one pass over the postings).
    """
    have = set(_columns_of(con, "search_docs"))
    for name, typ in SEARCH_DOC_POINTERS:
        if name not in have:
            con.execute(f"ALTER TABLE search_docs ADD COLUMN {name} {typ}")
    con.execute("BEGIN TRANSACTION")
    try:
        (missing,) = con.execute(
            "SELECT count(*) FROM search_docs WHERE text_row IS NULL"
        ).fetchone() or (0,)
        if missing:
            fill_search_pointers(con, "text_row IS NULL")
        (postings,) = con.execute("SELECT count(*) FROM search_postings").fetchone() or (0,)
        (df_total,) = con.execute("SELECT coalesce(sum(df), 0) FROM search_terms").fetchone() or (
            0,
        )
        docs, total = con.execute(
            "SELECT count(*), coalesce(sum(len), 0) FROM search_docs"
        ).fetchone() or (0, 0)
        stats = con.execute("SELECT docs, total_len FROM search_stats").fetchall()
        if postings != df_total or stats != [(docs, total)]:
            recount_search_stats(con)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def recount_search_stats(con: duckdb.DuckDBPyConnection) -> None:
    """Recompute `search_terms` and `search_stats` from the index (one pass, in the caller's
    transaction): after a migration, and once at the end of a rebuild."""
    con.execute("DELETE FROM search_terms")
    con.execute("INSERT INTO search_terms SELECT term, count(*) FROM search_postings GROUP BY term")
    con.execute("DELETE FROM search_stats")
    con.execute("INSERT INTO search_stats SELECT count(*), coalesce(sum(len), 0) FROM search_docs")


def refill_run_facts(con: duckdb.DuckDBPyConnection) -> None:
    """Recreate `run_facts_stored` from `runs` and `submissions` (the view reads it by name)."""
    con.execute(f"CREATE OR REPLACE TABLE run_facts_stored AS {run_facts_select()}")


def fill_search_pointers(con: duckdb.DuckDBPyConnection, where: str) -> None:
    """Set text_row/block_row of the search documents matching `where` from the row keys."""
    con.execute(
        f"""UPDATE search_docs SET text_row = b.rowid, block_row = b.rowid FROM blocks b
WHERE search_docs.kind = 'block' AND b.run_id = search_docs.run_id
  AND b.ordinal = search_docs.block_ordinal AND search_docs.{where}"""
    )
    con.execute(
        f"""UPDATE search_docs SET text_row = r.rowid FROM runs r
WHERE search_docs.kind = 'final_output' AND r.run_id = search_docs.run_id
  AND search_docs.{where}"""
    )
    con.execute(
        f"""UPDATE search_docs SET text_row = s.rowid, block_row = b.rowid
FROM block_sources s LEFT JOIN blocks b
  ON b.run_id = s.run_id AND b.ordinal = s.block_ordinal
WHERE search_docs.kind = 'source_title' AND s.run_id = search_docs.run_id
  AND s.block_ordinal = search_docs.block_ordinal AND s.idx = search_docs.source_idx
  AND search_docs.{where}"""
    )


def _ensure_run_facts(con: duckdb.DuckDBPyConnection) -> None:
    """Create `run_facts_stored`, or rebuild it if its layout or row count is off.

    A database from before it existed, or one whose definition changed, gets it filled
    from `runs` and `submissions` once; after that the ingest
    keeps it exact and this is two counts.
    """
    con.execute("BEGIN TRANSACTION")
    try:
        expected = [
            d[0]
            for d in con.execute(f"SELECT * FROM ({run_facts_select()}) LIMIT 0").description or []
        ]
        current = _columns_of(con, "run_facts_stored")
        same = current == expected
        if same:
            (runs,) = con.execute("SELECT count(*) FROM runs").fetchone() or (0,)
            (facts,) = con.execute("SELECT count(*) FROM run_facts_stored").fetchone() or (0,)
            same = runs == facts
        if not same:
            refill_run_facts(con)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
