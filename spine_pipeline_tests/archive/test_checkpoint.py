"""Checkpoint bodies and signed notes: the C2SP examples parse, ours round-trip, and the
parsers refuse every other spelling (one byte string per checkpoint, so a signature cannot be
replayed onto a different reading)."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest

from spine_pipeline.archive.checkpoint import (
    MAX_SIGNATURES,
    Checkpoint,
    CheckpointError,
    NoteError,
    NoteSignature,
    Verifier,
    note_key_id,
    note_text,
    open_note,
    origin_for,
    sign_note,
    split_note,
    time_extension,
)
from spine_pipeline.archive.merkle import EMPTY_ROOT, MerkleLog

# c2sp.org/tlog-checkpoint (C2SP/C2SP tlog-checkpoint.md): the example checkpoint.
C2SP_CHECKPOINT = (
    "example.com/behind-the-sofa\n"
    "20852163\n"
    "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    "\n"
    "\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5"
    "/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
).encode()

# c2sp.org/signed-note (C2SP/C2SP signed-note.md): the example note, whose text has a blank
# line of its own (the text ends at the *last* blank line).
C2SP_NOTE = (
    "Ognuno sta solo sul cuor della terra\n"
    "trafitto da un raggio di sole:\n"
    "\n"
    "ed è subito sera.\n"
    "\n"
    "\u2014 quasimodo.example/salvatore NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9o"
    "JKONrMouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n"
).encode()

ROOT = MerkleLog.from_leaves([b"a", b"b", b"c"]).root()


def _signer(name: str, key: bytes) -> Callable[[bytes], NoteSignature]:
    """A stand-in for Ed25519 (the signing module is separate): key id || sha256(key || body)."""
    key_id = note_key_id(name, 0x01, key)

    def sign(body: bytes) -> NoteSignature:
        return NoteSignature(name, key_id + hashlib.sha256(key + body).digest())

    return sign


def _verifier(known: dict[tuple[str, bytes], bytes]) -> Verifier:
    def verify(body: bytes, sig: NoteSignature) -> bool | None:
        key = known.get((sig.name, sig.key_id))
        if key is None:
            return None
        return sig.signature == hashlib.sha256(key + body).digest()

    return verify


def test_c2sp_example_checkpoint_parses() -> None:
    body, signatures = split_note(C2SP_CHECKPOINT)
    cp = Checkpoint.parse(body)
    assert cp.origin == "example.com/behind-the-sofa"
    assert cp.size == 20852163
    assert cp.root == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert cp.extensions == ()
    assert cp.time is None
    assert cp.body() == body
    assert [s.name for s in signatures] == ["example.com/behind-the-sofa"]
    assert len(signatures[0].key_id) == 4
    assert len(signatures[0].signature) == 64  # Ed25519
    assert note_text(body, signatures) == C2SP_CHECKPOINT


def test_c2sp_example_note_splits_at_the_last_blank_line() -> None:
    body, signatures = split_note(C2SP_NOTE)
    assert (
        body
        == "Ognuno sta solo sul cuor della terra\ntrafitto da un raggio di sole:\n\ned è subito sera.\n".encode()
    )
    assert [s.name for s in signatures] == ["quasimodo.example/salvatore"]
    assert note_text(body, signatures) == C2SP_NOTE


def test_our_checkpoints_round_trip_with_a_time_extension() -> None:
    when = datetime(2026, 12, 3, 15, 4, 5, 999, tzinfo=timezone(timedelta(hours=2)))
    cp = Checkpoint(origin_for("a1b2c3"), 3, ROOT, (time_extension(when), "other stuff"))
    body = cp.body()
    assert body.decode().splitlines() == [
        "spine-pipeline/a1b2c3",
        "3",
        base64.b64encode(ROOT).decode(),
        "time 2026-12-03T13:04:05Z",
        "other stuff",
    ]
    assert Checkpoint.parse(body) == cp
    assert cp.time == datetime(2026, 12, 3, 13, 4, 5, tzinfo=UTC)
    empty = Checkpoint(origin_for("x"), 0, EMPTY_ROOT)
    assert empty.body() == b"spine-pipeline/x\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"
    assert Checkpoint.parse(empty.body()) == empty


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"o\n3\n" + base64.b64encode(ROOT), id="no final newline"),
        pytest.param(b"o\n3\n", id="two lines"),
        pytest.param(b"", id="empty"),
        pytest.param(b"o\n03\n" + base64.b64encode(ROOT) + b"\n", id="leading zero"),
        pytest.param(b"o\n+3\n" + base64.b64encode(ROOT) + b"\n", id="plus sign"),
        pytest.param(b"o\n-1\n" + base64.b64encode(ROOT) + b"\n", id="negative"),
        pytest.param(b"o\n3.0\n" + base64.b64encode(ROOT) + b"\n", id="not an integer"),
        pytest.param("o\n\u0663\n".encode() + base64.b64encode(ROOT) + b"\n", id="arabic digit"),
        pytest.param(b"o\n18446744073709551616\n" + base64.b64encode(ROOT) + b"\n", id="2**64"),
        pytest.param(b"o\n3 \n" + base64.b64encode(ROOT) + b"\n", id="trailing space"),
        pytest.param(b"o \n3\n" + base64.b64encode(ROOT) + b"\n", id="origin space"),
        pytest.param(b"\n3\n" + base64.b64encode(ROOT) + b"\n", id="empty origin"),
        pytest.param(b"a b\n3\n" + base64.b64encode(ROOT) + b"\n", id="space in origin"),
        pytest.param(b"a+b\n3\n" + base64.b64encode(ROOT) + b"\n", id="plus in origin"),
        pytest.param(b"o\n3\n" + base64.b64encode(ROOT[:31]) + b"\n", id="31-byte root"),
        pytest.param(b"o\n3\n" + base64.b64encode(ROOT + b"\0") + b"\n", id="33-byte root"),
        pytest.param(b"o\n3\n" + base64.b64encode(ROOT).rstrip(b"=") + b"\n", id="unpadded"),
        pytest.param(b"o\n3\n" + base64.urlsafe_b64encode(b"\xff" * 32) + b"\n", id="urlsafe"),
        pytest.param(b"o\n3\n" + base64.b64encode(ROOT)[:-2] + b"B=\n", id="padding bits"),
        pytest.param(b"o\n3\n" + ROOT.hex().encode() + b"\n", id="hex root"),
        pytest.param(b"o\n3\n" + base64.b64encode(ROOT) + b"\n\n", id="empty extension"),
        pytest.param(b"o\n3\n" + base64.b64encode(ROOT) + b"\nx \n", id="extension space"),
        pytest.param(b"o\n3\n" + base64.b64encode(ROOT) + b"\r\n", id="CRLF"),
        pytest.param(b"o\n3\n" + base64.b64encode(ROOT) + b"\nx\ty\n", id="tab"),
        pytest.param(b"\xffo\n3\n" + base64.b64encode(ROOT) + b"\n", id="not UTF-8"),
        pytest.param(
            b"o\n3\n" + base64.b64encode(ROOT) + b"\ntime 2026-12-03 15:00:00\n", id="bad time"
        ),
        pytest.param(
            b"o\n3\n" + base64.b64encode(ROOT) + b"\ntime 2026-02-30T15:00:00Z\n", id="no such day"
        ),
    ],
)
def test_parse_refuses_every_other_spelling(body: bytes) -> None:
    with pytest.raises(CheckpointError):
        Checkpoint.parse(body)


def test_constructor_refuses_what_parse_would_refuse() -> None:
    with pytest.raises(CheckpointError):
        Checkpoint("o", -1, ROOT)
    with pytest.raises(CheckpointError):
        Checkpoint("o", True, ROOT)
    with pytest.raises(CheckpointError):
        Checkpoint("o", 1, ROOT[:31])
    with pytest.raises(CheckpointError):
        Checkpoint("o", 1, ROOT, ("a\nb",))
    with pytest.raises(CheckpointError):
        Checkpoint("o", 1, ROOT, ("",))
    with pytest.raises(CheckpointError):
        origin_for("has space")
    with pytest.raises(CheckpointError):
        time_extension(datetime(2026, 1, 1))  # naive


def test_sign_and_open_follow_signed_note_rules() -> None:
    body = Checkpoint(origin_for("arch"), 3, ROOT).body()
    log_key, witness_key, stranger_key = b"log-key", b"witness-key", b"stranger"
    note = sign_note(
        body,
        [
            _signer("spine-pipeline/arch", log_key),
            _signer("witness.example/w1", witness_key),
            _signer("stranger.example", stranger_key),
        ],
    )
    text = note.decode()
    assert text.startswith(body.decode() + "\n\u2014 spine-pipeline/arch ")
    known = {
        ("spine-pipeline/arch", note_key_id("spine-pipeline/arch", 1, log_key)): log_key,
        ("witness.example/w1", note_key_id("witness.example/w1", 1, witness_key)): witness_key,
    }
    opened, verified = open_note(note, _verifier(known))
    assert opened == body
    assert [s.name for s in verified] == ["spine-pipeline/arch", "witness.example/w1"]
    assert Checkpoint.parse(opened).size == 3

    # Only unknown keys: refused.
    with pytest.raises(NoteError, match="known key"):
        open_note(sign_note(body, [_signer("stranger.example", stranger_key)]), _verifier(known))
    # A known key whose signature fails: the whole note is refused.
    tampered = note.replace(b"\n3\n", b"\n4\n", 1)
    with pytest.raises(NoteError, match="invalid"):
        open_note(tampered, _verifier(known))
    # Same name, another key id: an unknown key, ignored (key rotation).
    rotated = _signer("spine-pipeline/arch", b"new-key")
    _, verified = open_note(
        sign_note(body, [rotated, _signer("witness.example/w1", witness_key)]), _verifier(known)
    )
    assert [s.name for s in verified] == ["witness.example/w1"]


def test_note_key_id_is_the_c2sp_recommendation() -> None:
    pub = bytes(range(32))
    want = hashlib.sha256(b"example.com/k\n\x01" + pub).digest()[:4]
    assert note_key_id("example.com/k", 0x01, pub) == want
    with pytest.raises(NoteError):
        note_key_id("has space", 1, pub)
    with pytest.raises(NoteError):
        note_key_id("a+b", 1, pub)


def _sig_line(name: str, raw: bytes) -> bytes:
    return f"\u2014 {name} {base64.b64encode(raw).decode()}\n".encode()


BODY = b"o\n1\n" + base64.b64encode(ROOT) + b"\n"
GOOD_SIG = _sig_line("k", b"\x01\x02\x03\x04" + b"s" * 64)


@pytest.mark.parametrize(
    "note",
    [
        pytest.param(BODY, id="no signatures"),
        pytest.param(BODY + b"\n", id="blank line, no signatures"),
        pytest.param(BODY + GOOD_SIG, id="no blank line"),
        pytest.param(BODY + b"\n" + GOOD_SIG[:-1], id="no final newline"),
        pytest.param(BODY + b"\n" + GOOD_SIG + b"\n", id="trailing blank line"),
        pytest.param(BODY + b"\n" + GOOD_SIG.replace("\u2014".encode(), b"-"), id="hyphen"),
        pytest.param(
            BODY + b"\n" + GOOD_SIG.replace("\u2014".encode(), "\u2013".encode()), id="en dash"
        ),
        pytest.param(BODY + b"\n" + GOOD_SIG.replace(b" k ", b"  k "), id="double space"),
        pytest.param(BODY + b"\n" + GOOD_SIG.replace(b"\n", b" \n"), id="trailing space"),
        pytest.param(BODY + b"\n" + _sig_line("", b"\x01\x02\x03\x04s"), id="empty name"),
        pytest.param(BODY + b"\n" + _sig_line("a+b", b"\x01\x02\x03\x04s"), id="plus in name"),
        pytest.param(BODY + b"\n" + _sig_line("k", b"\x01\x02\x03\x04"), id="key id only"),
        pytest.param(BODY + b"\n" + GOOD_SIG.replace(b"=\n", b"\n"), id="unpadded"),
        pytest.param(BODY + b"\n" + b"\xe2\x80\x94 k !!!!\n", id="not base64"),
        pytest.param(b"\x00" + BODY + b"\n" + GOOD_SIG, id="control character"),
        pytest.param(b"\xff" + BODY + b"\n" + GOOD_SIG, id="not UTF-8"),
        pytest.param(b"\n" + GOOD_SIG, id="empty text"),
        pytest.param(BODY + b"\n" + GOOD_SIG * (MAX_SIGNATURES + 1), id="too many"),
    ],
)
def test_split_note_refuses_malformed_notes(note: bytes) -> None:
    with pytest.raises(NoteError):
        split_note(note)


def test_note_text_refuses_what_split_note_would_refuse() -> None:
    sig = NoteSignature("k", b"\x01\x02\x03\x04" + b"s" * 64)
    assert split_note(note_text(BODY, [sig])) == (BODY, [sig])
    assert split_note(note_text(BODY, [sig] * MAX_SIGNATURES))[1] == [sig] * MAX_SIGNATURES
    for body, sigs in [
        (BODY, []),
        (BODY[:-1], [sig]),
        (b"\n", [sig]),
        (BODY, [NoteSignature("a b", sig.raw)]),
        (BODY, [NoteSignature("k", b"\x01\x02\x03\x04")]),
        (BODY, [sig] * (MAX_SIGNATURES + 1)),
    ]:
        with pytest.raises(NoteError):
            note_text(body, sigs)
