"""Checkpoints (C2SP tlog-checkpoint) and the signed-note envelope they travel in.

Why this format: a checkpoint is the one statement a log signs, "my tree of `size` leaves has
`root`", and witnesses co-sign the same bytes. Using the ecosystem's text format (Go's sumdb,
Sigstore, Trillian's tlog tools, the witness network) instead of our own JSON means those
tools can read, verify and co-sign our checkpoints, and the format's strictness is already
worked out: there is exactly one byte string for each checkpoint, so a signature over it
cannot be replayed onto a different reading.

The body (c2sp.org/tlog-checkpoint):

```
spine-pipeline/<archive id>          origin: the log's identity
1234                                 tree size, decimal, no leading zeros
<base64 of the 32-byte root>         RFC 6962 root (archive.merkle)
time 2026-12-03T14:57:00Z            optional extension lines (ours: see TIME_EXTENSION)
```

each line ending in a newline. The note (c2sp.org/signed-note) is the body, a blank line, and
one or more lines `— <key name> <base64(4-byte key id || signature)>` (em dash U+2014). This
module only formats and parses, strictly; producing and checking signatures belongs to the
signing module, passed in as callables (`sign_note`, `open_note`), so this file stays pure
and needs no cryptography library.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from spine_pipeline.archive.merkle import HASH_SIZE

ORIGIN_PREFIX = "spine-pipeline/"
"""Our origins are `spine-pipeline/<archive id>`; see `origin_for`."""

TIME_EXTENSION = "time"
"""Our one extension line: `time <RFC 3339 UTC, seconds, Z>`, when the log signed this size.

C2SP leaves extension lines free-form (and discourages them, since monitors cannot audit
them); a time lets a reader see how stale a checkpoint is without trusting a file date.
"""

EM_DASH = "\u2014"
SIGNATURE_PREFIX = EM_DASH + " "
KEY_ID_SIZE = 4
MAX_SIGNATURES = 64
"""Signed-note readers must accept at least 16 signatures and should cap them; we cap at 64."""

_DECIMAL = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z", re.ASCII)
_MAX_SIZE = (1 << 64) - 1
"""Tree sizes are uint64 everywhere else (RFC 9162, Go's tlog); a bigger one is garbage."""


class CheckpointError(ValueError):
    """A checkpoint body that is not exactly the C2SP format (or not one we would write)."""


class NoteError(ValueError):
    """A signed note that is malformed, or whose signatures do not let it be opened."""


def _check_text(text: str, what: str, error: type[ValueError]) -> None:
    """Signed notes are UTF-8 without ASCII control characters other than newline."""
    for ch in text:
        if ch != "\n" and (ord(ch) < 0x20 or ch == "\x7f"):
            raise error(f"{what} contains control character {ch!r}")


def _decode_utf8(data: bytes, what: str, error: type[ValueError]) -> str:
    if not isinstance(data, bytes | bytearray):
        raise error(f"{what} must be bytes, got {type(data).__name__}")
    try:
        return bytes(data).decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not valid UTF-8: {exc}") from None


def _b64decode_canonical(text: str, what: str, error: type[ValueError]) -> bytes:
    """Standard base64 (RFC 4648 §4), padded, and the one encoding of its bytes.

    Re-encoding and comparing refuses non-zero padding bits and other alternative spellings,
    so no two different strings parse to the same checkpoint or signature.
    """
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise error(f"{what} is not standard base64: {text!r}") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise error(f"{what} is not canonical base64: {text!r}")
    return raw


def _has_space(text: str) -> bool:
    return any(ch.isspace() for ch in text)


def origin_for(archive_id: str) -> str:
    """The origin line of the log of archive `archive_id`."""
    origin = ORIGIN_PREFIX + archive_id
    _check_origin(origin)
    return origin


def _check_name(value: str, what: str, error: type[ValueError]) -> None:
    """Non-empty, no Unicode space, no `+`: C2SP's rule for key names (a MUST) and origins
    (a SHOULD, which we make a MUST for ours)."""
    if not value:
        raise error(f"{what} is empty")
    if _has_space(value) or "+" in value:
        raise error(f"{what} contains a space or '+': {value!r}")
    _check_text(value, what, error)


def _check_origin(origin: str) -> None:
    _check_name(origin, "origin", CheckpointError)


def time_extension(when: datetime) -> str:
    """The `time` extension line for `when` (must be timezone-aware; written in UTC, seconds)."""
    if when.tzinfo is None:
        raise CheckpointError("checkpoint time must be timezone-aware")
    return f"{TIME_EXTENSION} {when.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"


@dataclass(frozen=True)
class Checkpoint:
    """One tree head: `size` leaves with RFC 6962 `root`, as stated by the log `origin`.

    Constructed only valid (`__post_init__` checks every field), so `body()` never writes a
    checkpoint `parse` would refuse, and `parse(c.body()) == c` always.
    """

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_origin(self.origin)
        if isinstance(self.size, bool) or not isinstance(self.size, int):
            raise CheckpointError(f"tree size must be an int, got {type(self.size).__name__}")
        if not 0 <= self.size <= _MAX_SIZE:
            raise CheckpointError(f"tree size {self.size} is outside 0..2**64-1")
        if not isinstance(self.root, bytes) or len(self.root) != HASH_SIZE:
            raise CheckpointError(f"root hash must be {HASH_SIZE} bytes")
        if not isinstance(self.extensions, tuple):
            raise CheckpointError("extensions must be a tuple of lines")
        for line in self.extensions:
            if not isinstance(line, str) or not line:
                raise CheckpointError("extension lines must be non-empty strings")
            if "\n" in line:
                raise CheckpointError(f"extension line contains a newline: {line!r}")
            if line != line.strip():
                raise CheckpointError(f"extension line has surrounding spaces: {line!r}")
            _check_text(line, "extension line", CheckpointError)
            if line.split(" ", 1)[0] == TIME_EXTENSION:
                _parse_time(line)

    def body(self) -> bytes:
        """The note text: origin, size, base64 root, extension lines, each newline-terminated."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode("ascii")]
        lines.extend(self.extensions)
        return "".join(line + "\n" for line in lines).encode("utf-8")

    @property
    def time(self) -> datetime | None:
        """The time of our `time` extension line, if there is one."""
        for line in self.extensions:
            if line.split(" ", 1)[0] == TIME_EXTENSION:
                return _parse_time(line)
        return None

    @classmethod
    def parse(cls, body: bytes) -> Checkpoint:
        """The checkpoint in `body`, refusing anything `body()` would not have written.

        Strict on purpose: at least three lines, each non-empty and newline-terminated, no
        trailing spaces, the size in canonical decimal, the root canonical base64 of exactly
        32 bytes. A lenient parser would let two byte strings mean one checkpoint.
        """
        text = _decode_utf8(body, "checkpoint", CheckpointError)
        _check_text(text, "checkpoint", CheckpointError)
        if not text.endswith("\n"):
            raise CheckpointError("checkpoint does not end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError(f"checkpoint has {len(lines)} lines, needs at least 3")
        for n, line in enumerate(lines, 1):
            if not line:
                raise CheckpointError(f"checkpoint line {n} is empty")
            if line != line.rstrip():
                raise CheckpointError(f"checkpoint line {n} has trailing spaces")
        origin, size_text, root_text, *extensions = lines
        if not _DECIMAL.fullmatch(size_text):
            raise CheckpointError(f"tree size is not canonical decimal: {size_text!r}")
        root = _b64decode_canonical(root_text, "root hash", CheckpointError)
        if len(root) != HASH_SIZE:
            raise CheckpointError(f"root hash is {len(root)} bytes, not {HASH_SIZE}")
        return cls(origin, int(size_text), root, tuple(extensions))


def _parse_time(line: str) -> datetime:
    value = line[len(TIME_EXTENSION) + 1 :] if line.startswith(TIME_EXTENSION + " ") else ""
    if not _TIME.fullmatch(value):
        raise CheckpointError(f"time extension is not 'time YYYY-MM-DDTHH:MM:SSZ': {line!r}")
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise CheckpointError(f"time extension is not a valid time: {line!r}") from None


class NoteSignature(NamedTuple):
    """One signature line: the key's name and `key id (4 bytes, big-endian) || signature`."""

    name: str
    raw: bytes

    @property
    def key_id(self) -> bytes:
        """The 4-byte key id: with the name, it picks the key to verify with."""
        return self.raw[:KEY_ID_SIZE]

    @property
    def signature(self) -> bytes:
        """The signature bytes proper, over the note text (the body)."""
        return self.raw[KEY_ID_SIZE:]


def note_key_id(name: str, signature_type: int, public_key: bytes) -> bytes:
    """SHA-256(name || 0x0A || type || public key)[:4], C2SP signed-note's recommended key id.

    Type 0x01 is Ed25519 (32-byte public key). Here so that the signer and every verifier
    derive the id the same way.
    """
    _check_key_name(name)
    if not 0 <= signature_type <= 0xFF:
        raise NoteError(f"signature type {signature_type} is not one byte")
    material = name.encode("utf-8") + b"\n" + bytes([signature_type]) + public_key
    return hashlib.sha256(material).digest()[:KEY_ID_SIZE]


def _check_key_name(name: str) -> None:
    _check_name(name, "key name", NoteError)


def _check_body(body: bytes) -> str:
    text = _decode_utf8(body, "note text", NoteError)
    _check_text(text, "note text", NoteError)
    if not text.endswith("\n"):
        raise NoteError("note text does not end with a newline")
    if text == "\n":
        raise NoteError("note text is empty")
    return text


def note_text(body: bytes, signatures: Sequence[tuple[str, bytes]]) -> bytes:
    """The signed note: `body`, a blank line, then one `— name base64(raw)` line per signature.

    `signatures` are `(key name, key id || signature)` pairs, e.g. `NoteSignature`s.
    """
    text = _check_body(body)
    if not signatures:
        raise NoteError("a signed note needs at least one signature")
    if len(signatures) > MAX_SIGNATURES:
        raise NoteError(f"{len(signatures)} signatures, more than {MAX_SIGNATURES}")
    lines = []
    for name, raw in signatures:
        _check_key_name(name)
        if len(raw) <= KEY_ID_SIZE:
            raise NoteError(f"signature of {name!r} has no bytes after its key id")
        lines.append(f"{SIGNATURE_PREFIX}{name} {base64.b64encode(raw).decode('ascii')}\n")
    return (text + "\n" + "".join(lines)).encode("utf-8")


def split_note(note: bytes) -> tuple[bytes, list[NoteSignature]]:
    """The note text and its signature lines, refusing any note `note_text` would not write.

    The text ends at the *last* blank line (the text itself may contain blank lines); every
    line after it must be a well-formed signature line. Nothing is verified here.
    """
    text = _decode_utf8(note, "note", NoteError)
    _check_text(text, "note", NoteError)
    if not text.endswith("\n"):
        raise NoteError("note does not end with a newline")
    split = text.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no blank line before its signatures")
    body, sig_text = text[: split + 1], text[split + 2 :]
    if not sig_text:
        raise NoteError("note has no signature lines")
    signatures: list[NoteSignature] = []
    for line in sig_text[:-1].split("\n"):
        if not line.startswith(SIGNATURE_PREFIX):
            raise NoteError(f"signature line does not start with an em dash: {line!r}")
        fields = line[len(SIGNATURE_PREFIX) :].split(" ")
        if len(fields) != 2:
            raise NoteError(f"signature line is not '— <name> <signature>': {line!r}")
        name, encoded = fields
        _check_key_name(name)
        raw = _b64decode_canonical(encoded, "signature", NoteError)
        if len(raw) <= KEY_ID_SIZE:
            raise NoteError(f"signature of {name!r} has no bytes after its key id")
        signatures.append(NoteSignature(name, raw))
        if len(signatures) > MAX_SIGNATURES:
            raise NoteError(f"note has more than {MAX_SIGNATURES} signatures")
    _check_body(body.encode("utf-8"))
    return body.encode("utf-8"), signatures


def sign_note(body: bytes, signers: Sequence[Callable[[bytes], NoteSignature]]) -> bytes:
    """`body` signed by each of `signers` (each returns its `NoteSignature` over the body)."""
    _check_body(body)
    return note_text(body, [signer(body) for signer in signers])


Verifier = Callable[[bytes, NoteSignature], bool | None]
"""Given the note text and one signature: True (a known key, valid), False (a known key,
invalid), None (not a key this reader knows)."""


def open_note(note: bytes, verify: Verifier) -> tuple[bytes, list[NoteSignature]]:
    """The note text and the signatures that verified, by C2SP signed-note's rules.

    Signatures from unknown keys are ignored (that is how keys rotate and witnesses add
    co-signatures); one from a known key that fails rejects the whole note; and at least one
    must verify. Which keys are known, and how to verify, is the caller's `verify`.
    """
    body, signatures = split_note(note)
    verified: list[NoteSignature] = []
    for sig in signatures:
        outcome = verify(body, sig)
        if outcome is False:
            raise NoteError(f"signature of {sig.name!r} (key id {sig.key_id.hex()}) is invalid")
        if outcome is True:
            verified.append(sig)
    if not verified:
        raise NoteError("no signature on the note is from a known key")
    return body, verified
