"""Manifests: the archive's commit point and its hash chain.

A batch's data files and artifacts are invisible until its manifest exists. Manifests are
numbered (`manifests/000000000001.json`, ...) and written create-if-absent, so two writers
can never both own a number: the loser re-reads the log and takes the next one. Each
manifest carries the sha256 of its predecessor's exact bytes (`prev_sha256`), like
CloudTrail digest files, so removing, reordering or editing any manifest breaks the chain.

The chain alone only protects the past from the present: whoever can write the bucket can
append a well-chained forgery or re-hash the tail. So a writer holding the signing key
(`SPINE_SIGNING_KEY`) also signs each manifest (a top-level `signature` over the manifest's
canonical bytes without that field) and stamps the archive id (`archive_id`, from the
identity record) into it, and the log keeps an RFC 6962 Merkle tree over the manifests
(leaf data: the 32-byte sha256 of a manifest's stored bytes) whose roots `archive.tlog`
checkpoints. Both fields are omitted when absent, so a manifest written before signing
existed keeps its exact bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from spine_pipeline.archive.layout import MANIFEST_PREFIX, manifest_key, parse_manifest_seq
from spine_pipeline.archive.merkle import MerkleLog, leaf_hash
from spine_pipeline.archive.signing import Signature, SigningError, SigningKey
from spine_pipeline.archive.stores import AlreadyExists, ObjectStore

MANIFEST_FORMAT = "spine-pipeline-manifest/1"


class ManifestError(Exception):
    """A manifest is unreadable or the chain is broken; the message names the object."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_leaf_hash(manifest_sha256: str) -> bytes:
    """The Merkle leaf hash of a manifest: RFC 6962 `leaf_hash` of its 32-byte sha256.

    The one rule for what a leaf is: the writer's tree, `verify`, `prove` and an offline
    proof check all call this, so a proof names a manifest by the hash the chain uses.
    """
    return leaf_hash(bytes.fromhex(manifest_sha256))


@dataclass(frozen=True)
class FileEntry:
    """One data file the batch added."""

    key: str
    table: str
    rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ArtifactEntry:
    """One artifact of one run (the bytes may be shared with other runs)."""

    run_id: str
    artifact_id: str
    sha256: str
    bytes: int
    key: str


@dataclass(frozen=True)
class RunEntry:
    run_id: str
    status: str | None
    dt: str
    terminal_at: str


@dataclass(frozen=True)
class Manifest:
    """A committed (or about to be committed) batch."""

    seq: int
    batch_id: str
    committed_at: str
    prev_sha256: str | None
    schema_version: str
    runs: tuple[RunEntry, ...]
    files: tuple[FileEntry, ...]
    artifacts: tuple[ArtifactEntry, ...]
    writer: dict[str, Any] = field(default_factory=dict)
    archive_id: str | None = None  # the identity record's id; stamped by signing writers
    signature: Signature | None = None  # over `signed_bytes()`; a top-level field when present
    sha256: str | None = None  # of the stored bytes; set when read or written, not serialised

    @property
    def run_ids(self) -> list[str]:
        return [r.run_id for r in self.runs]

    def signed_bytes(self) -> bytes:
        """The bytes a signature covers: the canonical manifest without its `signature`."""
        return replace(self, signature=None).to_bytes()

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {"format": MANIFEST_FORMAT}
        if self.archive_id is not None:
            doc["archive_id"] = self.archive_id
        doc |= {
            "seq": self.seq,
            "batch_id": self.batch_id,
            "committed_at": self.committed_at,
            "prev_sha256": self.prev_sha256,
            "schema_version": self.schema_version,
            "run_count": len(self.runs),
            "runs": [asdict(r) for r in self.runs],
            "files": [asdict(f) for f in self.files],
            "artifacts": [asdict(a) for a in self.artifacts],
            "writer": self.writer,
        }
        if self.signature is not None:
            doc["signature"] = self.signature.to_json()
        return (json.dumps(doc, indent=1, ensure_ascii=False) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, *, key: str) -> Manifest:
        try:
            doc = json.loads(data)
            if doc.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"unknown format {doc.get('format')!r}")
            return cls(
                seq=int(doc["seq"]),
                batch_id=str(doc["batch_id"]),
                committed_at=str(doc["committed_at"]),
                prev_sha256=doc["prev_sha256"],
                schema_version=str(doc["schema_version"]),
                runs=tuple(RunEntry(**r) for r in doc["runs"]),
                files=tuple(FileEntry(**f) for f in doc["files"]),
                artifacts=tuple(ArtifactEntry(**a) for a in doc["artifacts"]),
                writer=dict(doc.get("writer") or {}),
                archive_id=_optional_str(doc, "archive_id"),
                signature=(Signature.from_json(doc["signature"]) if "signature" in doc else None),
                sha256=sha256_hex(data),
            )
        # OverflowError: `"seq": Infinity`; RecursionError: a deeply nested JSON document.
        except (
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            OverflowError,
            RecursionError,
            SigningError,
        ) as exc:
            raise ManifestError(f"{key}: unreadable manifest ({exc})") from None


def _optional_str(doc: dict[str, Any], name: str) -> str | None:
    value = doc.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} is not a string")
    return value


@dataclass
class ManifestLog:
    """The committed manifests of one archive, read incrementally and cached in memory.

    Readers call `refresh()` to pick up manifests committed since; the chain is checked as
    it is read, so a reader never trusts a manifest whose predecessor does not match.
    """

    store: ObjectStore
    manifests: list[Manifest] = field(default_factory=list)
    committed_runs: dict[str, int] = field(default_factory=dict)  # run_id -> seq
    #: RFC 6962 tree over `manifests` in order (leaf i is `manifests[i]`): the log's tree when
    #: the log was read from seq 1, which every writer and `verify` do.
    tree: MerkleLog = field(default_factory=MerkleLog)

    def __post_init__(self) -> None:
        for manifest in self.manifests[self.tree.size :]:
            if manifest.sha256:
                self.tree.append_hash(manifest_leaf_hash(manifest.sha256))

    @property
    def last_seq(self) -> int:
        return self.manifests[-1].seq if self.manifests else 0

    @property
    def last_sha256(self) -> str | None:
        return self.manifests[-1].sha256 if self.manifests else None

    def _read(self, seq: int) -> Manifest | None:
        key = manifest_key(seq)
        if not self.store.exists(key):
            return None
        manifest = Manifest.from_bytes(self.store.get_bytes(key), key=key)
        if manifest.seq != seq:
            raise ManifestError(f"{key}: says seq {manifest.seq}")
        if manifest.prev_sha256 != self.last_sha256:
            raise ManifestError(
                f"{key}: hash chain broken (prev_sha256 {manifest.prev_sha256} does not match "
                f"the previous manifest's sha256 {self.last_sha256})"
            )
        return manifest

    def _add(self, manifest: Manifest) -> None:
        self.manifests.append(manifest)
        assert manifest.sha256 is not None  # set by from_bytes
        self.tree.append_hash(manifest_leaf_hash(manifest.sha256))
        for run_id in manifest.run_ids:
            self.committed_runs.setdefault(run_id, manifest.seq)

    def refresh(self) -> list[Manifest]:
        """Read manifests committed after the last one seen; return the new ones."""
        new: list[Manifest] = []
        if not self.manifests:
            # First read: list once (cheap to resume from), then verify in order.
            seqs = sorted(
                seq
                for info in self.store.list(MANIFEST_PREFIX)
                if (seq := parse_manifest_seq(info.key)) is not None
            )
            for expected, seq in enumerate(seqs, start=1):
                if seq != expected:
                    raise ManifestError(f"{manifest_key(expected)}: missing from the chain")
        while (manifest := self._read(self.last_seq + 1)) is not None:
            self._add(manifest)
            new.append(manifest)
        return new

    def __iter__(self) -> Iterator[Manifest]:
        return iter(self.manifests)

    def commit(
        self,
        draft: Manifest,
        *,
        signing_key: SigningKey | None = None,
        archive_id: str | None = None,
    ) -> Manifest | None:
        """Write `draft` as the next manifest; None if a racing writer took the number.

        With `signing_key`, the manifest carries `archive_id` and a signature over its
        canonical bytes. On None the caller refreshes, checks that none of its runs was
        committed by the winner meanwhile, and tries again with the new
        `last_seq`/`last_sha256`.
        """
        final = Manifest(
            **{
                **{k: getattr(draft, k) for k in draft.__dataclass_fields__},
                "seq": self.last_seq + 1,
                "prev_sha256": self.last_sha256,
                "committed_at": utc_now_iso(),
                "archive_id": archive_id,
                "signature": None,
                "sha256": None,
            }
        )
        if signing_key is not None:
            final = replace(final, signature=signing_key.sign(final.to_bytes()))
        data = final.to_bytes()
        try:
            self.store.put_bytes(manifest_key(final.seq), data, content_type="application/json")
        except AlreadyExists:
            return None
        committed = Manifest.from_bytes(data, key=manifest_key(final.seq))
        self._add(committed)
        return committed


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
