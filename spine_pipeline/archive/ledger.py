"""The run ledger: which runs we submitted or were asked to track, as write-once records.

It lives in the archive root next to the data (`ledger/...`), so it is as durable as the
archive itself (S3 or local disk), needs no database, and works the same for the Dagster
sensor, the CLI and a second machine. Every record is created once and never rewritten
(create-if-absent, like everything in the archive):

- `ledger/submissions/dt=<day>/<time>-<uuid>.json`: every submit attempt and its outcome
  (`accepted`, `rejected`, `unknown`); the audit `submissions` table is built from these.
- `ledger/tracked/dt=<day>/<run_id>.json`: a run to poll and archive; tracking twice is a
  no-op. Keyed by the day it was tracked so that the sensor lists only recent days.
- `ledger/abandoned/<run_id>.json`: a run given up on (not terminal 24 h after tracking).

The rules every reader shares live here, once: how tracking records are listed (oldest day
first, the first record of a run wins) and decoded (`decode_tracked`), which runs are in
flight (`in_flight`: tracked within `INFLIGHT_LOOKBACK`, minus archived, minus abandoned),
and how tracking records become archive requests (`Ledger.archive_requests`). The poll
sensor, the archive run, the CLI and the audit database's ledger mirror all call them. A
Dagster cursor only schedules polls; losing it loses nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeGuard

from spine_pipeline.archive.layout import (
    ABANDONED_PREFIX,
    SUBMISSIONS_PREFIX,
    TRACKED_PREFIX,
    abandoned_key,
    parse_abandoned_run_id,
    submission_key,
    tracked_day_prefix,
    tracked_key,
    tracked_run_id,
)
from spine_pipeline.archive.stores import AlreadyExists, ObjectStore

if TYPE_CHECKING:
    from spine_pipeline.archive.archiver import ArchiveRequest

OUTCOMES = ("accepted", "rejected", "unknown")

#: A tracked run not terminal this long after its submission (or tracking) is abandoned.
ABANDON_AFTER = timedelta(hours=24)
#: A tracked run not terminal this long after its submission (or tracking) is overdue: still
#: polled and archived, but a person should look (the poll sensor's warning, the alert sink).
OVERDUE_AFTER = timedelta(hours=3)
#: How far back tracking records can still name an in-flight run. Anything tracked earlier
#: has been abandoned or archived by a running sensor; the extra day keeps a whole day
#: partition of margin, so a run tracked just before midnight is never cut off early. The
#: one window of the sensor, `spine-pipeline status` and the audit's `inflight_runs`.
INFLIGHT_LOOKBACK = ABANDON_AFTER + timedelta(days=1)


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_ts(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def plausible_run_id(run_id: object) -> TypeGuard[str]:
    """Whether `run_id` can name a ledger record (plain id characters, at most 100)."""
    return (
        isinstance(run_id, str)
        and 0 < len(run_id) <= 100
        and all(c.isalnum() or c in "-_" for c in run_id)
    )


def _safe_run_id(run_id: str) -> str:
    """Run ids become object names, so only plain id characters are allowed."""
    if not plausible_run_id(run_id):
        raise ValueError(f"not a valid run id: {run_id!r}")
    return run_id


def inflight_since(now: datetime) -> date:
    """The oldest day partition of tracking records that can name an in-flight run."""
    return (now - INFLIGHT_LOOKBACK).date()


@dataclass(frozen=True)
class Submission:
    """One submit attempt. `run_id` is None unless Spine accepted it."""

    request_name: str | None
    run_id: str | None
    submitted_at: str
    outcome: str
    error: str | None = None
    prompt: str | None = None
    template: str | None = None
    blocks: list[str] | None = None
    agent_instructions: str | None = None
    files: list[str] = field(default_factory=list)
    source: str = "cli"
    canvas_id: str | None = None


@dataclass(frozen=True)
class TrackedRun:
    run_id: str
    tracked_at: str
    request_name: str | None = None
    submitted_at: str | None = None
    source: str = "cli"

    @property
    def tracked_time(self) -> datetime:
        ts = parse_ts(self.tracked_at)
        assert ts is not None
        return ts

    @property
    def submitted_time(self) -> datetime | None:
        return parse_ts(self.submitted_at)

    def compact(self) -> dict[str, str]:
        """The record's fields without the empty ones: small, JSON-able, and read back by
        `tracked_from_doc` (the poll sensor hands these to the archive run's config)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def tracked_from_doc(doc: object) -> TrackedRun | None:
    """A tracking record from its JSON document; None for one no reader may use.

    The one decoding rule: a JSON object naming a valid run id with a readable
    `tracked_at`. Optional fields of the wrong type read as absent.
    """
    if not isinstance(doc, dict):
        return None
    run_id, tracked_at = doc.get("run_id"), doc.get("tracked_at")
    if not plausible_run_id(run_id) or not isinstance(tracked_at, str) or not parse_ts(tracked_at):
        return None

    def text(name: str) -> str | None:
        value = doc.get(name)
        return value if isinstance(value, str) else None

    return TrackedRun(
        run_id=run_id,
        tracked_at=tracked_at,
        request_name=text("request_name"),
        submitted_at=text("submitted_at"),
        source=text("source") or "cli",
    )


def decode_tracked(data: bytes | str) -> TrackedRun | None:
    """A tracking record from its stored bytes, or from their text as the audit keeps it.

    Bytes are read as UTF-8 with replacement, exactly as the audit's `ledger_tracked`
    stores them, so the sensor and the audit mirror decide alike on every record.
    """
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    try:
        return tracked_from_doc(json.loads(text))
    except (ValueError, RecursionError):
        return None


def in_flight(
    tracked: Iterable[TrackedRun], archived: Container[str], abandoned: Container[str]
) -> dict[str, TrackedRun]:
    """In-flight runs: the tracked ones no manifest names and nobody abandoned.

    `tracked` lists the look-back window (`Ledger.tracked(since=inflight_since(now))`);
    when two records name one run, the later one in listing order wins.
    """
    return {t.run_id: t for t in tracked if t.run_id not in archived and t.run_id not in abandoned}


def in_flight_for(run: TrackedRun, now: datetime) -> timedelta:
    """How long `run` has been in flight: since its submission, else since it was tracked."""
    return now - (run.submitted_time or run.tracked_time)


def is_overdue(run: TrackedRun, now: datetime) -> bool:
    """Whether an in-flight run is past `OVERDUE_AFTER` (the caller knows it is not terminal)."""
    return in_flight_for(run, now) > OVERDUE_AFTER


class Ledger:
    """Reads and appends ledger records in one archive root."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._records: dict[str, TrackedRun | None] = {}  # records are immutable: cache them

    def record_submission(self, submission: Submission) -> str:
        if submission.outcome not in OUTCOMES:
            raise ValueError(f"unknown submission outcome {submission.outcome!r}")
        ts = parse_ts(submission.submitted_at) or datetime.now(UTC)
        key = submission_key(ts, uuid.uuid4().hex[:12])
        self.store.put_bytes(key, _dump(asdict(submission)), content_type="application/json")
        return key

    def track(
        self,
        run_id: str,
        *,
        request_name: str | None = None,
        submitted_at: datetime | None = None,
        source: str = "cli",
        now: datetime | None = None,
    ) -> bool:
        """Register a run for polling and archiving; False if it was already tracked."""
        record = self.track_record(
            run_id, request_name=request_name, submitted_at=submitted_at, source=source, now=now
        )
        return record is not None

    def track_record(
        self,
        run_id: str,
        *,
        request_name: str | None = None,
        submitted_at: datetime | None = None,
        source: str = "cli",
        now: datetime | None = None,
    ) -> TrackedRun | None:
        """`track`, returning the record it wrote (None if the run was already tracked), so
        that a caller holding the in-flight runs (the poll sensor) can add it at once."""
        _safe_run_id(run_id)
        now = now or datetime.now(UTC)
        # Idempotent within the two days the sensor lists; a re-track later than that only
        # adds a harmless second record (the manifest log still archives the run once).
        if self._recent_tracked(run_id, now) is not None:
            return None
        record = TrackedRun(
            run_id=run_id,
            tracked_at=_iso(now),
            request_name=request_name,
            submitted_at=_iso(submitted_at) if submitted_at else None,
            source=source,
        )
        key = tracked_key(now, run_id)
        try:
            self.store.put_bytes(key, _dump(asdict(record)), content_type="application/json")
        except AlreadyExists:
            return None
        return record

    def _recent_tracked(self, run_id: str, around: datetime) -> TrackedRun | None:
        for day in (around.date(), (around - timedelta(days=1)).date()):
            key = tracked_key(day, run_id)
            if self.store.exists(key):
                return decode_tracked(self.store.get_bytes(key))
        return None

    def find_tracked(self, run_id: str, *, around: datetime | None = None) -> TrackedRun | None:
        """The tracking record of a run: recent days first, then a full listing."""
        recent = self._recent_tracked(run_id, around or datetime.now(UTC))
        if recent is not None:
            return recent
        for record in self.tracked():
            if record.run_id == run_id:
                return record
        return None

    def tracked_keys(self, *, since: date | None = None) -> Iterator[str]:
        """Keys of the tracking records, oldest day first, one per run: the first wins.

        `since` limits the listing to the day partitions from that day to tomorrow (a
        clock a little ahead may already write there); without it, every day is listed.
        """
        if since is None:
            listing: Iterable[str] = (i.key for i in self.store.list(TRACKED_PREFIX))
        else:
            today = datetime.now(UTC).date()
            days = [since + timedelta(days=i) for i in range((today - since).days + 2)]
            listing = (i.key for d in days for i in self.store.list(tracked_day_prefix(d)))
        seen: set[str] = set()
        for key in listing:
            run_id = tracked_run_id(key)
            if run_id not in seen:
                seen.add(run_id)
                yield key

    def tracked(self, *, since: date | None = None) -> Iterator[TrackedRun]:
        """Tracked runs in `tracked_keys` order; records no reader may use are skipped."""
        for key in self.tracked_keys(since=since):
            if key not in self._records:
                self._records[key] = decode_tracked(self.store.get_bytes(key))
            record = self._records[key]
            if record is not None:
                yield record

    def load_in_flight(
        self, archived: Container[str], *, now: datetime | None = None
    ) -> dict[str, TrackedRun]:
        """In-flight runs as of `now`: tracked within the look-back window, not in `archived`
        (the run ids committed manifests name), not abandoned."""
        since = inflight_since(now or datetime.now(UTC))
        return in_flight(self.tracked(since=since), archived, self.abandoned())

    def archive_requests(
        self, run_ids: Sequence[str], tracked: Iterable[TrackedRun] = ()
    ) -> list[ArchiveRequest]:
        """One archive request per run id (repeats dropped), named and timed from its
        tracking record: taken from `tracked` when given (the poll sensor has them loaded
        already), else looked up in the ledger. Unknown runs get a bare request."""
        # Imported here: the archiver pulls in pyarrow and the API client, which the CLI's
        # and the submit path's uses of the ledger do not need.
        from spine_pipeline.archive.archiver import ArchiveRequest

        known = {t.run_id: t for t in tracked}
        requests = []
        for run_id in dict.fromkeys(run_ids):
            record = known.get(run_id)
            if record is None and plausible_run_id(run_id):
                record = self.find_tracked(run_id)
            requests.append(
                ArchiveRequest(
                    run_id,
                    request_name=record.request_name if record else None,
                    submitted_at=record.submitted_time if record else None,
                )
            )
        return requests

    def abandon(self, run_id: str, reason: str, *, now: datetime | None = None) -> bool:
        _safe_run_id(run_id)
        body = {"run_id": run_id, "abandoned_at": _iso(now or datetime.now(UTC)), "reason": reason}
        try:
            self.store.put_bytes(abandoned_key(run_id), _dump(body))
        except AlreadyExists:
            return False
        return True

    def abandoned(self) -> set[str]:
        return {
            run_id
            for info in self.store.list(ABANDONED_PREFIX)
            if (run_id := parse_abandoned_run_id(info.key)) is not None
        }

    def submissions(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for info in self.store.list(SUBMISSIONS_PREFIX):
            try:
                yield info.key, json.loads(self.store.get_bytes(info.key))
            except ValueError:
                continue


def _dump(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
