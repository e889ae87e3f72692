"""Loading one run's committed rows: manifest-listed files only, hash-checked, run-filtered."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from spine_pipeline.archive.layout import table_key
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.read import read_committed
from spine_pipeline.evidence import EvidenceError, RunNotArchived, load_run_data, read_run_data
from spine_pipeline.evidence.page import render_page_bytes
from spine_pipeline.evidence.run_data import read_runs_data


def test_loads_exactly_the_runs_committed_rows(kit) -> None:
    ids = kit.submit(
        "[scenario:partial] evidence one",
        "[scenario:completed] evidence two",
        "[scenario:duplicate-blocks] evidence three",
    )
    result = kit.archiver().archive(ids)
    assert result.ok
    log = ManifestLog(kit.store)
    log.refresh()
    for run_id in ids:
        data = load_run_data(kit.store, run_id, log=log)
        assert data.run_id == run_id and data.manifest.seq == 1
        for table, rows in (
            ("blocks", data.blocks),
            ("edges", data.edges),
            ("tasks", data.tasks),
            ("artifacts", data.artifacts),
            ("run_errors", data.errors),
        ):
            committed = read_committed(kit.store, table, log=log)
            mine = committed.filter(pc.equal(committed.column("run_id"), run_id))
            assert len(rows) == mine.num_rows, table
        committed = read_committed(kit.store, "blocks", log=log).to_pylist()
        by_ordinal = {r["ordinal"]: r for r in committed if r["run_id"] == run_id}
        for b in data.blocks:
            assert b.content == by_ordinal[b.ordinal]["content"]
            assert len(b.sources) == len(
                [
                    s
                    for s in read_committed(kit.store, "block_sources", log=log).to_pylist()
                    if s["run_id"] == run_id and s["block_ordinal"] == b.ordinal
                ]
            )
        assert [a.sha256 for a in data.artifact_entries] == [
            a.sha256 for a in data.artifacts if a.sha256 and a.download_error is None
        ]
        assert {f.table for f in data.files} == {
            "runs",
            "blocks",
            "block_sources",
            "edges",
            "tasks",
            "artifacts",
            "run_errors",
        }
    # The same run read twice, or through `read_run_data`, renders to the same bytes.
    again = read_run_data(log.manifests[0], ids[0], kit.store.open_read)
    assert render_page_bytes(again) == render_page_bytes(load_run_data(kit.store, ids[0]))


def test_unknown_run_is_not_archived(kit) -> None:
    kit.archiver().archive(kit.submit("[scenario:completed] something"))
    with pytest.raises(RunNotArchived, match="run nope is not archived"):
        load_run_data(kit.store, "nope")


def _local_root(kit) -> Path:
    return Path(kit.uri)


def test_a_changed_or_truncated_file_is_refused(local_kit) -> None:
    kit = local_kit
    (run_id,) = kit.submit("[scenario:completed] tamper")
    kit.archiver().archive([run_id])
    log = ManifestLog(kit.store)
    log.refresh()
    entry = next(f for f in log.manifests[0].files if f.table == "blocks")
    path = _local_root(kit) / entry.key
    original = path.read_bytes()
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0x01
    path.write_bytes(bytes(changed))
    with pytest.raises(EvidenceError, match=f"{entry.key}: sha256 [0-9a-f]{{64}} is not"):
        load_run_data(kit.store, run_id)
    path.write_bytes(original[:-10])
    with pytest.raises(EvidenceError, match=f"{entry.key}: {len(original) - 10}, not the"):
        load_run_data(kit.store, run_id)
    path.write_bytes(original + b"x" * 5)
    with pytest.raises(EvidenceError, match="more than the"):
        load_run_data(kit.store, run_id)
    path.write_bytes(original)
    assert load_run_data(kit.store, run_id).run_id == run_id


def test_files_no_manifest_lists_are_never_read(local_kit) -> None:
    kit = local_kit
    (run_id,) = kit.submit("[scenario:completed] orphan")
    kit.archiver().archive([run_id])
    before = load_run_data(kit.store, run_id)
    log = ManifestLog(kit.store)
    log.refresh()
    entry = next(f for f in log.manifests[0].files if f.table == "blocks")
    table = pq.read_table(io.BytesIO(kit.store.get_bytes(entry.key)))
    field = table.schema.field("content")
    content = pa.array(["FORGED"] * table.num_rows, type=field.type)
    forged = table.set_column(table.schema.get_field_index("content"), field, content)
    sink = io.BytesIO()
    pq.write_table(forged, sink)
    dt = entry.key.split("dt=")[1].split("/")[0]
    kit.store.put_bytes(table_key("blocks", dt, "forged-batch"), sink.getvalue())
    after = load_run_data(kit.store, run_id)
    assert after == before
    assert not any("FORGED" in (b.content or "") for b in after.blocks)


def test_a_batch_loads_in_one_pass_with_per_run_problems(kit) -> None:
    """`read_runs_data` (Dagster's pages): each file read once, the same data as one by one,
    and a run whose rows are missing is that run's problem only."""
    ids = kit.submit(*(f"[scenario:completed] batch run {n}" for n in range(4)))
    assert kit.archiver().archive(ids).ok
    log = ManifestLog(kit.store)
    log.refresh()
    manifest = log.manifests[0]
    ghost = replace(manifest.runs[0], run_id="ghost-run")  # named, but no rows anywhere
    manifest = replace(manifest, runs=(*manifest.runs, ghost))
    opened: list[str] = []

    def counting(key: str):
        opened.append(key)
        return kit.store.open_read(key)

    loaded = read_runs_data(manifest, [*ids, "ghost-run", ids[0]], counting)
    assert sorted(opened) == sorted({f.key for f in manifest.files})  # each file once
    assert list(loaded) == [*ids, "ghost-run"]
    for run_id in ids:
        assert loaded[run_id] == read_run_data(manifest, run_id, kit.store.open_read)
    problem = loaded["ghost-run"]
    assert isinstance(problem, EvidenceError)
    assert str(problem) == "run ghost-run: manifest 1 has 0 runs rows for it"
    with pytest.raises(RunNotArchived, match="run nope is not in manifest 1"):
        read_runs_data(manifest, ["nope"], counting)
