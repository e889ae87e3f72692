"""`verify` checks verifiable history (issue 15): signatures, checkpoints, witnesses.

Every tamper class an insider with write access to the archive (but not the signing key,
nor the witness) can try is made here behind the store's back, on both backends, and must
fail naming the object: an appended forgery (unsigned, or signed by another key), a
consistent rewrite of the newest batch, a re-hashed history, a rollback, a fork, an
injected unsigned manifest, a replaced identity record. The limits are written down as
tests too: a clean rollback passes without a witness.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from spine_pipeline.archive.archiver import Archiver
from spine_pipeline.archive.gc import collect_garbage
from spine_pipeline.archive.identity import ArchiveIdentity, read_identity
from spine_pipeline.archive.layout import (
    CHECKPOINT_PREFIX,
    IDENTITY_KEY,
    checkpoint_key,
    manifest_key,
    table_key,
    witness_checkpoint_key,
)
from spine_pipeline.archive.manifest import FileEntry, Manifest, sha256_hex
from spine_pipeline.archive.signing import SigningKey, VerifyKeys, generate_keypair
from spine_pipeline.archive.stores import ObjectStore, open_store
from spine_pipeline.archive.tlog import LogPublisher, Witness, archive_checkpoints
from spine_pipeline.archive.verify import VerifyReport, verify_archive
from spine_pipeline.cli import main
from spine_pipeline_tests.archive.conftest import ArchiveKit
from spine_pipeline_tests.fixtures.insider import plant

# ----------------------------------------------------------------------------- helpers


def _key() -> SigningKey:
    return SigningKey.from_pem(generate_keypair()[0])


@pytest.fixture
def key() -> SigningKey:
    return _key()


@pytest.fixture
def witness(tmp_path: Path) -> Witness:
    return Witness.open(str(tmp_path / "witness"))


def _keys(*signing: SigningKey) -> VerifyKeys:
    return VerifyKeys([k.public_key for k in signing])


def _archive(
    kit: ArchiveKit,
    batches: int,
    key: SigningKey | None,
    witnesses: Sequence[Witness] = (),
    *,
    store: ObjectStore | None = None,
    label: str = "",
) -> None:
    """`batches` commits of one run each, by a signing writer (or an unsigned one)."""
    store = store or kit.store
    ids = kit.submit(*(f"[scenario:completed] {label} batch {i}" for i in range(batches)))
    for run_id in ids:
        publisher = LogPublisher(store, key, tuple(witnesses)) if key is not None else None
        result = Archiver(store, kit.async_client, publisher=publisher).archive([run_id])
        assert [o.outcome for o in result.outcomes] == ["archived"]


def _manifests(store: ObjectStore) -> list[Manifest]:
    """The stored manifests in seq order, read without checking the chain."""
    out = []
    seq = 1
    while store.exists(manifest_key(seq)):
        out.append(Manifest.from_bytes(store.get_bytes(manifest_key(seq)), key=manifest_key(seq)))
        seq += 1
    return out


def _put_manifest(store: ObjectStore, manifest: Manifest) -> Manifest:
    """Store `manifest` at its seq (overwriting), returning it with its new sha256."""
    data = manifest.to_bytes()
    plant(store.uri, manifest_key(manifest.seq), data)
    return replace(manifest, sha256=sha256_hex(data))


def _copy(src: ObjectStore, dst_uri: str) -> ObjectStore:
    """A byte-identical copy of every object under `src` at another root."""
    dst = open_store(dst_uri)
    for info in src.list(""):
        dst.put_bytes(info.key, src.get_bytes(info.key))
    return dst


def _origin(store: ObjectStore) -> str:
    identity = read_identity(store)
    assert identity is not None
    return identity.origin


def _lines(report: VerifyReport) -> list[str]:
    return [str(p) for p in report.problems]


def _named(report: VerifyReport, kind: str, key: str, text: str = "") -> bool:
    """A problem of `kind` naming `key` (as its key, or in the key of a witness's object)."""
    return any(
        p.kind == kind and (p.key == key or p.key.endswith(key)) and text in p.detail
        for p in report.problems
    )


def _assert_clean(report: VerifyReport) -> None:
    assert report.ok and not report.warnings, [str(p) for p in report.problems + report.warnings]
    for finding in report.problems + report.warnings:
        assert "\n" not in str(finding)


def _rehash_a_file(store: ObjectStore, manifest: Manifest) -> Manifest:
    """Change one Parquet file of `manifest` and return the manifest re-hashed over it."""
    entry = manifest.files[0]
    data = bytearray(store.get_bytes(entry.key))
    data[len(data) // 2] ^= 0x01
    plant(store.uri, entry.key, bytes(data))
    edited = FileEntry(
        key=entry.key,
        table=entry.table,
        rows=entry.rows,
        bytes=len(data),
        sha256=sha256_hex(bytes(data)),
    )
    return replace(manifest, files=(edited, *manifest.files[1:]))


def _forged(after: Manifest, **fields: Any) -> Manifest:
    """An empty batch appended after `after`, correctly chained."""
    return replace(
        after,
        seq=after.seq + 1,
        prev_sha256=after.sha256,
        batch_id="forged",
        runs=(),
        files=(),
        artifacts=(),
        signature=None,
        sha256=None,
        **fields,
    )


# ----------------------------------------------------------------------------- clean archives


def test_a_signed_witnessed_archive_verifies_clean_and_so_does_a_copy(
    kit: ArchiveKit, key: SigningKey, witness: Witness
) -> None:
    _archive(kit, 3, key, [witness])
    report = verify_archive(kit.store, keys=_keys(key), witnesses=[witness])
    _assert_clean(report)
    assert (report.manifests, report.signed, report.unsigned_leading) == (3, 3, 0)
    assert report.signatures_checked
    assert report.checkpoint is not None and report.checkpoint.size == 3
    assert report.checkpoint.key_ids == (key.key_id,)
    assert report.witnessed == [(witness.uri, 3)]
    assert any(n.startswith("newest checkpoint: size 3, root ") for n in report.notes)

    # The log's identity is in the identity record, not in where the archive is stored.
    copy = _copy(kit.store, f"{kit.uri}-copy")
    _assert_clean(verify_archive(copy, keys=_keys(key), witnesses=[witness]))

    # Without a key: everything else is checked, and one WARN says what was not.
    unkeyed = verify_archive(kit.store, witnesses=[witness])
    assert unkeyed.ok and not unkeyed.signatures_checked
    assert [(w.kind, w.detail) for w in unkeyed.warnings] == [
        ("unchecked", "signatures not checked: no verify key (SPINE_VERIFY_KEY or --verify-key)")
    ]


def test_gc_never_touches_checkpoints_or_the_identity_record(
    kit: ArchiveKit, key: SigningKey
) -> None:
    from datetime import timedelta

    _archive(kit, 2, key)
    kept = [IDENTITY_KEY, checkpoint_key(1), checkpoint_key(2)]
    before = {k: kit.store.get_bytes(k) for k in kept}
    orphan = table_key("runs", "2020-01-01", "orphan")
    kit.store.put_bytes(orphan, b"uncommitted")
    report = collect_garbage(kit.store, grace=timedelta(0), include_artifacts=True)
    assert report.deleted == [orphan]
    assert {k: kit.store.get_bytes(k) for k in kept} == before
    _assert_clean(verify_archive(kit.store, keys=_keys(key)))


# ----------------------------------------------------------------------------- forgeries


def test_an_appended_unsigned_forgery_fails(
    kit: ArchiveKit, key: SigningKey, witness: Witness
) -> None:
    _archive(kit, 2, key, [witness])
    last = _manifests(kit.store)[-1]
    kit.store.put_bytes(manifest_key(3), _forged(last).to_bytes())
    for keys in (_keys(key), None):  # an unsigned manifest after signed ones: with or without
        report = verify_archive(kit.store, keys=keys, witnesses=[witness])
        assert _named(report, "signature", manifest_key(3), "unsigned"), _lines(report)
    assert any(w.kind == "uncheckpointed" and w.key == manifest_key(3) for w in report.warnings)


def test_an_appended_forgery_signed_by_another_key_fails(
    kit: ArchiveKit, key: SigningKey, witness: Witness
) -> None:
    _archive(kit, 2, key, [witness])
    last = _manifests(kit.store)[-1]
    mallory = _key()
    forged = _forged(last)
    forged = replace(forged, signature=mallory.sign(forged.signed_bytes()))
    kit.store.put_bytes(manifest_key(3), forged.to_bytes())
    report = verify_archive(kit.store, keys=_keys(key), witnesses=[witness])
    assert _named(report, "signature", manifest_key(3), f"unknown key id {mallory.key_id}")
    assert len(report.problems) == 1, _lines(report)


def test_a_consistent_rewrite_of_the_newest_batch_fails(
    kit: ArchiveKit, key: SigningKey, witness: Witness
) -> None:
    _archive(kit, 2, key, [witness])
    newest = _manifests(kit.store)[-1]
    rewritten = _rehash_a_file(kit.store, newest)  # old signature kept, chain still fine
    _put_manifest(kit.store, rewritten)
    report = verify_archive(kit.store, keys=_keys(key), witnesses=[witness])
    assert _named(report, "signature", manifest_key(2), "bad signature"), _lines(report)
    assert _named(report, "checkpoint", checkpoint_key(2), "fork")
    assert _named(report, "witness", witness_checkpoint_key(_origin(kit.store), 2), "fork")
    # The archive's own checkpoint catches it even without a key (read by format only).
    assert _named(verify_archive(kit.store), "checkpoint", checkpoint_key(2), "fork")


@pytest.mark.parametrize(("start", "signatures"), [(1, "none"), (2, "none"), (2, "old")], ids=str)
def test_a_history_rehashed_from_an_edited_batch_onward_fails(
    kit: ArchiveKit, key: SigningKey, witness: Witness, start: int, signatures: str
) -> None:
    _archive(kit, 3, key, [witness])
    manifests = _manifests(kit.store)
    prev = manifests[start - 2].sha256 if start > 1 else None
    for i, manifest in enumerate(manifests[start - 1 :], start=start):
        edited = _rehash_a_file(kit.store, manifest) if i == start else manifest
        edited = replace(edited, prev_sha256=prev)
        if signatures == "none":
            edited = replace(edited, signature=None)
        prev = _put_manifest(kit.store, edited).sha256
    keys, origin = _keys(key), _origin(kit.store)
    report = verify_archive(kit.store, keys=keys, witnesses=[witness])
    assert not report.ok
    if start > 1:  # signed manifests remain before the edit: the rewritten ones are bad
        text = "unsigned" if signatures == "none" else "bad signature"
        assert _named(report, "signature", manifest_key(start), text), _lines(report)
    for size in range(start, 4):
        assert _named(report, "checkpoint", checkpoint_key(size), "fork"), _lines(report)
        assert _named(report, "witness", witness_checkpoint_key(origin, size), "fork")

    # Also rewriting the archive's checkpoints leaves the witness's.
    for size in range(1, 4):
        kit.store.delete(checkpoint_key(size))
    report = verify_archive(kit.store, keys=keys, witnesses=[witness])
    assert _named(report, "witness", witness_checkpoint_key(origin, 3), "fork"), _lines(report)


def test_an_unsigned_manifest_injected_in_the_middle_fails(
    kit: ArchiveKit, key: SigningKey, witness: Witness
) -> None:
    _archive(kit, 3, key, [witness])
    first, second, third = _manifests(kit.store)
    injected = _put_manifest(kit.store, _forged(first))
    prev = injected.sha256
    for manifest in (second, third):  # shifted up one, re-chained, old signatures kept
        prev = _put_manifest(
            kit.store, replace(manifest, seq=manifest.seq + 1, prev_sha256=prev)
        ).sha256
    report = verify_archive(kit.store, keys=_keys(key), witnesses=[witness])
    assert _named(report, "signature", manifest_key(2), "unsigned"), _lines(report)
    assert _named(report, "checkpoint", checkpoint_key(2), "fork")
    assert _named(report, "witness", witness_checkpoint_key(_origin(kit.store), 3), "fork")


# ----------------------------------------------------------------------------- rollback, fork


def _roll_back_newest(store: ObjectStore) -> None:
    """Delete the newest manifest, the files it alone lists, and its checkpoint."""
    *older, newest = _manifests(store)
    still_listed = {f.key for m in older for f in m.files} | {
        a.key for m in older for a in m.artifacts
    }
    for key in {f.key for f in newest.files} | {a.key for a in newest.artifacts}:
        if key not in still_listed:
            store.delete(key)
    store.delete(manifest_key(newest.seq))
    store.delete(checkpoint_key(newest.seq))


def test_a_rollback_passes_without_a_witness_and_fails_with_one(
    kit: ArchiveKit, key: SigningKey, witness: Witness
) -> None:
    _archive(kit, 3, key, [witness])
    _roll_back_newest(kit.store)
    # The limit, written down: a clean deletion of the tail is a valid, shorter log.
    alone = verify_archive(kit.store, keys=_keys(key))
    _assert_clean(alone)
    assert alone.checkpoint is not None and alone.checkpoint.size == 2
    witnessed = verify_archive(kit.store, keys=_keys(key), witnesses=[witness])
    held = witness_checkpoint_key(_origin(kit.store), 3)
    assert _named(witnessed, "witness", held, "rollback"), _lines(witnessed)
    assert len(witnessed.problems) == 1
    assert witnessed.witnessed == [(witness.uri, 2)]


def test_a_fork_fails_against_the_witness_the_original_used(
    kit: ArchiveKit, key: SigningKey, witness: Witness
) -> None:
    _archive(kit, 2, key, [witness], label="shared")
    fork = _copy(kit.store, f"{kit.uri}-fork")
    _archive(kit, 1, key, [witness], label="original")
    _archive(kit, 1, key, (), store=fork, label="fork")  # same key, other runs, no witness
    keys = _keys(key)
    _assert_clean(verify_archive(kit.store, keys=keys, witnesses=[witness]))
    _assert_clean(verify_archive(fork, keys=keys))  # alone, a fork is a valid log
    report = verify_archive(fork, keys=keys, witnesses=[witness])
    held = witness_checkpoint_key(_origin(fork), 3)
    assert _named(report, "witness", held, "fork"), _lines(report)
    assert len(report.problems) == 1


def test_an_s3_witness_catches_a_rollback(kit: ArchiveKit, key: SigningKey, s3_env: str) -> None:
    s3_witness = Witness.open(f"{s3_env.rsplit('/', 1)[0]}/witness")
    _archive(kit, 2, key, [s3_witness])
    _assert_clean(verify_archive(kit.store, keys=_keys(key), witnesses=[s3_witness]))
    _roll_back_newest(kit.store)
    report = verify_archive(kit.store, keys=_keys(key), witnesses=[s3_witness])
    held = witness_checkpoint_key(_origin(kit.store), 2)
    assert _named(report, "witness", held, "rollback"), _lines(report)
    assert any(p.key.startswith("s3://") for p in report.problems)


# ----------------------------------------------------------------------------- signing history


def test_an_archive_that_began_unsigned_passes_until_an_unsigned_manifest_follows(
    kit: ArchiveKit, key: SigningKey, witness: Witness
) -> None:
    _archive(kit, 2, None)
    _archive(kit, 1, key, [witness])
    report = verify_archive(kit.store, keys=_keys(key), witnesses=[witness])
    _assert_clean(report)
    assert (report.unsigned_leading, report.signed) == (2, 1)
    assert "2 leading manifests unsigned (written before signing began)" in report.notes
    assert report.checkpoint is not None and report.checkpoint.size == 3

    _archive(kit, 1, None)  # a writer without the key, after signing began
    report = verify_archive(kit.store, keys=_keys(key), witnesses=[witness])
    assert _named(report, "signature", manifest_key(4), "unsigned"), _lines(report)


def test_a_rotated_key_verifies_with_both_keys_only(
    kit: ArchiveKit, key: SigningKey, witness: Witness
) -> None:
    key2 = _key()
    _archive(kit, 2, key, [witness])
    _archive(kit, 1, key2, [witness])
    _assert_clean(verify_archive(kit.store, keys=_keys(key, key2), witnesses=[witness]))
    report = verify_archive(kit.store, keys=_keys(key2), witnesses=[witness])
    for seq in (1, 2):
        assert _named(report, "signature", manifest_key(seq), f"unknown key id {key.key_id}")
        assert _named(report, "checkpoint", checkpoint_key(seq), "no signature")
    assert not _named(report, "signature", manifest_key(3))
    assert report.checkpoint is not None and report.checkpoint.size == 3


# ----------------------------------------------------------------------------- identity record


@pytest.mark.parametrize("how", ["replaced", "garbage", "deleted"])
def test_a_replaced_or_lost_identity_record_fails(
    kit: ArchiveKit, key: SigningKey, witness: Witness, how: str
) -> None:
    _archive(kit, 2, key, [witness])
    if how == "deleted":
        kit.store.delete(IDENTITY_KEY)
    else:
        other = ArchiveIdentity(archive_id="0" * 32, created_at="2020-01-01T00:00:00Z")
        plant(kit.store.uri, IDENTITY_KEY, other.to_bytes() if how == "replaced" else b"{x")
    report = verify_archive(kit.store, keys=_keys(key), witnesses=[witness])
    assert not report.ok
    if how == "replaced":
        assert _named(report, "identity", manifest_key(1), "0" * 32), _lines(report)
        assert _named(report, "checkpoint", checkpoint_key(1), "no signature"), _lines(report)
        unkeyed = verify_archive(kit.store)  # read by format only: the origin still differs
        assert _named(unkeyed, "checkpoint", checkpoint_key(1), "not of this archive")
        assert [w.detail for w in report.warnings if w.kind == "witness"] == [
            "holds no checkpoint of this log"
        ]
    else:
        kind = "missing" if how == "deleted" else "unreadable"
        assert _named(report, kind, IDENTITY_KEY), _lines(report)


def test_a_history_stripped_of_signatures_checkpoints_and_identity_fails_with_a_witness(
    kit: ArchiveKit, key: SigningKey, witness: Witness
) -> None:
    """The insider's full escape: every manifest re-written unsigned and without archive
    id (re-chained), checkpoints and identity record deleted. Without the record verify
    cannot tell which of the witness's logs this is, but an archive with manifests and no
    record, checked against a witness that holds logs, is itself the finding."""
    _archive(kit, 2, key, [witness])
    prev: Manifest | None = None
    for manifest in _manifests(kit.store):
        bare = replace(
            manifest,
            archive_id=None,
            signature=None,
            prev_sha256=prev.sha256 if prev else None,
            sha256=None,
        )
        plant(kit.store.uri, manifest_key(manifest.seq), bare.to_bytes())
        prev = Manifest.from_bytes(bare.to_bytes(), key=manifest_key(manifest.seq))
    for _, ckey in archive_checkpoints(kit.store):
        kit.store.delete(ckey)
    kit.store.delete(IDENTITY_KEY)
    assert verify_archive(kit.store).ok  # alone, it looks like an archive never signed
    report = verify_archive(kit.store, keys=_keys(key), witnesses=[witness])
    assert not report.ok
    assert _named(report, "witness", witness.uri, "no readable identity record"), _lines(report)


def test_cli_refuses_a_local_witness_path_that_does_not_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mistyped witness path must not be created empty and reported as holding nothing."""
    monkeypatch.setenv("SPINE_ARCHIVE_URI", str(tmp_path / "archive"))
    for name in ("SPINE_VERIFY_KEY", "SPINE_WITNESS_URI", "SPINE_SIGNING_KEY"):
        monkeypatch.delenv(name, raising=False)
    missing = tmp_path / "no-such-witness"
    result = CliRunner().invoke(main, ["verify", "--witness", str(missing)])
    assert result.exit_code != 0 and "no such directory" in result.output, result.output
    assert not missing.exists()


# ----------------------------------------------------------------------------- checkpoint area


def test_tail_not_yet_checkpointed_and_no_checkpoint_at_all_are_warnings(
    kit: ArchiveKit, key: SigningKey
) -> None:
    _archive(kit, 2, key)
    kit.store.delete(checkpoint_key(2))  # a writer stopped between commit and checkpoint
    report = verify_archive(kit.store, keys=_keys(key))
    assert report.ok, _lines(report)
    [warning] = report.warnings
    assert (warning.kind, warning.key) == ("uncheckpointed", manifest_key(2))
    assert "not yet checkpointed" in warning.detail
    kit.store.delete(checkpoint_key(1))
    report = verify_archive(kit.store, keys=_keys(key))
    assert report.ok and report.checkpoint is None
    assert [(w.kind, w.key) for w in report.warnings] == [("uncheckpointed", CHECKPOINT_PREFIX)]


def test_foreign_and_malformed_checkpoints_fail(kit: ArchiveKit, key: SigningKey) -> None:
    _archive(kit, 2, key)
    foreign = f"{CHECKPOINT_PREFIX}000000000001.json"
    kit.store.put_bytes(foreign, b"{}")
    misnamed = checkpoint_key(7)
    kit.store.put_bytes(misnamed, kit.store.get_bytes(checkpoint_key(1)))
    garbage = checkpoint_key(9)
    kit.store.put_bytes(garbage, b"not a note\n")
    report = verify_archive(kit.store, keys=_keys(key))
    assert _named(report, "unlisted", foreign), _lines(report)
    assert _named(report, "checkpoint", misnamed, "note says size 1")
    assert _named(report, "checkpoint", garbage)
    assert report.checkpoint is not None and report.checkpoint.size == 2
    assert all(
        not p.detail.startswith(p.key) for p in report.problems
    )  # the key is not repeated in the detail


def test_a_hole_in_the_chain_is_the_finding_not_a_rollback(
    kit: ArchiveKit, key: SigningKey, witness: Witness
) -> None:
    _archive(kit, 3, key, [witness])
    kit.store.delete(manifest_key(2))
    report = verify_archive(kit.store, keys=_keys(key), witnesses=[witness])
    assert _named(report, "missing", manifest_key(2), "gap in chain"), _lines(report)
    assert not any("rollback" in p.detail for p in report.problems), _lines(report)
    assert any("covers manifests 1 to 1 only" in n for n in report.notes)
    assert report.checkpoint is not None and report.checkpoint.size == 1


def test_a_symlinked_checkpoint_is_refused(tmp_path: Path, simulator: Any, key: SigningKey) -> None:
    kit = ArchiveKit(simulator, str(tmp_path / "archive"))
    _archive(kit, 1, key)
    outside = tmp_path / "outside.note"
    outside.write_bytes(kit.store.get_bytes(checkpoint_key(1)))
    (tmp_path / "archive" / checkpoint_key(5)).symlink_to(outside)
    report = verify_archive(kit.store, keys=_keys(key))
    assert _named(report, "refused", checkpoint_key(5)), _lines(report)


# ----------------------------------------------------------------------------- the command

BEGIN = "-----BEGIN PUBLIC KEY-----"


@pytest.fixture
def cli(kit: ArchiveKit, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("SPINE_API_KEY", kit.sim.api_key)
    monkeypatch.setenv("SPINE_BASE_URL", kit.sim.base_url)
    monkeypatch.setenv("SPINE_ARCHIVE_URI", kit.uri)
    for name in ("SPINE_VERIFY_KEY", "SPINE_WITNESS_URI", "SPINE_SIGNING_KEY"):
        monkeypatch.delenv(name, raising=False)

    def run(*args: str) -> Result:
        return CliRunner().invoke(main, ["verify", *args], catch_exceptions=False)

    return run


def _pem_file(tmp_path: Path, signing: SigningKey, name: str) -> str:
    path = tmp_path / name
    path.write_bytes(signing.public_pem())
    return str(path)


def test_cli_flags_override_the_settings_and_set_the_exit_code(
    kit: ArchiveKit,
    key: SigningKey,
    witness: Witness,
    cli: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _archive(kit, 2, key, [witness])
    good = _pem_file(tmp_path, key, "good.pem")
    wrong = _pem_file(tmp_path, _key(), "wrong.pem")

    clean = cli("--verify-key", good, "--witness", witness.uri)
    assert clean.exit_code == 0, clean.stderr
    assert all(line.startswith("verify: ") for line in clean.stderr.splitlines())  # progress
    out = clean.stdout.splitlines()
    assert out[-1].endswith(": OK") and out[-1].startswith("verified 2 manifests")
    assert any(line.startswith("newest checkpoint: size 2") for line in out[:-1])
    assert any(line.startswith(f"witness {witness.uri}") for line in out[:-1])

    unkeyed = cli()
    assert unkeyed.exit_code == 0
    assert "WARN unchecked: manifests/: signatures not checked" in unkeyed.stderr
    assert unkeyed.stdout.splitlines()[-1].endswith("OK with 1 warning(s)")

    monkeypatch.setenv("SPINE_VERIFY_KEY", wrong)
    assert cli().exit_code == 1  # the setting is used...
    assert cli("--verify-key", wrong, "--verify-key", good).exit_code == 0  # ...the flags win
    monkeypatch.setenv("SPINE_VERIFY_KEY", good)

    _roll_back_newest(kit.store)
    assert cli().exit_code == 0  # no witness: the rollback is a valid shorter log
    monkeypatch.setenv("SPINE_WITNESS_URI", witness.uri)
    rolled = cli()
    assert rolled.exit_code == 1
    fails = [line for line in rolled.stderr.splitlines() if line.startswith("FAIL ")]
    assert len(fails) == 1 and "rollback" in fails[0]
    assert witness_checkpoint_key(_origin(kit.store), 2) in fails[0]
    assert rolled.stdout.splitlines()[-1].endswith("1 problem(s)")

    empty = str(tmp_path / "empty-witness")
    Path(empty).mkdir()  # a witness that holds nothing yet (a missing path is refused)
    overridden = cli("--witness", empty)
    assert overridden.exit_code == 0
    assert "holds no checkpoint of this log" in overridden.stderr


def test_cli_problems_come_before_warnings_and_notes_before_the_summary(
    kit: ArchiveKit, key: SigningKey, cli: Any, tmp_path: Path
) -> None:
    _archive(kit, 2, key)
    kit.store.put_bytes(manifest_key(3), _forged(_manifests(kit.store)[-1]).to_bytes())
    result = cli("--verify-key", _pem_file(tmp_path, key, "k.pem"))
    assert result.exit_code == 1
    said = [line for line in result.stderr.splitlines() if not line.startswith("verify: ")]
    kinds = [line.split(" ", 1)[0] for line in said]
    assert kinds == sorted(kinds, key=["FAIL", "WARN"].index) and set(kinds) == {"FAIL", "WARN"}
    out = result.stdout.splitlines()
    assert out[-1].startswith("verified 3 manifests") and len(out) > 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--verify-key", "/nonexistent/key.pem"], "--verify-key: no such file"),
        (["--verify-key", f"{BEGIN}\nAAAA\n-----END PUBLIC KEY-----\n"], "not a valid public key"),
        (["--verify-key", "PRIVATE"], "private key"),
        (["--witness", "ftp://host/x"], "--witness"),
    ],
)
def test_cli_bad_keys_and_witnesses_are_one_line_exit_2(
    args: list[str], needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPINE_ARCHIVE_URI", str(tmp_path / "archive"))
    for name in ("SPINE_VERIFY_KEY", "SPINE_WITNESS_URI", "SPINE_SIGNING_KEY"):
        monkeypatch.delenv(name, raising=False)
    private_pem = generate_keypair()[0]
    if args[-1] == "PRIVATE":
        path = tmp_path / "private.pem"
        path.write_bytes(private_pem)
        args = [args[0], str(path)]
    result = CliRunner().invoke(main, ["verify", *args], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert "Traceback" not in result.output
    assert private_pem.decode().splitlines()[1] not in result.output


def test_cli_a_bad_verify_key_setting_is_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPINE_ARCHIVE_URI", str(tmp_path / "archive"))
    monkeypatch.delenv("SPINE_WITNESS_URI", raising=False)
    monkeypatch.setenv("SPINE_VERIFY_KEY", str(tmp_path / "missing.pem"))
    result = CliRunner().invoke(main, ["verify"], catch_exceptions=False)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: SPINE_VERIFY_KEY: no such file")
