"""The audit layout: no index on the tables that grow, and the migration of older files."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb

from spine_pipeline.audit import connect_readonly, refresh_audit_db, search
from spine_pipeline.audit.ddl import UNKEYED_TABLES, _table_ddl
from spine_pipeline_tests.audit.conftest import World, rows

KEYS = {
    "runs": "run_id",
    "submissions": "ledger_key",
    "ledger_tracked": "ledger_key",
    "webhook_events": "event_id",
}


def _keyed(db: Path) -> set[str]:
    con = connect_readonly(db)
    try:
        return {
            r[0]
            for r in rows(
                con,
                "SELECT table_name FROM duckdb_constraints() "
                "WHERE constraint_type IN ('PRIMARY KEY', 'UNIQUE')",
            )
        }
    finally:
        con.close()


def test_tables_that_grow_have_no_index(world: World) -> None:
    # DuckDB rewrites every ART index in full at each checkpoint: a key on `runs` costs a
    # refresh 1.3 s at 100,000 runs (docs/benchmarks.md).
    assert set(UNKEYED_TABLES) == set(KEYS)
    assert not _keyed(world.db) & set(UNKEYED_TABLES)
    assert {"manifests", "audit_state", "inflight_runs"} <= _keyed(world.db)


def _with_old_keys(db: Path) -> None:
    """Give a database the layout of schema version 1 (a primary key on each table)."""
    con = duckdb.connect(str(db))
    try:
        for table, key in KEYS.items():
            ddl = _table_ddl(table, "_old").rstrip().removesuffix(")")
            con.execute(f"{ddl}, PRIMARY KEY ({key}))")
            con.execute(f"INSERT INTO _old BY NAME SELECT * FROM {table}")
            con.execute(f"DROP TABLE {table}")
            con.execute(f"ALTER TABLE _old RENAME TO {table}")
        con.execute("CHECKPOINT")
    finally:
        con.close()


def test_refresh_migrates_an_older_layout(world: World, tmp_path: Path) -> None:
    db = tmp_path / "audit.duckdb"
    shutil.copy(world.db, db)
    _with_old_keys(db)
    assert set(UNKEYED_TABLES) <= _keyed(db)
    before = search(world.db, "coffee futures", limit=200)
    assert before
    refresh_audit_db(world.archive_uri, db)  # the copied spare is migrated and published
    refresh_audit_db(world.archive_uri, db)  # the old file, now the spare, is migrated too
    for path in (db, db.with_name(f"{db.name}.spare")):
        assert not _keyed(path) & set(UNKEYED_TABLES), path
    con = connect_readonly(db)
    try:
        # Row order kept: the search index's row pointers still name the right rows.
        [(wrong, finals)] = rows(
            con,
            "SELECT count(*) FILTER (WHERE r.run_id IS DISTINCT FROM d.run_id), count(*) "
            "FROM search_docs d LEFT JOIN runs r ON r.rowid = d.text_row "
            "WHERE d.kind = 'final_output'",
        )
        assert wrong == 0 and finals > 0
        assert rows(con, "SELECT count(*), count(DISTINCT run_id) FROM runs") == [
            (len(world.runs), len(world.runs))
        ]
    finally:
        con.close()
    assert search(db, "coffee futures", limit=200) == before
