"""Ed25519 key handling for signed manifests: standard bytes, key ids, rotation, refusals."""

from __future__ import annotations

import base64
import hashlib
import pickle
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from spine_pipeline.archive.signing import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    Signature,
    SigningError,
    SigningKey,
    VerifyKeys,
    generate_keypair,
    key_id,
    write_keypair,
)

# RFC 8032 section 7.1, TEST 1 (empty message).
RFC_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def _private_pem(key: object, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _public_pem(key: object) -> bytes:
    return key.public_key().public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _body_lines(pem: bytes) -> list[str]:
    """The base64 lines of a PEM: the key material an error must never contain."""
    return [line for line in pem.decode().splitlines() if line and not line.startswith("-----")]


def _assert_no_material(message: str, pem: bytes) -> None:
    assert "\n" not in message
    for line in _body_lines(pem):
        assert line not in message
        assert line[:16] not in message


@pytest.fixture
def rfc_key() -> SigningKey:
    return SigningKey(Ed25519PrivateKey.from_private_bytes(RFC_SECRET))


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    private_pem, public_pem = generate_keypair()
    private, public = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    private.write_bytes(private_pem)
    public.write_bytes(public_pem)
    yield private, public


# -- standard bytes ---------------------------------------------------------------------------


def test_rfc8032_test_vector_1(rfc_key: SigningKey) -> None:
    signature = rfc_key.sign(b"")
    assert signature.sig == RFC_SIGNATURE
    assert (
        rfc_key.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        == RFC_PUBLIC
    )
    assert rfc_key.key_id == hashlib.sha256(RFC_PUBLIC).digest()[:8].hex()
    assert key_id(RFC_PUBLIC) == rfc_key.key_id == key_id(rfc_key.public_key)
    keys = VerifyKeys.load(rfc_key.public_pem().decode())
    assert keys.verify(b"", Signature(rfc_key.key_id, RFC_SIGNATURE))


def test_generated_pems_are_standard_pkcs8_and_spki() -> None:
    private_pem, public_pem = generate_keypair()
    assert private_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert public_pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    private = serialization.load_pem_private_key(private_pem, password=None)
    assert isinstance(private, Ed25519PrivateKey)
    assert _public_pem(private) == public_pem


# -- sign and verify --------------------------------------------------------------------------


def test_round_trip_and_json(pair: tuple[Path, Path]) -> None:
    private, public = pair
    key = SigningKey.load(str(private))
    keys = VerifyKeys.load(str(public))
    data = b'{"runs": [], "files": []}'
    signature = key.sign(data)
    assert signature.key_id == key.key_id and len(signature.sig) == 64
    doc = signature.to_json()
    assert doc == {
        "key_id": key.key_id,
        "alg": "ed25519",
        "sig": base64.b64encode(signature.sig).decode(),
    }
    assert Signature.from_json(doc) == signature
    assert keys.verify(data, Signature.from_json(doc))
    assert keys.ids == (key.key_id,) and key.key_id in keys and len(keys) == 1


def test_tampered_data_or_signature_fails(rfc_key: SigningKey) -> None:
    keys = VerifyKeys([rfc_key.public_key])
    data = b"manifest 000000000001"
    signature = rfc_key.sign(data)
    assert keys.verify(data, signature)
    assert not keys.verify(data + b" ", signature)
    assert not keys.verify(b"manifest 000000000002", signature)
    flipped = bytearray(signature.sig)
    flipped[10] ^= 1
    assert not keys.verify(data, Signature(signature.key_id, bytes(flipped)))


@pytest.mark.parametrize(
    "doc",
    [
        {"key_id": "00" * 8, "alg": "rsa", "sig": base64.b64encode(b"x" * 64).decode()},
        {"key_id": "00" * 8, "sig": base64.b64encode(b"x" * 64).decode()},
        {"key_id": "00" * 8, "alg": "ed25519", "sig": "not base64!"},
        {"key_id": "00" * 8, "alg": "ed25519", "sig": base64.b64encode(b"x" * 63).decode()},
        {"key_id": "XYZ", "alg": "ed25519", "sig": base64.b64encode(b"x" * 64).decode()},
        {"key_id": 7, "alg": "ed25519", "sig": base64.b64encode(b"x" * 64).decode()},
        ["not", "a", "dict"],
    ],
)
def test_malformed_signature_json_is_refused(doc: object) -> None:
    with pytest.raises(SigningError) as caught:
        Signature.from_json(doc)
    assert "\n" not in str(caught.value)


def test_key_ids_are_stable_and_distinct(pair: tuple[Path, Path]) -> None:
    private, public = pair
    assert SigningKey.load(str(private)).key_id == SigningKey.load(str(private)).key_id
    assert SigningKey.load(str(private)).key_id == VerifyKeys.load(str(public)).ids[0]
    ids = {SigningKey.from_pem(generate_keypair()[0]).key_id for _ in range(20)}
    assert len(ids) == 20
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)


# -- loading ----------------------------------------------------------------------------------


def test_load_from_path_and_from_pem_text(pair: tuple[Path, Path]) -> None:
    private, public = pair
    from_path = SigningKey.load(str(private))
    from_text = SigningKey.load(private.read_text())
    from_text_padded = SigningKey.load("\n  " + private.read_text() + "\n")
    assert from_path.key_id == from_text.key_id == from_text_padded.key_id
    assert VerifyKeys.load(public.read_text()).ids == VerifyKeys.load(str(public)).ids
    assert VerifyKeys.load([f"  {public}  "]).ids == (from_path.key_id,)


def test_rotation_with_several_verify_keys(tmp_path: Path) -> None:
    old_pem, old_pub = generate_keypair()
    new_pem, new_pub = generate_keypair()
    old, new = SigningKey.from_pem(old_pem), SigningKey.from_pem(new_pem)
    (tmp_path / "old.pem").write_bytes(old_pub)
    (tmp_path / "new.pem").write_bytes(new_pub)
    signed_then = old.sign(b"2025 manifest")
    signed_now = new.sign(b"2026 manifest")
    ways = [
        VerifyKeys.load([old_pub.decode(), new_pub.decode()]),
        VerifyKeys.load((old_pub + new_pub).decode()),  # one PEM text, two blocks
        VerifyKeys.load(f"{tmp_path / 'old.pem'},{tmp_path / 'new.pem'}"),
        VerifyKeys.load(f"{tmp_path / 'old.pem'}\n{tmp_path / 'new.pem'}\n"),
        VerifyKeys.load([str(tmp_path / "old.pem"), new_pub.decode()]),
    ]
    for keys in ways:
        assert keys.ids == (old.key_id, new.key_id)
        assert keys.verify(b"2025 manifest", signed_then)
        assert keys.verify(b"2026 manifest", signed_now)
    only_new = VerifyKeys.load(new_pub.decode())
    with pytest.raises(SigningError, match=f"unknown key id {old.key_id}") as caught:
        only_new.verify(b"2025 manifest", signed_then)
    assert new.key_id in str(caught.value)
    assert VerifyKeys.load([old_pub.decode(), old_pub.decode()]).ids == (old.key_id,)


@pytest.mark.parametrize(
    "make",
    [
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
        lambda: ec.generate_private_key(ec.SECP256R1()),
        lambda: ed448.Ed448PrivateKey.generate(),
    ],
    ids=["rsa", "ec", "ed448"],
)
def test_non_ed25519_keys_are_refused(make, tmp_path: Path) -> None:
    other = make()
    private_pem, public_pem = _private_pem(other), _public_pem(other)
    (tmp_path / "other.pem").write_bytes(private_pem)
    for value in (private_pem.decode(), str(tmp_path / "other.pem")):
        with pytest.raises(SigningError, match="only Ed25519") as caught:
            SigningKey.load(value)
        _assert_no_material(str(caught.value), private_pem)
    with pytest.raises(SigningError, match="only Ed25519") as caught:
        VerifyKeys.load(public_pem.decode())
    _assert_no_material(str(caught.value), public_pem)


def test_an_encrypted_key_is_refused(tmp_path: Path) -> None:
    pem = _private_pem(Ed25519PrivateKey.generate(), password=b"hunter22")
    assert b"ENCRYPTED" in pem
    (tmp_path / "enc.pem").write_bytes(pem)
    for value in (pem.decode(), str(tmp_path / "enc.pem")):
        with pytest.raises(SigningError, match="encrypted") as caught:
            SigningKey.load(value, what="SPINE_SIGNING_KEY")
        assert str(caught.value).startswith("SPINE_SIGNING_KEY: ")
        _assert_no_material(str(caught.value), pem)


def test_missing_files_and_wrong_contents_are_one_line_errors(tmp_path: Path) -> None:
    private_pem, public_pem = generate_keypair()
    missing = tmp_path / "nope.pem"
    with pytest.raises(SigningError, match="no such file") as caught:
        SigningKey.load(str(missing))
    assert str(missing) in str(caught.value)
    with pytest.raises(SigningError, match="no such file"):
        VerifyKeys.load(f"{tmp_path / 'nope.pem'}")
    with pytest.raises(SigningError, match="directory"):
        SigningKey.load(str(tmp_path))
    with pytest.raises(SigningError, match="public key"):
        SigningKey.load(public_pem.decode())  # the two variables swapped
    with pytest.raises(SigningError, match="private key") as caught:
        VerifyKeys.load(private_pem.decode())  # the private key where only public ones go
    _assert_no_material(str(caught.value), private_pem)
    (tmp_path / "priv.pem").write_bytes(private_pem)
    with pytest.raises(SigningError, match="private key") as caught:
        VerifyKeys.load(str(tmp_path / "priv.pem"))
    _assert_no_material(str(caught.value), private_pem)
    garbled = private_pem.replace(_body_lines(private_pem)[0].encode(), b"AAAA" * 10)
    with pytest.raises(SigningError, match="not a PEM private key") as caught:
        SigningKey.load(garbled.decode())
    _assert_no_material(str(caught.value), garbled)
    (tmp_path / "big.pem").write_bytes(b"x" * 100_000)
    with pytest.raises(SigningError, match="too large"):
        SigningKey.load(str(tmp_path / "big.pem"))
    with pytest.raises(SigningError, match="no public key"):
        VerifyKeys.load([])
    (tmp_path / "empty.pem").write_text("not a key\n")
    with pytest.raises(SigningError, match="no PEM PUBLIC KEY"):
        VerifyKeys.load(str(tmp_path / "empty.pem"))


def test_the_private_key_stays_out_of_repr_and_pickles(pair: tuple[Path, Path]) -> None:
    private, _ = pair
    key = SigningKey.load(private.read_text())
    assert repr(key) == f"SigningKey(key_id={key.key_id!r})"
    _assert_no_material(repr(key), private.read_bytes())
    with pytest.raises(TypeError):
        pickle.dumps(key)


# -- key files --------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_write_keypair_modes_and_contents(tmp_path: Path, umask_022: None) -> None:
    out = tmp_path / "keys" / "spine"
    files = write_keypair(out)
    assert files.private_path == out / PRIVATE_KEY_FILE
    assert files.public_path == out / PUBLIC_KEY_FILE
    assert _mode(out) == 0o700
    assert _mode(files.private_path) == 0o600
    assert _mode(files.public_path) == 0o644
    key = SigningKey.load(str(files.private_path))
    assert key.key_id == files.key_id
    assert VerifyKeys.load(str(files.public_path)).verify(b"x", key.sign(b"x"))


def test_write_keypair_keeps_an_existing_directory_mode(tmp_path: Path, umask_022: None) -> None:
    out = tmp_path / "existing"
    out.mkdir(mode=0o750)
    write_keypair(out)
    assert _mode(out) == 0o750


def test_write_keypair_never_overwrites(tmp_path: Path) -> None:
    first = write_keypair(tmp_path)
    before = first.private_path.read_bytes()
    with pytest.raises(SigningError, match="refusing to overwrite"):
        write_keypair(tmp_path)
    assert first.private_path.read_bytes() == before
    first.private_path.unlink()  # only the public key left: still refused, nothing written
    with pytest.raises(SigningError, match="refusing to overwrite"):
        write_keypair(tmp_path)
    assert not first.private_path.exists()


@pytest.mark.parametrize("name", [PRIVATE_KEY_FILE, PUBLIC_KEY_FILE])
def test_write_keypair_refuses_a_symlink_at_the_target(tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    (out / name).symlink_to(victim)  # dangling: following it would create `victim`
    with pytest.raises(SigningError, match="refusing to overwrite"):
        write_keypair(out)
    assert not victim.exists()
    assert sorted(p.name for p in out.iterdir()) == [name]


def test_write_keypair_refuses_a_file_as_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(SigningError, match="not a directory"):
        write_keypair(tmp_path / "file")
