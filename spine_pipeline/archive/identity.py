"""The archive's identity record: which log this archive is, independent of where it is stored.

Why a record and not the URI: a checkpoint names its log (the C2SP "origin"), and a witness
files checkpoints under that name. If the name came from the bucket or path, a byte-identical
copy of an archive (a backup, a migration) would be a different log and could not verify
against its own checkpoints. So the first writer creates `archive.json` (layout
`IDENTITY_KEY`) once, create-if-absent, with a random archive id; every signed manifest
repeats that id, so replacing the record (to escape a witness's memory of the log) breaks
every signed manifest rather than going unseen.

It also names the Spine the archive serves (`spine`): `"simulator"` for the embedded
simulator (any instance, any port: every Spine base URL at a loopback address), otherwise the
origin of the real Spine's base URL. Why: run ids are unique only within one Spine, and a
simulator's test runs must not sit in a real audit archive (nor real runs in a scratch one).
The record is written once, with the Spine of its first writer; a writer of another Spine is
refused with one line (`SpineMismatchError`, `check_spine`). A record written before the
field existed names no Spine and stays unbound (it is write-once: binding it would mean
rewriting it, and a record that vanishes for a moment is read as a rolled-back log).

Unknown fields are kept, not refused, so an older reader does not reject a newer record.
"""

from __future__ import annotations

import ipaddress
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from spine_pipeline.archive.checkpoint import origin_for
from spine_pipeline.archive.layout import IDENTITY_KEY
from spine_pipeline.archive.stores import AlreadyExists, ObjectNotFound, ObjectStore

IDENTITY_FORMAT = "spine-pipeline-archive/1"
#: An identity record is a few hundred bytes; a larger object at the key is not one.
MAX_IDENTITY_BYTES = 64 * 1024
_ARCHIVE_ID = re.compile(r"[0-9a-f]{32}")
#: The `spine` of an archive fed by the embedded simulator, whatever its port.
SIMULATOR = "simulator"
_DEFAULT_PORTS = {"http": 80, "https": 443}


class IdentityError(ValueError):
    """The identity record is unreadable or not one a writer would make (one line)."""


class SpineMismatchError(IdentityError):
    """The archive serves another Spine than the writer's (one line, says what to do)."""


def spine_of(base_url: str) -> str:
    """What an archive fed from `base_url` records as its Spine.

    `"simulator"` for a loopback host (the embedded simulator only ever listens there, on any
    port); otherwise the normalised origin (`scheme://host[:port]`, no path, no user info,
    default port dropped), so `https://api.getspine.ai` and `https://API.getspine.ai/v1/`
    are one Spine. Never a secret: user info and query are not kept.
    """
    parts = urlsplit(base_url.strip())
    host = (parts.hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost") or _loopback(host):
        return SIMULATOR
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    shown = f"[{host}]" if ":" in host else host
    tail = f":{port}" if port is not None and port != _DEFAULT_PORTS.get(scheme) else ""
    return f"{scheme}://{shown}{tail}"


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_spine(identity: ArchiveIdentity, spine: str | None) -> None:
    """Refuse a writer whose Spine is not the one the archive serves (`SpineMismatchError`).

    `spine` None (a writer that does not know its Spine) and a record naming none (made
    before the field existed) are not checked.
    """
    bound = identity.spine
    if spine is None or bound is None or bound == spine:
        return
    raise SpineMismatchError(
        f"{IDENTITY_KEY}: this archive serves {_named(bound)}, not {_named(spine)}: "
        "point SPINE_ARCHIVE_URI at a fresh path (or at this Spine's own archive)"
    )


def _named(spine: str) -> str:
    return "the Spine simulator" if spine == SIMULATOR else f"the Spine at {spine}"


@dataclass(frozen=True)
class ArchiveIdentity:
    """The parsed identity record."""

    archive_id: str
    created_at: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def spine(self) -> str | None:
        """The Spine this archive serves (`spine_of`); None in a record made before it."""
        value = self.extra.get("spine")
        return value if isinstance(value, str) else None

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


def ensure_identity(store: ObjectStore, *, spine: str | None = None) -> ArchiveIdentity:
    """The archive's identity, creating the record (create-if-absent) when there is none.

    A new record names `spine` (the writer's, from `spine_of`); an existing one must serve
    it (`check_spine`). Two writers racing here both end up with the winner's record: the
    loser's put fails and it reads (and checks) what the winner wrote.
    """
    existing = read_identity(store)
    if existing is not None:
        check_spine(existing, spine)
        return existing
    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    extra = {"spine": spine} if spine is not None else {}
    fresh = ArchiveIdentity(archive_id=uuid.uuid4().hex, created_at=now, extra=extra)
    try:
        store.put_bytes(IDENTITY_KEY, fresh.to_bytes(), content_type="application/json")
    except AlreadyExists:
        won = read_identity(store)
        if won is None:  # deleted between our put and our read: not a state we can trust
            raise IdentityError(f"{IDENTITY_KEY}: vanished while it was being created") from None
        check_spine(won, spine)
        return won
    return fresh


def check_store_spine(store: ObjectStore, spine: str) -> None:
    """Before writing anything for `spine` (submitting, the demo): refuse an archive that
    serves another Spine. Creates nothing: the record is made with the first manifest."""
    existing = read_identity(store)
    if existing is not None:
        check_spine(existing, spine)
