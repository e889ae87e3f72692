"""docs/integrity.md's offline proof check, run against a real signed log.

The page gives auditors a dependency-light checker (hashlib, json, cryptography) so that a
`prove` document can be checked without spine-pipeline. This test executes exactly the code
block between the page's markers on manifests, checkpoints and proofs made by the real
writer and `prove_run`, and on the tampered variants the checker must refuse, so the page
cannot drift from the log rules or from the proof format.
"""

import copy
import json
import re
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature

from spine_pipeline.archive.layout import checkpoint_key, manifest_key
from spine_pipeline.archive.manifest import Manifest, ManifestLog, RunEntry
from spine_pipeline.archive.merkle import verify_inclusion
from spine_pipeline.archive.proofs import prove_run
from spine_pipeline.archive.signing import SigningKey, VerifyKeys, generate_keypair
from spine_pipeline.archive.stores import open_store
from spine_pipeline.archive.tlog import LogPublisher, Witness

DOC = Path(__file__).resolve().parents[1] / "docs" / "integrity.md"
BLOCK = re.compile(
    r"<!-- offline-proof-check: begin -->\n```python\n(.*?)```\n<!-- offline-proof-check: end -->",
    re.DOTALL,
)
SIZE = 7  # not a power of two: proofs with promoted right-edge nodes


def _checker():
    blocks = BLOCK.findall(DOC.read_text(encoding="utf-8"))
    assert len(blocks) == 1, "docs/integrity.md must hold exactly one offline-proof-check block"
    namespace = {}
    exec(compile(blocks[0], str(DOC), "exec"), namespace)
    return namespace


def _draft(i):
    return Manifest(
        seq=0,
        batch_id=f"20261203T000000Z-{i:012x}",
        committed_at="",
        prev_sha256=None,
        schema_version="1",
        runs=(RunEntry(f"run-{i}", "completed", "2026-12-03", "2026-12-03T00:00:00Z"),),
        files=(),
        artifacts=(),
    )


@pytest.fixture
def signed_log(tmp_path):
    """A local archive of SIZE signed manifests, checkpointed after each commit, witnessed."""
    private_pem, public_pem = generate_keypair()
    key = SigningKey.from_pem(private_pem)
    store = open_store(str(tmp_path / "archive"))
    publisher = LogPublisher(store, key, (Witness.open(str(tmp_path / "witness")),))
    log = ManifestLog(store)
    for i in range(SIZE):
        assert log.commit(_draft(i), signing_key=key, archive_id=publisher.identity().archive_id)
        publisher.publish(log)
    return store, log, public_pem, publisher.origin


def test_every_manifest_is_proved_against_its_signed_checkpoint(signed_log):
    store, log, public_pem, origin = signed_log
    check = _checker()
    for size in range(1, SIZE + 1):
        note = store.get_bytes(checkpoint_key(size))
        got_origin, got_size, root = check["open_checkpoint"](note, public_pem)
        assert (got_origin, got_size, root) == (origin, size, log.tree.root(size))
        for index in range(size):
            manifest = store.get_bytes(manifest_key(index + 1))
            proof = log.tree.inclusion_proof(index, size)
            leaf = check["leaf"](manifest)
            assert leaf == log.tree.leaf_hash(index)
            assert check["root_from_inclusion"](leaf, index, size, proof) == root
            assert verify_inclusion(leaf, index, size, proof, root)


def test_the_checker_refuses_what_a_proof_check_must_refuse(signed_log):
    store, log, public_pem, _ = signed_log
    check = _checker()
    leaf, root_from_inclusion = check["leaf"], check["root_from_inclusion"]
    note = store.get_bytes(checkpoint_key(SIZE))
    _, _, root = check["open_checkpoint"](note, public_pem)
    manifest = store.get_bytes(manifest_key(3))
    proof = log.tree.inclusion_proof(2, SIZE)

    edited = manifest.replace(b'"seq": 3', b'"seq": 4')
    assert edited != manifest
    assert root_from_inclusion(leaf(edited), 2, SIZE, proof) != root
    assert root_from_inclusion(leaf(manifest), 3, SIZE, proof) != root  # wrong index
    flipped = [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]]
    assert root_from_inclusion(leaf(manifest), 2, SIZE, flipped) != root
    with pytest.raises(ValueError, match="too short"):
        root_from_inclusion(leaf(manifest), 2, SIZE, proof[:-1])
    with pytest.raises(ValueError, match="too long"):
        root_from_inclusion(leaf(manifest), 2, SIZE, [*proof, proof[0]])
    with pytest.raises(ValueError, match="outside"):
        root_from_inclusion(leaf(manifest), SIZE, SIZE, proof)

    _, other_public = generate_keypair()
    with pytest.raises(ValueError, match="not signed by this key"):
        check["open_checkpoint"](note, other_public)
    bumped = note.replace(f"\n{SIZE}\n".encode(), f"\n{SIZE + 1}\n".encode(), 1)
    assert bumped != note
    with pytest.raises(InvalidSignature):
        check["open_checkpoint"](bumped, public_pem)


def test_prove_documents_check_and_tampered_ones_do_not(signed_log):
    store, _, public_pem, origin = signed_log
    check = _checker()["check_proof"]
    keys = VerifyKeys.load(public_pem.decode())
    for i in range(SIZE):
        doc = json.loads(json.dumps(prove_run(store, f"run-{i}", keys=keys).to_json()))
        assert check(doc, public_pem) == f"run run-{i} is leaf {i} of {origin} at size {SIZE}"

    doc = json.loads(json.dumps(prove_run(store, "run-3", keys=keys).to_json()))

    def refused(change, match):
        bad = copy.deepcopy(doc)
        change(bad)
        with pytest.raises(ValueError, match=match):
            check(bad, public_pem)

    def edit_manifest(d):
        d["manifest"]["text"] = d["manifest"]["text"].replace(
            '"status": "completed"', '"status": "failed"'
        )

    refused(edit_manifest, "not in the signed log")
    refused(lambda d: d.update(run_id="run-4"), "does not commit this run")
    refused(lambda d: d.update(leaf_index=2), "size or index")
    refused(lambda d: d.update(tree_size=SIZE - 1), "size or index")
    refused(lambda d: d["inclusion_proof"].pop(), "too short")

    def other_archive(d):
        text = d["manifest"]["text"]
        d["manifest"]["text"] = re.sub(
            r'"archive_id": "[0-9a-f]{32}"', '"archive_id": "' + "0" * 32 + '"', text
        )

    refused(other_archive, "not of the manifest's archive")
    _, other_public = generate_keypair()
    with pytest.raises(ValueError, match="not signed by this key"):
        check(doc, other_public)
