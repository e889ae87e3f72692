"""The log rules of `archive.tlog`, and the manifest and identity formats they rest on.

Pure unit tests: keys made here, trees built in memory, stores on local disk only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from spine_pipeline.archive import identity as identity_module
from spine_pipeline.archive.checkpoint import (
    Checkpoint,
    CheckpointError,
    NoteError,
    NoteSignature,
    open_note,
    sign_note,
    split_note,
)
from spine_pipeline.archive.identity import (
    IDENTITY_FORMAT,
    MAX_IDENTITY_BYTES,
    ArchiveIdentity,
    IdentityError,
    ensure_identity,
    read_identity,
)
from spine_pipeline.archive.layout import IDENTITY_KEY
from spine_pipeline.archive.manifest import (
    FileEntry,
    Manifest,
    RunEntry,
    manifest_leaf_hash,
)
from spine_pipeline.archive.merkle import MerkleLog
from spine_pipeline.archive.signing import SigningError, SigningKey, VerifyKeys, generate_keypair
from spine_pipeline.archive.stores import open_store
from spine_pipeline.archive.tlog import (
    LogPublisher,
    inconsistency,
    note_signer,
    note_verifier,
    open_checkpoint,
    sign_checkpoint,
    signature_finding,
)

ORIGIN = "spine-pipeline/" + "a" * 32
OTHER_ORIGIN = "spine-pipeline/" + "b" * 32
WHEN = datetime(2026, 12, 3, 14, 57, 0, tzinfo=UTC)


def _key() -> tuple[SigningKey, VerifyKeys]:
    private_pem, public_pem = generate_keypair()
    return SigningKey.from_pem(private_pem), VerifyKeys.load(public_pem.decode("ascii"))


KEY, KEYS = _key()
STRANGER, STRANGER_KEYS = _key()


def _tree(n: int, salt: str = "") -> MerkleLog:
    tree = MerkleLog()
    for i in range(n):
        tree.append_hash(manifest_leaf_hash(hashlib.sha256(f"{salt}{i}".encode()).hexdigest()))
    return tree


def _one_line(message: str) -> str:
    assert "\n" not in message, message
    return message


# ----------------------------------------------------------------------------- signed notes


def test_note_signer_and_verifier_round_trip():
    body = Checkpoint(ORIGIN, 3, _tree(3).root()).body()
    note = sign_note(body, [note_signer(KEY, ORIGIN)])
    opened, verified = open_note(note, note_verifier(KEYS, ORIGIN))
    assert opened == body and len(verified) == 1 and verified[0].name == ORIGIN
    (sig,) = split_note(note)[1]
    assert note_verifier(KEYS, ORIGIN)(body, sig) is True
    assert note_verifier(KEYS, OTHER_ORIGIN)(body, sig) is None  # another log's key name
    assert note_verifier(STRANGER_KEYS, ORIGIN)(body, sig) is None  # a key we do not know
    assert note_verifier(KEYS, ORIGIN)(body + b"x\n", sig) is False  # other text
    short = NoteSignature(ORIGIN, sig.raw[:-1])  # a known key id, a signature of 63 bytes
    assert note_verifier(KEYS, ORIGIN)(body, short) is False


def _signed(n: int = 3, *, key: SigningKey = KEY, origin: str = ORIGIN) -> bytes:
    return sign_checkpoint(key, origin, _tree(n), now=WHEN).note


def test_open_checkpoint_verifies_with_keys_and_names_the_key():
    opened = open_checkpoint(_signed(), origin=ORIGIN, keys=KEYS, where="checkpoints/x")
    assert opened.size == 3 and opened.root == _tree(3).root()
    assert opened.key_ids == (KEY.key_id,)
    assert opened.checkpoint.time == WHEN


def test_open_checkpoint_refuses_another_origin():
    note = _signed(origin=OTHER_ORIGIN)
    with pytest.raises(CheckpointError) as without_keys:
        open_checkpoint(note, origin=ORIGIN, keys=None, where="witness w")
    message = _one_line(str(without_keys.value))
    assert message.startswith("witness w: ") and OTHER_ORIGIN in message and ORIGIN in message
    with pytest.raises(CheckpointError, match=r"^witness w: .*known key"):
        open_checkpoint(note, origin=ORIGIN, keys=KEYS, where="witness w")


def test_open_checkpoint_refuses_a_note_by_an_unknown_key():
    with pytest.raises(CheckpointError) as caught:
        open_checkpoint(_signed(key=STRANGER), origin=ORIGIN, keys=KEYS, where="cp")
    assert _one_line(str(caught.value)).startswith("cp: ")
    assert "no signature on the note is from a known key" in str(caught.value)


def test_open_checkpoint_refuses_a_note_with_one_byte_changed():
    note = _signed(5)
    size_line = note.index(b"\n5\n") + 1
    edited = note[:size_line] + b"4" + note[size_line + 1 :]  # the size, 5 -> 4
    assert len(edited) == len(note) and edited != note
    open_checkpoint(edited, origin=ORIGIN, keys=None, where="cp")  # well-formed...
    with pytest.raises(CheckpointError, match=r"^cp: signature of .* is invalid"):
        open_checkpoint(edited, origin=ORIGIN, keys=KEYS, where="cp")  # ...but not signed


def test_open_checkpoint_refuses_a_known_key_whose_signature_is_invalid():
    note = _signed()
    body, (sig,) = split_note(note)
    raw = bytearray(sig.raw)
    raw[-1] ^= 0x01  # the key id (first 4 bytes) still names our key
    bad = body + b"\n" + f"\u2014 {ORIGIN} {base64.b64encode(bytes(raw)).decode()}\n".encode()
    with pytest.raises(CheckpointError) as caught:
        open_checkpoint(bad, origin=ORIGIN, keys=KEYS, where="cp")
    assert "is invalid" in _one_line(str(caught.value))
    # An invalid signature by a known key sinks the note even beside a valid one.
    both = note + f"\u2014 {ORIGIN} {base64.b64encode(bytes(raw)).decode()}\n".encode()
    split_note(both)  # well-formed
    with pytest.raises(CheckpointError, match="is invalid"):
        open_checkpoint(both, origin=ORIGIN, keys=KEYS, where="cp")


def test_open_checkpoint_without_keys_checks_the_format_only():
    opened = open_checkpoint(_signed(key=STRANGER), origin=ORIGIN, keys=None, where="cp")
    assert opened.size == 3 and opened.key_ids == ()
    for broken in (b"", b"not a note\n", _signed().replace(b"\n\n", b"\n")):
        with pytest.raises(CheckpointError) as caught:
            open_checkpoint(broken, origin=ORIGIN, keys=None, where="cp")
        assert _one_line(str(caught.value)).startswith("cp: ")


def test_signed_checkpoint_to_json():
    signed = sign_checkpoint(KEY, ORIGIN, _tree(3), now=WHEN)
    doc = signed.to_json()
    assert doc == {
        "origin": ORIGIN,
        "size": 3,
        "root": _tree(3).root().hex(),
        "time": "2026-12-03T14:57:00Z",
        "key_ids": [KEY.key_id],
        "note": signed.note.decode("utf-8"),
    }
    json.dumps(doc)  # JSON-ready as it is
    untimed = open_checkpoint(
        sign_note(Checkpoint(ORIGIN, 1, _tree(1).root()).body(), [note_signer(KEY, ORIGIN)]),
        origin=ORIGIN,
        keys=None,
        where="cp",
    )
    assert untimed.to_json()["time"] is None and untimed.to_json()["key_ids"] == []


# ----------------------------------------------------------------------------- consistency


def test_inconsistency_accepts_the_same_state_and_every_prefix():
    tree = _tree(7)
    for size in range(8):
        assert inconsistency(tree, Checkpoint(ORIGIN, size, tree.root(size))) is None


def test_inconsistency_names_a_rollback():
    problem = inconsistency(_tree(3), Checkpoint(ORIGIN, 5, _tree(5).root()))
    assert problem == "rollback: a checkpoint says the log had 5 manifests, the archive has 3"


def test_inconsistency_names_a_fork():
    tree, other = _tree(4), _tree(4, salt="f")
    problem = inconsistency(tree, Checkpoint(ORIGIN, 3, other.root(3)))
    assert problem is not None and _one_line(problem).startswith("fork: ")
    assert tree.root(3).hex() in problem and other.root(3).hex() in problem


# ----------------------------------------------------------------------------- manifests


def _manifest(**kw: object) -> Manifest:
    base = Manifest(
        seq=1,
        batch_id="20261128T101500Z-3f2a9c1b7d4e",
        committed_at="2026-11-28T10:15:02.123456Z",
        prev_sha256=None,
        schema_version="1",
        runs=(RunEntry("r-1", "completed", "2026-11-28", "2026-11-28T10:14:40Z"),),
        files=(FileEntry("tables/runs/dt=2026-11-28/b.parquet", "runs", 1, 10, "b" * 64),),
        artifacts=(),
        writer={"tool": "spine-pipeline"},
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def _signed_manifest(key: SigningKey = KEY) -> Manifest:
    draft = _manifest(archive_id="a" * 32)
    signed = replace(draft, signature=key.sign(draft.to_bytes()))
    return Manifest.from_bytes(signed.to_bytes(), key="manifests/000000000001.json")


def test_signature_finding_ok():
    assert signature_finding(_signed_manifest(), KEYS) is None


def test_signature_finding_unsigned():
    assert signature_finding(_manifest(), KEYS) == "unsigned"


def test_signature_finding_unknown_key():
    finding = signature_finding(_signed_manifest(STRANGER), KEYS)
    assert finding == f"signed by unknown key id {STRANGER.key_id}"


@pytest.mark.parametrize(
    "edit",
    [
        {"batch_id": "20261128T101500Z-000000000000"},
        {"archive_id": "c" * 32},
        {"prev_sha256": "d" * 64},
        {"seq": 2},
        {"writer": {"tool": "forger"}},
    ],
    ids=lambda e: next(iter(e)),
)
def test_signature_finding_bad_signature_after_editing_one_field(edit):
    edited = replace(_signed_manifest(), **edit)
    finding = signature_finding(edited, KEYS)
    assert finding == f"bad signature (key id {KEY.key_id})"


def test_signed_bytes_exclude_the_signature():
    signed = _signed_manifest()
    assert signed.signature is not None
    assert b'"signature"' in signed.to_bytes()
    assert b'"signature"' not in signed.signed_bytes()
    assert signed.signed_bytes() == replace(signed, signature=None).to_bytes()
    assert json.loads(signed.signed_bytes())["archive_id"] == "a" * 32  # the id is covered
    assert KEYS.verify(signed.signed_bytes(), signed.signature)


def test_an_unsigned_manifest_has_no_signature_or_archive_id_keys():
    doc = json.loads(_manifest().to_bytes())
    assert "signature" not in doc and "archive_id" not in doc


# Written by the manifest serialiser as it was before signed manifests (commit 6bb0efa).
OLD_MANIFEST = """{
 "format": "spine-pipeline-manifest/1",
 "seq": 2,
 "batch_id": "20261128T101500Z-3f2a9c1b7d4e",
 "committed_at": "2026-11-28T10:15:02.123456Z",
 "prev_sha256": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
 "schema_version": "1",
 "run_count": 1,
 "runs": [
  {
   "run_id": "r-1",
   "status": "completed",
   "dt": "2026-11-28",
   "terminal_at": "2026-11-28T10:14:40Z"
  }
 ],
 "files": [
  {
   "key": "tables/runs/dt=2026-11-28/20261128T101500Z-3f2a9c1b7d4e.parquet",
   "table": "runs",
   "rows": 1,
   "bytes": 18211,
   "sha256": "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
  }
 ],
 "artifacts": [
  {
   "run_id": "r-1",
   "artifact_id": "art-1",
   "sha256": "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc",
   "bytes": 48213,
   "key": "artifacts/sha256/cc/cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc"
  }
 ],
 "writer": {
  "host": "h\u00f4te",
  "pid": 1234,
  "tool": "spine-pipeline"
 }
}
""".encode()


def test_a_manifest_written_before_signing_keeps_its_exact_bytes():
    assert "hôte".encode() in OLD_MANIFEST  # written with ensure_ascii=False
    manifest = Manifest.from_bytes(OLD_MANIFEST, key="manifests/000000000002.json")
    assert manifest.archive_id is None and manifest.signature is None
    assert manifest.to_bytes() == OLD_MANIFEST
    assert signature_finding(manifest, KEYS) == "unsigned"


def test_a_signed_manifest_round_trips_byte_identically():
    signed = _signed_manifest()
    data = signed.to_bytes()
    assert Manifest.from_bytes(data, key="m").to_bytes() == data


# ----------------------------------------------------------------------------- identity


def test_ensure_identity_creates_once_and_then_reads(tmp_path):
    store = open_store(str(tmp_path / "archive"))
    assert read_identity(store) is None
    first = ensure_identity(store)
    assert ensure_identity(store) == first == read_identity(store)
    assert first.origin == f"spine-pipeline/{first.archive_id}"
    assert ArchiveIdentity.from_bytes(store.get_bytes(IDENTITY_KEY)) == first


def test_ensure_identity_race_gives_both_writers_the_same_id(tmp_path, monkeypatch):
    """Both racers read "no record" before either writes: one put wins, the other adopts it."""
    real_read = identity_module.read_identity
    for attempt in range(5):
        store = open_store(str(tmp_path / f"archive-{attempt}"))
        both_read = threading.Barrier(2, timeout=10)
        first_reads: set[int] = set()

        def racing_read(s, _real=real_read, _barrier=both_read, _seen=first_reads):
            found = _real(s)
            if threading.get_ident() not in _seen:
                _seen.add(threading.get_ident())
                assert found is None
                _barrier.wait()  # neither writes before both have seen no record
            return found

        monkeypatch.setattr(identity_module, "read_identity", racing_read)
        results: list[ArchiveIdentity] = []
        errors: list[BaseException] = []

        def writer(_store=store, _results=results, _errors=errors):
            try:
                _results.append(ensure_identity(_store))
            except BaseException as exc:  # reported below, not lost in the thread
                _errors.append(exc)

        threads = [threading.Thread(target=writer) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert not errors, errors
        assert len(results) == 2 and results[0] == results[1]
        monkeypatch.setattr(identity_module, "read_identity", real_read)
        assert read_identity(store) == results[0]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            json.dumps({"format": IDENTITY_FORMAT, "archive_id": "XYZ", "created_at": "t"}),
            "archive_id is not 32 lower-case hex digits",
        ),
        (
            json.dumps({"format": IDENTITY_FORMAT, "archive_id": "A" * 32, "created_at": "t"}),
            "archive_id is not 32 lower-case hex digits",
        ),
        (
            json.dumps({"format": IDENTITY_FORMAT, "archive_id": "a" * 32, "created_at": 1}),
            "created_at is not a string",
        ),
        (" " * (MAX_IDENTITY_BYTES + 1), f"larger than {MAX_IDENTITY_BYTES} bytes"),
        ("{not json\n\n", "not JSON"),
        (b"\xff\xfe{}", "not JSON"),
        (
            json.dumps({"format": "other/1", "archive_id": "a" * 32, "created_at": "t"}),
            f"not a {IDENTITY_FORMAT} record",
        ),
        (json.dumps(["a" * 32]), f"not a {IDENTITY_FORMAT} record"),
    ],
    ids=[
        "bad-id",
        "upper-case-id",
        "created-at",
        "too-large",
        "not-json",
        "not-utf8",
        "wrong-format",
        "not-object",
    ],
)
def test_identity_from_bytes_refusals_are_one_line(data, expected):
    raw = data if isinstance(data, bytes) else data.encode()
    with pytest.raises(IdentityError) as caught:
        ArchiveIdentity.from_bytes(raw)
    message = _one_line(str(caught.value))
    assert message.startswith(f"{IDENTITY_KEY}: ") and expected in message


def test_identity_keeps_unknown_fields():
    doc = {"format": IDENTITY_FORMAT, "archive_id": "a" * 32, "created_at": "t", "later": [1]}
    parsed = ArchiveIdentity.from_bytes(json.dumps(doc).encode())
    assert parsed.extra == {"later": [1]}
    assert json.loads(parsed.to_bytes()) == doc


# ----------------------------------------------------------------------------- the publisher


def test_publisher_from_settings_without_a_key_is_none(tmp_path):
    assert LogPublisher.from_settings(open_store(str(tmp_path)), None, ()) is None


def test_publisher_from_settings_refuses_witnesses_without_a_key(tmp_path):
    with pytest.raises(SigningError) as caught:
        LogPublisher.from_settings(open_store(str(tmp_path)), None, (str(tmp_path / "w"),))
    assert "SPINE_WITNESS_URI" in _one_line(str(caught.value))


def test_publisher_from_settings_with_a_key_and_witnesses(tmp_path):
    private_pem, _ = generate_keypair()
    publisher = LogPublisher.from_settings(
        open_store(str(tmp_path / "a")), private_pem.decode(), (str(tmp_path / "w"),)
    )
    assert publisher is not None
    assert publisher.key.key_id == SigningKey.from_pem(private_pem).key_id
    assert [w.uri for w in publisher.witnesses] == [str(tmp_path / "w")]


def test_publisher_from_settings_bad_key_is_one_line_without_key_material(tmp_path):
    private_pem, _ = generate_keypair()
    lines = private_pem.decode().splitlines()
    body = "".join(lines[1:-1])
    mangled = "\n".join([lines[0], body[:20] + "!!!!" + body[24:], lines[-1]]) + "\n"
    _, public_pem = generate_keypair()
    for bad in (mangled, public_pem.decode(), str(tmp_path / "no-such-key.pem")):
        with pytest.raises(SigningError) as caught:
            LogPublisher.from_settings(open_store(str(tmp_path)), bad, ())
        message = _one_line(str(caught.value))
        assert message.startswith("SPINE_SIGNING_KEY: ")
        for line in bad.splitlines()[1:-1]:
            assert line[:16] not in message
        assert body[:16] not in message


def test_open_note_errors_are_note_errors():
    """`open_checkpoint` wraps note errors; the raw ones stay `NoteError` (a ValueError)."""
    with pytest.raises(NoteError):
        open_note(_signed(key=STRANGER), note_verifier(KEYS, ORIGIN))
