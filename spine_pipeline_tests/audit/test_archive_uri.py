"""Ingest from a local archive and from S3 (SeaweedFS, through DuckDB's httpfs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.stores import open_store
from spine_pipeline.audit import IngestError, connect_readonly, rebuild_audit_db, refresh_audit_db
from spine_pipeline.cli import main
from spine_pipeline_tests.audit.conftest import World, archive_runs, create_runs, rows


def test_ingest_from_archive_uri(world: World, archive_uri: str, tmp_path: Path) -> None:
    ids = create_runs(
        world.sim, [(f"Archive URI run {i} on wind farms", "report") for i in range(3)]
    )
    archive_runs(world.sim, archive_uri, ids[:2])
    archive_runs(world.sim, archive_uri, ids[2:])
    db = tmp_path / "audit.duckdb"
    report = refresh_audit_db(archive_uri, db)
    assert report.manifests == [1, 2]
    assert refresh_audit_db(archive_uri, db).manifests == []
    truths = {r: world.sim.world.ground_truth(r) for r in ids}
    con = connect_readonly(db)
    try:
        got = dict(rows(con, "SELECT run_id, credits_consumed FROM runs"))
        assert got == {
            r: t.final_run.get("metadata", {}).get("credits_consumed") for r, t in truths.items()
        }
        blocks = dict(rows(con, "SELECT run_id, count(*) FROM blocks GROUP BY 1"))
        assert blocks == {r: len(t.dag["nodes"]) for r, t in truths.items() if t.dag}
        assert rows(con, "SELECT sum(credits) FROM credit_usage_daily") == [
            (sum(t.credits for t in truths.values()),)
        ]
    finally:
        con.close()

    # A tampered object is refused, on S3 as on disk.
    store = open_store(archive_uri)
    log = ManifestLog(store)
    log.refresh()
    key = next(f.key for f in log.manifests[-1].files if f.table == "runs")
    data = bytearray(store.get_bytes(key))
    data[-20] ^= 0xFF
    store.delete(key)
    store.put_bytes(key, bytes(data))
    with pytest.raises(IngestError, match="does not match manifest 2"):
        rebuild_audit_db(archive_uri, tmp_path / "other.duckdb")


def test_audit_cli_rebuild_and_refresh(world: World, archive_copy) -> None:
    uri, db = archive_copy()
    runner = CliRunner()
    out = runner.invoke(main, ["audit", "rebuild", "--archive", uri, "--db", str(db)])
    assert out.exit_code == 0, out.output
    assert "ingested 2 manifest(s) (last seq 2)" in out.output
    env = {"SPINE_ARCHIVE_URI": uri, "SPINE_AUDIT_DB": str(db)}
    again = runner.invoke(main, ["audit", "refresh"], env=env)
    assert again.exit_code == 0 and "ingested 0 manifest(s)" in again.output
    (Path(uri) / "manifests" / "000000000001.json").unlink()
    broken = runner.invoke(main, ["audit", "rebuild"], env=env)
    assert broken.exit_code == 1
    # besides the progress lines (`audit: ...` on stderr), one error line
    said = [ln for ln in broken.output.splitlines() if not ln.startswith("audit: ")]
    assert len(said) == 1
    assert said[0].startswith("error: refusing to ingest: manifests/000000000001.json")
