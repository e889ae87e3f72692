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
    assert "Traceback" not in result.output  # DuckDB's own lines (candidates, caret) follow
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


# ----------------------------------------------------------------------------- issue 14
# A SQL surface that cannot write; bounded; safe output.


def later_caller_sees(world: World) -> list[tuple[str, str]]:
    """Objects a later reader of the same snapshot sees besides the audit database's own."""
    _, rows = run_sql(
        world.db,
        "SELECT database_name, table_name FROM duckdb_tables() "
        "WHERE database_name <> 'audit' UNION ALL "
        "SELECT database_name, '' FROM duckdb_databases() "
        "WHERE database_name NOT IN ('audit', 'system', 'temp', 'memory')",
    )
    return [(str(a), str(b)) for a, b in rows]


WRITES_UNDER_EXPLAIN = [
    "EXPLAIN ANALYZE COPY (SELECT 1) TO '.tmp/x.csv'",
    "EXPLAIN ANALYZE COPY (SELECT 1) TO 'x.csv'",
    "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
    "EXPLAIN ANALYZE CREATE TABLE memory.t AS SELECT 1",
    "EXPLAIN (ANALYZE) CREATE TABLE memory.t AS SELECT 1",
    "EXPLAIN (ANALYZE, FORMAT json) CREATE TABLE memory.t AS SELECT 1",
    "EXPLAIN CREATE TABLE memory.t AS SELECT 1",
    "EXPLAIN ANALYZE INSERT INTO runs (run_id) VALUES ('x')",
    "/* hi */ explain analyse create table memory.t as select 1",
    "CREATE TEMP TABLE t AS SELECT 1",
    "ATTACH ':memory:' AS m",
    "PIVOT runs ON status",
]


@pytest.mark.parametrize("query", WRITES_UNDER_EXPLAIN)
def test_explain_of_a_write_is_refused_and_writes_nothing(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, query: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke(world, "sql", query)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: refused"), result.output
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []  # no x.csv, no .tmp/
    assert later_caller_sees(world) == []


@pytest.mark.parametrize(
    "query",
    [
        "EXPLAIN SELECT * FROM runs",
        "EXPLAIN ANALYZE SELECT count(*) FROM runs",
        "explain analyse select 1",
        "EXPLAIN (FORMAT json) SELECT 1",
        "EXPLAIN (SELECT 1)",
        "EXPLAIN WITH x AS (SELECT 1 AS a) SELECT * FROM x",
        "VALUES (1, 'a'), (2, 'b')",
        "SELECT 1 UNION ALL SELECT 2 EXCEPT SELECT 3",
        "SELECT * FROM range(3) t(i)",
        "SELECT * FROM duckdb_tables()",
        "SELECT 1;",
    ],
)
def test_queries_and_their_explain_are_allowed(world: World, query: str) -> None:
    result = invoke(world, "sql", query)
    assert result.exit_code == 0, (query, result.output)


def test_files_are_unreachable_even_the_audit_database_itself(world: World) -> None:
    """External access off still lets DuckDB read the attached file; the tree check does not."""
    db = str(world.db.absolute())
    for query in (
        f"SELECT * FROM read_blob('{db}')",
        f"SELECT * FROM read_text('{db}')",
        f"SELECT * FROM read_csv('{db}')",
        f"SELECT * FROM '{db}'",
        f"SELECT * FROM (SELECT 1) a, (SELECT * FROM read_blob('{db}')) b",
        f"SELECT * FROM query('SELECT * FROM read_blob(''{db}'')')",
        "SELECT * FROM query_table('runs')",
        "SELECT * FROM json_execute_serialized_sql('{}')",
        "SELECT * FROM enable_logging()",
        "SELECT * FROM force_checkpoint()",
        "PRAGMA table_info('runs')",
        f"EXPLAIN ANALYZE SELECT * FROM read_blob('{db}')",
    ):
        result = invoke(world, "sql", query)
        assert result.exit_code == 1, (query, result.output)
        assert result.output.startswith("error: refused"), (query, result.output)


def test_python_variables_are_not_tables(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """DuckDB's Python client scans data frames named in a query; the sandbox must not."""
    import pyarrow as pa

    from spine_pipeline.audit import sql as sqlmod

    monkeypatch.setattr(sqlmod, "leak_table", pa.table({"k": ["secret"]}), raising=False)
    with pytest.raises(AuditError):
        run_sql(world.db, "SELECT * FROM leak_table")


def test_reader_has_no_temp_directory_and_a_memory_limit(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spine_pipeline.audit.duck import REGISTRY

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPINE_AUDIT_MEMORY_LIMIT", "64MB")
    REGISTRY.close_idle()  # the limit is set when a snapshot opens
    try:
        _, rows = run_sql(
            world.db,
            "SELECT current_setting('temp_directory'), current_setting('memory_limit')",
        )
        assert rows[0][0] == ""
        assert rows[0][1] in ("61.0 MiB", "64.0 MB", "61.0 MB", "64.0 MiB"), rows
        result = CliRunner().invoke(
            main,
            [
                "sql",
                "SELECT count(*) FROM (SELECT md5(i::VARCHAR) s FROM range(5000000) t(i) "
                "ORDER BY s)",
            ],
            env={"SPINE_AUDIT_DB": str(world.db), "SPINE_AUDIT_MEMORY_LIMIT": "64MB"},
        )
        assert result.exit_code == 1, result.output
        assert "Out of Memory" in result.output
        assert list(tmp_path.iterdir()) == []  # nothing spilled to ./.tmp
    finally:
        REGISTRY.close_idle()


def test_memory_limit_setting_is_validated() -> None:
    from spine_pipeline.settings import ConfigurationError, Settings

    assert Settings.from_env({}).audit_memory_limit == 1024**3
    assert Settings.from_env({"SPINE_AUDIT_MEMORY_LIMIT": "512MB"}).audit_memory_limit == 512e6
    assert Settings.from_env({"SPINE_AUDIT_MEMORY_LIMIT": "2GiB"}).audit_memory_limit == 2 << 30
    for bad in ("lots", "-1GB", "0", "1XB", "1e400GB", "9" * 400 + "GB", "1 PB"):
        with pytest.raises(ConfigurationError, match="SPINE_AUDIT_MEMORY_LIMIT"):
            Settings.from_env({"SPINE_AUDIT_MEMORY_LIMIT": bad})


ENDLESS = "SELECT count(*) FROM range(1000000000000) t(i) WHERE md5(i::VARCHAR) = 'x'"


def test_timeout_stops_a_long_query(world: World) -> None:
    result = invoke(world, "sql", ENDLESS, "--timeout", "1")
    assert result.exit_code == 1, result.output
    assert result.output == "error: query timed out after 1 s\n"


def test_timeout_stops_a_long_stream_and_leaves_no_file(world: World, tmp_path: Path) -> None:
    out = tmp_path / "endless.csv"
    query = "SELECT i FROM range(1000000000000) t(i)"
    result = invoke(world, "sql", query, "--format", "csv", "--output", str(out), "--timeout", "1")
    assert result.exit_code == 1, result.output
    assert result.output == "error: query timed out after 1 s\n"
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one


def test_library_timeout(world: World) -> None:
    from spine_pipeline.audit.sql import SqlTimeout

    with pytest.raises(SqlTimeout, match=r"timed out after 0\.5 s"):
        run_sql(world.db, ENDLESS, timeout=0.5)
    # the snapshot is still usable by the next caller
    assert run_sql(world.db, "SELECT 42")[1] == [(42,)]


def _peak_rss_mib(args: list[str], env: dict[str, str]) -> float:
    """Peak resident memory of one `spine-pipeline` process (this child's own, by wait4)."""
    import os
    import subprocess
    import sys

    code = "from spine_pipeline.cli import main; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, proc.stderr.read() if proc.stderr else ""
    proc.returncode = 0
    if proc.stderr:
        proc.stderr.close()
    return usage.ru_maxrss / 1024  # KiB on Linux


@pytest.mark.parametrize(
    ("fmt", "select", "n"),
    [
        # about 600 MB as one Arrow table (the old path), more as Python rows
        ("parquet", "i, repeat('x', 100) || i::VARCHAR AS s", 5_000_000),
        # Python rows are what csv and json format: about 350 MB whole for these
        ("csv", "i, i * 2 AS j, i % 7 AS k", 2_000_000),
        ("json", "i, i % 7 AS k", 1_000_000),
    ],
)
def test_large_results_stream_in_bounded_memory(
    world: World, tmp_path: Path, fmt: str, select: str, n: int
) -> None:
    """Millions of rows to a file: the process grows by far less than the result whole."""
    env = {"SPINE_AUDIT_DB": str(world.db)}
    out = tmp_path / f"big.{fmt}"

    def run(rows: int) -> float:
        query = f"SELECT {select} FROM range({rows}) t(i)"
        return _peak_rss_mib(["sql", query, "--format", fmt, "--output", str(out)], env)

    small = run(10)
    big = run(n)
    assert big - small < 150, (small, big)
    if fmt == "parquet":
        assert pq.read_metadata(out).num_rows == n
    else:
        with out.open("rb") as f:
            lines = sum(1 for _ in f)
        assert lines == n + (1 if fmt == "csv" else 2)


def test_json_to_stdout_is_one_array_capped_by_max_rows(world: World) -> None:
    q = "SELECT * FROM range(10) t(i)"
    result = invoke(world, "sql", q, "--format", "json", "--max-rows", "3")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert "first 3 rows" in result.stderr
    full = invoke(world, "sql", q, "--format", "json")
    assert len(json.loads(full.stdout)) == 10 and full.stderr == ""
    empty = invoke(world, "sql", "SELECT 1 AS a WHERE false", "--format", "json")
    assert json.loads(empty.stdout) == []


def test_table_output_is_capped_by_max_rows(world: World) -> None:
    result = invoke(world, "sql", "SELECT * FROM range(10) t(i)", "--max-rows", "4")
    assert result.exit_code == 0
    assert result.stdout.splitlines()[-1] == "(4 rows)"
    assert "first 4 rows" in result.stderr


HOSTILE = "\x1b[2J\x1b]0;pwned\x07\x9b31m\u202eevil\u2066x\u2069\x7f\rback\x00"
CONTROL = {chr(c) for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))} | {
    chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))
}


def test_format_table_shows_control_characters_visibly() -> None:
    from spine_pipeline.audit.sql import format_table

    text = format_table(["col\x1b[1m", "n"], [(HOSTILE, 1), ("ok\nline", 2)], width=500)
    body = text.replace("\n", "")
    assert not CONTROL & set(body), repr(text)
    assert "␛[2J" in text and "⏎" in text and "\\u202e" in text and "\\x9b" in text


def test_sql_output_and_errors_never_carry_raw_control_characters(world: World) -> None:
    literal = HOSTILE.replace("\x00", "").replace("'", "''")
    result = invoke(world, "sql", f"SELECT '{literal}' AS v, 1 AS \"h\x1b[1m\"")
    assert result.exit_code == 0, result.output
    assert not CONTROL & set(result.output.replace("\n", "")), repr(result.output)
    bad = invoke(world, "sql", f"SELECT \"no\x1b[2Jsuch\" FROM runs WHERE '{literal}' = ''")
    assert bad.exit_code == 1
    assert not CONTROL & set(bad.output.replace("\n", "")), repr(bad.output)
    js = invoke(world, "sql", f"SELECT '{literal}' AS v", "--format", "json")
    assert not CONTROL & set(js.stdout.replace("\n", "")), repr(js.stdout)
    assert json.loads(js.stdout) == [{"v": HOSTILE.replace("\x00", "")}]  # lossless


def test_sql_errors_keep_duckdb_hints(world: World) -> None:
    result = invoke(world, "sql", "SELECT run_i FROM runs")
    assert result.exit_code == 1
    assert result.output.startswith("error: Binder Error: Referenced column")
    assert 'Candidate bindings: "run_id"' in result.output
    assert "LINE 1: SELECT run_i FROM runs" in result.output
    assert "^" in result.output and "Traceback" not in result.output
    with pytest.raises(AuditError, match=r"(?s)Candidate bindings.*LINE 1"):
        run_sql(world.db, "SELECT run_i FROM runs")


@pytest.mark.parametrize("fmt", ["table", "csv", "json", "parquet"])
def test_output_files_are_private_whatever_the_umask(
    world: World, tmp_path: Path, fmt: str
) -> None:
    import os

    out = tmp_path / f"out.{fmt}"
    out.write_text("old")
    out.chmod(0o644)
    old = os.umask(0o022)
    try:
        result = invoke(world, "sql", "SELECT 1 AS a", "--format", fmt, "--output", str(out))
        fresh = tmp_path / f"fresh.{fmt}"
        again = invoke(world, "sql", "SELECT 1 AS a", "--format", fmt, "--output", str(fresh))
    finally:
        os.umask(old)
    assert result.exit_code == 0 and again.exit_code == 0, (result.output, again.output)
    assert out.stat().st_mode & 0o777 == 0o600
    assert fresh.stat().st_mode & 0o777 == 0o600
    assert out.read_bytes() != b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, fresh.name])


def test_output_through_a_symlink_is_refused(world: World, tmp_path: Path) -> None:
    target = tmp_path / "victim"
    target.write_text("precious")
    link = tmp_path / "out.csv"
    link.symlink_to(target)
    result = invoke(world, "sql", "SELECT 1 AS a", "--format", "csv", "--output", str(link))
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: ") and "symlink" in result.output
    assert target.read_text() == "precious" and link.is_symlink()


def test_report_html_is_private_and_refuses_a_symlink(world: World, tmp_path: Path) -> None:
    import os

    env = {"SPINE_AUDIT_DB": str(world.db)}
    out = tmp_path / "report.html"
    old = os.umask(0o022)
    try:
        result = CliRunner().invoke(main, ["report", "credits", "--html", str(out)], env=env)
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert out.stat().st_mode & 0o777 == 0o600
    target = tmp_path / "victim"
    target.write_text("precious")
    link = tmp_path / "link.html"
    link.symlink_to(target)
    refused = CliRunner().invoke(main, ["report", "credits", "--html", str(link)], env=env)
    assert refused.exit_code == 1 and "symlink" in refused.output
    assert target.read_text() == "precious"


def test_a_finished_query_lets_go_of_its_snapshot(world: World, tmp_path: Path) -> None:
    """No reference cycle keeps the cursor (the time limit's timer must not hold it)."""
    import gc

    from spine_pipeline.audit.duck import REGISTRY, file_key

    gc.collect()
    gc.disable()
    try:
        run_sql(world.db, "SELECT 1", timeout=30)
        invoke(world, "sql", "SELECT 1", "--format", "csv", "--output", str(tmp_path / "x"))
        assert not REGISTRY.in_use(file_key(world.db))
    finally:
        gc.enable()
