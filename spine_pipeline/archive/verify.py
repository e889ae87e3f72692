"""Re-check the whole archive: the manifest chain, every file hash, every artifact hash.

Reports every problem instead of stopping at the first, so an auditor sees the full extent
of a tampering or a loss: a changed byte (hash mismatch), a missing object, an object no
manifest lists, a manifest out of sequence or with a broken `prev_sha256`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from spine_pipeline.archive.layout import (
    CHAINED_PREFIXES,
    MANIFEST_PREFIX,
    manifest_key,
    parse_manifest_seq,
)
from spine_pipeline.archive.manifest import Manifest, ManifestError
from spine_pipeline.archive.stores import ObjectStore

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Problem:
    kind: str  # hash_mismatch | size_mismatch | missing | unlisted | chain | unreadable
    key: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.key}: {self.detail}"


@dataclass
class VerifyReport:
    manifests: int = 0
    files: int = 0
    artifacts: int = 0
    bytes_hashed: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _hash_object(store: ObjectStore, key: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with store.open_read(key) as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _check(
    store: ObjectStore, report: VerifyReport, key: str, sha256: str, size: int, existing: set[str]
) -> None:
    if key not in existing:
        report.problems.append(Problem("missing", key, "listed by a manifest but not stored"))
        return
    actual, actual_size = _hash_object(store, key)
    report.bytes_hashed += actual_size
    if actual_size != size:
        report.problems.append(
            Problem("size_mismatch", key, f"manifest says {size} bytes, stored {actual_size}")
        )
    if actual != sha256:
        report.problems.append(
            Problem("hash_mismatch", key, f"manifest sha256 {sha256}, stored {actual}")
        )


def verify_archive(store: ObjectStore) -> VerifyReport:
    """Verify everything under the archive root; `report.ok` is False on any problem."""
    report = VerifyReport()
    existing = {info.key for prefix in CHAINED_PREFIXES for info in store.list(prefix)}
    manifest_seqs = []
    for key in sorted(k for k in existing if k.startswith(MANIFEST_PREFIX)):
        seq = parse_manifest_seq(key)
        if seq is None:
            report.problems.append(Problem("unlisted", key, "not a manifest name"))
        else:
            manifest_seqs.append(seq)
    listed: set[str] = set()
    prev_sha: str | None = None
    expected_seq = 1
    for seq in sorted(manifest_seqs):
        key = manifest_key(seq)
        listed.add(key)
        if seq != expected_seq:
            for missing in range(expected_seq, seq):
                report.problems.append(Problem("missing", manifest_key(missing), "gap in chain"))
        expected_seq = seq + 1
        data = store.get_bytes(key)
        try:
            manifest = Manifest.from_bytes(data, key=key)
        except ManifestError as exc:
            report.problems.append(Problem("unreadable", key, str(exc)))
            prev_sha = hashlib.sha256(data).hexdigest()
            continue
        report.manifests += 1
        if manifest.to_bytes() != data:
            # Every manifest is written in one canonical form, so any changed byte shows,
            # even one that keeps the JSON meaning (the newest manifest has no successor
            # whose prev_sha256 would catch it).
            report.problems.append(Problem("hash_mismatch", key, "not in canonical form: edited"))
        runs_rows = sum(f.rows for f in manifest.files if f.table == "runs")
        if runs_rows != len(manifest.runs):
            report.problems.append(
                Problem(
                    "chain",
                    key,
                    f"lists {len(manifest.runs)} runs but its runs files hold {runs_rows}",
                )
            )
        if manifest.seq != seq:
            report.problems.append(Problem("chain", key, f"says seq {manifest.seq}"))
        if manifest.prev_sha256 != prev_sha:
            report.problems.append(
                Problem(
                    "chain",
                    key,
                    f"prev_sha256 {manifest.prev_sha256} != sha256 of the previous manifest "
                    f"{prev_sha}",
                )
            )
        prev_sha = manifest.sha256
        for f in manifest.files:
            listed.add(f.key)
            report.files += 1
            _check(store, report, f.key, f.sha256, f.bytes, existing)
        for a in _unique_artifacts(manifest):
            report.artifacts += 1
            if a[0] in listed:
                continue
            listed.add(a[0])
            _check(store, report, a[0], a[1], a[2], existing)
    for key in sorted(existing - listed):
        report.problems.append(Problem("unlisted", key, "stored but named by no manifest"))
    return report


def _unique_artifacts(manifest: Manifest) -> Iterable[tuple[str, str, int]]:
    seen = set()
    for a in manifest.artifacts:
        if a.key not in seen:
            seen.add(a.key)
            yield a.key, a.sha256, a.bytes
