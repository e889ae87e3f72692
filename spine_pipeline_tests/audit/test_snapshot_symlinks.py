"""No name beside the audit database is followed (issue 14).

Someone who can write the database's directory plants a symlink (or a hard link) at one of
the names a refresh writes, pointing at a foreign DuckDB file. The refresh must refuse with a
clear error and leave the foreign file byte for byte as it was.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import duckdb
import pytest

from spine_pipeline.audit import AuditError, rebuild_audit_db, refresh_audit_db
from spine_pipeline.audit.snapshot import paths_for


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def setup(tmp_path: Path) -> tuple[str, Path, Path]:
    """An (empty) archive, the audit database path, and a foreign DuckDB file."""
    archive = str(tmp_path / "archive")
    db = tmp_path / "audit" / "audit.duckdb"
    foreign = tmp_path / "elsewhere" / "precious.duckdb"
    foreign.parent.mkdir()
    con = duckdb.connect(str(foreign))
    con.execute("CREATE TABLE mine AS SELECT 42 AS answer")
    con.close()
    foreign.chmod(0o644)
    return archive, db, foreign


def _two_refreshes(archive: str, db: Path) -> None:
    """After two refreshes there are a published snapshot and a spare."""
    refresh_audit_db(archive, db)
    refresh_audit_db(archive, db)
    assert paths_for(db).spare.exists()


NAMES = {
    "published": lambda p: p.published,
    "spare": lambda p: p.spare,
    "spare.wal": lambda p: Path(f"{p.spare}.wal"),
    "published.wal": lambda p: Path(f"{p.published}.wal"),
    "prev": lambda p: p.previous_link,
    "copy": lambda p: p.copying,
    "lock": lambda p: p.writer_lock,
}


@pytest.mark.parametrize("name", sorted(NAMES))
def test_a_planted_symlink_beside_the_database_is_refused(
    setup: tuple[str, Path, Path], name: str
) -> None:
    archive, db, foreign = setup
    _two_refreshes(archive, db)
    paths = paths_for(db)
    planted = NAMES[name](paths)
    if planted.exists():
        planted.unlink()
    planted.symlink_to(foreign)
    before = (_digest(foreign), foreign.stat().st_mode)

    for build in (refresh_audit_db, rebuild_audit_db):
        with pytest.raises(AuditError, match="symlink") as caught:
            build(archive, db)
        message = str(caught.value)
        assert str(planted) in message and "\n" not in message
        assert (_digest(foreign), foreign.stat().st_mode) == before
        assert planted.is_symlink()  # refused, not silently removed
    con = duckdb.connect(str(foreign), read_only=True)
    assert con.execute("SELECT answer FROM mine").fetchall() == [(42,)]
    con.close()


@pytest.mark.parametrize("name", ["lock", "spare.wal", "published"])
def test_a_dangling_symlink_never_creates_its_target(
    setup: tuple[str, Path, Path], tmp_path: Path, name: str
) -> None:
    archive, db, _ = setup
    db.parent.mkdir(mode=0o700)
    target = tmp_path / "elsewhere" / "created-by-us"
    planted = NAMES[name](paths_for(db))
    planted.symlink_to(target)
    with pytest.raises(AuditError, match="symlink"):
        refresh_audit_db(archive, db)
    assert not target.exists()


def test_a_spare_hard_linked_to_a_foreign_file_is_not_written(
    setup: tuple[str, Path, Path],
) -> None:
    """A second name means writing the spare writes the other file too: copy instead."""
    archive, db, foreign = setup
    _two_refreshes(archive, db)
    spare = paths_for(db).spare
    spare.unlink()
    os.link(foreign, spare)
    before = _digest(foreign)

    report = refresh_audit_db(archive, db)

    assert report.snapshot == "copied"
    assert _digest(foreign) == before
    assert not os.path.samefile(foreign, db)


def test_refreshes_still_alternate_two_files(setup: tuple[str, Path, Path]) -> None:
    """The checks do not cost the fast path: the third refresh reuses the spare."""
    archive, db, _ = setup
    _two_refreshes(archive, db)
    assert refresh_audit_db(archive, db).snapshot == "reused"
    assert (db.stat().st_mode & 0o777) == 0o600


def test_a_reader_refuses_a_symlinked_published_database(setup: tuple[str, Path, Path]) -> None:
    """Readers (`sql`, reports, search) never open a database through a planted symlink:
    answers read from a foreign file would pass for the audit tables."""
    from spine_pipeline.audit.duck import connect_readonly

    _archive, db, foreign = setup
    db.parent.mkdir(parents=True)
    os.symlink(foreign, db)
    with pytest.raises(AuditError, match="symlink"):
        connect_readonly(db)
