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

Verifiable history (`archive.tlog`). The chain alone cannot tell a forgery that was appended
and chained correctly, or a tail that was re-hashed, or a tail that was deleted. So `verify`
also rebuilds the RFC 6962 tree over the manifests exactly as it reads them, and checks:

- the identity record (`archive.json`), which names the log, against every manifest's
  `archive_id`;
- with verify keys, every manifest's signature (manifests written before signing began, a
  leading run of unsigned ones, are a note; an unsigned one after a signed one is a problem);
- every checkpoint in the archive (signature with keys, else format only) against the tree:
  one the log contradicts is a rewrite/fork, or a rollback the attacker forgot to hide;
- every witness's checkpoints of this log: a witness is outside the archive, so this is what
  catches a rollback, a truncation or a fork made by someone who also rewrote `checkpoints/`.

Without a witness a clean deletion of the newest manifests, with their files and their
checkpoints, leaves a shorter log that is still consistent: that limit is why witnesses exist.
Checkpoints and the identity record are outside `CHAINED_PREFIXES`, so they are never orphans
and `gc` never touches them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from spine_pipeline.archive.checkpoint import CheckpointError
from spine_pipeline.archive.identity import ArchiveIdentity, IdentityError, read_identity
from spine_pipeline.archive.layout import (
    ARTIFACT_AREA,
    CHAINED_PREFIXES,
    CHECKPOINT_PREFIX,
    IDENTITY_KEY,
    MANIFEST_PREFIX,
    TABLE_PREFIX,
    manifest_key,
    parse_artifact_key,
    parse_checkpoint_size,
    parse_manifest_seq,
)
from spine_pipeline.archive.manifest import Manifest, ManifestError, manifest_leaf_hash, sha256_hex
from spine_pipeline.archive.merkle import MerkleLog
from spine_pipeline.archive.signing import VerifyKeys
from spine_pipeline.archive.stores import (
    ObjectStore,
    StoreError,
    UntrustedObject,
    hash_object,
    printable,
)
from spine_pipeline.archive.tlog import (
    SignedCheckpoint,
    Witness,
    inconsistency,
    open_checkpoint,
    read_note,
    signature_finding,
)
from spine_pipeline.progress import ProgressFn, Step, no_progress

#: Areas whose uncommitted objects are orphans (warnings); anything foreign elsewhere in the
#: chain (the manifest area) is a problem.
ORPHAN_AREAS = (TABLE_PREFIX, ARTIFACT_AREA)
NO_VERIFY_KEY = "signatures not checked: no verify key (SPINE_VERIFY_KEY or --verify-key)"
UNCHECKPOINTED = (
    "not yet checkpointed: a writer stopped between commit and checkpoint; "
    "the next batch checkpoints it"
)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _detail(exc: BaseException, *keys: str) -> str:
    """The one-line message of `exc` without leading `key: `s (the finding names the key)."""
    text = _one_line(exc)
    for key in keys:
        text = text.removeprefix(f"{key}: ")
    return text


@dataclass(frozen=True)
class Problem:
    """One finding; used for problems and warnings alike."""

    # hash_mismatch | size_mismatch | missing | unlisted | chain | unreadable | refused |
    # identity | signature | checkpoint | witness | unchecked | uncheckpointed
    kind: str
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
    #: Manifests that carry a signature (checked or not: see `signatures_checked`).
    signed: int = 0
    #: Unsigned manifests before the first signed one (written before signing began).
    unsigned_leading: int = 0
    signatures_checked: bool = False
    #: The newest checkpoint in the archive that opened and is a state of the log.
    checkpoint: SignedCheckpoint | None = None
    #: (witness uri, size of its newest checkpoint that is a state of the log).
    witnessed: list[tuple[str, int]] = field(default_factory=list)
    #: Informational lines (not findings): what was checked and what it showed.
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problem: nothing committed is changed, missing or out of chain (warnings allowed)."""
        return not self.problems


@dataclass
class _Log:
    """The manifests as `verify` read them: the tree over their stored bytes, and the parsed
    ones (key, manifest) in seq order. `whole` is False when a manifest is missing or
    unreadable: the tree then stops before it, and checkpoints beyond it cannot be checked."""

    tree: MerkleLog = field(default_factory=MerkleLog)
    parsed: list[tuple[str, Manifest]] = field(default_factory=list)
    whole: bool = True


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


def verify_archive(
    store: ObjectStore,
    *,
    keys: VerifyKeys | None = None,
    witnesses: Sequence[Witness] = (),
    progress: ProgressFn = no_progress,
) -> VerifyReport:
    """Verify everything under the archive root; `report.ok` is False on any problem.

    `keys` check the manifests' and checkpoints' signatures (without them checkpoints are
    read by format only, and a signed archive gets one WARN saying so); `witnesses` are the
    outside copies of the checkpoints that a rollback or a fork contradicts. `progress`
    hears of each manifest checked (its files and artifacts hashed) and each later phase.
    """
    report = VerifyReport(signatures_checked=keys is not None)
    progress(Step("verify: listing the archive"))
    existing = _stored_keys(store, report)
    log = _check_manifests(store, report, existing, progress)
    progress(Step("verify: signatures and checkpoints"))
    checkpoints = _listed_checkpoints(store, report)
    identity = _check_identity(store, report, log, checkpoints)
    _check_signatures(report, log, keys)
    origin = identity.origin if identity is not None else None
    _check_checkpoints(store, report, log, checkpoints, origin, keys)
    for i, witness in enumerate(witnesses, 1):
        progress(Step("verify: witnesses", i, len(witnesses)))
        _check_witness(witness, report, log, origin, keys)
    if not log.whole:
        report.notes.append(
            f"the log's tree covers manifests 1 to {log.tree.size} only (a hole in the chain "
            "follows): checkpoints of larger sizes were not compared"
        )
    return report


def _check_manifests(
    store: ObjectStore,
    report: VerifyReport,
    existing: set[str],
    progress: ProgressFn = no_progress,
) -> _Log:
    """The chain, every listed file and artifact, and the tree over the manifests' bytes."""
    log = _Log()
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
    for done, seq in enumerate(sorted(manifest_seqs)):
        key = manifest_key(seq)
        progress(Step("verify: manifests", done, len(manifest_seqs), key))
        listed.add(key)
        if seq != expected_seq:
            log.whole = False
            for missing in range(expected_seq, seq):
                report.problems.append(Problem("missing", manifest_key(missing), "gap in chain"))
        expected_seq = seq + 1
        try:
            data = store.get_bytes(key)
        except StoreError as exc:
            report.problems.append(Problem("unreadable", key, _one_line(exc)))
            log.whole = False
            prev_sha = None
            continue
        if log.whole:
            # The leaf is the manifest's bytes as stored, parseable or not (the one leaf rule).
            log.tree.append_hash(manifest_leaf_hash(sha256_hex(data)))
        try:
            manifest = Manifest.from_bytes(data, key=key)
        except ManifestError as exc:
            report.problems.append(Problem("unreadable", key, str(exc)))
            prev_sha = sha256_hex(data)
            continue
        log.parsed.append((key, manifest))
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
    progress(Step("verify: manifests", len(manifest_seqs), len(manifest_seqs)))
    for key in sorted(existing - listed):
        _orphan(store, report, key)
    return log


def _listed_checkpoints(store: ObjectStore, report: VerifyReport) -> list[tuple[int, str]]:
    """(size, key) of the archive's checkpoints, smallest first; anything else stored under
    `checkpoints/` (a foreign name, a symlink, a fifo) is a problem: writers make nothing else
    there, and a checkpoint area behind a symlink is not the archive's."""
    found: list[tuple[int, str]] = []
    # An area behind a symlink lists nothing: `refused` names it just below.
    with contextlib.suppress(UntrustedObject):
        for info in store.list(CHECKPOINT_PREFIX):
            size = parse_checkpoint_size(info.key)
            if size is None:
                report.problems.append(Problem("unlisted", info.key, "not a checkpoint name"))
            else:
                found.append((size, info.key))
    for entry in store.refused(CHECKPOINT_PREFIX):
        report.problems.append(
            Problem("refused", entry.key, f"{entry.reason}: never read or trusted")
        )
    return sorted(found)


def _check_identity(
    store: ObjectStore,
    report: VerifyReport,
    log: _Log,
    checkpoints: Sequence[tuple[int, str]],
) -> ArchiveIdentity | None:
    """The identity record, checked against every manifest's `archive_id`; None when there
    is none (or it is unreadable, a problem)."""
    try:
        identity = read_identity(store)
    except (IdentityError, StoreError) as exc:
        report.problems.append(Problem("unreadable", IDENTITY_KEY, _detail(exc, IDENTITY_KEY)))
        return None
    if identity is None:
        stamped = next((key for key, m in log.parsed if m.archive_id is not None), None)
        if stamped is not None:
            report.problems.append(
                Problem("missing", IDENTITY_KEY, f"no identity record, but {stamped} names one")
            )
        elif checkpoints:
            report.problems.append(
                Problem(
                    "missing",
                    IDENTITY_KEY,
                    f"no identity record, but {CHECKPOINT_PREFIX} holds {len(checkpoints)} "
                    "checkpoint(s)",
                )
            )
        return None
    for key, manifest in log.parsed:
        if manifest.archive_id is not None and manifest.archive_id != identity.archive_id:
            report.problems.append(
                Problem(
                    "identity",
                    key,
                    f"archive_id {manifest.archive_id} is not this archive's "
                    f"({identity.archive_id}, {IDENTITY_KEY})",
                )
            )
    return identity


def _check_signatures(report: VerifyReport, log: _Log, keys: VerifyKeys | None) -> None:
    """Count and (with keys) check signatures. Signing, once begun, never stops: an unsigned
    manifest after a signed one is a problem with or without keys (it is how a forgery by
    someone without the key looks)."""
    first_signed: str | None = None
    for key, manifest in log.parsed:
        if manifest.signature is None:
            if first_signed is None:
                report.unsigned_leading += 1
            else:
                report.problems.append(
                    Problem(
                        "signature", key, f"unsigned, after signed manifests (from {first_signed})"
                    )
                )
            continue
        report.signed += 1
        first_signed = first_signed or key
        if keys is not None and (finding := signature_finding(manifest, keys)) is not None:
            report.problems.append(Problem("signature", key, finding))
    if keys is None:
        if report.signed:
            report.warnings.append(Problem("unchecked", MANIFEST_PREFIX, NO_VERIFY_KEY))
        return
    if report.signed:
        report.notes.append(
            f"{report.signed} signed manifest(s), signatures checked against key id(s) "
            f"{', '.join(keys.ids)}"
        )
    if report.signed and report.unsigned_leading:
        report.notes.append(
            f"{report.unsigned_leading} leading manifests unsigned (written before signing began)"
        )
    elif log.parsed and not report.signed:
        report.warnings.append(
            Problem(
                "unchecked",
                MANIFEST_PREFIX,
                f"no manifest is signed ({len(log.parsed)} unsigned): nothing to check the "
                "verify key against",
            )
        )


def _open(
    store: ObjectStore,
    key: str,
    where: str,
    origin: str,
    keys: VerifyKeys | None,
    size: int,
    log: _Log,
) -> tuple[SignedCheckpoint | None, str | None]:
    """(the checkpoint at `key` if it is a state of the log, what is wrong with it)."""
    try:
        signed = open_checkpoint(read_note(store, key), origin=origin, keys=keys, where=where)
    except (CheckpointError, StoreError) as exc:
        return None, _detail(exc, where, key)
    if signed.size != size:
        return None, f"its note says size {signed.size}, its name {size}"
    if signed.size > log.tree.size and not log.whole:
        return None, None  # beyond a hole in the chain: reported as the hole
    problem = inconsistency(log.tree, signed.checkpoint)
    return (None, problem) if problem is not None else (signed, None)


def _check_checkpoints(
    store: ObjectStore,
    report: VerifyReport,
    log: _Log,
    checkpoints: Sequence[tuple[int, str]],
    origin: str | None,
    keys: VerifyKeys | None,
) -> None:
    if origin is None:
        if checkpoints:
            report.notes.append(
                f"{len(checkpoints)} checkpoint(s) not checked: no readable identity record "
                "names the log"
            )
        return
    for size, key in checkpoints:
        signed, problem = _open(store, key, key, origin, keys, size, log)
        if problem is not None:
            report.problems.append(Problem("checkpoint", key, problem))
        if signed is not None:
            report.checkpoint = signed  # smallest first: the last one kept is the newest
    newest, size = report.checkpoint, log.tree.size
    if newest is not None:
        when = newest.checkpoint.time
        report.notes.append(
            f"newest checkpoint: size {newest.size}, root {newest.root.hex()}, "
            f"time {when.strftime('%Y-%m-%dT%H:%M:%SZ') if when else 'not stated'}"
            + ("" if keys is not None else " (signature not checked)")
        )
        # A tail past every checkpoint (good or bad: a bad one is a problem of its own).
        covered = max(n for n, _ in checkpoints)
        if covered < size and log.whole:
            tail = (
                f"manifest {size}" if covered + 1 == size else f"manifests {covered + 1} to {size}"
            )
            report.warnings.append(
                Problem("uncheckpointed", manifest_key(covered + 1), f"{tail}: {UNCHECKPOINTED}")
            )
    elif not checkpoints and report.signed:
        report.warnings.append(
            Problem(
                "uncheckpointed",
                CHECKPOINT_PREFIX,
                f"{report.signed} signed manifests but no checkpoint at all: a rollback of "
                "the newest manifests cannot be told without one",
            )
        )


def _check_witness(
    witness: Witness,
    report: VerifyReport,
    log: _Log,
    origin: str | None,
    keys: VerifyKeys | None,
) -> None:
    """Every checkpoint `witness` holds of this log must be a state of it."""
    if origin is None:
        _check_witness_without_identity(witness, report, log)
        return
    try:
        held = witness.checkpoints(origin)
    except StoreError as exc:
        report.problems.append(Problem("witness", witness.uri, f"unreadable: {_one_line(exc)}"))
        return
    if not held:
        report.warnings.append(Problem("witness", witness.uri, "holds no checkpoint of this log"))
        return
    newest: SignedCheckpoint | None = None
    for size, key in held:
        where = witness.store.url(key)
        signed, problem = _open(witness.store, key, where, origin, keys, size, log)
        if problem is not None:
            report.problems.append(Problem("witness", where, problem))
        if signed is not None:
            newest = signed
    if newest is not None:
        report.witnessed.append((witness.uri, newest.size))
        report.notes.append(
            f"witness {witness.uri}: the newest of its checkpoints that is a state of the log "
            f"has size {newest.size} (the log has {log.tree.size})"
        )


def _check_witness_without_identity(witness: Witness, report: VerifyReport, log: _Log) -> None:
    """No identity record: the witness cannot say which of its logs this archive is. An
    archive with manifests, checked against a witness that holds logs, has most likely lost
    its record on purpose (to escape the witness's memory): that is a problem, not a shrug."""
    try:
        origins = witness.origins()
    except StoreError as exc:
        report.problems.append(Problem("witness", witness.uri, f"unreadable: {_one_line(exc)}"))
        return
    if log.tree.size and origins:
        shown = ", ".join(sorted(origins)[:3]) + (" ..." if len(origins) > 3 else "")
        report.problems.append(
            Problem(
                "witness",
                witness.uri,
                f"the archive has {log.tree.size} manifests but no readable identity record, "
                f"while the witness holds checkpoints of {len(origins)} log(s) ({shown}): "
                "the record was removed or the archive replaced",
            )
        )
        return
    report.warnings.append(
        Problem("witness", witness.uri, "not checked: the archive has no readable identity record")
    )


def _unique_artifacts(manifest: Manifest) -> Iterable[tuple[str, str, int]]:
    seen = set()
    for a in manifest.artifacts:
        if a.key not in seen:
            seen.add(a.key)
            yield a.key, a.sha256, a.bytes
