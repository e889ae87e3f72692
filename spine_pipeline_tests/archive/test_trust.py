"""Nothing trusted unhashed, nothing followed (issue 14).

An insider with write access to the archive plants bytes at a content address, or a symlink
inside a local archive root. The archiver must not reuse what it did not hash, no store
operation may follow a symlink, and `verify` and `gc` name what they refused.
"""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from spine_pipeline.archive.gc import collect_garbage
from spine_pipeline.archive.layout import ARTIFACT_PREFIX, artifact_key, table_key
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.stores import AlreadyExists, StoreError, open_store
from spine_pipeline.archive.verify import verify_archive
from spine_pipeline_tests.archive.conftest import ArchiveKit
from spine_pipeline_tests.fixtures.insider import plant

PLANTED = b"planted by an insider: not the artifact these bytes claim to be"


def _report_run(kit: ArchiveKit, prompt: str) -> tuple[str, Any]:
    [run_id] = kit.submit(prompt, template="report")
    truth = kit.sim.world.ground_truth(run_id)
    assert truth.artifacts, "the report template must produce artifacts"
    return run_id, truth


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- content addresses ----------------------------------------------------------------------


def test_a_planted_object_at_a_content_address_is_refused_not_trusted(kit: ArchiveKit) -> None:
    run_id, truth = _report_run(kit, "[scenario:completed] planted address")
    planted = {artifact_key(a.sha256) for a in truth.artifacts.values()}
    for key in planted:
        kit.store.put_bytes(key, PLANTED)  # an insider writes through the store itself

    result = kit.archiver().archive([run_id])

    assert [o.outcome for o in result.outcomes] == ["archived"]  # the run still commits
    rows = kit.tables()["artifacts"].to_pylist()
    assert {r["artifact_id"] for r in rows} == set(truth.artifacts)
    for row in rows:
        assert row["storage_uri"] is None, row  # never points at the planted bytes
        assert row["sha256"] == truth.artifacts[row["artifact_id"]].sha256
        assert "already holds other bytes" in row["download_error"]
    log = ManifestLog(kit.store)
    log.refresh()
    assert [a.key for m in log for a in m.artifacts] == []  # no manifest vouches for them
    for key in planted:
        assert kit.store.get_bytes(key) == PLANTED  # neither trusted nor overwritten
    report = verify_archive(kit.store)
    assert report.ok, [str(p) for p in report.problems]
    named = {w.key: w.detail for w in report.warnings}
    for key in planted:
        assert "planted object" in named[key]


def test_an_existing_object_with_the_right_bytes_is_reused(kit: ArchiveKit) -> None:
    """A crashed writer's artifact (same bytes) is still reused: hashing costs no dedup."""
    run_id, truth = _report_run(kit, "[scenario:completed] reuse address")
    small = [a for a in truth.artifacts.values() if a.content is not None]
    for a in small:
        kit.store.put_bytes(artifact_key(a.sha256), a.content)

    kit.archiver().archive([run_id])

    rows = {r["artifact_id"]: r for r in kit.tables()["artifacts"].to_pylist()}
    for a in small:
        assert rows[a.artifact_id]["storage_uri"] == artifact_key(a.sha256)
        assert rows[a.artifact_id]["download_error"] is None
    report = verify_archive(kit.store)
    assert report.ok and report.warnings == []


class _BlindStore:
    """A store whose `exists` says no for artifacts: every artifact put races an existing one."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.uri = inner.uri

    def exists(self, key: str) -> bool:
        return False if key.startswith(ARTIFACT_PREFIX) else self.inner.exists(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_lost_put_race_checks_the_winners_bytes(kit: ArchiveKit) -> None:
    run_id, truth = _report_run(kit, "[scenario:completed] lost race")
    planted = {artifact_key(a.sha256) for a in truth.artifacts.values()}
    for key in planted:
        kit.store.put_bytes(key, PLANTED)
    from spine_pipeline.archive.archiver import Archiver

    Archiver(_BlindStore(open_store(kit.uri)), kit.async_client).archive([run_id])

    rows = kit.tables()["artifacts"].to_pylist()
    assert rows and all(r["storage_uri"] is None for r in rows)
    assert all("already holds other bytes" in r["download_error"] for r in rows)
    assert verify_archive(kit.store).ok


# -- symlinks inside a local archive root ----------------------------------------------------


@pytest.fixture
def local_kit(simulator: Any, tmp_path: Path) -> ArchiveKit:
    return ArchiveKit(simulator, str(tmp_path / "archive"))


def test_a_symlink_at_a_content_address_is_refused_and_never_followed(
    local_kit: ArchiveKit, tmp_path: Path
) -> None:
    kit = local_kit
    run_id, truth = _report_run(kit, "[scenario:completed] symlinked address")
    outside = tmp_path / "outside"
    outside.mkdir()
    root = Path(kit.store.uri)
    links = {}
    for a in truth.artifacts.values():
        key = artifact_key(a.sha256)
        target = outside / a.sha256
        target.write_bytes(a.content or b"foreign")  # even the right bytes: never followed
        path = root.joinpath(*key.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(target)
        links[key] = (target, _sha(target))

    result = kit.archiver().archive([run_id])

    assert [o.outcome for o in result.outcomes] == ["archived"]
    rows = kit.tables()["artifacts"].to_pylist()
    assert rows and all(r["storage_uri"] is None for r in rows)
    assert all("symlink" in r["download_error"] for r in rows)
    for key, (target, digest) in links.items():
        assert _sha(target) == digest
        with pytest.raises(StoreError, match="symlink"):
            kit.store.get_bytes(key)
        assert key not in {i.key for i in kit.store.list("artifacts/")}
    assert {e.key for e in kit.store.refused("artifacts/")} == set(links)
    report = verify_archive(kit.store)
    assert report.ok, [str(p) for p in report.problems]
    assert {w.key for w in report.warnings if w.kind == "refused"} == set(links)
    later = datetime.now(UTC) + timedelta(days=1)
    gc = collect_garbage(kit.store, grace=timedelta(0), include_artifacts=True, now=later)
    assert {r.split(":")[0] for r in gc.refused} == set(links)
    assert not set(gc.deleted) & set(links)
    for key, (target, digest) in links.items():
        assert root.joinpath(*key.split("/")).is_symlink() and _sha(target) == digest


def test_a_symlinked_directory_in_the_root_is_refused_by_every_operation(
    local_kit: ArchiveKit, tmp_path: Path
) -> None:
    kit = local_kit
    ids = kit.submit("[scenario:completed] symlinked directory")
    kit.archiver().archive(ids)
    root = Path(kit.store.uri)
    log = ManifestLog(kit.store)
    log.refresh()
    runs_files = [f.key for f in log.manifests[0].files if f.table == "runs"]
    # The insider moves tables/runs out and puts a symlink to it in its place.
    outside = tmp_path / "outside-runs"
    (root / "tables" / "runs").rename(outside)
    (root / "tables" / "runs").symlink_to(outside, target_is_directory=True)
    before = {p: _sha(p) for p in outside.rglob("*") if p.is_file()}

    for key in runs_files:  # reads
        with pytest.raises(StoreError, match="symlink"):
            kit.store.get_bytes(key)
    with pytest.raises(StoreError, match="symlink"):  # writes
        kit.store.put_bytes(table_key("runs", "2020-01-01", "planted"), b"x")
    listed = {i.key for i in kit.store.list("tables/")}  # list: skipped, never walked
    assert not any(k.startswith("tables/runs/") for k in listed)
    assert [e.key for e in kit.store.refused("tables/")] == ["tables/runs"]
    with pytest.raises(StoreError, match="symlink"):
        list(kit.store.list("tables/runs/"))
    assert [e.key for e in kit.store.refused("tables/runs/")] == ["tables/runs/"]

    report = verify_archive(kit.store)  # verify: committed files behind it are missing
    assert not report.ok
    assert {p.key for p in report.problems if p.kind == "missing"} == set(runs_files)
    assert [w.key for w in report.warnings if w.kind == "refused"] == ["tables/runs"]

    later = datetime.now(UTC) + timedelta(days=1)
    gc = collect_garbage(kit.store, grace=timedelta(0), include_artifacts=True, now=later)
    assert [r.split(":")[0] for r in gc.refused] == ["tables/runs"]
    assert not any(k.startswith("tables/runs/") for k in gc.deleted)
    assert {p: _sha(p) for p in outside.rglob("*") if p.is_file()} == before
    assert not list(outside.rglob("*planted*"))


def test_a_planted_symlinked_file_is_a_warning_not_followed_not_deleted(
    local_kit: ArchiveKit, tmp_path: Path
) -> None:
    kit = local_kit
    ids = kit.submit("[scenario:completed] symlinked file")
    kit.archiver().archive(ids)
    root = Path(kit.store.uri)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"not for the archive")
    key = table_key("runs", "2020-01-01", "planted")
    path = root.joinpath(*key.split("/"))
    path.parent.mkdir(parents=True)
    path.symlink_to(secret)

    with pytest.raises(StoreError, match="symlink"):
        kit.store.get_bytes(key)
    with pytest.raises(StoreError, match="symlink"):
        kit.store.exists(key)
    with pytest.raises(AlreadyExists):
        kit.store.put_bytes(key, b"x")  # the name is taken; the link is not followed
    assert key not in {i.key for i in kit.store.list()}
    report = verify_archive(kit.store)
    assert report.ok and [(w.kind, w.key) for w in report.warnings] == [("refused", key)]
    later = datetime.now(UTC) + timedelta(days=1)
    gc = collect_garbage(kit.store, grace=timedelta(0), now=later)
    assert gc.deleted == [] and [r.split(":")[0] for r in gc.refused] == [key]
    assert path.is_symlink() and secret.read_bytes() == b"not for the archive"


def test_a_committed_file_swapped_for_a_symlink_fails_verify(
    local_kit: ArchiveKit, tmp_path: Path
) -> None:
    """Even a symlink to identical bytes: the archive holds no links, so it is tampering."""
    kit = local_kit
    ids = kit.submit("[scenario:completed] swapped file")
    kit.archiver().archive(ids)
    log = ManifestLog(kit.store)
    log.refresh()
    key = log.manifests[0].files[0].key
    path = Path(kit.store.uri).joinpath(*key.split("/"))
    copy = tmp_path / "copy.parquet"
    copy.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(copy)
    report = verify_archive(kit.store)
    assert not report.ok
    assert ("missing", key) in {(p.kind, p.key) for p in report.problems}


# -- names no writer makes ------------------------------------------------------------------


def test_objects_with_names_no_writer_makes_are_refused_and_reported(archive_uri: str) -> None:
    store = open_store(archive_uri)
    # A control character (SeaweedFS folds backslashes and `//` into `/`, a tab it keeps).
    strange = "tables/runs/dt=2020-01-01/tab\there.parquet"
    plant(archive_uri, strange, b"odd")
    assert strange not in {i.key for i in store.list()}
    assert [e.key for e in store.refused("tables/")] == [strange.replace("\t", "\\t")]
    report = verify_archive(store)
    assert report.ok and [w.kind for w in report.warnings] == ["refused"]
    gc = collect_garbage(store, grace=timedelta(0), now=datetime.now(UTC) + timedelta(days=1))
    assert gc.deleted == [] and len(gc.refused) == 1


def test_a_control_character_in_a_local_name_cannot_forge_a_line(tmp_path: Path) -> None:
    root = tmp_path / "archive"
    store = open_store(str(root))
    evil = "x\nFAIL forged\x1b[2J"
    (root / "tables").mkdir()
    (root / "tables" / evil).write_bytes(b"odd")
    report = verify_archive(store)
    assert report.ok
    [warning] = report.warnings
    assert "\n" not in str(warning) and "\x1b" not in str(warning)
    assert "\\n" in str(warning)


def test_refused_reads_raise_store_errors(tmp_path: Path) -> None:
    """`UntrustedObject` is a `StoreError`: callers that catch StoreError still catch it."""
    from spine_pipeline.archive.stores import UntrustedObject

    assert issubclass(UntrustedObject, StoreError)
    store = open_store(str(tmp_path / "a"))
    os.symlink(tmp_path, Path(store.uri) / "tables")
    with pytest.raises(UntrustedObject):
        store.get_bytes("tables/x")
