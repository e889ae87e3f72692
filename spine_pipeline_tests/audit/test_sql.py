"""`spine-pipeline sql`: read-only in fact; one-line errors; every output format."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from spine_pipeline.audit import AuditError, run_sql
from spine_pipeline.cli import main
from spine_pipeline_tests.audit.conftest import World


def invoke(world: World, *args: str):
    return CliRunner().invoke(main, [*args], env={"SPINE_AUDIT_DB": str(world.db)})


FORBIDDEN = [
    "INSERT INTO runs (run_id) VALUES ('x')",
    "UPDATE runs SET status = 'completed'",
    "DELETE FROM runs",
    "CREATE TABLE t AS SELECT 1",
    "DROP TABLE runs",
    "ALTER TABLE runs ADD COLUMN x INT",
    "ATTACH '/tmp/other.duckdb' AS other",
    "DETACH audit",
    "INSTALL httpfs",
    "LOAD httpfs",
    "COPY runs TO '/tmp/leak.csv'",
    "COPY (SELECT * FROM runs) TO '/tmp/leak.parquet' (FORMAT parquet)",
    "COPY runs FROM '/etc/passwd'",
    "EXPORT DATABASE '/tmp/dump'",
    "SET enable_external_access = true",
    "PRAGMA enable_profiling",
    "CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')",
    "CHECKPOINT",
    "SELECT 1; DROP TABLE runs",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_parquet('http://127.0.0.1:9/x.parquet')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM read_blob('/etc/passwd')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM read_json_auto('https://example.com/x.json')",
    "SELECT * FROM parquet_metadata('/etc/passwd')",
    "SELECT * FROM '/etc/passwd'",
]


@pytest.mark.parametrize("query", FORBIDDEN)
def test_forbidden_statements_are_refused(world: World, query: str) -> None:
    result = invoke(world, "sql", query)
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    assert not Path("/tmp/leak.csv").exists() and not Path("/tmp/leak.parquet").exists()


def test_library_refuses_too(world: World) -> None:
    with pytest.raises(AuditError):
        run_sql(world.db, "SELECT * FROM read_csv('/etc/passwd')")
    with pytest.raises(AuditError, match="INSERT"):
        run_sql(world.db, "INSERT INTO runs (run_id) VALUES ('x')")


def test_bad_sql_gives_duckdb_message(world: World) -> None:
    result = invoke(world, "sql", "SELECT nope FROM runs")
    assert result.exit_code == 1
    assert result.output.startswith("error: Binder Error: Referenced column")
    assert len(result.output.strip().splitlines()) == 1
    result = invoke(world, "sql", "SELEC 1")
    assert result.exit_code == 1 and "Parser Error" in result.output
    result = invoke(world, "sql", "SELECT * FROM no_such_table")
    assert result.exit_code == 1 and "Catalog Error" in result.output


def test_read_only_queries_work(world: World) -> None:
    for query in (
        "SELECT count(*) AS n FROM runs",
        "WITH x AS (SELECT 1 AS a) SELECT * FROM x",
        "FROM runs SELECT run_id LIMIT 1",
        "DESCRIBE runs",
        "SHOW TABLES",
        "SUMMARIZE run_outcomes",
        "EXPLAIN SELECT * FROM runs",
        "SELECT * FROM credit_usage_daily",
    ):
        result = invoke(world, "sql", query)
        assert result.exit_code == 0, (query, result.output)


def test_output_formats(world: World, tmp_path: Path) -> None:
    q = "SELECT run_id, credits_consumed, models_used, terminal_at FROM runs ORDER BY run_id"
    table = invoke(world, "sql", q)
    assert table.exit_code == 0
    lines = table.output.splitlines()
    assert lines[0].split()[:2] == ["run_id", "credits_consumed"]
    assert lines[-1] == f"({len(world.runs)} rows)"
    csv_out = invoke(world, "sql", q, "--format", "csv")
    assert csv_out.output.splitlines()[0] == "run_id,credits_consumed,models_used,terminal_at"
    assert len(csv_out.output.splitlines()) == len(world.runs) + 1
    js = json.loads(invoke(world, "sql", q, "--format", "json").output)
    assert len(js) == len(world.runs)
    assert set(js[0]) == {"run_id", "credits_consumed", "models_used", "terminal_at"}
    assert sorted(r["run_id"] for r in js) == sorted(r.run_id for r in world.runs)
    out = tmp_path / "runs.parquet"
    pq_out = invoke(world, "sql", q, "--format", "parquet", "--output", str(out))
    assert pq_out.exit_code == 0, pq_out.output
    assert pq.read_table(out).num_rows == len(world.runs)
    missing = invoke(world, "sql", q, "--format", "parquet")
    assert missing.exit_code == 2


def test_wide_cells_are_truncated(world: World) -> None:
    result = invoke(world, "sql", "SELECT final_output FROM runs WHERE final_output IS NOT NULL")
    assert result.exit_code == 0
    assert all(len(line) <= 60 for line in result.output.splitlines())
    assert "…" in result.output
