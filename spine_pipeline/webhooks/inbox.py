"""The durable webhook inbox: accepted deliveries as write-once records in the archive's ledger.

The receiver stores an event here before it answers 2xx, so an acknowledged delivery survives
a crash of the receiver, and the sensor reads the events back from here, never from the
receiver's memory. Like the rest of the ledger it lives in the archive root (local disk or
S3), outside the hash chain, and every object is written create-if-absent.

Three objects per event (keys in `archive/layout.py`):

- `ledger/webhooks/runs/<run_id>/<type>.json` (**marker**, only for events naming a run):
  the first event id stored for this (run, type). Spine gives a resend a fresh event id
  (spine-api.md section 5), so a second id for the same pair is a duplicate: it is stored
  (the audit keeps one row per event id) with `duplicate: true` and `duplicate_of`, and the
  sensor does not act on it again.
- `ledger/webhooks/ids/<event_id>.json` (**claim**): the full record; creating it is what
  decides which receiver stores an event id. A later delivery of the same id finds it and
  is acknowledged as a duplicate, nothing rewritten.
- `ledger/webhooks/events/dt=<day>/hour=<HH>/<received>Z-<event_id>.json` (**entry**): the
  same bytes as the claim, named by receive time, so a reader lists only the hours it has
  not read yet (a day prefix on S3 is one listing request per 1,000 events; an hour prefix
  is usually one request).

They are written in that order, and the 2xx comes after the entry exists, so every
acknowledged event is in the stream. A receiver that dies between the claim and the entry
never acknowledged the event: Spine delivers it again, the claim is found, and the entry is
written from the claim's bytes (the same key and bytes whichever receiver does it). A
receiver that dies after the marker leaves a marker naming an id that has no claim: a later
delivery of that pair then counts as the first, not as a duplicate, so no event is lost to
a crash; the price is that the sensor may act twice on one (run, type), which is harmless
(making a run due twice, or tracking it twice, changes nothing). Concurrent receivers on
one archive race only through create-if-absent, so each event id is stored once.

Readers: `Inbox.since(cursor)` for the sensor (see its docstring for the cursor and its
settle window) and `decode_record`, the one decoding rule, shared with the audit mirror.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeGuard

from spine_pipeline.archive.layout import (
    parse_webhook_event_key,
    webhook_event_key,
    webhook_events_hour_prefix,
    webhook_id_key,
    webhook_run_marker_key,
)
from spine_pipeline.archive.ledger import INFLIGHT_LOOKBACK
from spine_pipeline.archive.stores import (
    AlreadyExists,
    ObjectNotFound,
    ObjectStore,
    StoreError,
    validate_key,
)

__all__ = [
    "HEADERS_KEPT",
    "RECORD_VERSION",
    "SETTLE",
    "Inbox",
    "InboxCorrupt",
    "InboxEvent",
    "MalformedEvent",
    "ParsedEvent",
    "StoreResult",
    "decode_record",
    "parse_event",
    "valid_event_id",
    "valid_event_type",
    "valid_run_id",
]

log = logging.getLogger(__name__)

RECORD_VERSION = 1
#: Request headers kept with each record (lower case), each cut to `_HEADER_CHARS`. The
#: signature is kept: with the secret it re-proves, later, that Spine sent these bytes.
HEADERS_KEPT = (
    "content-type",
    "user-agent",
    "spine-event-id",
    "spine-event-type",
    "spine-signature",
)
_HEADER_CHARS = 512
#: How late an entry may become visible after its receive time and still be read: the
#: receiver's three writes (with the store's retries) plus the clock skew between two
#: receivers. `since` keeps re-listing this window and remembers what it returned in it.
SETTLE = timedelta(minutes=5)
#: The oldest receive time `since` reads: events older than the ledger's in-flight window
#: cannot concern a run the sensor still polls.
LOOKBACK = INFLIGHT_LOOKBACK
DEFAULT_LIMIT = 1000

# Ids become key segments: plain ASCII id characters only. Real ids are `evt_<32 hex>`.
_EVENT_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
# Types name a marker object (`<type>.json`): no `/`, never `.` or `..`.
_EVENT_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Run ids are opaque 1-128 URL-safe characters (docs/contracts.md section 7); one that is not
# also a safe key segment (`.`, `..`, the store's temp prefix) is refused by validate_key.
_RUN_ID = re.compile(r"[A-Za-z0-9._~-]{1,128}")
_RECEIVED = "%Y%m%dT%H%M%S%fZ"
_RECEIVED_TEXT = re.compile(r"[0-9]{8}T[0-9]{12}Z")


def valid_event_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _EVENT_ID.fullmatch(value) is not None


def valid_event_type(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and _EVENT_TYPE.fullmatch(value) is not None


def valid_run_id(value: object) -> TypeGuard[str]:
    """A run id that may name a marker: URL-safe, 1-128 characters, a safe key segment."""
    if not isinstance(value, str) or _RUN_ID.fullmatch(value) is None:
        return False
    try:
        validate_key(webhook_run_marker_key(value, "run.started"))
    except ValueError:
        return False
    return True


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _parse_iso(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC)


# ----------------------------------------------------------------------------- parsing


class MalformedEvent(ValueError):
    """A verified body that is not an event we can store; `reason` is short and safe."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class ParsedEvent:
    """The envelope fields of a verified delivery, and its raw body (the bytes Spine signed)."""

    event_id: str
    type: str
    run_id: str | None
    created: int | None
    livemode: bool | None
    api_version: str | None
    body: bytes


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two `id`s in one object would let two readers of the raw body disagree on the event.
    obj: dict[str, Any] = {}
    for name, value in pairs:
        if name in obj:
            raise ValueError("duplicate key")
        obj[name] = value
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_event(body: bytes) -> ParsedEvent:
    """The envelope of a delivery's body; `MalformedEvent` if it cannot be stored.

    Call only after the signature checked. The body must be UTF-8 JSON (RFC 8259; the record
    keeps it as text, byte for byte), an object with a string `id` and `type` usable in key
    names; a `data.object.run_id`, when present, must be a run id (1-128 URL-safe
    characters). Other fields of the wrong type read as absent: unknown event types and
    `webhook.ping` are stored as they come.
    """
    try:
        text = body.decode("utf-8")
        doc = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise MalformedEvent("body is not UTF-8") from None
    except (ValueError, RecursionError):
        raise MalformedEvent("malformed JSON") from None
    if not isinstance(doc, dict):
        raise MalformedEvent("JSON body is not an object")
    event_id, event_type = doc.get("id"), doc.get("type")
    if event_id is None:
        raise MalformedEvent("missing id")
    if not valid_event_id(event_id):
        raise MalformedEvent("invalid id")
    if event_type is None:
        raise MalformedEvent("missing type")
    if not valid_event_type(event_type):
        raise MalformedEvent("invalid type")
    data = doc.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    run_id = obj.get("run_id") if isinstance(obj, dict) else None
    if run_id is not None and not valid_run_id(run_id):
        raise MalformedEvent("invalid run_id")
    created = doc.get("created")
    livemode = doc.get("livemode")
    api_version = doc.get("api_version")
    return ParsedEvent(
        event_id=event_id,
        type=event_type,
        run_id=run_id,
        created=created if isinstance(created, int) and not isinstance(created, bool) else None,
        livemode=livemode if isinstance(livemode, bool) else None,
        api_version=api_version if isinstance(api_version, str) else None,
        body=body,
    )


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True)
class InboxEvent:
    """One stored event, as the sensor and the audit read it back."""

    key: str
    event_id: str
    type: str
    run_id: str | None
    created: int | None
    livemode: bool | None
    api_version: str | None
    duplicate: bool
    duplicate_of: str | None
    received_at: datetime
    signature_t: int | None
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def body_text(self) -> str:
        """The raw body as text (it is UTF-8 by construction: `parse_event`)."""
        return self.body.decode("utf-8")


def _record_bytes(
    event: ParsedEvent,
    *,
    key: str,
    received_at: datetime,
    duplicate_of: str | None,
    signature_t: int | None,
    headers: Mapping[str, str],
) -> bytes:
    kept = {
        name: value[:_HEADER_CHARS]
        for name in HEADERS_KEPT
        if isinstance(value := headers.get(name), str)
    }
    doc = {
        "v": RECORD_VERSION,
        "event_id": event.event_id,
        "type": event.type,
        "run_id": event.run_id,
        "created": event.created,
        "livemode": event.livemode,
        "api_version": event.api_version,
        "duplicate": duplicate_of is not None,
        "duplicate_of": duplicate_of,
        "received_at": _iso(received_at),
        "signature_t": signature_t,
        "key": key,
        "headers": kept,
        "body": event.body.decode("utf-8"),
    }
    return (json.dumps(doc, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")


def decode_record(data: bytes, key: str | None = None) -> InboxEvent | None:
    """An inbox record from its stored bytes; None for one no reader may use.

    The one decoding rule (the sensor's reader and the audit mirror share it): a JSON
    object of this version naming a valid event id, type and receive time, with the body as
    text; read at `key` (an entry or a claim), it must be that key's event and name the
    entry key that belongs to it.
    """
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("v") != RECORD_VERSION:
        return None
    event_id, event_type, body = doc.get("event_id"), doc.get("type"), doc.get("body")
    received_at = _parse_iso(doc.get("received_at"))
    entry = doc.get("key")
    if not (valid_event_id(event_id) and valid_event_type(event_type)):
        return None
    if not isinstance(body, str) or received_at is None or not isinstance(entry, str):
        return None
    parsed = parse_webhook_event_key(entry)
    if (
        parsed is None
        or parsed.event_id != event_id
        or entry != webhook_event_key(received_at, event_id)
    ):
        return None
    if key is not None and key not in (entry, webhook_id_key(event_id)):
        return None
    run_id = doc.get("run_id")
    if run_id is not None and not valid_run_id(run_id):
        return None
    try:
        raw = body.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate escaped in the JSON
        return None

    def opt(name: str, kind: type | tuple[type, ...]) -> Any:
        value = doc.get(name)
        if isinstance(value, bool) and kind is int:
            return None
        return value if isinstance(value, kind) else None

    headers = doc.get("headers")
    duplicate_of = opt("duplicate_of", str)
    return InboxEvent(
        key=entry,
        event_id=event_id,
        type=event_type,
        run_id=run_id,
        created=opt("created", int),
        livemode=opt("livemode", bool),
        api_version=opt("api_version", str),
        duplicate=doc.get("duplicate") is True,
        duplicate_of=duplicate_of if valid_event_id(duplicate_of) else None,
        received_at=received_at,
        signature_t=opt("signature_t", int),
        body=raw,
        headers=(
            {k: v for k, v in headers.items() if isinstance(k, str) and isinstance(v, str)}
            if isinstance(headers, dict)
            else {}
        ),
    )


# ----------------------------------------------------------------------------- the inbox


class InboxCorrupt(StoreError):
    """A claim exists for the event id but cannot be read back as its record."""


@dataclass(frozen=True)
class StoreResult:
    """What storing a delivery did.

    `stored`: this delivery created the records; False when its event id was stored before
    (a redelivery: acknowledged, nothing rewritten). `duplicate`: the stored record is a
    resend of a (run, type) stored under another id (`duplicate_of`).
    """

    event_id: str
    stored: bool
    duplicate: bool
    duplicate_of: str | None
    key: str


@dataclass
class _Cursor:
    mark: str  # receive time (`_RECEIVED`) from which entries are listed
    seen: set[str]  # `<received>-<event_id>` of entries at or after `mark` already returned

    def dump(self) -> str:
        return json.dumps({"v": 1, "mark": self.mark, "seen": sorted(self.seen)})


def _load_cursor(cursor: str | None) -> _Cursor | None:
    if not cursor:
        return None
    try:
        doc = json.loads(cursor)
        mark, seen = doc["mark"], doc["seen"]
        if not isinstance(mark, str) or not _RECEIVED_TEXT.fullmatch(mark):
            raise ValueError("bad mark")
        datetime.strptime(mark, _RECEIVED)
        if doc.get("v") != 1 or not isinstance(seen, list):
            raise ValueError("unknown cursor version")
        if not all(isinstance(s, str) for s in seen):
            raise ValueError("bad seen list")
    except (ValueError, KeyError, TypeError):
        log.warning("ignoring an unreadable webhook inbox cursor; reading the look-back window")
        return None
    return _Cursor(mark, set(seen))


def _received(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime(_RECEIVED)


class Inbox:
    """Stores verified deliveries and reads them back, in one archive root."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    # -- writing --------------------------------------------------------------------------

    def store_event(
        self,
        event: ParsedEvent,
        *,
        received_at: datetime,
        signature_t: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> StoreResult:
        """Store a verified, parsed delivery durably (see the module docstring for the order).

        Returns once the event's entry exists, whether this call or an earlier delivery
        wrote it. Store failures raise (`StoreError` and its kind): the caller must then not
        acknowledge the delivery, so that Spine sends it again.
        """
        if not (valid_event_id(event.event_id) and valid_event_type(event.type)) or (
            event.run_id is not None and not valid_run_id(event.run_id)
        ):
            raise ValueError("not a storable event: id, type or run_id unsafe as a key")
        if received_at.tzinfo is None:
            raise ValueError("received_at must be timezone-aware")
        received_at = received_at.astimezone(UTC)
        claim = webhook_id_key(event.event_id)
        if self.store.exists(claim):
            return self._redelivered(event)
        duplicate_of = self._mark(event, received_at)
        key = webhook_event_key(received_at, event.event_id)
        data = _record_bytes(
            event,
            key=key,
            received_at=received_at,
            duplicate_of=duplicate_of,
            signature_t=signature_t,
            headers={k.lower(): v for k, v in (headers or {}).items()},
        )
        try:
            self.store.put_bytes(claim, data, content_type="application/json")
        except AlreadyExists:
            return self._redelivered(event)
        self._publish(key, data)
        return StoreResult(event.event_id, True, duplicate_of is not None, duplicate_of, key)

    def _publish(self, key: str, data: bytes) -> None:
        # AlreadyExists: another receiver finished the same event (same key, same bytes).
        with contextlib.suppress(AlreadyExists):
            self.store.put_bytes(key, data, content_type="application/json")

    def _redelivered(self, event: ParsedEvent) -> StoreResult:
        """An event id already claimed: make sure its entry exists, then report it."""
        claim = webhook_id_key(event.event_id)
        data = self.store.get_bytes(claim)
        record = decode_record(data, claim)
        if record is None or record.event_id != event.event_id:
            raise InboxCorrupt(f"{claim}: not a readable inbox record")
        if record.body != event.body:
            log.warning("event %s delivered again with another body; kept the first", claim)
        self._publish(record.key, data)
        return StoreResult(event.event_id, False, record.duplicate, record.duplicate_of, record.key)

    def _mark(self, event: ParsedEvent, received_at: datetime) -> str | None:
        """Claim (run, type) for this event; the id of an earlier stored event if it has it."""
        if event.run_id is None:
            return None
        marker = webhook_run_marker_key(event.run_id, event.type)
        doc = {"event_id": event.event_id, "received_at": _iso(received_at)}
        try:
            self.store.put_bytes(marker, json.dumps(doc).encode("utf-8"))
            return None
        except AlreadyExists:
            pass
        try:
            first = json.loads(self.store.get_bytes(marker)).get("event_id")
        except (ValueError, AttributeError, ObjectNotFound):
            first = None
        if first == event.event_id or not valid_event_id(first):
            return None
        # Only an event that was stored can make this one a duplicate (module docstring).
        return first if self.store.exists(webhook_id_key(first)) else None

    # -- reading --------------------------------------------------------------------------

    def since(
        self, cursor: str | None, *, now: datetime | None = None, limit: int = DEFAULT_LIMIT
    ) -> tuple[list[InboxEvent], str]:
        """Events stored since `cursor` (None: the look-back window), oldest first, and the
        cursor to pass next time (opaque text, a few KiB: a Dagster sensor cursor).

        Entries are listed by receive hour from the cursor's mark up to the next hour. An
        entry may appear a little after its receive time (the receiver writes a marker and
        a claim first; two receivers' clocks differ), so the mark trails `now` by `SETTLE`
        and the cursor remembers the entries it returned after the mark: each entry is
        returned once, and one that appears up to `SETTLE` late is still returned. At most
        `limit` events per call; the mark never passes one not yet returned. Records no
        reader may use are skipped (and not read again). A store error raises, and the
        same cursor can be passed again. Duplicates (`duplicate`) are returned, flagged.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        now = (now or datetime.now(UTC)).astimezone(UTC)
        floor = _received(now - LOOKBACK)
        state = _load_cursor(cursor) or _Cursor(floor, set())
        if state.mark < floor:
            state = _Cursor(floor, {s for s in state.seen if s[:22] >= floor})
        start = datetime.strptime(state.mark, _RECEIVED).replace(tzinfo=UTC)
        hour = start.replace(minute=0, second=0, microsecond=0)
        pending: list[tuple[str, str]] = []  # (name, key)
        while hour <= now + timedelta(hours=1):
            for info in self.store.list(webhook_events_hour_prefix(hour)):
                parsed = parse_webhook_event_key(info.key)
                if parsed is None or parsed.received < state.mark:
                    continue
                name = f"{parsed.received}-{parsed.event_id}"
                if name not in state.seen:
                    pending.append((name, info.key))
            hour += timedelta(hours=1)
        pending.sort()
        taken, rest = pending[:limit], pending[limit:]
        events = []
        for _, key in taken:
            record = decode_record(self.store.get_bytes(key), key)
            if record is None:
                log.warning("skipping an unreadable webhook inbox entry %s", key)
            else:
                events.append(record)
        state.seen.update(name for name, _ in taken)
        settled = _received(now - SETTLE)
        mark = max(state.mark, min(settled, rest[0][0][:22]) if rest else settled)
        seen = {s for s in state.seen if s[:22] >= mark}
        return events, _Cursor(mark, seen).dump()

    def events(self, prefix: str) -> Iterator[tuple[str, InboxEvent | None]]:
        """(key, record or None) of every entry under `prefix` (a day or hour prefix)."""
        for info in self.store.list(prefix):
            if parse_webhook_event_key(info.key) is not None:
                yield info.key, decode_record(self.store.get_bytes(info.key), info.key)
