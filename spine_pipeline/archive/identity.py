"""The archive's identity record: which log this archive is, independent of where it is stored.

Why a record and not the URI: a checkpoint names its log (the C2SP "origin"), and a witness
files checkpoints under that name. If the name came from the bucket or path, a byte-identical
copy of an archive (a backup, a migration) would be a different log and could not verify
against its own checkpoints. So the first writer creates `archive.json` (layout
`IDENTITY_KEY`) once, create-if-absent, with a random archive id; every signed manifest
repeats that id, so replacing the record (to escape a witness's memory of the log) breaks
every signed manifest rather than going unseen.

Kept small and open for more facts about the archive (what it archives is a later issue's
addition); unknown fields are kept, not refused, so an older reader does not reject a newer
record.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from spine_pipeline.archive.checkpoint import origin_for
from spine_pipeline.archive.layout import IDENTITY_KEY
from spine_pipeline.archive.stores import AlreadyExists, ObjectNotFound, ObjectStore

IDENTITY_FORMAT = "spine-pipeline-archive/1"
#: An identity record is a few hundred bytes; a larger object at the key is not one.
MAX_IDENTITY_BYTES = 64 * 1024
_ARCHIVE_ID = re.compile(r"[0-9a-f]{32}")


class IdentityError(ValueError):
    """The identity record is unreadable or not one a writer would make (one line)."""


@dataclass(frozen=True)
class ArchiveIdentity:
    """The parsed identity record."""

    archive_id: str
    created_at: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        """The checkpoint origin of this archive's log: `spine-pipeline/<archive id>`."""
        return origin_for(self.archive_id)

    def to_bytes(self) -> bytes:
        doc = {
            **self.extra,
            "format": IDENTITY_FORMAT,
            "archive_id": self.archive_id,
            "created_at": self.created_at,
        }
        return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> ArchiveIdentity:
        if len(data) > MAX_IDENTITY_BYTES:
            raise IdentityError(f"{IDENTITY_KEY}: larger than {MAX_IDENTITY_BYTES} bytes")
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise IdentityError(f"{IDENTITY_KEY}: not JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("format") != IDENTITY_FORMAT:
            raise IdentityError(f"{IDENTITY_KEY}: not a {IDENTITY_FORMAT} record")
        archive_id, created_at = doc.get("archive_id"), doc.get("created_at")
        if not isinstance(archive_id, str) or not _ARCHIVE_ID.fullmatch(archive_id):
            raise IdentityError(f"{IDENTITY_KEY}: archive_id is not 32 lower-case hex digits")
        if not isinstance(created_at, str):
            raise IdentityError(f"{IDENTITY_KEY}: created_at is not a string")
        extra = {k: v for k, v in doc.items() if k not in ("format", "archive_id", "created_at")}
        return cls(archive_id=archive_id, created_at=created_at, extra=extra)


def read_identity(store: ObjectStore) -> ArchiveIdentity | None:
    """The archive's identity record, or None when it has none yet."""
    try:
        with store.open_read(IDENTITY_KEY) as f:
            data = f.read(MAX_IDENTITY_BYTES + 1)
    except ObjectNotFound:
        return None
    return ArchiveIdentity.from_bytes(data)


def ensure_identity(store: ObjectStore) -> ArchiveIdentity:
    """The archive's identity, creating the record (create-if-absent) when there is none.

    Two writers racing here both end up with the winner's record: the loser's put fails and
    it reads what the winner wrote.
    """
    existing = read_identity(store)
    if existing is not None:
        return existing
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    fresh = ArchiveIdentity(archive_id=uuid.uuid4().hex, created_at=now)
    try:
        store.put_bytes(IDENTITY_KEY, fresh.to_bytes(), content_type="application/json")
    except AlreadyExists:
        won = read_identity(store)
        if won is None:  # deleted between our put and our read: not a state we can trust
            raise IdentityError(f"{IDENTITY_KEY}: vanished while it was being created") from None
        return won
    return fresh
