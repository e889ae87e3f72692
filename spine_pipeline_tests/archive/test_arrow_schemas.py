"""Archive table schemas: the docs/contracts.md 4.4 contract, Parquet round trips, docs in sync."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spine_pipeline.archive.arrow_schemas import (
    SCHEMA_VERSION,
    TABLES,
    parquet_metadata,
    render_tables_markdown,
    schema_for,
)
from spine_pipeline.archive.flatten import flatten_batch
from spine_pipeline_tests.archive.test_flatten import (
    CTX,
    EXACT,
    HOSTILE_NAMES,
    dag_with,
    make_run,
    node,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "archive-format.md"

# docs/contracts.md 4.4: names and listed columns are fixed.
REQUIRED = {
    "runs": "run_id, canvas_id, canvas_name, canvas_url, status, prompt, template, template_used, "
    "models_used, credits_consumed, duration_ms, final_output, error_count, block_count, "
    "artifact_count, request_name, submitted_at, terminal_at, archived_at, batch_id, raw_json",
    "blocks": "run_id, canvas_id, block_id, name, type, status, content, url, sources_json, "
    "sources_count, content_sha256, ordinal",
    "block_sources": "run_id, block_id, idx, url, title, raw_json",
    "edges": "run_id, canvas_id, source_id, target_id",
    "tasks": "run_id, canvas_id, task_id, parent_task_id, root_task_id, depth, name, task_type, "
    "status, subtree, ordinal",
    "artifacts": "run_id, artifact_id, type, name, reported_size_bytes, size_bytes, sha256, "
    "storage_uri, content_type, downloaded_at, download_error",
    "run_errors": "run_id, idx, error, block_id, block_type, recoverable",
}
TS = pa.timestamp("us", tz="UTC")


def test_tables_and_their_order():
    assert list(TABLES) == [
        "runs",
        "blocks",
        "block_sources",
        "edges",
        "tasks",
        "artifacts",
        "run_errors",
    ]
    assert SCHEMA_VERSION == "1"


@pytest.mark.parametrize("table", list(REQUIRED))
def test_required_columns_present(table):
    names = TABLES[table].names
    missing = [c for c in REQUIRED[table].split(", ") if c not in names]
    assert not missing
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("table", list(TABLES))
def test_common_columns_and_types(table):
    schema = TABLES[table]
    assert "dt" not in schema.names  # the Hive partition, not a column
    assert schema.field("batch_id").type == pa.string()
    assert schema.field("archived_at").type == TS
    assert schema.field("run_id").type == pa.string()
    assert not schema.field("run_id").nullable
    for f in schema:
        if f.name.endswith("_id"):
            assert f.type == pa.string(), f.name
        if f.name.endswith("_at"):
            assert f.type == TS, f.name
        if f.name in ("raw_json", "content", "final_output", "sources_json", "dag_raw_json"):
            assert f.type == pa.large_string(), f.name
        if f.name.endswith("raw_bytes"):
            assert f.type == pa.large_binary(), f.name
        assert (f.metadata or {}).get(b"description"), f"{table}.{f.name} lacks a description"
    assert schema.metadata == parquet_metadata(table)


def test_specific_types():
    runs = TABLES["runs"]
    assert runs.field("models_used").type == pa.list_(pa.field("element", pa.string()))
    assert runs.field("credits_consumed").type == pa.int64()
    assert runs.field("fetch_errors").type == runs.field("models_used").type
    assert TABLES["run_errors"].field("recoverable").type == pa.bool_()
    for table, col in [("blocks", "ordinal"), ("tasks", "depth"), ("block_sources", "idx")]:
        assert TABLES[table].field(col).type == pa.int64()


def test_parquet_metadata_and_schema_for():
    assert parquet_metadata("runs") == {
        b"spine_pipeline.schema_version": b"1",
        b"spine_pipeline.table": b"runs",
    }
    assert schema_for("tasks") is TABLES["tasks"]
    with pytest.raises(KeyError, match="known"):
        schema_for("nope")


def test_docs_column_reference_is_generated_from_the_schemas():
    text = DOC.read_text(encoding="utf-8")
    m = re.search(
        r"<!-- BEGIN GENERATED: archive tables[^\n]*-->\n\n(.*?)<!-- END GENERATED: archive tables -->",
        text,
        re.S,
    )
    assert m, "generated block markers missing from docs/archive-format.md"
    assert m.group(1) == render_tables_markdown(), (
        "docs/archive-format.md is stale: paste render_tables_markdown() between the markers"
    )


def test_parquet_round_trip_keeps_exact_strings_timestamps_and_metadata(tmp_path):
    names = [
        node(id=f"n{i}", name=n, content=c)
        for i, (n, c) in enumerate(zip(HOSTILE_NAMES, EXACT, strict=False))
    ]
    dag_bytes = b'{"canvas_id":"c","nodes":[{"id":"bad","content":"x\xff\xfey"}],"edges":[]}'
    runs = [
        make_run(run_id="run-1", dag=dag_with(*names)),
        make_run(run_id="run-2", dag=dag_bytes, tasks=None),
    ]
    tables = flatten_batch(runs, CTX)
    for name, table in tables.items():
        path = tmp_path / f"{name}.parquet"
        pq.write_table(table, path, compression="zstd")
        back = pq.read_table(path)
        assert back.schema.equals(TABLES[name], check_metadata=True), name
        assert back.equals(table), name
        kv = pq.read_metadata(path).metadata
        assert kv[b"spine_pipeline.schema_version"] == SCHEMA_VERSION.encode()
        assert kv[b"spine_pipeline.table"] == name.encode()
        assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD" or (
            table.num_rows == 0
        )
    blocks = pq.read_table(tmp_path / "blocks.parquet").to_pylist()
    one = [b for b in blocks if b["run_id"] == "run-1"]
    assert [b["name"] for b in one] == HOSTILE_NAMES[: len(one)]
    assert [b["content"] for b in one] == EXACT[: len(one)]
    for b in one:
        assert b["content_sha256"] == hashlib.sha256(b["content"].encode()).hexdigest()
    (bad,) = [b for b in blocks if b["run_id"] == "run-2"]
    assert bad["raw_bytes"] == b'{"id":"bad","content":"x\xff\xfey"}'
    runs_back = pq.read_table(tmp_path / "runs.parquet")
    assert runs_back.schema.field("terminal_at").type == TS
    got = runs_back.column("terminal_at").to_pylist()[0]
    assert got == datetime(2026, 4, 21, 23, 59, 59, 123456, tzinfo=UTC)
    assert runs_back.column("archived_at").to_pylist()[0] == CTX.archived_at
