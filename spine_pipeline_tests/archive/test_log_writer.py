"""The signing writer under races, crashes and hostile witnesses, on both backends.

Every commit of a signing writer must end in a signed checkpoint of the log, in the archive
and at every witness, each a state of the one final log; a witness that remembers more (a
rollback) or something else (a fork) must stop the writer before it commits anything.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

from spine_pipeline.archive.identity import ArchiveIdentity, read_identity
from spine_pipeline.archive.layout import (
    IDENTITY_KEY,
    MANIFEST_PREFIX,
    TABLE_PREFIX,
    checkpoint_key,
    manifest_key,
    witness_checkpoint_key,
)
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.merkle import MerkleLog
from spine_pipeline.archive.service import archive_now
from spine_pipeline.archive.signing import SigningKey, VerifyKeys, generate_keypair
from spine_pipeline.archive.stores import open_store
from spine_pipeline.archive.tlog import (
    LogConsistencyError,
    LogPublisher,
    SignedCheckpoint,
    Witness,
    archive_checkpoints,
    inconsistency,
    open_checkpoint,
    read_note,
    sign_checkpoint,
    signature_finding,
)
from spine_pipeline.archive.verify import verify_archive
from spine_pipeline_tests.archive.conftest import ArchiveKit
from spine_pipeline_tests.fixtures.insider import plant


class Keypair:
    def __init__(self) -> None:
        private_pem, public_pem = generate_keypair()
        self.pem = private_pem.decode("ascii")
        self.pem_public = public_pem.decode("ascii")
        self.key = SigningKey.from_pem(private_pem)
        self.keys = VerifyKeys.load(public_pem.decode("ascii"))


@pytest.fixture
def witness_uri(kit: ArchiveKit, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A witness outside the archive: another bucket on S3, another directory on disk."""
    if kit.uri.startswith("s3://"):
        return f"s3://{request.getfixturevalue('s3_server').make_bucket()}/witness"
    return str(tmp_path / "witness")


def _publisher(kit: ArchiveKit, key: SigningKey, *witness_uris: str) -> LogPublisher:
    return LogPublisher(open_store(kit.uri), key, tuple(Witness.open(u) for u in witness_uris))


def _log(kit: ArchiveKit) -> ManifestLog:
    log = ManifestLog(open_store(kit.uri))
    log.refresh()
    return log


def _origin(kit: ArchiveKit) -> str:
    identity = read_identity(kit.store)
    assert identity is not None
    return identity.origin


def _archive_checkpoints(kit: ArchiveKit, keys: VerifyKeys | None) -> list[SignedCheckpoint]:
    origin = _origin(kit)
    found = []
    for size, key in archive_checkpoints(kit.store):
        opened = open_checkpoint(read_note(kit.store, key), origin=origin, keys=keys, where=key)
        assert opened.size == size
        found.append(opened)
    return found


def _witness_checkpoints(uri: str, origin: str, keys: VerifyKeys | None) -> list[SignedCheckpoint]:
    witness = Witness.open(uri)
    found = []
    for size, key in witness.checkpoints(origin):
        note = read_note(witness.store, key)
        opened = open_checkpoint(note, origin=origin, keys=keys, where=key)
        assert opened.size == size
        found.append(opened)
    return found


def _assert_states_of(tree: MerkleLog, checkpoints: list[SignedCheckpoint]) -> None:
    for cp in checkpoints:
        assert inconsistency(tree, cp.checkpoint) is None, cp.size


def _one_line(message: str) -> str:
    assert "\n" not in message, message
    return message


# ----------------------------------------------------------------------------- one writer


def test_every_commit_gets_a_signed_checkpoint_in_the_archive_and_at_the_witness(kit, witness_uri):
    pair = Keypair()
    for prompt in ("one", "two", "three"):
        ids = kit.submit(f"[scenario:completed] {prompt}")
        result = kit.archiver(publisher=_publisher(kit, pair.key, witness_uri)).archive(ids)
        assert [o.outcome for o in result.outcomes] == ["archived"]
    log = _log(kit)
    identity = read_identity(kit.store)
    assert identity is not None
    assert [m.seq for m in log] == [1, 2, 3]
    for manifest in log:
        assert signature_finding(manifest, pair.keys) is None
        assert manifest.archive_id == identity.archive_id
    ours = _archive_checkpoints(kit, pair.keys)
    assert [c.size for c in ours] == [1, 2, 3]
    assert all(c.key_ids == (pair.key.key_id,) for c in ours)
    assert [c.root for c in ours] == [log.tree.root(n) for n in (1, 2, 3)]
    _assert_states_of(log.tree, ours)
    witnessed = _witness_checkpoints(witness_uri, identity.origin, pair.keys)
    assert [c.note for c in witnessed] == [c.note for c in ours]
    assert verify_archive(kit.store).ok


def test_archive_with_nothing_new_adds_no_checkpoint(kit, witness_uri):
    pair = Keypair()
    ids = kit.submit("[scenario:completed] only")
    kit.archiver(publisher=_publisher(kit, pair.key, witness_uri)).archive(ids)
    again = kit.archiver(publisher=_publisher(kit, pair.key, witness_uri)).archive(ids)
    assert again.manifest is None
    assert [c.size for c in _archive_checkpoints(kit, pair.keys)] == [1]
    assert [s for s, _ in Witness.open(witness_uri).checkpoints(_origin(kit))] == [1]


# ----------------------------------------------------------------------------- racing writers


def _check_one_log(kit: ArchiveKit, pair: Keypair, witness_uri: str, run_ids: list[str]) -> None:
    """One chain, every run once, every checkpoint (archive and witness) a state of it."""
    log = _log(kit)
    committed = [r for m in log for r in m.run_ids]
    assert sorted(committed) == sorted(set(run_ids))  # each run exactly once
    assert sorted(kit.tables()["runs"]["run_id"].to_pylist()) == sorted(set(run_ids))
    for manifest in log:
        assert signature_finding(manifest, pair.keys) is None
    ours = _archive_checkpoints(kit, pair.keys)
    witnessed = _witness_checkpoints(witness_uri, _origin(kit), pair.keys)
    _assert_states_of(log.tree, ours)
    _assert_states_of(log.tree, witnessed)
    # The last commit's writer checkpointed after committing: the final size is covered.
    assert ours[-1].size == log.tree.size == witnessed[-1].size
    assert verify_archive(kit.store).ok


def test_racing_signing_writers_make_one_log_that_every_checkpoint_agrees_with(kit, witness_uri):
    pair = Keypair()
    shared = kit.submit("[scenario:completed] everyone wants this one")
    own = [
        kit.submit(f"[scenario:completed] writer {n} a", f"[scenario:partial] writer {n} b")
        for n in range(4)
    ]
    start = threading.Barrier(len(own), timeout=60)
    errors: list[BaseException] = []

    def writer(run_ids: list[str]) -> None:
        try:
            archiver = kit.archiver(publisher=_publisher(kit, pair.key, witness_uri))
            start.wait()
            for run_id in run_ids:  # one batch per run: many commits, many checkpoints
                result = archiver.archive([*shared, run_id])
                assert result.ok, result.outcomes
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(ids,)) for ids in own]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    _check_one_log(kit, pair, witness_uri, [*shared, *(r for ids in own for r in ids)])


# Which of writer A's reads of the witness another writer's whole batch lands before: 1 and 2
# are in A's check before its batch (the read of the witness's newest checkpoint, and the
# one inside the offer), 3 and 4 the same after A's commit.
@pytest.mark.parametrize("interrupted_read", [1, 2, 3, 4])
def test_a_writer_overtaken_by_another_at_any_witness_read_is_not_a_rollback(
    kit, witness_uri, interrupted_read
):
    pair = Keypair()
    first = kit.submit("[scenario:completed] before the race")
    a_ids = kit.submit("[scenario:completed] writer A")
    b_ids = kit.submit("[scenario:completed] writer B")
    kit.archiver(publisher=_publisher(kit, pair.key, witness_uri)).archive(first)
    publisher = _publisher(kit, pair.key, witness_uri)
    (witness,) = publisher.witnesses
    real_newest = witness.newest
    reads = {"n": 0}

    def newest(origin, keys=None):
        reads["n"] += 1
        if reads["n"] == interrupted_read:
            other = kit.archiver(publisher=_publisher(kit, pair.key, witness_uri))
            assert other.archive(b_ids).ok
        return real_newest(origin, keys)

    witness.newest = newest  # type: ignore[method-assign]
    result = kit.archiver(publisher=publisher).archive(a_ids)
    assert result.ok and reads["n"] >= interrupted_read
    _check_one_log(kit, pair, witness_uri, [*first, *a_ids, *b_ids])


# ----------------------------------------------------------------------------- crashes


def test_a_crash_between_manifest_and_checkpoint_is_repaired_by_the_next_call(kit, witness_uri):
    pair = Keypair()
    ids = kit.submit("[scenario:completed] crash after commit")
    archiver = kit.archiver(publisher=_publisher(kit, pair.key, witness_uri))
    assert archiver.publisher is not None
    state = {"committed": False, "crashed": False}
    real_commit, real_publish = archiver.log.commit, archiver.publisher.publish

    def commit(*args, **kw):
        committed = real_commit(*args, **kw)
        state["committed"] = committed is not None
        return committed

    def publish(*args, **kw):
        if state["committed"] and not state["crashed"]:
            state["crashed"] = True
            raise RuntimeError("injected crash between manifest and checkpoint")
        return real_publish(*args, **kw)

    archiver.log.commit = commit  # type: ignore[method-assign]
    archiver.publisher.publish = publish  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="injected crash"):
        archiver.archive(ids)
    assert [m.seq for m in _log(kit)] == [1]  # committed...
    assert not kit.store.exists(checkpoint_key(1))  # ...but not checkpointed
    assert Witness.open(witness_uri).checkpoints(_origin(kit)) == []
    # The next call, with nothing new to archive, writes the missing checkpoint first.
    again = kit.archiver(publisher=_publisher(kit, pair.key, witness_uri)).archive(ids)
    assert again.manifest is None and [o.outcome for o in again.outcomes] == ["already_archived"]
    assert [c.size for c in _archive_checkpoints(kit, pair.keys)] == [1]
    witnessed = _witness_checkpoints(witness_uri, _origin(kit), pair.keys)
    assert [c.size for c in witnessed] == [1]
    _assert_states_of(_log(kit).tree, witnessed)


def test_a_crash_between_checkpoint_and_witness_is_repaired_by_the_next_call(kit, witness_uri):
    pair = Keypair()
    ids = kit.submit("[scenario:completed] crash before the witness")
    publisher = _publisher(kit, pair.key, witness_uri)
    (witness,) = publisher.witnesses
    real_offer = witness.offer
    state = {"calls": 0}

    def offer(signed, tree):
        state["calls"] += 1
        if signed.size == 1:
            raise RuntimeError("injected crash before the witness heard of it")
        return real_offer(signed, tree)

    witness.offer = offer  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="injected crash"):
        kit.archiver(publisher=publisher).archive(ids)
    assert [c.size for c in _archive_checkpoints(kit, pair.keys)] == [1]
    assert Witness.open(witness_uri).checkpoints(_origin(kit)) == []
    kit.archiver(publisher=_publisher(kit, pair.key, witness_uri)).archive([])
    assert [c.size for c in _witness_checkpoints(witness_uri, _origin(kit), pair.keys)] == [1]


# ----------------------------------------------------------------------------- hostile states


def _two_signed_batches(kit: ArchiveKit, pair: Keypair, witness_uri: str) -> None:
    for prompt in ("first", "second"):
        ids = kit.submit(f"[scenario:completed] {prompt}")
        assert kit.archiver(publisher=_publisher(kit, pair.key, witness_uri)).archive(ids).ok


def _objects(kit: ArchiveKit, prefix: str) -> list[str]:
    return sorted(info.key for info in kit.store.list(prefix))


def _refused_batch(kit: ArchiveKit, pair: Keypair, witness_uri: str) -> str:
    """A batch that must be refused: returns the message; asserts nothing was written."""
    manifests, tables = _objects(kit, MANIFEST_PREFIX), _objects(kit, TABLE_PREFIX)
    ids = kit.submit("[scenario:completed] after the attack")
    archiver = kit.archiver(publisher=_publisher(kit, pair.key, witness_uri))
    with pytest.raises(LogConsistencyError) as caught:
        archiver.archive(ids)
    assert _objects(kit, MANIFEST_PREFIX) == manifests  # no manifest appeared
    assert _objects(kit, TABLE_PREFIX) == tables  # nor any data file
    message = _one_line(str(caught.value))
    assert message.startswith(f"witness {witness_uri}: ")
    return message


def test_a_rolled_back_archive_stops_the_writer_before_it_commits(kit, witness_uri):
    pair = Keypair()
    _two_signed_batches(kit, pair, witness_uri)
    # The insider removes the newest manifest and its checkpoint: a shorter, valid chain.
    kit.store.delete(manifest_key(2))
    kit.store.delete(checkpoint_key(2))
    message = _refused_batch(kit, pair, witness_uri)
    assert "rollback" in message and "2 manifests" in message


def test_a_witness_holding_another_root_stops_the_writer_before_it_commits(kit, witness_uri):
    pair = Keypair()
    _two_signed_batches(kit, pair, witness_uri)
    origin = _origin(kit)
    forked = MerkleLog()
    forked.append(b"another history")
    forked.append(b"of the same length")
    forgery = sign_checkpoint(pair.key, origin, forked)
    plant(witness_uri, witness_checkpoint_key(origin, 2), forgery.note)
    message = _refused_batch(kit, pair, witness_uri)
    assert "fork" in message


@pytest.mark.parametrize("forgery", ["unsigned", "stranger"])
def test_an_appended_forgery_is_never_checkpointed_nor_witnessed(kit, witness_uri, forgery):
    """A writer's checkpoint vouches for every manifest under it and a witness keeps it
    forever: a forged manifest an insider appended (unsigned, or signed by a key the writer
    does not accept) stops the writer before it checkpoints or commits anything."""
    pair = Keypair()
    _two_signed_batches(kit, pair, witness_uri)
    log = _log(kit)
    newest = log.manifests[-1]
    forged = replace(
        newest,
        seq=newest.seq + 1,
        prev_sha256=newest.sha256,
        batch_id="forged",
        signature=None,
        sha256=None,
    )
    if forgery == "stranger":
        forged = replace(forged, signature=Keypair().key.sign(forged.to_bytes()))
    kit.store.put_bytes(manifest_key(forged.seq), forged.to_bytes())
    tables = _objects(kit, TABLE_PREFIX)
    ids = kit.submit("[scenario:completed] after the forgery")
    with pytest.raises(LogConsistencyError) as caught:
        kit.archiver(publisher=_publisher(kit, pair.key, witness_uri)).archive(ids)
    message = _one_line(str(caught.value))
    assert message.startswith(manifest_key(3)) and "refusing to checkpoint" in message
    assert ("unsigned" if forgery == "unsigned" else "unknown key") in message
    assert not kit.store.exists(checkpoint_key(3))
    assert [c.size for c in _witness_checkpoints(witness_uri, _origin(kit), None)] == [1, 2]
    assert _objects(kit, MANIFEST_PREFIX) == [manifest_key(n) for n in (1, 2, 3)]
    assert _objects(kit, TABLE_PREFIX) == tables


def test_a_writer_accepts_manifests_of_the_keys_in_spine_verify_key(kit, witness_uri):
    """Two writers on two keys at once (a rotation): each accepts the other's manifests
    when its SPINE_VERIFY_KEY lists the other key."""
    old, new = Keypair(), Keypair()
    ids = kit.submit("[scenario:completed] old key")
    publisher = LogPublisher(open_store(kit.uri), old.key, (Witness.open(witness_uri),))
    publisher.publish = lambda manifests, **kw: None  # the old writer stops before its checkpoint
    assert kit.archiver(publisher=publisher).archive(ids).ok
    strict = _publisher(kit, new.key, witness_uri)
    with pytest.raises(LogConsistencyError, match="unknown key"):
        strict.publish(_log(kit))
    accepting = LogPublisher(
        open_store(kit.uri), new.key, (Witness.open(witness_uri),), accepted=old.keys
    )
    signed = accepting.publish(_log(kit))
    assert signed is not None and signed.size == 1


# ----------------------------------------------------------------------------- transitions


def test_an_unsigned_archive_gets_its_whole_history_checkpointed_by_the_first_signer(
    kit, witness_uri
):
    for prompt in ("old one", "old two"):
        ids = kit.submit(f"[scenario:completed] {prompt}")
        assert kit.archiver(publisher=None).archive(ids).ok
    assert list(kit.store.list("checkpoints/")) == []
    pair = Keypair()
    ids = kit.submit("[scenario:completed] first signed")
    result = kit.archiver(publisher=_publisher(kit, pair.key, witness_uri)).archive(ids)
    assert result.manifest is not None and result.manifest.seq == 3
    log = _log(kit)
    assert [signature_finding(m, pair.keys) for m in log] == ["unsigned", "unsigned", None]
    ours = _archive_checkpoints(kit, pair.keys)
    assert [c.size for c in ours] == [2, 3]  # the unsigned history, then the new manifest
    _assert_states_of(log.tree, ours)
    witnessed = _witness_checkpoints(witness_uri, _origin(kit), pair.keys)
    assert [c.note for c in witnessed] == [c.note for c in ours]


def test_key_rotation_at_the_writer_keeps_one_witnessed_log(kit, witness_uri):
    old, new = Keypair(), Keypair()
    for pair, prompt in ((old, "by the old key"), (new, "by the new key")):
        for n in range(2):
            ids = kit.submit(f"[scenario:completed] {prompt} {n}")
            assert kit.archiver(publisher=_publisher(kit, pair.key, witness_uri)).archive(ids).ok
    both = VerifyKeys.load([old.pem_public, new.pem_public])
    log = _log(kit)
    assert [m.signature.key_id for m in log if m.signature] == [old.key.key_id] * 2 + [
        new.key.key_id
    ] * 2
    assert all(signature_finding(m, both) is None for m in log)
    ours = _archive_checkpoints(kit, both)
    assert [(c.size, c.key_ids) for c in ours] == [
        (1, (old.key.key_id,)),
        (2, (old.key.key_id,)),
        (3, (new.key.key_id,)),
        (4, (new.key.key_id,)),
    ]
    _assert_states_of(log.tree, ours)
    witnessed = _witness_checkpoints(witness_uri, _origin(kit), both)
    assert [c.size for c in witnessed] == [1, 2, 3, 4]
    _assert_states_of(log.tree, witnessed)


# ----------------------------------------------------------------------------- settings


def test_the_default_archiver_signs_and_witnesses_from_the_environment(
    kit, witness_uri, monkeypatch
):
    pair = Keypair()
    monkeypatch.setenv("SPINE_SIGNING_KEY", pair.pem)
    monkeypatch.setenv("SPINE_WITNESS_URI", witness_uri)
    archiver = kit.archiver()
    assert archiver.publisher is not None
    assert archiver.publisher.key.key_id == pair.key.key_id
    assert [w.uri for w in archiver.publisher.witnesses] == [witness_uri]
    ids = kit.submit("[scenario:completed] from the environment")
    assert archiver.archive(ids).ok
    (manifest,) = _log(kit)
    assert signature_finding(manifest, pair.keys) is None
    assert [c.size for c in _witness_checkpoints(witness_uri, _origin(kit), pair.keys)] == [1]


def test_archive_now_writes_signed_manifests(kit, monkeypatch):
    pair = Keypair()
    monkeypatch.setenv("SPINE_SIGNING_KEY", pair.pem)
    monkeypatch.delenv("SPINE_WITNESS_URI", raising=False)
    ids = kit.submit("[scenario:completed] via the service", "[scenario:partial] and another")
    outcomes = archive_now(kit.uri, ids, client_factory=kit.async_client)
    assert [o.outcome for o in outcomes] == ["archived", "archived"]
    (manifest,) = _log(kit)
    assert signature_finding(manifest, pair.keys) is None
    assert [c.size for c in _archive_checkpoints(kit, pair.keys)] == [1]


def test_the_default_archiver_without_a_key_writes_unsigned(kit, monkeypatch):
    monkeypatch.delenv("SPINE_SIGNING_KEY", raising=False)
    monkeypatch.delenv("SPINE_WITNESS_URI", raising=False)
    archiver = kit.archiver()
    assert archiver.publisher is None
    ids = kit.submit("[scenario:completed] unsigned")
    assert archiver.archive(ids).ok
    (manifest,) = _log(kit)
    assert manifest.signature is None
    assert list(kit.store.list("checkpoints/")) == []


def test_a_deleted_identity_record_stops_the_writer_before_it_commits(kit, witness_uri):
    """Deleting `archive.json` (with the tail) would give the log a new origin, one no
    witness has heard of: the writer must not mint a new identity for a log that names one."""
    pair = Keypair()
    _two_signed_batches(kit, pair, witness_uri)
    old = read_identity(kit.store)
    kit.store.delete(manifest_key(2))
    for _, key in archive_checkpoints(kit.store):
        kit.store.delete(key)
    kit.store.delete(IDENTITY_KEY)
    manifests, tables = _objects(kit, MANIFEST_PREFIX), _objects(kit, TABLE_PREFIX)
    ids = kit.submit("[scenario:completed] after the attack")
    with pytest.raises(LogConsistencyError) as caught:
        kit.archiver(publisher=_publisher(kit, pair.key, witness_uri)).archive(ids)
    message = _one_line(str(caught.value))
    assert IDENTITY_KEY in message and old is not None and old.archive_id in message
    assert _objects(kit, MANIFEST_PREFIX) == manifests
    assert _objects(kit, TABLE_PREFIX) == tables
    assert read_identity(kit.store) is None  # no new identity minted either


def test_a_replaced_identity_record_stops_the_writer_before_it_commits(kit, witness_uri):
    pair = Keypair()
    _two_signed_batches(kit, pair, witness_uri)
    old = read_identity(kit.store)
    assert old is not None
    kit.store.delete(manifest_key(2))
    for _, key in archive_checkpoints(kit.store):
        kit.store.delete(key)
    other = ArchiveIdentity(archive_id="0" * 32, created_at=old.created_at)
    plant(kit.uri, IDENTITY_KEY, other.to_bytes())
    manifests = _objects(kit, MANIFEST_PREFIX)
    ids = kit.submit("[scenario:completed] after the attack")
    with pytest.raises(LogConsistencyError) as caught:
        kit.archiver(publisher=_publisher(kit, pair.key, witness_uri)).archive(ids)
    message = _one_line(str(caught.value))
    assert old.archive_id in message and other.archive_id in message
    assert _objects(kit, MANIFEST_PREFIX) == manifests


def test_a_deleted_identity_record_stops_a_writer_without_witnesses(kit):
    pair = Keypair()
    first = kit.submit("[scenario:completed] signed")
    assert kit.archiver(publisher=_publisher(kit, pair.key)).archive(first).ok
    kit.store.delete(IDENTITY_KEY)  # the checkpoint of the log stays: nothing else to repair
    ids = kit.submit("[scenario:completed] after the attack")
    with pytest.raises(LogConsistencyError, match=f"^{IDENTITY_KEY} is missing"):
        kit.archiver(publisher=_publisher(kit, pair.key)).archive(ids)
    assert _objects(kit, MANIFEST_PREFIX) == [manifest_key(1)]
    assert read_identity(kit.store) is None


def _forged_note(pair: Keypair, origin: str, size: int) -> bytes:
    tree = MerkleLog()
    for n in range(size):
        tree.append(f"leaf {n}".encode())
    return sign_checkpoint(pair.key, origin, tree).note


@pytest.mark.parametrize(
    "planted",
    ["garbage", "other-origin", "size-differs-from-name", "too-large"],
)
def test_a_hostile_witness_note_stops_the_writer_before_it_commits(kit, witness_uri, planted):
    pair = Keypair()
    _two_signed_batches(kit, pair, witness_uri)
    origin = _origin(kit)
    data = {
        "garbage": b"not a checkpoint\n",
        "other-origin": _forged_note(pair, "spine-pipeline/" + "0" * 32, 3),
        # A real state of the log (size 1), filed under a larger size: not what a witness
        # holds at that name, whatever it says.
        "size-differs-from-name": read_note(kit.store, checkpoint_key(1)),
        "too-large": b"x" * (1 << 17),
    }[planted]
    Witness.open(witness_uri).store.put_bytes(witness_checkpoint_key(origin, 3), data)
    manifests, tables = _objects(kit, MANIFEST_PREFIX), _objects(kit, TABLE_PREFIX)
    ids = kit.submit("[scenario:completed] after the planting")
    with pytest.raises(ValueError) as caught:
        kit.archiver(publisher=_publisher(kit, pair.key, witness_uri)).archive(ids)
    message = _one_line(str(caught.value))
    assert message.startswith(f"witness {witness_uri}: "), message
    assert _objects(kit, MANIFEST_PREFIX) == manifests
    assert _objects(kit, TABLE_PREFIX) == tables
