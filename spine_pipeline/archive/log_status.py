"""Where the archive's transparency log stands: its newest checkpoint, and each witness's.

Why a function of its own: the writer checks witnesses only when it writes, so an archive
rolled back or forked while nothing is being archived goes unreported until the next batch
refuses to run. A scheduled check (the Dagster asset check on `spine_run`) and any other
monitor need the same answer without writing anything: does the archive's newest checkpoint
verify and describe this log, and is every witness's newest checkpoint a state of it? The
rules themselves (opening a checkpoint, what "a state of the log" means) are `tlog`'s; this
module only reads and reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from spine_pipeline.archive.checkpoint import CheckpointError
from spine_pipeline.archive.identity import IdentityError, read_identity
from spine_pipeline.archive.layout import IDENTITY_KEY
from spine_pipeline.archive.manifest import ManifestError, ManifestLog
from spine_pipeline.archive.signing import SigningKey, VerifyKeys
from spine_pipeline.archive.stores import ObjectStore, StoreError
from spine_pipeline.archive.tlog import (
    SignedCheckpoint,
    Witness,
    archive_checkpoints,
    inconsistency,
    open_checkpoint,
    read_note,
)


@dataclass(frozen=True)
class WitnessStatus:
    """One witness: its newest checkpoint of this archive's log, and what is wrong, if
    anything (the archive contradicts it, or it could not be read)."""

    uri: str
    newest: SignedCheckpoint | None
    problem: str | None = None


@dataclass(frozen=True)
class LogStatus:
    """The archive's log (`size` manifests, RFC 6962 `root`), its newest checkpoint, and
    each witness's newest checkpoint.

    `problem` is what is wrong with the archive itself (chain unreadable, newest checkpoint
    unreadable, badly signed or contradicted by the log); `verified` is False when
    checkpoints were read without keys (format and origin only).
    """

    size: int
    root: bytes | None
    newest: SignedCheckpoint | None
    witnesses: tuple[WitnessStatus, ...]
    verified: bool
    problem: str | None = None

    @property
    def problems(self) -> list[str]:
        """Every problem, one line each; witness lines name the witness."""
        found = [self.problem] if self.problem else []
        return found + [f"witness {w.uri}: {w.problem}" for w in self.witnesses if w.problem]

    @property
    def consistent(self) -> bool:
        return not self.problems

    @property
    def uncheckpointed(self) -> int:
        """Manifests committed after the newest checkpoint (a commit whose checkpoint is not
        written yet, or an archive that began unsigned); the next signing batch covers them."""
        return self.size - (self.newest.size if self.newest else 0)


def status_keys(verify_key: str | None, signing_key: str | None) -> VerifyKeys | None:
    """The keys checkpoints are verified with: `SPINE_VERIFY_KEY` if set (it lists rotated
    keys too), else the signing key's public key; None when neither is set.

    Raises `SigningError` (one line, no key material) for a value that does not load.
    """
    if verify_key is not None:
        return VerifyKeys.load(verify_key, what="SPINE_VERIFY_KEY")
    if signing_key is not None:
        return VerifyKeys([SigningKey.load(signing_key, what="SPINE_SIGNING_KEY").public_key])
    return None


def log_status(
    store: ObjectStore, keys: VerifyKeys | None, witnesses: Sequence[Witness]
) -> LogStatus:
    """Read the archive's log, its newest checkpoint and every witness's; write nothing.

    With `keys`, checkpoints (the archive's and the witnesses') must carry a signature by
    one of them; without, they are read by format and origin only (`verified` False).
    """
    verified = keys is not None
    log = ManifestLog(store)
    # Checkpoints (the archive's, then the witnesses') are read before the manifests: a
    # checkpoint only ever covers manifests already committed, so a log read afterwards
    # holds them all, and a writer racing this read cannot pass for a rollback.
    try:
        identity = read_identity(store)
        held = archive_checkpoints(store)
        origin = identity.origin if identity is not None else None
        witnessed = [_witness_newest(w, origin, keys) for w in witnesses]
        log.refresh()
    except (ManifestError, IdentityError, StoreError) as exc:
        return LogStatus(log.tree.size, None, None, (), verified, problem=_line(exc))
    tree = log.tree
    root = tree.root()
    if identity is None:
        # No identity record: no checkpoint can name this log. Fine for a log never signed;
        # checkpoints without the record mean the record was removed.
        orphaned = f"{len(held)} checkpoint(s) but no identity record ({IDENTITY_KEY})"
        plain = tuple(WitnessStatus(w.uri, None) for w in witnesses)
        return LogStatus(tree.size, root, None, plain, verified, problem=orphaned if held else None)
    newest: SignedCheckpoint | None = None
    problem: str | None = None
    if held:
        _, key = held[-1]
        try:
            newest = open_checkpoint(
                read_note(store, key), origin=identity.origin, keys=keys, where=key
            )
        except (CheckpointError, StoreError) as exc:
            problem = _line(exc)
        if newest is not None and (contradiction := inconsistency(tree, newest.checkpoint)):
            problem = f"{key}: {contradiction}"
    statuses = tuple(
        status
        if status.newest is None or status.problem is not None
        else replace(status, problem=inconsistency(tree, status.newest.checkpoint))
        for status in witnessed
    )
    return LogStatus(tree.size, root, newest, statuses, verified, problem=problem)


def _witness_newest(witness: Witness, origin: str | None, keys: VerifyKeys | None) -> WitnessStatus:
    """The witness's newest checkpoint of `origin`, not yet compared with the log."""
    if origin is None:
        return WitnessStatus(witness.uri, None)
    try:
        newest = witness.newest(origin, keys)
    except (CheckpointError, StoreError) as exc:
        return WitnessStatus(witness.uri, None, _line(exc))
    return WitnessStatus(witness.uri, newest)


def _line(exc: BaseException) -> str:
    """An exception as one line (store and manifest errors are one line already)."""
    text = str(exc).splitlines()
    return text[0] if text else type(exc).__name__
