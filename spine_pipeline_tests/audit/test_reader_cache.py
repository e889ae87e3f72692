"""Idle snapshots: kept open briefly for the next reader, never in the writer's way."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from spine_pipeline.audit import connect_readonly, credit_report, duck, refresh_audit_db
from spine_pipeline.audit.duck import REGISTRY, file_key
from spine_pipeline_tests.audit.conftest import World


def _idle(db: Path) -> list[duck._Snapshot]:
    with REGISTRY.lock:
        return [s for s in REGISTRY.open.values() if s.path == db.absolute() and s.refs <= 0]


def test_idle_snapshot_is_reused_then_closed(
    world: World, archive_copy, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, db = archive_copy()
    refresh_audit_db(uri, db)
    monkeypatch.setattr(duck, "KEEP_IDLE_SECONDS", 0.3)
    credit_report(db, by="template")
    (first,) = _idle(db)
    credit_report(db, by="template")
    assert _idle(db) == [first]  # the same instance served the second call
    deadline = time.monotonic() + 5
    while _idle(db) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _idle(db) == []  # the reaper closed it


def test_idle_snapshots_never_block_the_writer(world: World, archive_copy) -> None:
    uri, db = archive_copy()
    refresh_audit_db(uri, db)
    refresh_audit_db(uri, db)  # now there is a spare (the first snapshot)
    spare = db.with_name(f"{db.name}.spare")
    credit_report(db, by="template")
    old = file_key(db)
    assert _idle(db)
    # This process's idle snapshot of the published file does not stop the spare's reuse,
    # and after the publish the stale one (now the spare) is closed, not kept locked.
    assert refresh_audit_db(uri, db).snapshot == "reused"
    assert file_key(spare) == old
    assert refresh_audit_db(uri, db).snapshot == "reused"
    con = connect_readonly(db)
    try:
        assert con.execute("SELECT count(*) FROM runs").fetchone() == (len(world.runs),)
    finally:
        con.close()
    keys = {s.key[:2] for s in _idle(db)}
    assert keys <= {file_key(db)}
