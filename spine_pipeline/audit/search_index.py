"""The full-text search index, kept incrementally in the audit database.

DuckDB's `PRAGMA create_fts_index` rebuilds from scratch on every call, so the index lives in
tables of the same shape (`search_docs`, `search_postings`, `search_terms`, `search_stats`)
that each manifest's ingest extends in its own transaction, with the fts extension's Porter
stemmer; queries are `audit/search.py`. See docs/decisions.md ("Audit database").
"""

from __future__ import annotations

import duckdb


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


def index_manifests(
    con: duckdb.DuckDBPyConnection, first: int, last: int, bulk: bool = False
) -> int:
    """Add the manifests' block contents, final outputs and source titles to the index.

    DuckDB's `PRAGMA create_fts_index` rebuilds from scratch on every call, so the index is
    kept incrementally in tables of the same shape, with the
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


def cluster_search_index(con: duckdb.DuckDBPyConnection) -> None:
    """Rewrite the postings sorted by term, so row-group statistics prune a term's scan.

    Terms are hashes, so appended postings span the whole range and every search scans the
    column; sorted, a search reads a few row groups. Sorting every posting is too slow for
    a refresh, so only a rebuild does it; refreshes append an unsorted tail until the next
    rebuild (figures in docs/decisions.md).
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
