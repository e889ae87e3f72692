"""Ed25519 keys for signed manifests and checkpoints: load, sign, verify, generate.

Why a module of its own: the archive writer signs and `verify` checks, and both must read
`SPINE_SIGNING_KEY` / `SPINE_VERIFY_KEY` (docs/contracts.md section 7) the same way and fail
the same way. The cryptography is `cryptography`'s Ed25519 (RFC 8032), nothing home-made:
signatures are the standard 64 bytes, keys standard PEM (PKCS#8 private, unencrypted;
SubjectPublicKeyInfo public), so any Ed25519 tool can check them.

Values. A setting value that starts with `-----BEGIN` is PEM text; anything else is a path
(so Dagster's `EnvVar` and a mounted secret file both work). A verify value that is not PEM
text may list several paths separated by commas or newlines; PEM text may hold several
`PUBLIC KEY` blocks. Several verify keys are how a key is rotated: the old public key stays
listed, so what it signed still verifies.

Key id (`key_id`): the first 8 bytes, in lower-case hex (16 characters), of SHA-256 over the
raw 32-byte public key. It names the key in every signature, so a verifier holding several
keys picks the right one, and an operator can match a signature to a key file.

Errors are one-line `SigningError`s (a `ValueError`, which the CLI reports as one line). They
name a path when the value was a path, never the key material: a PEM text is only ever "PEM
text (not shown)".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, rsa, x448, x25519
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALGORITHM = "ed25519"
SIGNATURE_BYTES = 64
KEY_ID_BYTES = 8
PRIVATE_KEY_FILE = "spine-signing.pem"
PUBLIC_KEY_FILE = "spine-verify.pem"
#: A key file is a few hundred bytes; refuse to read something that is clearly not one.
MAX_KEY_FILE_BYTES = 64 * 1024

_PEM_START = "-----BEGIN"
_PUBLIC_BLOCK = re.compile(
    r"-----BEGIN PUBLIC KEY-----\s.*?-----END PUBLIC KEY-----", re.DOTALL | re.ASCII
)
_KEY_ID = re.compile(r"[0-9a-f]{16}")


class SigningError(ValueError):
    """A key or signature could not be loaded or used; one line, never the key material."""


# ----------------------------------------------------------------------------- key ids


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey | bytes) -> str:
    """`sha256(raw 32-byte public key)[:8]` in lower-case hex: the stable name of a key."""
    raw = public_key if isinstance(public_key, bytes) else _raw(public_key)
    if len(raw) != 32:
        raise SigningError(f"an Ed25519 public key is 32 bytes, got {len(raw)}")
    return hashlib.sha256(raw).digest()[:KEY_ID_BYTES].hex()


# ----------------------------------------------------------------------------- reading values


def _is_pem_text(value: str) -> bool:
    return value.lstrip().startswith(_PEM_START)


def _read_key_file(path: Path, what: str) -> bytes:
    """The bytes of a key file, or a one-line error naming the path (paths are not secret)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise SigningError(f"{what}: no such file: {str(path)!r}") from None
    except IsADirectoryError:
        raise SigningError(f"{what}: a directory, not a key file: {str(path)!r}") from None
    except OSError as exc:
        raise SigningError(f"{what}: cannot read {str(path)!r}: {exc.strerror}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise SigningError(f"{what}: {str(path)!r} is too large to be a PEM key file")
    return data


def _split_paths(value: str) -> list[str]:
    return [p.strip() for p in re.split(r"[,\n]", value) if p.strip()]


# ----------------------------------------------------------------------------- signatures


@dataclass(frozen=True)
class Signature:
    """An Ed25519 signature and the id of the key that made it."""

    key_id: str
    sig: bytes

    def __post_init__(self) -> None:
        if not _KEY_ID.fullmatch(self.key_id):
            raise SigningError("a key id is 16 lower-case hex characters")
        if len(self.sig) != SIGNATURE_BYTES:
            raise SigningError(f"an Ed25519 signature is 64 bytes, got {len(self.sig)}")

    def to_json(self) -> dict[str, str]:
        """`{"key_id": ..., "alg": "ed25519", "sig": standard base64}`: what manifests carry."""
        return {
            "key_id": self.key_id,
            "alg": ALGORITHM,
            "sig": base64.b64encode(self.sig).decode("ascii"),
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any] | Any) -> Signature:
        """Read `to_json`'s dict back; anything else (other algorithm, bad base64) refused."""
        if not isinstance(value, Mapping):
            raise SigningError("a signature must be a JSON object")
        if value.get("alg") != ALGORITHM:
            raise SigningError(f"unsupported signature algorithm {value.get('alg')!r:.40}")
        kid, sig = value.get("key_id"), value.get("sig")
        if not isinstance(kid, str) or not isinstance(sig, str):
            raise SigningError("a signature needs string fields key_id and sig")
        try:
            raw = base64.b64decode(sig.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise SigningError("a signature's sig is not valid base64") from None
        return cls(key_id=kid, sig=raw)


# ----------------------------------------------------------------------------- signing key


class SigningKey:
    """An Ed25519 private key. Its repr shows the key id only."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise SigningError("signing key: not an Ed25519 private key")
        self._key = private_key
        self.public_key = private_key.public_key()
        self.key_id = key_id(self.public_key)

    @classmethod
    def load(cls, value: str, *, what: str = "signing key") -> SigningKey:
        """From PEM text (a value starting with `-----BEGIN`) or the path of a PEM file.

        `what` starts every error message (e.g. the setting's name).
        """
        if _is_pem_text(value):
            return cls.from_pem(
                value.strip().encode("ascii", "replace"), source="PEM text", what=what
            )
        path = Path(value.strip())
        return cls.from_pem(_read_key_file(path, what), source=repr(str(path)), what=what)

    @classmethod
    def from_pem(
        cls, pem: bytes, *, source: str = "PEM text", what: str = "signing key"
    ) -> SigningKey:
        """Parse an unencrypted PKCS#8 PEM Ed25519 private key (what `keygen` writes)."""
        if b"ENCRYPTED" in pem:
            raise SigningError(
                f"{what}: {source} is encrypted; use an unencrypted key and protect the file "
                "(mode 0600, a secret store)"
            )
        if b"OPENSSH PRIVATE KEY" in pem:
            raise SigningError(
                f"{what}: {source} is an OpenSSH key; use PKCS#8 PEM (spine-pipeline keygen)"
            )
        if b"PUBLIC KEY-----" in pem and b"PRIVATE KEY-----" not in pem:
            raise SigningError(f"{what}: {source} holds a public key; this needs the private key")
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except TypeError:  # a password-protected key in a shape the check above missed
            raise SigningError(f"{what}: {source} is encrypted") from None
        except (ValueError, UnsupportedAlgorithm):
            raise SigningError(f"{what}: {source} is not a PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningError(
                f"{what}: {source} is a {_algorithm_name(key)} key; only Ed25519 is supported"
            )
        return cls(key)

    def sign(self, data: bytes) -> Signature:
        """Sign `data` (Ed25519 is deterministic: same key and data, same signature)."""
        return Signature(key_id=self.key_id, sig=self._key.sign(data))

    @property
    def public_raw(self) -> bytes:
        """The raw 32-byte public key (what C2SP signed-note key ids are derived from)."""
        return _raw(self.public_key)

    def public_pem(self) -> bytes:
        """The public key as SubjectPublicKeyInfo PEM (what goes into `SPINE_VERIFY_KEY`)."""
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r})"

    def __reduce__(self) -> Any:
        raise TypeError("a SigningKey is not picklable (it would carry the private key)")


def _algorithm_name(key: object) -> str:
    """ "RSA", "EC", ... for a refusal message (the key's type, never its value)."""
    kinds = (
        ((rsa.RSAPrivateKey, rsa.RSAPublicKey), "RSA"),
        ((ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey), "EC"),
        ((dsa.DSAPrivateKey, dsa.DSAPublicKey), "DSA"),
        ((ed448.Ed448PrivateKey, ed448.Ed448PublicKey), "Ed448"),
        ((x25519.X25519PrivateKey, x25519.X25519PublicKey), "X25519"),
        ((x448.X448PrivateKey, x448.X448PublicKey), "X448"),
    )
    return next((label for types, label in kinds if isinstance(key, types)), "non-Ed25519")


# ----------------------------------------------------------------------------- verify keys


class VerifyKeys:
    """One or more Ed25519 public keys, looked up by key id (rotation: keep the old ones)."""

    def __init__(self, public_keys: Iterable[Ed25519PublicKey]) -> None:
        self._keys: dict[str, Ed25519PublicKey] = {}
        for key in public_keys:
            if not isinstance(key, Ed25519PublicKey):
                raise SigningError("verify key: not an Ed25519 public key")
            self._keys.setdefault(key_id(key), key)  # the same key listed twice is one key
        if not self._keys:
            raise SigningError("verify key: no public key given")

    @classmethod
    def load(cls, values: str | Iterable[str], *, what: str = "verify key") -> VerifyKeys:
        """From one value or several: each PEM text (one or more `PUBLIC KEY` blocks) or paths.

        A value that is not PEM text may list several paths, separated by commas or newlines.
        """
        keys: list[Ed25519PublicKey] = []
        for value in [values] if isinstance(values, str) else values:
            if _is_pem_text(value):
                keys += _public_keys(value.encode("ascii", "replace"), "PEM text", what)
            else:
                for path in _split_paths(value):
                    data = _read_key_file(Path(path), what)
                    keys += _public_keys(data, repr(path), what)
        return cls(keys)

    @property
    def ids(self) -> tuple[str, ...]:
        """The key ids, in the order the keys were given."""
        return tuple(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, kid: object) -> bool:
        return kid in self._keys

    def public_keys(self) -> tuple[Ed25519PublicKey, ...]:
        """The keys themselves, in the order they were given."""
        return tuple(self._keys.values())

    def raw_public_keys(self) -> dict[str, bytes]:
        """Key id -> raw 32-byte public key, in the order the keys were given."""
        return {kid: _raw(key) for kid, key in self._keys.items()}

    def verify(self, data: bytes, signature: Signature) -> bool:
        """True when `signature` over `data` checks with the key it names.

        A key id not among these keys is a `SigningError` (a key missing from
        `SPINE_VERIFY_KEY`, or a signature by a stranger), not a plain False.
        """
        key = self._keys.get(signature.key_id)
        if key is None:
            raise SigningError(
                f"signature by unknown key id {signature.key_id}; known: {', '.join(self.ids)}"
            )
        try:
            key.verify(signature.sig, data)
        except InvalidSignature:
            return False
        return True

    def __repr__(self) -> str:
        return f"VerifyKeys(ids={self.ids!r})"


def _public_keys(data: bytes, source: str, what: str) -> list[Ed25519PublicKey]:
    text = data.decode("ascii", "replace")
    if "PRIVATE KEY" in text:
        raise SigningError(
            f"{what}: {source} holds a private key; give only public keys here "
            "(keep the private key out of verify settings)"
        )
    blocks = _PUBLIC_BLOCK.findall(text)
    if not blocks:
        raise SigningError(f"{what}: {source} holds no PEM PUBLIC KEY block")
    keys = []
    for number, block in enumerate(blocks, 1):
        try:
            key = serialization.load_pem_public_key(block.encode("ascii"))
        except (ValueError, UnsupportedAlgorithm):
            raise SigningError(f"{what}: {source}, key {number}: not a valid public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise SigningError(
                f"{what}: {source}, key {number}: a {_algorithm_name(key)} key; "
                "only Ed25519 is supported"
            )
        keys.append(key)
    return keys


# ----------------------------------------------------------------------------- key generation


def generate_keypair() -> tuple[bytes, bytes]:
    """A new key pair as (PKCS#8 unencrypted private PEM, SubjectPublicKeyInfo public PEM)."""
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


@dataclass(frozen=True)
class KeypairFiles:
    """Where `write_keypair` put a new key pair, and its key id."""

    key_id: str
    private_path: Path
    public_path: Path


def _create_exclusive(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with exactly `mode`: never over an existing file, never through a symlink."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise SigningError(f"refusing to overwrite {str(path)!r}: it exists") from None
    try:
        os.fchmod(fd, mode)  # exactly `mode`, whatever the umask
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_keypair(out_dir: Path) -> KeypairFiles:
    """Generate a key pair into `out_dir`: the private key 0600, the public key 0644.

    `out_dir` is created 0700 when missing. Nothing is overwritten: if either file already
    exists (a symlink included) nothing is written, so an existing key cannot be lost.
    """
    private_path = out_dir / PRIVATE_KEY_FILE
    public_path = out_dir / PUBLIC_KEY_FILE
    if out_dir.exists() and not out_dir.is_dir():
        raise SigningError(f"not a directory: {str(out_dir)!r}")
    for path in (private_path, public_path):
        if os.path.lexists(path):
            raise SigningError(f"refusing to overwrite {str(path)!r}: it exists")
    if not out_dir.exists():
        out_dir.mkdir(mode=0o700, parents=True)
        os.chmod(out_dir, 0o700)
    private_pem, public_pem = generate_keypair()
    _create_exclusive(private_path, private_pem, 0o600)
    try:
        _create_exclusive(public_path, public_pem, 0o644)
    except BaseException:
        private_path.unlink(missing_ok=True)  # no half pair left behind
        raise
    kid = SigningKey.from_pem(private_pem).key_id
    return KeypairFiles(key_id=kid, private_path=private_path, public_path=public_path)
