"""The audit's memory of the log (issue 15): checkpoints recorded, rollbacks and forks refused.

Real archives written by the real Archiver (signed through a `LogPublisher`, or unsigned),
on disk and on S3 (`kit`); the audit database is always a local file. "Nothing changed" is
checked on the published file's bytes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import duckdb
import pytest

from spine_pipeline.archive.identity import ArchiveIdentity, read_identity
from spine_pipeline.archive.layout import IDENTITY_KEY, checkpoint_key, manifest_key
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.merkle import MerkleLog, leaf_hash
from spine_pipeline.archive.signing import SigningKey, generate_keypair
from spine_pipeline.archive.stores import open_store
from spine_pipeline.archive.tlog import LogPublisher, sign_checkpoint
from spine_pipeline.audit import (
    IngestError,
    connect_readonly,
    rebuild_audit_db,
    refresh_audit_db,
    run_sql,
)
from spine_pipeline.audit.ddl import AUDIT_SCHEMA_VERSION
from spine_pipeline_tests.archive.conftest import ArchiveKit
from spine_pipeline_tests.audit.conftest import rows
from spine_pipeline_tests.fixtures.insider import plant

pytestmark = pytest.mark.usefixtures("no_log_keys_from_the_environment")


class Keys:
    """A signing key and its public PEM (what SPINE_VERIFY_KEY would hold)."""

    def __init__(self) -> None:
        private, public = generate_keypair()
        self.signing = SigningKey.from_pem(private)
        self.public_pem = public.decode()


@pytest.fixture
def keys() -> Keys:
    return Keys()


def commit(kit: ArchiveKit, run_ids: list[str], key: SigningKey | None) -> int:
    """Archive `run_ids` as one manifest (signed and checkpointed when `key` is given)."""
    publisher = LogPublisher(open_store(kit.uri), key) if key is not None else None
    result = kit.archiver(publisher=publisher).archive(run_ids)
    assert result.ok and result.manifest is not None
    return result.manifest.seq


def runs(kit: ArchiveKit, n: int) -> list[str]:
    return kit.submit(*[f"History run {i} about grid storage" for i in range(n)], template="auto")


def roll_back(kit: ArchiveKit, size: int) -> None:
    """Delete every manifest after `size`, and their checkpoints: a shorter, valid archive."""
    log = ManifestLog(kit.store)
    log.refresh()
    for seq in range(size + 1, log.last_seq + 1):
        kit.store.delete(manifest_key(seq))
        kit.store.delete(checkpoint_key(seq))


def fingerprint(db: Path) -> str:
    return hashlib.sha256(db.read_bytes()).hexdigest()


def query(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = connect_readonly(db)
    try:
        return rows(con, sql)
    finally:
        con.close()


def tree_root(kit: ArchiveKit) -> str:
    log = ManifestLog(kit.store)
    log.refresh()
    return log.tree.root().hex()


def test_checkpoints_are_recorded_by_refresh_and_rebuild(
    kit: ArchiveKit, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = runs(kit, 3)
    commit(kit, ids[:1], keys.signing)
    commit(kit, ids[1:2], keys.signing)
    monkeypatch.setenv("SPINE_VERIFY_KEY", keys.public_pem)
    db = tmp_path / "audit.duckdb"
    first = refresh_audit_db(kit.uri, db)
    assert first.manifests == [1, 2]
    assert (first.checkpoint_size, first.checkpoint_verified) == (2, True)
    assert "checkpoint 2 (verified)" in first.summary()
    identity = read_identity(kit.store)
    assert identity is not None
    note = kit.store.get_bytes(checkpoint_key(2)).decode()
    got = query(
        db,
        "SELECT origin, size, root, key_ids, note, verified, checkpoint_time IS NOT NULL, "
        "ingested_at IS NOT NULL FROM checkpoints",
    )
    assert got == [
        (identity.origin, 2, tree_root(kit), [keys.signing.key_id], note, True, True, True)
    ]

    # Incremental: the next manifest and its checkpoint; manifest 1-2 keep checkpoint 2.
    history_root_2 = tree_root(kit)
    commit(kit, ids[2:], keys.signing)
    second = refresh_audit_db(kit.uri, db)
    assert second.manifests == [3] and second.checkpoint_size == 3
    assert query(db, "SELECT size, root FROM checkpoints ORDER BY size")[-1] == (3, tree_root(kit))
    expected = [(1, 2, keys.signing.key_id, True), (2, 2, keys.signing.key_id, True)]
    expected.append((3, 3, keys.signing.key_id, True))
    manifests_sql = (
        "SELECT seq, checkpoint_size, key_id, signature_verified FROM manifests ORDER BY seq"
    )
    assert query(db, manifests_sql) == expected
    history = query(db, "SELECT size, ingested_at FROM checkpoints ORDER BY size")

    # "As of checkpoint N" (docs/audit.md, through the read-only `sql` command).
    as_of = run_sql(db, "SELECT run_id FROM runs WHERE manifest_seq <= 2 ORDER BY run_id")[1]
    assert as_of == sorted((r,) for r in ids[:2])
    vouched = run_sql(
        db,
        "SELECT r.run_id, m.seq, c.size, c.root, c.verified "
        "FROM runs r JOIN manifests m ON m.seq = r.manifest_seq "
        f"LEFT JOIN checkpoints c ON c.size = m.checkpoint_size WHERE r.run_id = '{ids[0]}'",
    )[1]
    assert vouched == [(ids[0], 1, 2, history_root_2, True)]

    # A rebuild keeps the audit's history of checkpoints (sizes and when they were ingested).
    rebuilt = rebuild_audit_db(kit.uri, db)
    assert rebuilt.manifests == [1, 2, 3] and rebuilt.checkpoint_size == 3
    assert query(db, "SELECT size, ingested_at FROM checkpoints ORDER BY size") == history
    assert query(db, manifests_sql) == expected

    # Without a verify key the checkpoint is read by format only, and recorded so.
    monkeypatch.delenv("SPINE_VERIFY_KEY")
    other = tmp_path / "unverified.duckdb"
    report = rebuild_audit_db(kit.uri, other)
    assert (report.checkpoint_size, report.checkpoint_verified) == (3, False)
    assert "checkpoint 3 (signature not verified)" in report.summary()
    assert query(other, "SELECT size, key_ids, verified FROM checkpoints") == [(3, [], False)]
    assert query(other, "SELECT DISTINCT signature_verified FROM manifests") == [(False,)]


def _lagging_spare(kit: ArchiveKit, db: Path, key: SigningKey | None) -> None:
    """Three manifests; the published database holds all three, its spare only two."""
    ids = runs(kit, 3)
    commit(kit, ids[:1], key)
    commit(kit, ids[1:2], key)
    refresh_audit_db(kit.uri, db)
    commit(kit, ids[2:], key)
    assert refresh_audit_db(kit.uri, db).manifests == [3]
    assert query(db, "SELECT max(seq) FROM manifests") == [(3,)]


def test_a_rollback_is_refused_by_refresh_and_by_rebuild(
    kit: ArchiveKit, keys: Keys, tmp_path: Path
) -> None:
    db = tmp_path / "audit.duckdb"
    _lagging_spare(kit, db, keys.signing)
    before = fingerprint(db)
    roll_back(kit, 2)  # manifest 3 and its checkpoint deleted: the archive is valid alone

    # The spare a refresh would catch up holds only manifests 1-2: only the published
    # database's checkpoint 3 shows what is missing.
    with pytest.raises(IngestError) as refused:
        refresh_audit_db(kit.uri, db)
    message = str(refused.value)
    assert message.startswith("refusing to ingest: rollback: a checkpoint says the log had 3")
    assert "\n" not in message
    assert fingerprint(db) == before

    with pytest.raises(IngestError, match=r"^refusing to ingest: rollback: .* had 3 manifests"):
        rebuild_audit_db(kit.uri, db)
    assert fingerprint(db) == before
    assert query(db, "SELECT max(seq), (SELECT max(size) FROM checkpoints) FROM manifests") == [
        (3, 3)
    ]


def test_an_unsigned_rollback_is_refused_by_a_refresh_whose_spare_lags(
    kit: ArchiveKit, tmp_path: Path
) -> None:
    # No checkpoints at all: the published database's last manifest is the memory.
    db = tmp_path / "audit.duckdb"
    _lagging_spare(kit, db, None)
    before = fingerprint(db)
    roll_back(kit, 2)
    with pytest.raises(IngestError, match=r"rollback: the audit ingested manifests/000000000003"):
        refresh_audit_db(kit.uri, db)
    assert fingerprint(db) == before


def test_an_unsigned_rewrite_is_refused_by_a_refresh_whose_spare_lags(
    kit: ArchiveKit, tmp_path: Path
) -> None:
    db = tmp_path / "audit.duckdb"
    _lagging_spare(kit, db, None)
    before = fingerprint(db)
    # Manifest 3 rewritten, still chained to manifest 2 (the spare's anchor).
    key = manifest_key(3)
    plant(kit.uri, key, kit.store.get_bytes(key).replace(b'"writer"', b'"writer" ', 1))
    with pytest.raises(IngestError, match=r"manifests/000000000003.json: changed since it was"):
        refresh_audit_db(kit.uri, db)
    assert fingerprint(db) == before


def test_a_fork_is_refused(kit: ArchiveKit, keys: Keys, tmp_path: Path) -> None:
    db = tmp_path / "audit.duckdb"
    _lagging_spare(kit, db, keys.signing)
    before = fingerprint(db)
    log = ManifestLog(kit.store)
    log.refresh()
    rewritten = [m.run_ids for m in log.manifests[1:]]
    # An insider with the signing key rewrites history after manifest 1: the same runs,
    # re-archived, signed and checkpointed, so the archive verifies on its own.
    roll_back(kit, 1)
    for run_ids in rewritten:
        commit(kit, run_ids, keys.signing)
    assert ManifestLog(kit.store).refresh()[-1].seq == 3

    with pytest.raises(IngestError, match=r"manifests/000000000002.json: changed since it was"):
        refresh_audit_db(kit.uri, db)  # the lagging spare's anchor is manifest 2
    assert fingerprint(db) == before
    with pytest.raises(IngestError, match=r"^refusing to ingest: fork: the archive's first 3 "):
        rebuild_audit_db(kit.uri, db)
    assert fingerprint(db) == before
    # The failed rebuild left an empty spare; the refresh that reuses it reads the whole
    # log, and only the published database's checkpoint shows the fork.
    with pytest.raises(IngestError, match=r"^refusing to ingest: fork: the archive's first 3 "):
        refresh_audit_db(kit.uri, db)
    assert fingerprint(db) == before


def test_an_archive_checkpoint_inconsistent_with_the_log_is_refused(
    kit: ArchiveKit, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = runs(kit, 2)
    commit(kit, ids[:1], keys.signing)
    commit(kit, ids[1:], keys.signing)
    identity = read_identity(kit.store)
    assert identity is not None
    original = kit.store.get_bytes(checkpoint_key(2))

    # Another root for size 2, signed with the right key.
    other = MerkleLog([leaf_hash(b"one"), leaf_hash(b"two")])
    plant(kit.uri, checkpoint_key(2), sign_checkpoint(keys.signing, identity.origin, other).note)
    for verify in (None, keys.public_pem):
        if verify:
            monkeypatch.setenv("SPINE_VERIFY_KEY", verify)
        with pytest.raises(IngestError, match=r"checkpoints/000000000002.note: fork: "):
            refresh_audit_db(kit.uri, tmp_path / "fork.duckdb")
    assert not (tmp_path / "fork.duckdb").exists()

    # The right root, signed by a key SPINE_VERIFY_KEY does not hold.
    log = ManifestLog(kit.store)
    log.refresh()
    stranger = Keys().signing
    plant(kit.uri, checkpoint_key(2), sign_checkpoint(stranger, identity.origin, log.tree).note)
    with pytest.raises(IngestError, match=r"checkpoints/000000000002.note: no signature .* known"):
        refresh_audit_db(kit.uri, tmp_path / "stranger.duckdb")
    assert not (tmp_path / "stranger.duckdb").exists()

    # A bad signature by the known key.
    forged = bytearray(original)
    forged[-10] ^= 0x01  # inside the base64 signature line
    plant(kit.uri, checkpoint_key(2), bytes(forged))
    with pytest.raises(IngestError, match=r"checkpoints/000000000002.note: (signature|.*base64)"):
        refresh_audit_db(kit.uri, tmp_path / "forged.duckdb")

    # Without a verify key, the stranger's checkpoint is only a format: recorded unverified.
    monkeypatch.delenv("SPINE_VERIFY_KEY")
    plant(kit.uri, checkpoint_key(2), sign_checkpoint(stranger, identity.origin, log.tree).note)
    report = refresh_audit_db(kit.uri, tmp_path / "unverified.duckdb")
    assert (report.checkpoint_size, report.checkpoint_verified) == (2, False)

    # A checkpoint of more manifests than the archive has, and one filed under another size.
    larger = MerkleLog([leaf_hash(bytes([i])) for i in range(9)])
    plant(kit.uri, checkpoint_key(9), sign_checkpoint(keys.signing, identity.origin, larger).note)
    with pytest.raises(IngestError, match=r"000000000009.note: rollback: .* had 9 manifests"):
        refresh_audit_db(kit.uri, tmp_path / "larger.duckdb")
    plant(kit.uri, checkpoint_key(9), original)
    with pytest.raises(IngestError, match=r"000000000009.note: holds a checkpoint of size 2$"):
        refresh_audit_db(kit.uri, tmp_path / "misfiled.duckdb")


def test_a_replaced_or_deleted_identity_record_is_refused(
    kit: ArchiveKit, keys: Keys, tmp_path: Path
) -> None:
    ids = runs(kit, 2)
    commit(kit, ids[:1], keys.signing)
    commit(kit, ids[1:], keys.signing)
    db, quiet = tmp_path / "audit.duckdb", tmp_path / "quiet.duckdb"
    refresh_audit_db(kit.uri, db)
    refresh_audit_db(kit.uri, quiet)  # no rebuild fails beside this one (see below)
    before = {path: fingerprint(path) for path in (db, quiet)}
    # A new identity would escape the witnesses' memory of the log (another origin).
    other = ArchiveIdentity(archive_id="f" * 32, created_at="2026-01-01T00:00:00Z")
    plant(kit.uri, IDENTITY_KEY, other.to_bytes())
    for build in (refresh_audit_db, rebuild_audit_db):
        with pytest.raises(
            IngestError,
            match=r"^refusing to ingest: checkpoints/000000000002.note: "
            r"checkpoint of log 'spine-pipeline/[0-9a-f]{32}', not of this archive",
        ):
            build(kit.uri, db)
    # Its checkpoints deleted too: the audit remembers the log's origin, and the manifests
    # name the first identity.
    for size in (1, 2):
        kit.store.delete(checkpoint_key(size))
    with pytest.raises(IngestError, match=r"archive.json now names 'spine-pipeline/f{32}'"):
        refresh_audit_db(kit.uri, quiet)
    with pytest.raises(IngestError, match=r"000000000001.json: names archive [0-9a-f]{32}, "):
        rebuild_audit_db(kit.uri, db)
    # And with no identity record at all.
    kit.store.delete(IDENTITY_KEY)
    with pytest.raises(IngestError, match=r"the archive has no archive.json now"):
        refresh_audit_db(kit.uri, quiet)
    with pytest.raises(IngestError, match=r"names archive [0-9a-f]{32}, archive.json is missing"):
        rebuild_audit_db(kit.uri, db)
    assert before == {path: fingerprint(path) for path in (db, quiet)}


def test_an_unsigned_manifest_after_signed_ones_is_refused_with_a_verify_key(
    kit: ArchiveKit, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = runs(kit, 3)
    commit(kit, ids[:1], keys.signing)
    commit(kit, ids[1:2], keys.signing)
    monkeypatch.setenv("SPINE_VERIFY_KEY", keys.public_pem)
    db = tmp_path / "audit.duckdb"
    refresh_audit_db(kit.uri, db)
    before = fingerprint(db)
    commit(kit, ids[2:], None)  # an unsigned writer appends (no key: a forger)
    unsigned = r"manifests/000000000003.json: unsigned, after signed manifest 2"
    with pytest.raises(IngestError, match=rf"^refusing to ingest: {unsigned}"):
        refresh_audit_db(kit.uri, db)
    assert fingerprint(db) == before
    with pytest.raises(IngestError, match=unsigned):
        rebuild_audit_db(kit.uri, db)
    assert fingerprint(db) == before
    # Without a key the audit ingests as before.
    monkeypatch.delenv("SPINE_VERIFY_KEY")
    assert refresh_audit_db(kit.uri, db).manifests == [3]


def test_a_manifest_signed_by_another_key_is_refused_with_a_verify_key(
    kit: ArchiveKit, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = runs(kit, 2)
    commit(kit, ids[:1], keys.signing)
    stranger = Keys().signing
    commit(kit, ids[1:], stranger)
    kit.store.delete(checkpoint_key(2))  # so the manifest itself is what is judged
    monkeypatch.setenv("SPINE_VERIFY_KEY", keys.public_pem)
    with pytest.raises(
        IngestError,
        match=rf"manifests/000000000002.json: signed by unknown key id {stranger.key_id}",
    ):
        rebuild_audit_db(kit.uri, tmp_path / "audit.duckdb")


def test_an_archive_that_began_unsigned_is_ingested_with_a_verify_key(
    kit: ArchiveKit, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = runs(kit, 3)
    commit(kit, ids[:1], None)
    commit(kit, ids[1:2], keys.signing)
    monkeypatch.setenv("SPINE_VERIFY_KEY", keys.public_pem)
    db = tmp_path / "audit.duckdb"
    assert refresh_audit_db(kit.uri, db).checkpoint_size == 2
    commit(kit, ids[2:], keys.signing)
    assert refresh_audit_db(kit.uri, db).manifests == [3]
    assert query(db, "SELECT seq, key_id, signature_verified FROM manifests ORDER BY seq") == [
        (1, None, None),
        (2, keys.signing.key_id, True),
        (3, keys.signing.key_id, True),
    ]


def test_an_archive_without_signing_works_as_before(
    kit: ArchiveKit, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = runs(kit, 2)
    commit(kit, ids[:1], None)
    db = tmp_path / "audit.duckdb"
    first = refresh_audit_db(kit.uri, db)
    assert first.manifests == [1] and first.checkpoint_size is None
    assert "checkpoint" not in first.summary()
    commit(kit, ids[1:], None)
    monkeypatch.setenv("SPINE_VERIFY_KEY", keys.public_pem)  # leading unsigned: still fine
    assert refresh_audit_db(kit.uri, db).manifests == [2]
    assert rebuild_audit_db(kit.uri, db).manifests == [1, 2]
    assert query(db, "SELECT count(*) FROM checkpoints") == [(0,)]
    assert query(db, "SELECT seq, key_id, checkpoint_size FROM manifests ORDER BY seq") == [
        (1, None, None),
        (2, None, None),
    ]


def _as_schema_version_2(db: Path) -> None:
    """Give a database the layout before checkpoints were recorded."""
    con = duckdb.connect(str(db))
    try:
        con.execute("DROP TABLE checkpoints")
        for column in ("key_id", "signature_verified", "checkpoint_size"):
            con.execute(f"ALTER TABLE manifests DROP COLUMN {column}")
        con.execute("UPDATE audit_state SET value = '2' WHERE key = 'schema_version'")
        con.execute("CHECKPOINT")
    finally:
        con.close()


def test_a_database_of_the_older_layout_is_migrated(
    kit: ArchiveKit, keys: Keys, tmp_path: Path
) -> None:
    ids = runs(kit, 3)
    commit(kit, ids[:1], keys.signing)
    commit(kit, ids[1:2], keys.signing)
    db = tmp_path / "audit.duckdb"
    refresh_audit_db(kit.uri, db)
    _as_schema_version_2(db)
    # A rebuild over an old-layout database (no memory of checkpoints) works.
    old = tmp_path / "old.duckdb"
    refresh_audit_db(kit.uri, old)
    _as_schema_version_2(old)
    assert rebuild_audit_db(kit.uri, old).checkpoint_size == 2
    assert query(old, "SELECT size FROM checkpoints") == [(2,)]
    spare = db.with_name(f"{db.name}.spare")
    assert not spare.exists()  # the next refresh copies the old-layout file
    commit(kit, ids[2:], keys.signing)
    report = refresh_audit_db(kit.uri, db)
    assert report.manifests == [3] and report.checkpoint_size == 3
    assert query(db, "SELECT size FROM checkpoints") == [(3,)]
    assert query(db, "SELECT seq, key_id, checkpoint_size FROM manifests ORDER BY seq") == [
        (1, None, 3),  # ingested before the audit recorded signatures
        (2, None, 3),
        (3, keys.signing.key_id, 3),
    ]
    assert query(db, "SELECT value FROM audit_state WHERE key = 'schema_version'") == [
        (str(AUDIT_SCHEMA_VERSION),)
    ]
