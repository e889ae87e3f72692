"""The audit's memory of the archive's log: the checkpoints it ingested, and what it refuses.

Why the audit keeps checkpoints: deleting the newest manifests together with their
checkpoints leaves a shorter archive that is perfectly valid on its own; only someone who
remembers a larger signed state of the log can tell (`archive/tlog.py`). The audit database
is such a memory. Each refresh and rebuild records the archive's newest checkpoint in
`checkpoints`, and refuses, before it changes anything, an archive whose log (the RFC 6962
tree over its manifests) is not consistent with the checkpoint recorded last: a rollback
(fewer manifests than it says) or a fork or rewrite (another root at its size). A rebuild
reads that memory from the published database before replacing it and carries its rows
over, so rebuilding is not a way to forget; a refresh reads it too, because the spare it
catches up is one snapshot behind the published one.

With `SPINE_VERIFY_KEY` the newest checkpoint must carry a valid signature by one of the
keys, and every new manifest must verify, except the leading unsigned manifests of an
archive that began unsigned. Without a key checkpoints are read by format only and
recorded as unverified, and manifests are ingested as before.

The rules themselves (the leaf, consistency, signature findings) live in `archive/tlog.py`
and `archive/manifest.py`; this module only applies them to what the audit remembers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb

from spine_pipeline.archive.checkpoint import Checkpoint, CheckpointError
from spine_pipeline.archive.identity import IdentityError, read_identity
from spine_pipeline.archive.layout import IDENTITY_KEY, manifest_key
from spine_pipeline.archive.manifest import Manifest, manifest_leaf_hash
from spine_pipeline.archive.merkle import MerkleLog
from spine_pipeline.archive.signing import SigningError, VerifyKeys
from spine_pipeline.archive.stores import ObjectStore, StoreError
from spine_pipeline.archive.tlog import (
    SignedCheckpoint,
    archive_checkpoints,
    inconsistency,
    open_checkpoint,
    read_note,
    signature_finding,
)
from spine_pipeline.audit.duck import sql_str
from spine_pipeline.audit.ingest import IngestError, IngestReport

log = logging.getLogger(__name__)

#: How to accept a rolled-back or rewritten archive on purpose (a restore from backup).
_ON_PURPOSE = "to accept it on purpose, move the audit database away and rebuild"


@dataclass(frozen=True)
class RecordedCheckpoint:
    """One row of `checkpoints`."""

    origin: str
    size: int
    root: str  # hex
    checkpoint_time: datetime | None
    key_ids: tuple[str, ...]
    note: str
    ingested_at: datetime | None  # None until recorded
    verified: bool

    @classmethod
    def of(cls, signed: SignedCheckpoint, *, verified: bool) -> RecordedCheckpoint:
        return cls(
            origin=signed.checkpoint.origin,
            size=signed.size,
            root=signed.root.hex(),
            checkpoint_time=signed.checkpoint.time,
            key_ids=signed.key_ids,
            note=signed.note.decode("utf-8"),
            ingested_at=None,
            verified=verified,
        )

    def checkpoint(self) -> Checkpoint:
        try:
            return Checkpoint(self.origin, self.size, bytes.fromhex(self.root))
        except (ValueError, CheckpointError) as exc:
            raise IngestError(
                f"the audit database's checkpoint {self.size} is unreadable ({exc}); "
                "run `spine-pipeline audit rebuild`"
            ) from None


_COLUMNS = "origin, size, root, checkpoint_time, key_ids, note, ingested_at, verified"


def recorded_checkpoints(
    con: duckdb.DuckDBPyConnection, catalog: str | None = None
) -> list[RecordedCheckpoint]:
    """The rows of `checkpoints` (in `catalog`, default the current one), smallest first;
    [] for a database of a layout from before the table existed."""
    where = "current_database()" if catalog is None else sql_str(catalog)
    (exists,) = con.execute(
        f"SELECT count(*) FROM duckdb_tables() WHERE database_name = {where} "
        "AND schema_name = 'main' AND table_name = 'checkpoints'"
    ).fetchone() or (0,)
    if not exists:
        return []
    table = "checkpoints" if catalog is None else f"{catalog}.main.checkpoints"
    found = con.execute(f"SELECT {_COLUMNS} FROM {table} ORDER BY size").fetchall()
    return [
        RecordedCheckpoint(o, int(s), r, t, tuple(k or ()), n, i, bool(v))
        for o, s, r, t, k, n, i, v in found
    ]


@dataclass(frozen=True)
class Memory:
    """What the published audit database remembers of its archive, read before a refresh or
    a rebuild replaces it."""

    archive_uri: str | None = None
    last_seq: int = 0
    last_sha256: str | None = None
    checkpoints: tuple[RecordedCheckpoint, ...] = ()


def read_memory(published: Path) -> Memory:
    """The published database's memory (empty when there is none).

    A file DuckDB cannot open is treated as no memory, with a warning: a rebuild is how a
    damaged database is replaced, so it must not be refused because of one.
    """
    if not published.exists():
        return Memory()
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"ATTACH {sql_str(str(published))} AS pub (READ_ONLY)")
        uri = con.execute("SELECT value FROM pub.audit_state WHERE key = 'archive_uri'").fetchone()
        last = con.execute(
            "SELECT seq, sha256 FROM pub.manifests ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        return Memory(
            archive_uri=str(uri[0]) if uri else None,
            last_seq=int(last[0]) if last else 0,
            last_sha256=str(last[1]) if last else None,
            checkpoints=tuple(recorded_checkpoints(con, "pub")),
        )
    except duckdb.Error as exc:
        log.warning("%s: not read as the audit's memory (%s)", published, str(exc).splitlines()[0])
        return Memory()
    finally:
        con.close()


def load_verify_keys(value: str | None) -> VerifyKeys | None:
    """`SPINE_VERIFY_KEY` loaded, or None when it is not set."""
    if value is None:
        return None
    try:
        return VerifyKeys.load(value, what="SPINE_VERIFY_KEY")
    except SigningError as exc:
        raise IngestError(str(exc)) from None


def _refuse(reason: str) -> IngestError:
    return IngestError(f"refusing to ingest: {reason}")


@dataclass
class LogGuard:
    """Checks the archive's log against the audit's memory before anything is ingested, then
    records the archive's newest checkpoint.

    `observe` reads the identity and the newest checkpoint before the manifests are read: a
    writer commits a manifest before its checkpoint, so a checkpoint listed first never
    covers a manifest the ingest has not seen (no false rollback from a racing writer).
    """

    keys: VerifyKeys | None
    origin: str | None
    archive_id: str | None
    newest: SignedCheckpoint | None
    newest_key: str | None
    adopt: tuple[RecordedCheckpoint, ...] = ()

    @classmethod
    def observe(cls, store: ObjectStore, keys: VerifyKeys | None) -> LogGuard:
        try:
            identity = read_identity(store)
            held = archive_checkpoints(store)
            if not held:
                if identity is None:
                    return cls(keys, None, None, None, None)
                return cls(keys, identity.origin, identity.archive_id, None, None)
            size, key = held[-1]
            if identity is None:
                raise _refuse(f"{key}: the archive has checkpoints but no {IDENTITY_KEY}")
            signed = open_checkpoint(
                read_note(store, key), origin=identity.origin, keys=keys, where=key
            )
        except (IdentityError, CheckpointError, StoreError) as exc:
            raise _refuse(str(exc)) from None
        if signed.size != size:
            raise _refuse(f"{key}: holds a checkpoint of size {signed.size}")
        return cls(keys, identity.origin, identity.archive_id, signed, key)

    def check(
        self,
        con: duckdb.DuckDBPyConnection,
        anchor: Manifest | None,
        new: list[Manifest],
        memory: Memory,
        *,
        archive_uri: str,
        fresh: bool,
    ) -> None:
        """Refuse (`IngestError`, nothing written) a log the audit must not ingest.

        `anchor` and `new` are what `ingest.new_manifests` returned; `memory` is the
        published database's (`read_memory`), `archive_uri` the normalised archive URI and
        `fresh` true for a rebuild (a new, empty file).
        """
        self._check_manifests(con, anchor, new)
        tree = _tree(con, new)
        own = recorded_checkpoints(con)
        theirs = memory.checkpoints if self._same_log(memory, archive_uri, fresh) else ()
        for remembered in {c.size: c for c in (*own[-1:], *theirs[-1:])}.values():
            self._check_remembered(tree, remembered)
        if not fresh and memory.archive_uri == archive_uri and memory.last_seq:
            _check_published_anchor(tree, memory)
        if self.newest is not None:
            problem = inconsistency(tree, self.newest.checkpoint)
            if problem is not None:
                raise _refuse(f"{self.newest_key}: {problem}")
        sizes = {c.size for c in own}
        self.adopt = tuple(c for c in theirs if c.size not in sizes)

    def _same_log(self, memory: Memory, archive_uri: str, fresh: bool) -> bool:
        """Whether the published database remembers this archive's log.

        A refresh continues the published database (same archive URI, else it is refused
        elsewhere). A rebuild may switch archives: its memory applies when it was built from
        the same URI or holds checkpoints of the same log (a byte-identical copy moved).
        """
        if memory.archive_uri == archive_uri:
            return True
        return fresh and bool(memory.checkpoints) and memory.checkpoints[-1].origin == self.origin

    def _check_remembered(self, tree: MerkleLog, remembered: RecordedCheckpoint) -> None:
        if self.origin is None:
            raise _refuse(
                f"the audit ingested checkpoints of log {remembered.origin!r}, and the "
                f"archive has no {IDENTITY_KEY} now; {_ON_PURPOSE}"
            )
        if remembered.origin != self.origin:
            raise _refuse(
                f"the audit ingested checkpoints of log {remembered.origin!r}, and "
                f"{IDENTITY_KEY} now names {self.origin!r}; {_ON_PURPOSE}"
            )
        problem = inconsistency(tree, remembered.checkpoint())
        if problem is not None:
            raise _refuse(
                f"{problem} (checkpoint {remembered.size}, ingested by the audit); {_ON_PURPOSE}"
            )

    def _check_manifests(
        self, con: duckdb.DuckDBPyConnection, anchor: Manifest | None, new: list[Manifest]
    ) -> None:
        """Each new manifest names this archive, and with a verify key its signature holds;
        an unsigned one only before the first signed manifest of the log."""
        (signed_seq,) = con.execute(
            "SELECT max(seq) FROM manifests WHERE key_id IS NOT NULL"
        ).fetchone() or (None,)
        if anchor is not None and anchor.signature is not None:
            signed_seq = anchor.seq
        for manifest in new:
            key = manifest_key(manifest.seq)
            if manifest.archive_id is not None and manifest.archive_id != self.archive_id:
                says = f"says {self.archive_id}" if self.archive_id else "is missing"
                raise _refuse(f"{key}: names archive {manifest.archive_id}, {IDENTITY_KEY} {says}")
            if self.keys is None:
                continue
            finding = signature_finding(manifest, self.keys)
            if finding == "unsigned" and signed_seq is None:
                continue  # the archive began unsigned: its leading manifests stay readable
            if finding == "unsigned":
                raise _refuse(
                    f"{key}: unsigned, after signed manifest {signed_seq} (SPINE_VERIFY_KEY is set)"
                )
            if finding is not None:
                raise _refuse(f"{key}: {finding} (SPINE_VERIFY_KEY is set)")
            signed_seq = manifest.seq

    def record(self, con: duckdb.DuckDBPyConnection, report: IngestReport) -> None:
        """After the ingest: carry over the published database's checkpoints this file lacks,
        add the archive's newest checkpoint if it is newer than every recorded one, and give
        each manifest the first recorded checkpoint that covers it."""
        rows = list(self.adopt)
        own = recorded_checkpoints(con)
        largest = max([c.size for c in (*own, *rows)], default=0)
        if self.newest is not None:
            if self.newest.size > largest:
                rows.append(RecordedCheckpoint.of(self.newest, verified=self.keys is not None))
            elif self.newest.size < largest:
                log.warning(
                    "the archive's newest checkpoint is %s (%d); the audit ingested %d already",
                    self.newest_key,
                    self.newest.size,
                    largest,
                )
        if rows:
            self._insert(con, rows)
        newest = con.execute(
            "SELECT size, verified FROM checkpoints ORDER BY size DESC LIMIT 1"
        ).fetchone()
        if newest is not None:
            report.checkpoint_size, report.checkpoint_verified = int(newest[0]), bool(newest[1])

    @staticmethod
    def _insert(con: duckdb.DuckDBPyConnection, rows: list[RecordedCheckpoint]) -> None:
        con.execute("BEGIN TRANSACTION")
        try:
            for row in rows:
                con.execute(
                    f"INSERT INTO checkpoints ({_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, coalesce(?, now()), ?)",
                    [
                        row.origin,
                        row.size,
                        row.root,
                        row.checkpoint_time,
                        list(row.key_ids),
                        row.note,
                        row.ingested_at,
                        row.verified,
                    ],
                )
            con.execute(
                "UPDATE manifests SET checkpoint_size = (SELECT min(c.size) FROM checkpoints c "
                "WHERE c.size >= manifests.seq) WHERE checkpoint_size IS NULL "
                "AND seq <= (SELECT max(size) FROM checkpoints)"
            )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise


def _tree(con: duckdb.DuckDBPyConnection, new: list[Manifest]) -> MerkleLog:
    """The log's tree: the ingested manifests (sha256s from `manifests`, which must be
    exactly seq 1..n) followed by the new ones."""
    tree = MerkleLog()
    for seq, sha in con.execute("SELECT seq, sha256 FROM manifests ORDER BY seq").fetchall():
        if seq != tree.size + 1:
            raise IngestError(
                f"the audit database lacks manifest {tree.size + 1} (has {seq}); "
                "run `spine-pipeline audit rebuild`"
            )
        try:
            tree.append_hash(manifest_leaf_hash(sha))
        except ValueError:
            raise IngestError(
                f"the audit database's sha256 of manifest {seq} is not one; "
                "run `spine-pipeline audit rebuild`"
            ) from None
    for manifest in new:
        assert manifest.sha256 is not None and manifest.seq == tree.size + 1  # new_manifests
        tree.append_hash(manifest_leaf_hash(manifest.sha256))
    return tree


def _check_published_anchor(tree: MerkleLog, memory: Memory) -> None:
    """The published database's last manifest must still be in the log, unchanged: the spare
    a refresh catches up can be one snapshot behind it (`snapshot.py`)."""
    assert memory.last_sha256 is not None
    key = manifest_key(memory.last_seq)
    if memory.last_seq > tree.size:
        raise _refuse(
            f"rollback: the audit ingested {key}, the archive has {tree.size} manifests; "
            f"{_ON_PURPOSE}"
        )
    if tree.leaf_hash(memory.last_seq - 1) != manifest_leaf_hash(memory.last_sha256):
        raise _refuse(f"{key}: changed since it was ingested (sha256 mismatch)")
