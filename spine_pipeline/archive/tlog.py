"""The archive's transparency log: signed checkpoints of the manifest Merkle tree, and witnesses.

Why: manifests form a hash chain, and signed manifests stop an insider without the key from
forging or re-hashing them, but nothing in the archive alone can show that the *newest*
manifests are still there: deleting the tail leaves a shorter, perfectly valid chain. So,
as Certificate Transparency does, the writer signs a checkpoint ("the log of archive X has
N manifests with RFC 6962 root R", a C2SP signed note) after each commit and hands it to
witnesses kept outside the archive (`SPINE_WITNESS_URI`: another bucket or account, ideally
with S3 Object Lock in compliance mode). A witness only ever takes a checkpoint consistent
with the one it already holds (an RFC 6962 consistency proof), and what it holds is
write-once, so a rolled-back, truncated or forked archive can no longer be made to match
its witnesses: `verify --witness` finds the difference.

This module is the one home of the rules shared by the writer, `verify`, `prove` and the
audit: how a checkpoint is signed and opened (key name = origin, C2SP key id over the raw
Ed25519 key), where checkpoints live (`layout`), what "consistent with a checkpoint" means
(`inconsistency`), and how a manifest's signature is judged (`signature_finding`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from spine_pipeline.archive.checkpoint import (
    ORIGIN_PREFIX,
    Checkpoint,
    CheckpointError,
    NoteError,
    NoteSignature,
    Verifier,
    note_key_id,
    open_note,
    sign_note,
    split_note,
    time_extension,
)
from spine_pipeline.archive.identity import ArchiveIdentity, ensure_identity, read_identity
from spine_pipeline.archive.layout import (
    CHECKPOINT_PREFIX,
    IDENTITY_KEY,
    checkpoint_key,
    manifest_key,
    parse_checkpoint_size,
    parse_witness_size,
    witness_checkpoint_key,
    witness_prefix,
)
from spine_pipeline.archive.manifest import Manifest, ManifestLog
from spine_pipeline.archive.merkle import MerkleLog, verify_consistency
from spine_pipeline.archive.signing import Signature, SigningError, SigningKey, VerifyKeys
from spine_pipeline.archive.stores import AlreadyExists, ObjectStore, StoreError, open_store

log = logging.getLogger(__name__)

#: C2SP signed-note signature type of Ed25519.
ED25519_NOTE_TYPE = 0x01
#: How far back a writer probes for its newest checkpoint before checking every signature.
MAX_TAIL_PROBES = 32
#: A checkpoint note is well under 1 KiB; anything much larger at a checkpoint key is not one.
MAX_NOTE_BYTES = 64 * 1024


class LogConsistencyError(Exception):
    """The archive's log contradicts a checkpoint (its own or a witness's): one line.

    Raised by writers before they add anything to a log that a witness says was rolled back
    or forked; `verify` reports the same conditions as findings instead.
    """


# ----------------------------------------------------------------------------- signing notes


def note_signer(key: SigningKey, origin: str) -> Callable[[bytes], NoteSignature]:
    """Signs a note as the log `origin` (C2SP: the log's key name is its origin)."""
    kid = note_key_id(origin, ED25519_NOTE_TYPE, key.public_raw)

    def sign(body: bytes) -> NoteSignature:
        return NoteSignature(origin, kid + key.sign(body).sig)

    return sign


def note_verifier(keys: VerifyKeys, origin: str) -> Verifier:
    """True/False for a signature by one of `keys` as the log `origin`; None for any other."""
    by_note_id = {
        note_key_id(origin, ED25519_NOTE_TYPE, raw): kid
        for kid, raw in keys.raw_public_keys().items()
    }

    def verify(body: bytes, sig: NoteSignature) -> bool | None:
        kid = by_note_id.get(sig.key_id)
        if sig.name != origin or kid is None:
            return None
        try:
            return keys.verify(body, Signature(kid, sig.signature))
        except SigningError:  # a signature of the wrong length
            return False

    return verify


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint and the note it came in; `key_ids` are the keys that verified it (our
    16-hex key ids), empty when it was read without verify keys."""

    checkpoint: Checkpoint
    note: bytes
    key_ids: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return self.checkpoint.size

    @property
    def root(self) -> bytes:
        return self.checkpoint.root

    def to_json(self) -> dict[str, object]:
        """What metadata, `prove` and reports show of a checkpoint."""
        when = self.checkpoint.time
        return {
            "origin": self.checkpoint.origin,
            "size": self.size,
            "root": self.root.hex(),
            "time": when.strftime("%Y-%m-%dT%H:%M:%SZ") if when else None,
            "key_ids": list(self.key_ids),
            "note": self.note.decode("utf-8"),
        }


def sign_checkpoint(
    key: SigningKey, origin: str, tree: MerkleLog, *, now: datetime | None = None
) -> SignedCheckpoint:
    """The signed checkpoint of `tree` as it is now."""
    checkpoint = Checkpoint(
        origin, tree.size, tree.root(), (time_extension(now or datetime.now(UTC)),)
    )
    note = sign_note(checkpoint.body(), [note_signer(key, origin)])
    return SignedCheckpoint(checkpoint, note, (key.key_id,))


def open_checkpoint(
    note: bytes, *, origin: str, keys: VerifyKeys | None, where: str
) -> SignedCheckpoint:
    """Parse (and with `keys`, verify) a checkpoint note of the log `origin`.

    Without keys only the format and the origin are checked: the caller must say so in
    what it reports. Raises `CheckpointError` (one line, naming `where`).
    """
    try:
        if keys is None:
            body, _ = split_note(note)
            verified: list[NoteSignature] = []
        else:
            body, verified = open_note(note, note_verifier(keys, origin))
        checkpoint = Checkpoint.parse(body)
    except (NoteError, CheckpointError) as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    if checkpoint.origin != origin:
        raise CheckpointError(
            f"{where}: checkpoint of log {checkpoint.origin!r}, not of this archive ({origin!r})"
        )
    ids = _verified_key_ids(keys, origin, verified) if keys is not None else ()
    return SignedCheckpoint(checkpoint, note, ids)


def _verified_key_ids(
    keys: VerifyKeys, origin: str, verified: Sequence[NoteSignature]
) -> tuple[str, ...]:
    by_note_id = {
        note_key_id(origin, ED25519_NOTE_TYPE, raw): kid
        for kid, raw in keys.raw_public_keys().items()
    }
    return tuple(by_note_id[s.key_id] for s in verified if s.key_id in by_note_id)


def read_note(store: ObjectStore, key: str) -> bytes:
    """A checkpoint note's bytes, refusing anything too large to be one."""
    with store.open_read(key) as f:
        data = f.read(MAX_NOTE_BYTES + 1)
    if len(data) > MAX_NOTE_BYTES:
        raise CheckpointError(f"{key}: larger than {MAX_NOTE_BYTES} bytes, not a checkpoint")
    return data


# ----------------------------------------------------------------------------- consistency


def inconsistency(tree: MerkleLog, checkpoint: Checkpoint) -> str | None:
    """Why the log `tree` contradicts `checkpoint`, or None when the checkpoint is one of its
    states (same root at that size: the checkpointed log is a prefix of this one).

    The two ways to contradict a signed checkpoint are the two attacks it exists to catch:
    a checkpoint larger than the log is a rollback or truncation; a different root at the
    same size is a rewritten or forked history.
    """
    if checkpoint.size > tree.size:
        return (
            f"rollback: a checkpoint says the log had {checkpoint.size} manifests, "
            f"the archive has {tree.size}"
        )
    if tree.root(checkpoint.size) != checkpoint.root:
        return (
            f"fork: the archive's first {checkpoint.size} manifests have root "
            f"{tree.root(checkpoint.size).hex()}, the checkpoint says {checkpoint.root.hex()}"
        )
    return None


def signature_finding(manifest: Manifest, keys: VerifyKeys) -> str | None:
    """What is wrong with `manifest`'s signature under `keys`, or None when it verifies."""
    if manifest.signature is None:
        return "unsigned"
    if manifest.signature.key_id not in keys:
        return f"signed by unknown key id {manifest.signature.key_id}"
    if not keys.verify(manifest.signed_bytes(), manifest.signature):
        return f"bad signature (key id {manifest.signature.key_id})"
    return None


# ----------------------------------------------------------------------------- archive side


def archive_checkpoints(store: ObjectStore) -> list[tuple[int, str]]:
    """(size, key) of every checkpoint stored in the archive, smallest first."""
    found = [
        (size, info.key)
        for info in store.list(CHECKPOINT_PREFIX)
        if (size := parse_checkpoint_size(info.key)) is not None
    ]
    return sorted(found)


# ----------------------------------------------------------------------------- witnesses


class Witness:
    """A store outside the archive that keeps signed checkpoints, write-once, per log.

    A witness is storage plus a rule, applied by whoever writes to it: a checkpoint is added
    only if the log it comes from is consistent with the newest checkpoint the witness
    already holds. Its checkpoints are never overwritten (create-if-absent; Object Lock in
    compliance mode makes that hold against the bucket's owner too).
    """

    def __init__(self, store: ObjectStore, uri: str) -> None:
        self.store = store
        self.uri = uri

    @classmethod
    def open(cls, uri: str, *, must_exist: bool = False) -> Witness:
        """The witness at `uri`; with `must_exist`, a local path that is not an existing
        directory is refused (a reader given a mistyped path must not create an empty
        witness and report that it "holds nothing")."""
        if must_exist and ("://" not in uri or uri.lower().startswith("file://")):
            path = Path(uri[len("file://") :] if uri.lower().startswith("file://") else uri)
            if not path.expanduser().is_dir():
                raise StoreError(f"witness {uri!r}: no such directory")
        return cls(open_store(uri), uri)

    def origins(self) -> set[str]:
        """The logs this witness holds checkpoints of (their origins)."""
        found = set()
        for info in self.store.list(ORIGIN_PREFIX):
            origin = info.key.rpartition("/")[0]
            if parse_witness_size(origin, info.key) is not None:
                found.add(origin)
        return found

    def checkpoints(self, origin: str) -> list[tuple[int, str]]:
        """(size, key) of every checkpoint this witness holds for `origin`, smallest first."""
        found = [
            (size, info.key)
            for info in self.store.list(witness_prefix(origin))
            if (size := parse_witness_size(origin, info.key)) is not None
        ]
        return sorted(found)

    def newest(self, origin: str, keys: VerifyKeys | None = None) -> SignedCheckpoint | None:
        """The newest checkpoint held for `origin` (verified when `keys` are given)."""
        held = self.checkpoints(origin)
        if not held:
            return None
        size, key = held[-1]
        return self._read(origin, size, key, keys)

    def _read(self, origin: str, size: int, key: str, keys: VerifyKeys | None) -> SignedCheckpoint:
        """The checkpoint at `key`; refused (one line naming this witness) unless it is a
        checkpoint of `origin` at the size its name says: one stored under a larger name
        would otherwise pass for a state the witness never saw."""
        where = f"witness {self.uri}: {key}"
        try:
            note = read_note(self.store, key)
        except CheckpointError as exc:
            raise CheckpointError(f"witness {self.uri}: {exc}") from None
        signed = open_checkpoint(note, origin=origin, keys=keys, where=where)
        if signed.size != size:
            raise CheckpointError(f"{where}: holds a checkpoint of size {signed.size}")
        return signed

    def offer(self, signed: SignedCheckpoint, tree: MerkleLog) -> bool:
        """Add `signed` (a checkpoint of `tree`) if consistent with what this witness holds.

        True when added, False when the witness already holds that size (same root) or a
        larger one. Raises `LogConsistencyError` when `tree` contradicts the witness's newest
        checkpoint of at most `tree`'s size: the archive was forked since the witness saw it.

        A witness checkpoint larger than `tree` is not judged here: it was read after `tree`,
        so a racing writer may simply have committed and witnessed more meanwhile. Rollbacks
        are caught by reading the witnesses *before* the log (`LogPublisher.publish`).
        """
        origin = signed.checkpoint.origin
        # Read by format only: what the witness holds is trusted by where it is (another
        # account, write-once), and a checkpoint signed before a key rotation is still a state.
        held = self.newest(origin)
        if held is not None:
            if held.size > tree.size:
                return False  # a racing writer already witnessed a later size
            problem = inconsistency(tree, held.checkpoint)
            if problem is not None:
                raise LogConsistencyError(f"witness {self.uri}: {problem}")
            if held.size > signed.size:
                return False  # a racing writer already witnessed a later size
            proof = tree.consistency_proof(held.size, signed.size)
            if not verify_consistency(held.size, signed.size, held.root, signed.root, proof):
                raise LogConsistencyError(
                    f"witness {self.uri}: no consistency proof from size {held.size} "
                    f"to {signed.size}"
                )
            if held.size == signed.size:
                return False
        key = witness_checkpoint_key(origin, signed.size)
        try:
            self.store.put_bytes(key, signed.note, content_type="text/plain; charset=utf-8")
        except AlreadyExists:
            other = self._read(origin, signed.size, key, None)
            if other.root != signed.root:
                raise LogConsistencyError(
                    f"witness {self.uri}: {key} holds another root for size {signed.size}: fork"
                ) from None
            return False
        return True


# ----------------------------------------------------------------------------- the writer


@dataclass
class LogPublisher:
    """What a signing writer adds to a commit: signed manifests, a checkpoint, witnesses.

    One per archive writer. `identity()` creates the identity record on first use (the
    archive id that signed manifests and checkpoints name).
    """

    store: ObjectStore
    key: SigningKey
    witnesses: tuple[Witness, ...] = ()
    #: Other keys whose manifests this writer accepts into a checkpoint (a rotation with
    #: writers on both keys at once: `SPINE_VERIFY_KEY`); its own key is always accepted.
    accepted: VerifyKeys | None = None
    #: The Spine the writer archives (`identity.spine_of`): named by a record it creates,
    #: checked against an existing one. Set by the archiver once it knows its client.
    spine: str | None = None
    _identity: ArchiveIdentity | None = None

    @classmethod
    def from_settings(
        cls,
        store: ObjectStore,
        signing_key: str | None,
        witness_uris: Sequence[str],
        verify_key: str | None = None,
    ) -> LogPublisher | None:
        """The publisher the settings ask for; None when there is no signing key.

        Witnesses without a signing key are refused: an unsigned checkpoint means nothing,
        and silently not witnessing would leave rollbacks undetected.
        """
        if signing_key is None:
            if witness_uris:
                raise SigningError(
                    "SPINE_WITNESS_URI needs SPINE_SIGNING_KEY: only signed checkpoints "
                    "are witnessed"
                )
            return None
        key = SigningKey.load(signing_key, what="SPINE_SIGNING_KEY")
        accepted = VerifyKeys.load(verify_key, what="SPINE_VERIFY_KEY") if verify_key else None
        return cls(store, key, tuple(Witness.open(uri) for uri in witness_uris), accepted)

    def identity(self) -> ArchiveIdentity:
        if self._identity is None:
            self._identity = ensure_identity(self.store, spine=self.spine)
        return self._identity

    @property
    def origin(self) -> str:
        return self.identity().origin

    def log_identity(self, manifests: ManifestLog) -> ArchiveIdentity:
        """The identity record, checked against the archive id the log's manifests carry.

        Why: witnesses remember the log under the origin the record gives, so an insider who
        rolls back the tail and deletes or replaces the record (and the archive's
        checkpoints) would otherwise have the writer carry on as a new log no witness has
        heard of. A record is only created for a log whose manifests name no archive yet (a
        new archive, or one written before signing). `LogConsistencyError` otherwise.
        """
        named = [m for m in manifests if m.archive_id is not None]
        if self._identity is None and named and read_identity(self.store) is None:
            first = named[0]
            raise LogConsistencyError(
                f"{IDENTITY_KEY} is missing, but {manifest_key(first.seq)} names archive "
                f"{first.archive_id}: restore the identity record"
            )
        identity = self.identity()
        for m in named:
            if m.archive_id != identity.archive_id:
                raise LogConsistencyError(
                    f"{IDENTITY_KEY} names archive {identity.archive_id}, but "
                    f"{manifest_key(m.seq)} names archive {m.archive_id}: the identity record "
                    "was replaced, or the manifest is not this archive's"
                )
        return identity

    def _check_signatures(self, manifests: ManifestLog) -> None:
        """Refuse to checkpoint a forgery: a writer's checkpoint vouches for every manifest
        it covers, and a witness keeps it forever.

        After the first signed manifest every manifest must carry a signature (a field
        check, no cryptography); those not yet covered by a checkpoint (found by probing
        back from the newest size, usually one probe) must verify under this writer's key
        or an accepted one. Older ones were vouched for by an earlier checkpoint, which
        `verify` checks, so each batch costs a few signature checks, not the whole log.
        """
        listed = manifests.manifests
        first = next((i for i, m in enumerate(listed) if m.signature is not None), None)
        if first is None:
            return  # a log never signed: the first checkpoint covers it as it is
        for m in listed[first:]:
            if m.signature is None:
                raise LogConsistencyError(
                    f"{manifest_key(m.seq)}: unsigned, after signed manifests: refusing to "
                    "checkpoint it (a forgery? run verify)"
                )
        keys = VerifyKeys(
            [self.key.public_key, *(self.accepted.public_keys() if self.accepted else ())]
        )
        for m in listed[max(first, self._checkpointed_size(len(listed))) :]:
            finding = signature_finding(m, keys)
            if finding is not None:
                raise LogConsistencyError(
                    f"{manifest_key(m.seq)}: {finding}: refusing to checkpoint it (a forgery, "
                    "or a writer's key missing from SPINE_VERIFY_KEY; run verify)"
                )

    def _checkpointed_size(self, size: int) -> int:
        """The largest size <= `size` with a checkpoint in the archive, probing back at most
        `MAX_TAIL_PROBES` sizes (0 when none is that close: the whole log is checked)."""
        for probe in range(size, max(0, size - MAX_TAIL_PROBES), -1):
            if self.store.exists(checkpoint_key(probe)):
                return probe
        return 0

    def needs_checkpoint(self, manifests: ManifestLog) -> bool:
        """Whether the log's newest size has no checkpoint yet (a crash after a commit, or an
        archive that began unsigned)."""
        size = manifests.tree.size
        return size > 0 and not self.store.exists(checkpoint_key(size))

    def publish(
        self, manifests: ManifestLog, *, now: datetime | None = None
    ) -> SignedCheckpoint | None:
        """Checkpoint the log as it is now (after catching up) and hand it to every witness.

        Checking before writing: the identity record must be the one the log's manifests
        name (`log_identity`) and every witness's newest checkpoint must be a state of this
        log, else `LogConsistencyError` and nothing is written. None for an empty log.

        The witnesses are read before the log: a witness only ever holds checkpoints of
        committed manifests, so a log read afterwards has all of them, however many writers
        race this one. Read the other way round, a racing writer's commit and checkpoint
        landing in between would look exactly like a rollback.
        """
        origin = self.log_identity(manifests).origin
        held = [w.newest(origin) for w in self.witnesses]
        manifests.refresh()
        tree = manifests.tree
        for witness, checkpoint in zip(self.witnesses, held, strict=True):
            if checkpoint is not None and (problem := inconsistency(tree, checkpoint.checkpoint)):
                raise LogConsistencyError(f"witness {witness.uri}: {problem}")
        if tree.size == 0:
            return None  # nothing to checkpoint (and no witness holds more: checked above)
        self._check_signatures(manifests)
        signed = sign_checkpoint(self.key, origin, tree, now=now)
        key = checkpoint_key(tree.size)
        try:
            self.store.put_bytes(key, signed.note, content_type="text/plain; charset=utf-8")
        except AlreadyExists:
            # A racing writer checkpointed this size first: theirs must say the same root.
            # (Opened without our key: a rotated-out key's checkpoint is still a state.)
            theirs = open_checkpoint(
                read_note(self.store, key), origin=origin, keys=None, where=key
            )
            if theirs.root != signed.root:
                raise LogConsistencyError(
                    f"{key}: another root for size {tree.size} is already checkpointed: fork"
                ) from None
        for witness in self.witnesses:
            witness.offer(signed, tree)
        return signed
