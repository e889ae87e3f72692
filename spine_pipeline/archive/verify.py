"""Re-check the whole archive: the manifest chain, every file hash, every artifact hash.

Reports every finding instead of stopping at the first, so an auditor sees the full extent
of a tampering or a loss. Findings come in two grades (docs/contracts.md section 7, "verify
exit codes"):

- **problems** (`report.ok` is False, `verify` exits 1): anything committed that is changed
  (hash or size mismatch, a manifest not in canonical form), missing, unreadable, or out of
  chain, and any foreign entry in the commit log's own area (`manifests/`);
- **warnings** (`report.ok` stays True, one `WARN` line each): uncommitted objects under
  `tables/` and `artifacts/` (a losing or crashed writer's files until `gc` collects them,
  or a planted object the writers refused to trust) and entries the store refuses to read
  there (symlinks, non-regular files, names no writer makes). Readers never see any of them,
  so a normal writer race must not make `verify` cry wolf; but they are still named, and an
  uncommitted object at a content address whose bytes do not match it is called out.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from spine_pipeline.archive.layout import (
    ARTIFACT_AREA,
    CHAINED_PREFIXES,
    MANIFEST_PREFIX,
    TABLE_PREFIX,
    manifest_key,
    parse_artifact_key,
    parse_manifest_seq,
)
from spine_pipeline.archive.manifest import Manifest, ManifestError
from spine_pipeline.archive.stores import (
    ObjectStore,
    StoreError,
    UntrustedObject,
    hash_object,
    printable,
)

#: Areas whose uncommitted objects are orphans (warnings); anything foreign elsewhere in the
#: chain (the manifest area) is a problem.
ORPHAN_AREAS = (TABLE_PREFIX, ARTIFACT_AREA)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass(frozen=True)
class Problem:
    """One finding; used for problems and warnings alike."""

    kind: str  # hash_mismatch | size_mismatch | missing | unlisted | chain | unreadable | refused
    key: str
    detail: str

    def __str__(self) -> str:
        # Keys and details can hold names an attacker chose: one printable line each.
        return f"{self.kind}: {printable(self.key)}: {printable(self.detail)}"


@dataclass
class VerifyReport:
    manifests: int = 0
    files: int = 0
    artifacts: int = 0
    bytes_hashed: int = 0
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problem: nothing committed is changed, missing or out of chain (warnings allowed)."""
        return not self.problems


def _check(
    store: ObjectStore,
    report: VerifyReport,
    key: str,
    sha256: str,
    size: int,
    existing: set[str],
    listed_by: str,
) -> None:
    if key not in existing:
        report.problems.append(Problem("missing", key, f"listed by {listed_by} but not stored"))
        return
    try:
        # Reads at most one byte more than the manifest says: a longer object cannot match.
        actual, actual_size = hash_object(store, key, max_bytes=size)
    except StoreError as exc:
        report.problems.append(Problem("unreadable", key, _one_line(exc)))
        return
    report.bytes_hashed += actual_size
    if actual_size != size:
        stored = f"more than {size}" if actual_size > size else str(actual_size)
        report.problems.append(
            Problem("size_mismatch", key, f"{listed_by} says {size} bytes, stored {stored}")
        )
    if actual != sha256:
        report.problems.append(
            Problem("hash_mismatch", key, f"{listed_by} says sha256 {sha256}, stored {actual}")
        )


def _stored_keys(store: ObjectStore, report: VerifyReport) -> set[str]:
    """Every listed key under the chained areas; refused entries are reported here."""
    existing: set[str] = set()
    for prefix in CHAINED_PREFIXES:
        # An area behind a symlink lists nothing: `refused` names it just below.
        with contextlib.suppress(UntrustedObject):
            existing.update(info.key for info in store.list(prefix))
        grade = report.problems if prefix == MANIFEST_PREFIX else report.warnings
        for entry in store.refused(prefix):
            grade.append(Problem("refused", entry.key, f"{entry.reason}: never read or trusted"))
    return existing


def _orphan(store: ObjectStore, report: VerifyReport, key: str) -> None:
    """Grade an object no manifest names."""
    if not key.startswith(ORPHAN_AREAS):
        report.problems.append(Problem("unlisted", key, "stored but named by no manifest"))
        return
    detail = "uncommitted: named by no manifest, never read (gc removes it after its grace)"
    sha256 = parse_artifact_key(key)
    if sha256 is not None:
        try:
            actual, size = hash_object(store, key)
        except StoreError as exc:
            detail = f"uncommitted and unreadable: {_one_line(exc)}"
        else:
            report.bytes_hashed += size
            if actual != sha256:
                detail = (
                    f"uncommitted, and its bytes hash to {actual}, not to its content address: "
                    "a planted object, never trusted (remove it, or gc --include-artifacts)"
                )
    report.warnings.append(Problem("unlisted", key, detail))


def verify_archive(store: ObjectStore) -> VerifyReport:
    """Verify everything under the archive root; `report.ok` is False on any problem."""
    report = VerifyReport()
    existing = _stored_keys(store, report)
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
        try:
            data = store.get_bytes(key)
        except StoreError as exc:
            report.problems.append(Problem("unreadable", key, _one_line(exc)))
            prev_sha = None
            continue
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
            _check(store, report, f.key, f.sha256, f.bytes, existing, key)
        for a in _unique_artifacts(manifest):
            report.artifacts += 1
            if a[0] in listed:
                continue
            listed.add(a[0])
            _check(store, report, a[0], a[1], a[2], existing, key)
    for key in sorted(existing - listed):
        _orphan(store, report, key)
    return report


def _unique_artifacts(manifest: Manifest) -> Iterable[tuple[str, str, int]]:
    seen = set()
    for a in manifest.artifacts:
        if a.key not in seen:
            seen.add(a.key)
            yield a.key, a.sha256, a.bytes
