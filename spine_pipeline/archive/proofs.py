"""Run proofs: evidence that a run is in the archive's signed log, checkable without the archive.

Why: `verify` needs the whole archive and trusts whoever runs it. An auditor, a customer or a
court gets only a file, and should be able to check it with nothing but the public key. A
run proof is that file: the exact bytes of the manifest that committed the run (signed, and
naming the archive), its RFC 6962 inclusion proof, and the signed checkpoint the proof leads
to. Checking it (`check_run_proof`) shows, offline, that the holder of the signing key
signed that manifest *and* signed a log state that contains it at that position, so the
manifest cannot have been slipped in, edited or dropped from the history without one of
the signatures breaking. The checkpoint's origin is derived from the archive id inside the
signed manifest, so a proof cannot be replayed against another archive's log.

Everything about leaves, checkpoints and signatures comes from `manifest` (the leaf rule),
`merkle` (RFC 6962) and `tlog` (opening checkpoints, judging signatures): a proof is checked
by the same rules the writer and `verify` use.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from spine_pipeline.archive.checkpoint import CheckpointError, origin_for
from spine_pipeline.archive.identity import read_identity
from spine_pipeline.archive.layout import manifest_key
from spine_pipeline.archive.manifest import (
    Manifest,
    ManifestError,
    ManifestLog,
    manifest_leaf_hash,
    sha256_hex,
)
from spine_pipeline.archive.merkle import HASH_SIZE, verify_inclusion
from spine_pipeline.archive.signing import VerifyKeys
from spine_pipeline.archive.stores import ObjectStore
from spine_pipeline.archive.tlog import (
    MAX_NOTE_BYTES,
    SignedCheckpoint,
    archive_checkpoints,
    inconsistency,
    open_checkpoint,
    read_note,
    signature_finding,
)

PROOF_FORMAT = "spine-pipeline-proof/1"
#: RFC 6962 trees have at most 2**64 leaves, so no inclusion proof is longer than 64 hashes.
MAX_PROOF_HASHES = 64
#: Far above any real manifest (a batch of runs' file lists); bounds what a proof file may make
#: the checker hash and parse.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
#: A proof document is its manifest, a note and a few hashes; more than this is not one.
MAX_PROOF_FILE_BYTES = 2 * MAX_MANIFEST_BYTES
#: Run ids and manifest keys are short; a longer string in a proof is garbage.
MAX_NAME_CHARS = 1024
_MAX_UINT64 = (1 << 64) - 1
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_KEY_ID = re.compile(r"[0-9a-f]{16}")
_FIELDS = frozenset(
    {"format", "run_id", "manifest", "leaf_index", "tree_size", "inclusion_proof", "checkpoint"}
)
_MANIFEST_FIELDS = frozenset({"key", "seq", "sha256", "text"})

NOT_SIGNED = "the archive is not signed: set SPINE_SIGNING_KEY; the next batch checkpoints the log"


class ProofError(ValueError):
    """A proof cannot be made, or a proof document is malformed (one line)."""


@dataclass(frozen=True)
class RunProof:
    """That run `run_id` was committed by manifest `seq`, leaf `leaf_index` of the log whose
    signed checkpoint of size `tree_size` is `checkpoint`.

    `manifest_bytes` are the manifest's exact stored bytes (its sha256 is the leaf);
    `manifest_sha256` is kept as stated so that a proof read from JSON is checked, not
    silently recomputed. `checkpoint.key_ids` are the keys the prover verified the note with
    (empty without keys): informative only, `check_run_proof` verifies the note itself.
    """

    run_id: str
    manifest_key: str
    seq: int
    manifest_bytes: bytes
    manifest_sha256: str
    leaf_index: int
    tree_size: int
    inclusion_proof: tuple[bytes, ...]
    checkpoint: SignedCheckpoint

    @property
    def note(self) -> bytes:
        """The signed checkpoint note, as stored in the archive."""
        return self.checkpoint.note

    def to_json(self) -> dict[str, Any]:
        """The proof document (format `spine-pipeline-proof/1`); `from_json` reads it back."""
        return {
            "format": PROOF_FORMAT,
            "run_id": self.run_id,
            "manifest": {
                "key": self.manifest_key,
                "seq": self.seq,
                "sha256": self.manifest_sha256,
                "text": self.manifest_bytes.decode("utf-8"),
            },
            "leaf_index": self.leaf_index,
            "tree_size": self.tree_size,
            "inclusion_proof": [h.hex() for h in self.inclusion_proof],
            "checkpoint": self.checkpoint.to_json(),
        }

    @classmethod
    def from_json(cls, doc: object) -> RunProof:
        """Read a proof document strictly: exactly the fields `to_json` writes, bounded sizes,
        canonical hex, and checkpoint fields that say what its note says.

        Only the shape is checked here; whether the proof holds is `check_run_proof`'s job.
        """
        top = _object(doc, "proof", _FIELDS)
        if top["format"] != PROOF_FORMAT:
            raise ProofError(f"proof: format is {top['format']!r:.60}, not {PROOF_FORMAT!r}")
        manifest = _object(top["manifest"], "proof manifest", _MANIFEST_FIELDS)
        sha = manifest["sha256"]
        if not isinstance(sha, str) or not _SHA256_HEX.fullmatch(sha):
            raise ProofError("proof manifest: sha256 is not 64 lower-case hex digits")
        hashes = top["inclusion_proof"]
        if not isinstance(hashes, list):
            raise ProofError("proof: inclusion_proof is not a list")
        if len(hashes) > MAX_PROOF_HASHES:
            raise ProofError(
                f"proof: inclusion_proof has {len(hashes)} hashes, more than {MAX_PROOF_HASHES}"
            )
        return cls(
            run_id=_name(top["run_id"], "proof: run_id"),
            manifest_key=_name(manifest["key"], "proof manifest: key"),
            seq=_uint(manifest["seq"], "proof manifest: seq"),
            manifest_bytes=_utf8(manifest["text"], "proof manifest: text", MAX_MANIFEST_BYTES),
            manifest_sha256=sha,
            leaf_index=_uint(top["leaf_index"], "proof: leaf_index"),
            tree_size=_uint(top["tree_size"], "proof: tree_size"),
            inclusion_proof=tuple(_hash(h, n) for n, h in enumerate(hashes)),
            checkpoint=_checkpoint(top["checkpoint"]),
        )


def load_proof(data: bytes) -> RunProof:
    """A proof from the bytes of a proof file (what `prove` prints)."""
    if len(data) > MAX_PROOF_FILE_BYTES:
        raise ProofError(f"proof: larger than {MAX_PROOF_FILE_BYTES} bytes, not a proof")
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ProofError(f"proof: not JSON ({_line(exc)})") from None
    return RunProof.from_json(doc)


# ----------------------------------------------------------------------------- reading JSON


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _object(value: object, what: str, fields: frozenset[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProofError(f"{what}: not a JSON object")
    missing, unknown = fields - value.keys(), value.keys() - fields
    if missing:
        raise ProofError(f"{what}: missing {', '.join(sorted(missing))}")
    if unknown:
        raise ProofError(f"{what}: unknown field(s) {', '.join(sorted(map(str, unknown)))[:200]}")
    return value


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_CHARS:
        raise ProofError(f"{what} is not a string of 1 to {MAX_NAME_CHARS} characters")
    return value


def _uint(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_UINT64:
        raise ProofError(f"{what} is not an integer in 0..2**64-1")
    return value


def _utf8(value: object, what: str, limit: int) -> bytes:
    if not isinstance(value, str):
        raise ProofError(f"{what} is not a string")
    if len(value) > limit:  # every character is at least one byte
        raise ProofError(f"{what} is larger than {limit} bytes")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape
        raise ProofError(f"{what} is not valid Unicode") from None
    if len(data) > limit:
        raise ProofError(f"{what} is larger than {limit} bytes")
    return data


def _hash(value: object, n: int) -> bytes:
    if not isinstance(value, str) or not _SHA256_HEX.fullmatch(value):
        raise ProofError(
            f"proof: inclusion_proof[{n}] is not {HASH_SIZE * 2} lower-case hex digits"
        )
    return bytes.fromhex(value)


def _checkpoint(value: object) -> SignedCheckpoint:
    """The checkpoint from its note; the other fields must be exactly what the note says.

    Opened without keys (this is parsing; `check_run_proof` verifies), under the origin the
    document states, which `check_run_proof` compares with the manifest's archive.
    """
    if not isinstance(value, dict):
        raise ProofError("proof checkpoint: not a JSON object")
    origin, key_ids = value.get("origin"), value.get("key_ids")
    if not isinstance(origin, str):
        raise ProofError("proof checkpoint: origin is not a string")
    if (
        not isinstance(key_ids, list)
        or len(key_ids) > MAX_PROOF_HASHES
        or not all(isinstance(k, str) and _KEY_ID.fullmatch(k) for k in key_ids)
    ):
        raise ProofError("proof checkpoint: key_ids is not a list of 16-hex-digit key ids")
    note = _utf8(value.get("note"), "proof checkpoint: note", MAX_NOTE_BYTES)
    try:
        opened = open_checkpoint(note, origin=origin, keys=None, where="proof checkpoint")
    except CheckpointError as exc:
        raise ProofError(_line(exc)) from None
    signed = SignedCheckpoint(opened.checkpoint, note, tuple(key_ids))
    if signed.to_json() != value:
        raise ProofError("proof checkpoint: its fields do not match its note")
    return signed


# ----------------------------------------------------------------------------- making proofs


def _open_checkpoint(
    note: bytes, origin: str, keys: VerifyKeys | None, where: str
) -> SignedCheckpoint:
    """`tlog.open_checkpoint`, format and origin first: the note's key name is its origin, so
    a checkpoint of another log would otherwise only say that no signature is from a known
    key, hiding the plainer reason."""
    opened = open_checkpoint(note, origin=origin, keys=None, where=where)
    return opened if keys is None else open_checkpoint(note, origin=origin, keys=keys, where=where)


def prove_run(store: ObjectStore, run_id: str, *, keys: VerifyKeys | None = None) -> RunProof:
    """The proof that `run_id` is in the archive's log, against its newest signed checkpoint.

    The checkpoint must be a state of the log as read now (`tlog.inconsistency`): a proof
    against a checkpoint the archive contradicts would certify a history that is gone. With
    `keys`, the checkpoint is opened with them and the finished proof is checked
    (`check_run_proof`), so what is returned is known to check; without, only its format
    is. Raises `ProofError` (one line) when no such proof exists.
    """
    manifests = ManifestLog(store)
    manifests.refresh()
    seq = manifests.committed_runs.get(run_id)
    if seq is None:
        raise ProofError(f"run {run_id!r:.80} is not archived: no manifest commits it")
    manifest = manifests.manifests[seq - 1]
    key = manifest_key(seq)
    identity = read_identity(store)
    checkpoints = archive_checkpoints(store)
    if identity is None or not checkpoints:
        raise ProofError(NOT_SIGNED)
    size, note_key = checkpoints[-1]  # the newest: if it does not cover the manifest, none does
    if size < seq:
        raise ProofError(
            f"no signed checkpoint covers {key} yet (the newest is of size {size}): "
            "the next batch with SPINE_SIGNING_KEY set checkpoints the log"
        )
    if manifest.signature is None:
        raise ProofError(
            f"{key} is unsigned (committed before SPINE_SIGNING_KEY was set): its runs "
            "cannot be proven"
        )
    if manifest.archive_id != identity.archive_id:
        raise ProofError(
            f"{key} names archive {manifest.archive_id!r:.40}, the identity record "
            f"{identity.archive_id!r}"
        )
    data = store.get_bytes(key)
    if len(data) > MAX_MANIFEST_BYTES:
        raise ProofError(f"{key} is larger than {MAX_MANIFEST_BYTES} bytes: no proof carries it")
    if sha256_hex(data) != manifest.sha256:
        raise ProofError(f"{key} changed while it was being read")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProofError(f"{key} is not UTF-8") from None
    try:
        signed = _open_checkpoint(read_note(store, note_key), identity.origin, keys, note_key)
    except CheckpointError as exc:
        raise ProofError(_line(exc)) from None
    if signed.size != size:
        raise ProofError(f"{note_key}: says size {signed.size}")
    problem = inconsistency(manifests.tree, signed.checkpoint)
    if problem is not None:
        raise ProofError(f"{note_key}: {problem}")
    assert manifest.sha256 is not None  # set when read
    proof = RunProof(
        run_id=run_id,
        manifest_key=key,
        seq=seq,
        manifest_bytes=data,
        manifest_sha256=manifest.sha256,
        leaf_index=seq - 1,
        tree_size=size,
        inclusion_proof=tuple(manifests.tree.inclusion_proof(seq - 1, size)),
        checkpoint=signed,
    )
    if keys is not None:
        check = check_run_proof(proof, keys)
        if not check.ok:
            raise ProofError(f"the proof of run {run_id!r:.80} does not check: {check.reason}")
    return proof


# ----------------------------------------------------------------------------- checking proofs


@dataclass(frozen=True)
class ProofCheck:
    """The outcome of `check_run_proof`: `ok`, else `reason`, one line, for the first failure.

    `checkpoint` is the checkpoint as verified (its `key_ids` are the keys that signed it);
    `manifest` the parsed manifest. Both are None when the check failed before them.
    """

    ok: bool
    reason: str | None = None
    manifest: Manifest | None = None
    checkpoint: SignedCheckpoint | None = None


def _failed(reason: str) -> ProofCheck:
    return ProofCheck(False, reason)


def check_run_proof(proof: RunProof, keys: VerifyKeys) -> ProofCheck:
    """Check `proof` offline against `keys` (the archive's public keys); no store is read.

    Returns a `ProofCheck` rather than raising, so that a caller checking many proofs (an
    evidence bundle) reports each one's reason; it never raises for a bad proof. In order:
    the manifest text is the one the proof names (sha256), parses, commits the run, sits at
    seq = leaf index + 1, and is signed by one of `keys`; the checkpoint note is signed by one
    of `keys` as the log of the manifest's archive (origin from the signed `archive_id`) and
    is of size `tree_size`; the inclusion proof leads from the manifest's leaf to that root.
    """
    if sha256_hex(proof.manifest_bytes) != proof.manifest_sha256:
        return _failed(
            f"{proof.manifest_key:.80}: the manifest text's sha256 is "
            f"{sha256_hex(proof.manifest_bytes)}, the proof says {proof.manifest_sha256}"
        )
    try:
        manifest = Manifest.from_bytes(proof.manifest_bytes, key=proof.manifest_key)
    except ManifestError as exc:
        return _failed(_line(exc))
    where = manifest_key(manifest.seq)
    if proof.run_id not in manifest.run_ids:
        return _failed(f"{where} does not commit run {proof.run_id!r:.80}")
    if proof.manifest_key != where or proof.seq != manifest.seq:
        return _failed(f"{where}: the proof says it is {proof.manifest_key!r:.80}, seq {proof.seq}")
    if proof.leaf_index != manifest.seq - 1:
        return _failed(f"{where} is leaf {manifest.seq - 1}, the proof says {proof.leaf_index}")
    finding = signature_finding(manifest, keys)
    if finding is not None:
        return _failed(f"{where}: {finding}")
    if manifest.archive_id is None:
        return _failed(f"{where} names no archive")
    try:
        signed = _open_checkpoint(proof.note, origin_for(manifest.archive_id), keys, "checkpoint")
    except CheckpointError as exc:
        return _failed(_line(exc))
    if signed.size != proof.tree_size:
        return _failed(
            f"checkpoint is of size {signed.size}, the proof is for size {proof.tree_size}"
        )
    leaf = manifest_leaf_hash(proof.manifest_sha256)
    if not verify_inclusion(
        leaf, proof.leaf_index, proof.tree_size, proof.inclusion_proof, signed.root
    ):
        return _failed(
            f"{where}: the inclusion proof does not lead to the checkpoint's root "
            f"{signed.root.hex()} (size {signed.size})"
        )
    return ProofCheck(True, None, manifest, signed)
