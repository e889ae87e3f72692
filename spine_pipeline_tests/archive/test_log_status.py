"""`log_status`: the archive's newest checkpoint and every witness's, against the log.

Each hostile case (rollback, fork, a checkpoint badly signed or signed by a stranger, a
checkpoint the log contradicts) is built on both backends and must be reported as a
problem; the clean archive must report none.
"""

from dataclasses import replace

import pytest

from spine_pipeline.archive.checkpoint import NoteSignature, note_text, split_note
from spine_pipeline.archive.identity import read_identity
from spine_pipeline.archive.layout import IDENTITY_KEY, checkpoint_key, manifest_key
from spine_pipeline.archive.log_status import log_status, status_keys
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.signing import SigningError, SigningKey, VerifyKeys, generate_keypair
from spine_pipeline.archive.tlog import LogPublisher, Witness, sign_checkpoint
from spine_pipeline_tests.fixtures.insider import plant


@pytest.fixture
def signed(kit, tmp_path):
    """A signing key, a witness, and an archive of two batches written with both."""
    private, public = generate_keypair()
    key = SigningKey.from_pem(private)
    witness_uri = (
        kit.uri.rsplit("/", 1)[0] + "/witness"
        if kit.uri.startswith("s3://")
        else str(tmp_path / "witness")
    )
    witness = Witness.open(witness_uri)
    publisher = LogPublisher(kit.store, key, (witness,))
    first, second = kit.submit("[scenario:completed] one", "[scenario:completed] two")
    kit.archiver(publisher=publisher).archive([first])
    kit.archiver(publisher=publisher).archive([second])
    return key, VerifyKeys.load(public.decode()), witness


def _status(kit, keys, *witnesses):
    return log_status(kit.store, keys, list(witnesses))


def _roll_back(kit):
    """Delete the newest manifest and its checkpoint: a shorter, valid-looking log."""
    kit.store.delete(manifest_key(2))
    kit.store.delete(checkpoint_key(2))


def test_a_clean_signed_archive_agrees_with_its_witness(kit, signed):
    _, keys, witness = signed
    status = _status(kit, keys, witness)
    assert status.consistent, status.problems
    assert status.size == 2 and status.uncheckpointed == 0 and status.verified
    log = ManifestLog(kit.store)
    log.refresh()
    assert status.root == log.tree.root()
    assert status.newest.size == 2 and status.newest.root == status.root
    (w,) = status.witnesses
    assert w.newest.size == 2 and w.problem is None


def test_a_rollback_is_reported_against_the_witness(kit, signed):
    _, keys, witness = signed
    _roll_back(kit)
    status = _status(kit, keys, witness)
    assert status.problem is None  # the archive alone looks fine...
    (problem,) = status.problems  # ...the witness remembers size 2
    assert problem.startswith(f"witness {witness.uri}: rollback:")
    assert status.size == 1 and status.witnesses[0].newest.size == 2


def test_a_fork_is_reported_against_the_witness(kit, signed):
    key, keys, witness = signed
    log = ManifestLog(kit.store)
    log.refresh()
    replaced = log.manifests[-1]
    _roll_back(kit)
    log = ManifestLog(kit.store)
    log.refresh()
    archive_id = read_identity(kit.store).archive_id
    draft = replace(replaced, batch_id="another-history")
    assert log.commit(draft, signing_key=key, archive_id=archive_id) is not None
    LogPublisher(kit.store, key).publish(log)  # a writer that skips the witness
    status = _status(kit, keys, witness)
    assert status.problem is None  # its own checkpoint is signed and matches
    (problem,) = status.problems
    assert problem.startswith(f"witness {witness.uri}: fork:")


def test_a_checkpoint_the_log_contradicts_is_reported(kit, signed):
    _, keys, _ = signed
    kit.store.delete(manifest_key(2))  # its checkpoint stays
    status = _status(kit, keys)
    assert status.problem == f"{checkpoint_key(2)}: " + (
        "rollback: a checkpoint says the log had 2 manifests, the archive has 1"
    )


def test_a_tampered_checkpoint_signature_is_reported(kit, signed):
    _, keys, witness = signed
    body, (sig,) = split_note(kit.store.get_bytes(checkpoint_key(2)))
    flipped = sig.raw[:-1] + bytes([sig.raw[-1] ^ 1])
    plant(kit.uri, checkpoint_key(2), note_text(body, [NoteSignature(sig.name, flipped)]))
    status = _status(kit, keys, witness)
    assert not status.consistent
    assert status.problem.startswith(f"{checkpoint_key(2)}: ")
    assert "is invalid" in status.problem


def test_a_checkpoint_signed_by_a_stranger_is_reported(kit, signed):
    _, keys, witness = signed
    stranger = SigningKey.from_pem(generate_keypair()[0])
    log = ManifestLog(kit.store)
    log.refresh()
    origin = read_identity(kit.store).origin
    plant(kit.uri, checkpoint_key(2), sign_checkpoint(stranger, origin, log.tree).note)
    status = _status(kit, keys, witness)
    assert "no signature on the note is from a known key" in status.problem


def test_without_keys_checkpoints_are_read_but_not_verified(kit, signed):
    _, _, witness = signed
    status = _status(kit, None, witness)
    assert status.consistent and not status.verified
    assert status.newest.size == 2 and status.newest.key_ids == ()


def test_checkpoints_without_an_identity_record_are_a_problem(kit, signed):
    _, keys, witness = signed
    kit.store.delete(IDENTITY_KEY)
    status = _status(kit, keys, witness)
    assert status.problem == f"2 checkpoint(s) but no identity record ({IDENTITY_KEY})"


def test_an_unsigned_archive_has_no_checkpoint_and_no_problem(kit):
    kit.archiver(publisher=None).archive(kit.submit("[scenario:completed] plain"))
    status = _status(kit, None)
    assert status.consistent
    assert status.size == 1 and status.newest is None and status.uncheckpointed == 1


def test_status_keys_prefer_the_verify_key():
    private, _ = generate_keypair()
    other_private, other_public = generate_keypair()
    own = SigningKey.from_pem(private).key_id
    assert status_keys(None, None) is None
    assert status_keys(None, private.decode()).ids == (own,)
    assert status_keys(other_public.decode(), private.decode()).ids == (
        SigningKey.from_pem(other_private).key_id,
    )
    with pytest.raises(SigningError, match="SPINE_VERIFY_KEY"):
        status_keys("/nonexistent/key.pem", None)
