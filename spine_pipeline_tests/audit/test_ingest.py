"""Ingest: idempotency, incremental, broken chain, tampered files, invisible uncommitted data."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spine_pipeline.archive.layout import manifest_key
from spine_pipeline.archive.ledger import Ledger, Submission
from spine_pipeline.archive.manifest import Manifest, ManifestLog, sha256_hex
from spine_pipeline.archive.stores import open_store
from spine_pipeline.audit import (
    IngestError,
    connect_readonly,
    rebuild_audit_db,
    refresh_audit_db,
)
from spine_pipeline_tests.audit.conftest import World, archive_runs, create_runs, rows
from spine_pipeline_tests.fixtures.insider import plant

COUNT_SQL = (
    "SELECT (SELECT count(*) FROM runs), (SELECT count(*) FROM blocks), "
    "(SELECT count(*) FROM block_sources), (SELECT count(*) FROM tasks), "
    "(SELECT count(*) FROM search_docs), (SELECT count(*) FROM search_postings), "
    "(SELECT count(*) FROM submissions), (SELECT max(seq) FROM manifests)"
)


def counts(db: Path) -> tuple:
    con = connect_readonly(db)
    try:
        return rows(con, COUNT_SQL)[0]
    finally:
        con.close()


def test_refresh_is_idempotent_and_rebuild_equal(world: World, archive_copy) -> None:
    uri, db = archive_copy()
    first = refresh_audit_db(uri, db)
    assert first.manifests == [1, 2]
    before = counts(db)
    again = refresh_audit_db(uri, db)
    assert again.manifests == [] and again.submissions == 0
    assert counts(db) == before
    third = refresh_audit_db(uri, db)  # now the spare is caught up from the old snapshot
    assert third.snapshot == "reused"
    assert counts(db) == before
    rebuilt = rebuild_audit_db(uri, db)
    assert rebuilt.manifests == [1, 2]
    assert counts(db) == before == counts(world.db)


def test_incremental_ingest_of_new_manifest(world: World, archive_copy) -> None:
    uri, db = archive_copy()
    refresh_audit_db(uri, db)
    base = counts(db)
    new_ids = create_runs(world.sim, [("Incremental run about tidal power", "report")])
    archive_runs(world.sim, uri, new_ids)
    Ledger(open_store(uri)).record_submission(
        Submission("late-request", new_ids[0], datetime.now(UTC).isoformat(), "accepted")
    )
    report = refresh_audit_db(uri, db)
    assert report.manifests == [3]
    assert report.rows["runs"] == 1
    assert report.submissions == 1
    after = counts(db)
    assert after[0] == base[0] + 1 and after[7] == 3 and after[6] == base[6] + 1
    truth = world.sim.world.ground_truth(new_ids[0])
    con = connect_readonly(db)
    try:
        assert rows(con, "SELECT count(*) FROM blocks WHERE run_id = ?", new_ids[0]) == [
            (len(truth.dag["nodes"]),)
        ]
    finally:
        con.close()
    # One more refresh: the spare (one manifest behind) catches up, nothing duplicates.
    assert refresh_audit_db(uri, db).manifests == []
    assert counts(db) == after


def test_broken_chain_is_refused(world: World, archive_copy) -> None:
    uri, db = archive_copy()
    path = Path(uri) / manifest_key(2)
    doc = json.loads(path.read_bytes())
    doc["prev_sha256"] = "0" * 64
    plant(uri, manifest_key(2), (json.dumps(doc, indent=1) + "\n").encode())
    with pytest.raises(IngestError, match=r"hash chain broken"):
        rebuild_audit_db(uri, db)
    assert not db.exists()  # nothing was published


def test_missing_manifest_is_refused(world: World, archive_copy) -> None:
    uri, db = archive_copy()
    (Path(uri) / manifest_key(1)).unlink()
    with pytest.raises(IngestError, match=r"missing from the chain"):
        rebuild_audit_db(uri, db)


def test_tampered_file_is_refused_and_snapshot_kept(world: World, archive_copy) -> None:
    uri, db = archive_copy()
    # Ingest manifest 1 only: hide manifest 2 for the first refresh.
    m2 = Path(uri) / manifest_key(2)
    saved = m2.read_bytes()
    m2.unlink()
    refresh_audit_db(uri, db)
    plant(uri, manifest_key(2), saved)
    before = counts(db)
    manifest = Manifest.from_bytes(saved, key=manifest_key(2))
    target = next(f.key for f in manifest.files if f.table == "blocks")
    data = bytearray((Path(uri) / target).read_bytes())
    data[len(data) // 2] ^= 0x01
    plant(uri, target, bytes(data))
    with pytest.raises(IngestError, match=r"sha256 .* does not match manifest 2"):
        refresh_audit_db(uri, db)
    assert counts(db) == before  # the published snapshot is untouched
    # A rebuild (its files verified ahead, in a worker thread) refuses it the same way.
    with pytest.raises(IngestError, match=r"sha256 .* does not match manifest 2"):
        rebuild_audit_db(uri, db)
    assert counts(db) == before
    # A truncated file is caught by its size first.
    plant(uri, target, bytes(data[:-10]))
    with pytest.raises(IngestError, match=r"size .* does not match manifest 2"):
        refresh_audit_db(uri, db)


def test_changed_ingested_manifest_is_refused(world: World, archive_copy) -> None:
    uri, db = archive_copy()
    refresh_audit_db(uri, db)
    path = Path(uri) / manifest_key(2)
    plant(uri, manifest_key(2), path.read_bytes().replace(b'"writer"', b'"writer" ', 1))
    with pytest.raises(IngestError, match=r"changed since it was ingested"):
        refresh_audit_db(uri, db)


def test_uncommitted_files_stay_invisible(world: World, archive_copy) -> None:
    uri, db = archive_copy()
    root = Path(uri)
    for table in ("runs", "blocks"):
        src = next((root / "tables" / table).rglob("*.parquet"))
        shutil.copy(src, src.with_name("20990101T000000Z-uncommitted.parquet"))
    refresh_audit_db(uri, db)
    assert counts(db)[:2] == counts(world.db)[:2]


def _ingested_copy(archive_copy) -> tuple[str, Path, ManifestLog, Manifest]:
    """A refreshed copy of the archive, its manifest log and its first manifest."""
    uri, db = archive_copy()
    refresh_audit_db(uri, db)
    log = ManifestLog(open_store(uri))
    log.refresh()
    return uri, db, log, log.manifests[0]


def _refused(uri: str, db: Path, world: World, match: str) -> None:
    """Refresh and rebuild (which checks once at the end) both refuse; nothing published."""
    for build in (refresh_audit_db, rebuild_audit_db):
        with pytest.raises(IngestError, match=match):
            build(uri, db)
        assert counts(db)[0] == len(world.runs)


def test_duplicate_run_in_a_later_manifest_is_refused(world: World, archive_copy) -> None:
    uri, db, log, first = _ingested_copy(archive_copy)
    files = []
    for f in first.files:  # the same rows again under a new batch's keys
        key = f.key.rsplit("/", 1)[0] + "/20990101T000000Z-duplicate.parquet"
        log.store.put_bytes(key, log.store.get_bytes(f.key))
        files.append(type(f)(key, f.table, f.rows, f.bytes, f.sha256))
    draft = Manifest(0, "duplicate", "", None, first.schema_version, first.runs, tuple(files), ())
    assert log.commit(draft) is not None
    _refused(uri, db, world, r"manifest 3: would duplicate rows")


def test_run_listed_twice_in_one_runs_file_is_refused(world: World, archive_copy) -> None:
    uri, db, log, first = _ingested_copy(archive_copy)
    entry = next(f for f in first.files if f.table == "runs")
    row = pq.read_table(io.BytesIO(log.store.get_bytes(entry.key))).slice(0, 1)
    row = row.set_column(row.schema.get_field_index("run_id"), "run_id", pa.array(["run-twice"]))
    buf = io.BytesIO()
    pq.write_table(pa.concat_tables([row, row]), buf)
    data = buf.getvalue()
    key = entry.key.rsplit("/", 1)[0] + "/20990101T000000Z-twice.parquet"
    log.store.put_bytes(key, data)
    runs = (replace(first.runs[0], run_id="run-twice"),)
    files = (type(entry)(key, "runs", 2, len(data), sha256_hex(data)),)
    draft = Manifest(0, "twice", "", None, first.schema_version, runs, files, ())
    assert log.commit(draft) is not None
    _refused(uri, db, world, r"manifest 3: would duplicate rows .*run-twice")


def test_other_archive_needs_rebuild(world: World, archive_copy, tmp_path: Path) -> None:
    uri, db = archive_copy()
    refresh_audit_db(uri, db)
    other = tmp_path / "other-archive"
    other.mkdir()
    with pytest.raises(IngestError, match="audit rebuild"):
        refresh_audit_db(str(other), db)
