"""docs/integrity.md's offline proof check, run against a real signed log.

The page gives auditors a dependency-light checker (hashlib + cryptography) so that a proof
can be checked without spine-pipeline. This test executes exactly the code block between the
page's markers against manifests and checkpoints written by the real writer, and against
the tampered variants the checker must refuse, so the page cannot drift from the log rules.
"""

import re
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature

from spine_pipeline.archive.layout import checkpoint_key, manifest_key
from spine_pipeline.archive.manifest import Manifest, ManifestLog, RunEntry
from spine_pipeline.archive.merkle import verify_inclusion
from spine_pipeline.archive.signing import SigningKey, generate_keypair
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
