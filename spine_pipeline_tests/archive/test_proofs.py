"""Run proofs (issue 15): `prove_run` makes them from a signed archive, `check_run_proof` checks
them offline with the public key only, and every kind of tampering fails with a clear reason.

Storage-facing behaviour (proving, the refusals, the CLI) runs on both backends with `kit`.
The tampering cases are offline by nature (the check reads no store), so they share one
signed log written by the same writer path the archiver uses (`ManifestLog.commit` with the
key, `LogPublisher.publish` after each commit), built once for the module.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from spine_pipeline.archive import proofs
from spine_pipeline.archive.checkpoint import origin_for
from spine_pipeline.archive.identity import read_identity
from spine_pipeline.archive.layout import IDENTITY_KEY, checkpoint_key, manifest_key
from spine_pipeline.archive.manifest import (
    Manifest,
    ManifestError,
    ManifestLog,
    RunEntry,
    sha256_hex,
)
from spine_pipeline.archive.merkle import MerkleLog
from spine_pipeline.archive.proofs import (
    NOT_SIGNED,
    ProofError,
    RunProof,
    check_run_proof,
    load_proof,
    prove_run,
)
from spine_pipeline.archive.signing import SigningKey, VerifyKeys, generate_keypair
from spine_pipeline.archive.stores import open_store
from spine_pipeline.archive.tlog import LogPublisher, open_checkpoint, read_note, sign_checkpoint
from spine_pipeline.cli import main
from spine_pipeline_tests.archive.conftest import ArchiveKit
from spine_pipeline_tests.fixtures.insider import plant


def _new_key() -> SigningKey:
    return SigningKey.from_pem(generate_keypair()[0])


def _keys(*keys: SigningKey) -> VerifyKeys:
    return VerifyKeys([k.public_key for k in keys])


# ----------------------------------------------------------------------------- real archives

#: Six batches, so the log has six manifests and proofs of two or three hashes.
BATCHES = [[0], [1, 2], [3], [4], [5, 6], [7]]


def _signed_archive(kit: ArchiveKit, key: SigningKey) -> list[str]:
    ids = kit.submit(*(f"[scenario:completed] proof run {n}" for n in range(8)))
    archiver = kit.archiver(publisher=LogPublisher(kit.store, key))
    for batch in BATCHES:
        result = archiver.archive([ids[n] for n in batch])
        assert [o.outcome for o in result.outcomes] == ["archived"] * len(batch)
    return ids


def test_every_archived_run_proves_and_checks(kit: ArchiveKit) -> None:
    key = _new_key()
    ids = _signed_archive(kit, key)
    keys = _keys(key)
    lengths = set()
    for seq, batch in enumerate(BATCHES, start=1):
        for n in batch:
            proof = prove_run(kit.store, ids[n], keys=keys)
            assert (proof.run_id, proof.seq, proof.leaf_index) == (ids[n], seq, seq - 1)
            assert proof.manifest_key == manifest_key(seq)
            assert proof.manifest_bytes == kit.store.get_bytes(manifest_key(seq))
            assert proof.tree_size == len(BATCHES)
            assert proof.checkpoint.key_ids == (key.key_id,)
            check = check_run_proof(proof, keys)
            assert check.ok, check.reason
            assert check.checkpoint is not None and check.checkpoint.key_ids == (key.key_id,)
            lengths.add(len(proof.inclusion_proof))
            # Without keys the same proof is made, only not checked (no key ids recorded).
            unchecked = prove_run(kit.store, ids[n])
            assert unchecked.inclusion_proof == proof.inclusion_proof
            assert unchecked.checkpoint.key_ids == ()
            assert check_run_proof(unchecked, keys).ok
            # JSON round trip, through text as a file would carry it.
            text = json.dumps(proof.to_json(), indent=2, sort_keys=True)
            again = load_proof(text.encode())
            assert again == proof
            assert again.to_json() == proof.to_json()
            assert check_run_proof(again, keys).ok
    assert lengths == {2, 3}  # leaves of a 6-leaf tree sit at depth 2 or 3


def test_run_not_archived(kit: ArchiveKit) -> None:
    key = _new_key()
    ids = kit.submit("[scenario:completed] archived")
    kit.archiver(publisher=LogPublisher(kit.store, key)).archive(ids)
    with pytest.raises(ProofError, match=r"^run 'no-such-run' is not archived"):
        prove_run(kit.store, "no-such-run")


def test_unsigned_archive(kit: ArchiveKit) -> None:
    ids = kit.submit("[scenario:completed] unsigned")
    kit.archiver(publisher=None).archive(ids)
    with pytest.raises(ProofError) as caught:
        prove_run(kit.store, ids[0])
    assert str(caught.value) == NOT_SIGNED
    assert "SPINE_SIGNING_KEY" in NOT_SIGNED


def test_manifest_after_the_newest_checkpoint(kit: ArchiveKit) -> None:
    """An unsigned writer committed after the signed one: no checkpoint covers its manifest."""
    key = _new_key()
    first, later = kit.submit("[scenario:completed] signed", "[scenario:completed] unsigned")
    kit.archiver(publisher=LogPublisher(kit.store, key)).archive([first])
    kit.archiver(publisher=None).archive([later])
    with pytest.raises(ProofError, match=r"no signed checkpoint covers manifests/000000000002"):
        prove_run(kit.store, later)
    assert check_run_proof(prove_run(kit.store, first), _keys(key)).ok


def test_unsigned_manifest_under_a_checkpoint(kit: ArchiveKit) -> None:
    """An archive that began unsigned: the old manifest is checkpointed but cannot be proven."""
    key = _new_key()
    old, new = kit.submit("[scenario:completed] before", "[scenario:completed] after")
    kit.archiver(publisher=None).archive([old])
    kit.archiver(publisher=LogPublisher(kit.store, key)).archive([new])
    with pytest.raises(ProofError, match=r"manifests/000000000001\.json is unsigned"):
        prove_run(kit.store, old)
    assert check_run_proof(prove_run(kit.store, new), _keys(key)).ok


def test_rolled_back_archive(kit: ArchiveKit) -> None:
    """The tail manifest deleted: the newest checkpoint is larger than the log."""
    key = _new_key()
    a, b = kit.submit("[scenario:completed] kept", "[scenario:completed] dropped")
    archiver = kit.archiver(publisher=LogPublisher(kit.store, key))
    archiver.archive([a])
    archiver.archive([b])
    kit.store.delete(manifest_key(2))
    with pytest.raises(ProofError, match=r"checkpoints/000000000002.note: rollback"):
        prove_run(kit.store, a)


def test_forked_checkpoint(kit: ArchiveKit) -> None:
    """The newest checkpoint signs another history (a different root at that size)."""
    key = _new_key()
    a, b = kit.submit("[scenario:completed] one", "[scenario:completed] two")
    publisher = LogPublisher(kit.store, key)
    archiver = kit.archiver(publisher=publisher)
    archiver.archive([a])
    archiver.archive([b])
    other = MerkleLog([b"\x01" * 32, b"\x02" * 32])
    plant(kit.uri, checkpoint_key(2), sign_checkpoint(key, publisher.origin, other).note)
    with pytest.raises(ProofError, match=r"checkpoints/000000000002.note: fork"):
        prove_run(kit.store, a)


def test_replaced_identity_record(kit: ArchiveKit) -> None:
    """archive.json swapped for another archive's: the signed manifests name the old id."""
    key = _new_key()
    ids = kit.submit("[scenario:completed] signed")
    kit.archiver(publisher=LogPublisher(kit.store, key)).archive(ids)
    old = read_identity(kit.store)
    assert old is not None
    plant(kit.uri, IDENTITY_KEY, replace(old, archive_id="0" * 32).to_bytes())
    with pytest.raises(ProofError, match=rf"names archive '{old.archive_id}', the identity"):
        prove_run(kit.store, ids[0])


def test_prove_with_the_wrong_key(kit: ArchiveKit) -> None:
    key = _new_key()
    ids = kit.submit("[scenario:completed] signed")
    kit.archiver(publisher=LogPublisher(kit.store, key)).archive(ids)
    with pytest.raises(ProofError, match=r"no signature on the note is from a known key"):
        prove_run(kit.store, ids[0], keys=_keys(_new_key()))


# ----------------------------------------------------------------------------- the CLI


def test_cli(kit: ArchiveKit, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPINE_API_KEY", kit.sim.api_key)
    monkeypatch.setenv("SPINE_BASE_URL", kit.sim.base_url)
    monkeypatch.setenv("SPINE_ARCHIVE_URI", kit.uri)
    monkeypatch.delenv("SPINE_VERIFY_KEY", raising=False)
    key, stranger = _new_key(), _new_key()
    public = tmp_path / "verify.pem"
    public.write_bytes(key.public_pem())
    a, b, unsigned = kit.submit(*(f"[scenario:completed] cli {n}" for n in range(3)))
    archiver = kit.archiver(publisher=LogPublisher(kit.store, key))
    archiver.archive([a])
    archiver.archive([b])

    def run(*args: str) -> Any:
        return CliRunner().invoke(main, ["prove", *args], catch_exceptions=False)

    # Without a key: the proof, and a note on stderr that it was not checked.
    made = run(a)
    assert made.exit_code == 0, made.stderr
    doc = json.loads(made.stdout)
    assert doc["format"] == "spine-pipeline-proof/1" and doc["run_id"] == a
    assert made.stdout == json.dumps(doc, indent=2, sort_keys=True) + "\n"
    assert "not checked" in made.stderr
    # With a key (option, or SPINE_VERIFY_KEY): checked before printing.
    checked = run(a, "--verify-key", str(public))
    assert checked.exit_code == 0
    checked_doc = json.loads(checked.stdout)
    assert checked_doc["checkpoint"]["key_ids"] == [key.key_id]  # the keys that verified it
    assert doc["checkpoint"]["key_ids"] == []
    checked_doc["checkpoint"]["key_ids"] = []
    assert checked_doc == doc
    assert f"checked with key id(s) {key.key_id}" in checked.stderr
    monkeypatch.setenv("SPINE_VERIFY_KEY", str(public))
    assert run(a).exit_code == 0
    monkeypatch.delenv("SPINE_VERIFY_KEY")
    wrong = run(a, "--verify-key", stranger.public_pem().decode())
    assert wrong.exit_code == 1 and wrong.stdout == ""
    assert wrong.stderr.startswith("error: ") and wrong.stderr.count("\n") == 1

    # --check, offline: OK, then a tampered copy.
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(made.stdout)
    ok = run("--check", str(proof_file), "--verify-key", str(public))
    assert ok.exit_code == 0 and ok.stdout.startswith(f"OK run {a} is in manifests/000000000001")
    doc["inclusion_proof"][0] = "00" * 32
    proof_file.write_text(json.dumps(doc))
    bad = run("--check", str(proof_file), "--verify-key", str(public))
    assert bad.exit_code == 1 and bad.stderr.count("\n") == 1
    assert "does not lead to the checkpoint's root" in bad.stderr
    proof_file.write_text("{not json")
    garbage = run("--check", str(proof_file), "--verify-key", str(public))
    assert garbage.exit_code == 1 and "proof: not JSON" in garbage.stderr

    # Not archived, not signed: exit 1, one line.
    missing = run("no-such-run")
    assert missing.exit_code == 1 and missing.stderr.startswith("error: run 'no-such-run'")
    kit.archiver(publisher=None).archive([unsigned])
    uncovered = run(unsigned)
    assert uncovered.exit_code == 1 and "no signed checkpoint covers" in uncovered.stderr

    # Bad usage: exit 2.
    assert run().exit_code == 2
    assert run(a, "--check", str(proof_file)).exit_code == 2
    assert run("--check", str(proof_file)).exit_code == 2  # no key to check with
    private = run(a, "--verify-key", generate_keypair()[0].decode())
    assert private.exit_code == 2 and "private key" in private.stderr
    assert "PRIVATE KEY-----" not in private.stderr
    no_file = run(a, "--verify-key", str(tmp_path / "absent.pem"))
    assert no_file.exit_code == 2 and "no such file" in no_file.stderr


def test_cli_not_signed(kit: ArchiveKit, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPINE_API_KEY", kit.sim.api_key)
    monkeypatch.setenv("SPINE_BASE_URL", kit.sim.base_url)
    monkeypatch.setenv("SPINE_ARCHIVE_URI", kit.uri)
    ids = kit.submit("[scenario:completed] unsigned")
    kit.archiver(publisher=None).archive(ids)
    result = CliRunner().invoke(main, ["prove", ids[0]], catch_exceptions=False)
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == f"error: {NOT_SIGNED}\n"


# ----------------------------------------------------------------------------- offline checks

RUNS_PER_MANIFEST = [["r1"], ["r2a", "r2b"], ["r3"], ["r4"], ["r5"], ["r6"], ["r7"]]


class SignedLog:
    """A signed archive of seven manifests (a checkpoint after each), and its proofs."""

    def __init__(self, root: Path) -> None:
        self.store = open_store(str(root))
        self.key = _new_key()
        self.keys = _keys(self.key)
        self.publisher = LogPublisher(self.store, self.key)
        self.log = ManifestLog(self.store)
        for n, runs in enumerate(RUNS_PER_MANIFEST):
            draft = Manifest(
                seq=0,
                batch_id=f"batch-{n}",
                committed_at="",
                prev_sha256=None,
                schema_version="1",
                runs=tuple(
                    RunEntry(r, "completed", "2026-01-01", "2026-01-01T00:00:00Z") for r in runs
                ),
                files=(),
                artifacts=(),
            )
            committed = self.log.commit(
                draft, signing_key=self.key, archive_id=self.publisher.identity().archive_id
            )
            assert committed is not None
            self.publisher.publish(self.log)

    def proof(self, run_id: str = "r2a") -> RunProof:
        return prove_run(self.store, run_id, keys=self.keys)

    def note(self, size: int) -> bytes:
        return read_note(self.store, checkpoint_key(size))


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> SignedLog:
    return SignedLog(tmp_path_factory.mktemp("signed") / "archive")


def _with_manifest(proof: RunProof, manifest: Manifest | bytes, *, rehash: bool) -> RunProof:
    data = manifest if isinstance(manifest, bytes) else manifest.to_bytes()
    sha = sha256_hex(data) if rehash else proof.manifest_sha256
    return replace(proof, manifest_bytes=data, manifest_sha256=sha)


def _manifest(proof: RunProof) -> Manifest:
    return Manifest.from_bytes(proof.manifest_bytes, key=proof.manifest_key)


def _edited_text(proof: RunProof) -> bytes:
    text = proof.manifest_bytes.decode()
    assert '"batch_id": "batch-1"' in text
    return text.replace('"batch_id": "batch-1"', '"batch_id": "batch-X"').encode()


def _flip_first_hash(s: SignedLog, p: RunProof) -> RunProof:
    first = bytes([p.inclusion_proof[0][0] ^ 1]) + p.inclusion_proof[0][1:]
    return replace(p, inclusion_proof=(first, *p.inclusion_proof[1:]))


def _older_checkpoint(s: SignedLog, p: RunProof) -> RunProof:
    older = open_checkpoint(s.note(4), origin=s.publisher.origin, keys=None, where="test")
    return replace(p, checkpoint=older)


def _older_checkpoint_and_size(s: SignedLog, p: RunProof) -> RunProof:
    return replace(_older_checkpoint(s, p), tree_size=4)


def _resigned(s: SignedLog, p: RunProof, key: SigningKey) -> RunProof:
    m = replace(_manifest(p), signature=None)
    return _with_manifest(p, replace(m, signature=key.sign(m.signed_bytes())), rehash=True)


def _note_by(s: SignedLog, p: RunProof, key: SigningKey, origin: str) -> RunProof:
    return replace(p, checkpoint=sign_checkpoint(key, origin, s.log.tree))


OTHER = _new_key()

#: name -> (tamper, the reason's expected fragment)
TAMPERS: dict[str, tuple[Any, str]] = {
    "flipped proof hash": (_flip_first_hash, "inclusion proof does not lead"),
    "dropped proof hash": (
        lambda s, p: replace(p, inclusion_proof=p.inclusion_proof[:-1]),
        "inclusion proof does not lead",
    ),
    "extra proof hash": (
        lambda s, p: replace(p, inclusion_proof=(*p.inclusion_proof, b"\x00" * 32)),
        "inclusion proof does not lead",
    ),
    "wrong leaf index": (
        lambda s, p: replace(p, leaf_index=p.leaf_index + 1),
        "manifests/000000000002.json is leaf 1, the proof says 2",
    ),
    "wrong seq": (lambda s, p: replace(p, seq=3), "the proof says it is"),
    "wrong manifest key": (
        lambda s, p: replace(p, manifest_key=manifest_key(3)),
        "the proof says it is 'manifests/000000000003.json'",
    ),
    "older checkpoint": (
        lambda s, p: _older_checkpoint(s, p),
        "checkpoint is of size 4, the proof is for size 7",
    ),
    "older checkpoint and its size": (
        lambda s, p: _older_checkpoint_and_size(s, p),
        "inclusion proof does not lead to the checkpoint's root",
    ),
    "larger tree size": (
        lambda s, p: replace(p, tree_size=8),
        "checkpoint is of size 7, the proof is for size 8",
    ),
    "edited manifest text": (
        lambda s, p: _with_manifest(p, _edited_text(p), rehash=False),
        "the manifest text's sha256 is",
    ),
    "edited manifest text, sha256 updated": (
        lambda s, p: _with_manifest(p, _edited_text(p), rehash=True),
        "bad signature",
    ),
    "manifest re-signed by another key": (
        lambda s, p: _resigned(s, p, OTHER),
        f"signed by unknown key id {OTHER.key_id}",
    ),
    "manifest signature removed": (
        lambda s, p: _with_manifest(p, replace(_manifest(p), signature=None), rehash=True),
        "manifests/000000000002.json: unsigned",
    ),
    "manifest not JSON": (
        lambda s, p: _with_manifest(p, b"{", rehash=True),
        "unreadable manifest",
    ),
    "manifest nested too deep": (
        lambda s, p: _with_manifest(p, b"[" * 100_000, rehash=True),
        "unreadable manifest",
    ),
    "checkpoint signed by another key": (
        lambda s, p: _note_by(s, p, OTHER, s.publisher.origin),
        "no signature on the note is from a known key",
    ),
    "checkpoint of another archive": (
        lambda s, p: _note_by(s, p, s.key, origin_for("0" * 32)),
        "not of this archive",
    ),
    "another run id": (
        lambda s, p: replace(p, run_id="r3"),
        "manifests/000000000002.json does not commit run 'r3'",
    ),
    "unknown run id": (
        lambda s, p: replace(p, run_id="r-unknown"),
        "does not commit run 'r-unknown'",
    ),
}


def test_the_untampered_proof_checks(signed: SignedLog) -> None:
    """The control for every tamper below: the same proof, unchanged, checks."""
    proof = signed.proof()
    assert len(proof.inclusion_proof) == 3
    check = check_run_proof(proof, signed.keys)
    assert check.ok and check.reason is None
    assert check.manifest is not None and check.manifest.seq == 2


@pytest.mark.parametrize("name", list(TAMPERS))
def test_tampered_proof_fails(signed: SignedLog, name: str) -> None:
    tamper, reason = TAMPERS[name]
    proof = signed.proof()
    bad = tamper(signed, proof)
    check = check_run_proof(bad, signed.keys)
    assert not check.ok
    assert check.reason is not None and reason in check.reason, check.reason
    assert "\n" not in check.reason
    # Written to JSON and read back, it fails the same way: the document carries everything
    # the check looks at, and reading it recomputes nothing the check compares.
    doc = json.loads(json.dumps(bad.to_json()))
    assert check_run_proof(RunProof.from_json(doc), signed.keys).reason == check.reason


def test_manifest_re_signed_by_a_key_also_trusted(signed: SignedLog) -> None:
    """Both keys trusted: the stranger's signature verifies, but the log holds the original."""
    bad = _resigned(signed, signed.proof(), OTHER)
    check = check_run_proof(bad, _keys(signed.key, OTHER))
    assert not check.ok and "inclusion proof does not lead" in (check.reason or "")


def test_proof_against_an_older_checkpoint_made_for_it(signed: SignedLog) -> None:
    """An honest proof against an older checkpoint still checks (tree size 4, its root)."""
    proof = _older_checkpoint_and_size(signed, signed.proof())
    honest = replace(proof, inclusion_proof=tuple(signed.log.tree.inclusion_proof(1, 4)))
    assert check_run_proof(honest, signed.keys).ok


def test_key_rotation_checks_with_both_keys(signed: SignedLog) -> None:
    assert check_run_proof(signed.proof("r7"), _keys(OTHER, signed.key)).ok
    assert not check_run_proof(signed.proof("r7"), _keys(OTHER)).ok


# ----------------------------------------------------------------------------- strict JSON


def _doc(signed: SignedLog) -> dict[str, Any]:
    return json.loads(json.dumps(signed.proof().to_json()))


def _set(path: str, value: Any) -> Any:
    def edit(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = doc
        for p in parents:
            target = target[p]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value

    return edit


_DELETE = object()

MALFORMED: dict[str, tuple[Any, str]] = {
    "wrong format": (_set("format", "spine-pipeline-proof/2"), "format is"),
    "unknown field": (_set("extra", 1), "unknown field(s) extra"),
    "missing field": (_set("tree_size", _DELETE), "missing tree_size"),
    "manifest missing text": (_set("manifest.text", _DELETE), "missing text"),
    "manifest not an object": (_set("manifest", []), "not a JSON object"),
    "leaf index a bool": (_set("leaf_index", True), "leaf_index is not an integer"),
    "leaf index negative": (_set("leaf_index", -1), "leaf_index is not an integer"),
    "tree size over uint64": (_set("tree_size", 1 << 64), "tree_size is not an integer"),
    "seq a string": (_set("manifest.seq", "2"), "seq is not an integer"),
    "sha256 upper case": (_set("manifest.sha256", "A" * 64), "sha256 is not 64 lower-case"),
    "text a lone surrogate": (_set("manifest.text", "\ud800"), "text is not valid Unicode"),
    "run id empty": (_set("run_id", ""), "run_id is not a string"),
    "proof not a list": (_set("inclusion_proof", "00"), "inclusion_proof is not a list"),
    "proof too long": (
        _set("inclusion_proof", ["00" * 32] * 65),
        "65 hashes, more than 64",
    ),
    "proof hash upper case": (
        _set("inclusion_proof", ["AB" * 32]),
        "inclusion_proof[0] is not 64 lower-case hex",
    ),
    "proof hash short": (_set("inclusion_proof", ["ab" * 31]), "inclusion_proof[0]"),
    "checkpoint root edited": (_set("checkpoint.root", "00" * 32), "do not match its note"),
    "checkpoint time edited": (
        _set("checkpoint.time", "2000-01-01T00:00:00Z"),
        "do not match its note",
    ),
    "checkpoint extra field": (_set("checkpoint.extra", 1), "do not match its note"),
    "checkpoint origin not its note's": (
        _set("checkpoint.origin", origin_for("0" * 32)),
        "not of this archive",
    ),
    "checkpoint note garbage": (_set("checkpoint.note", "hello\n"), "proof checkpoint:"),
    "checkpoint key ids bad": (_set("checkpoint.key_ids", ["XYZ"]), "key_ids is not a list"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_proof_document(signed: SignedLog, name: str) -> None:
    edit, message = MALFORMED[name]
    doc = _doc(signed)
    edit(doc)
    with pytest.raises(ProofError) as caught:
        RunProof.from_json(doc)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_not_a_proof_document() -> None:
    with pytest.raises(ProofError, match="proof: not a JSON object"):
        RunProof.from_json([])
    with pytest.raises(ProofError, match="proof: not JSON"):
        load_proof(b"{")
    with pytest.raises(ProofError, match="proof: not JSON"):
        load_proof(b"[" * 100_000)


def test_manifest_text_over_the_limit(signed: SignedLog, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = _doc(signed)
    monkeypatch.setattr(proofs, "MAX_MANIFEST_BYTES", len(doc["manifest"]["text"]) - 1)
    with pytest.raises(ProofError, match="text is larger than"):
        RunProof.from_json(doc)
    monkeypatch.setattr(proofs, "MAX_PROOF_FILE_BYTES", 10)
    with pytest.raises(ProofError, match="larger than 10 bytes, not a proof"):
        load_proof(json.dumps(doc).encode())


@pytest.mark.parametrize(
    "data", [b'{"format": "spine-pipeline-manifest/1", "seq": Infinity}', b"[" * 100_000]
)
def test_hostile_manifest_is_a_manifest_error(data: bytes) -> None:
    """Bug fix: these escaped `Manifest.from_bytes` as OverflowError / RecursionError."""
    with pytest.raises(ManifestError, match=r"manifests/000000000001\.json: unreadable manifest"):
        Manifest.from_bytes(data, key=manifest_key(1))
