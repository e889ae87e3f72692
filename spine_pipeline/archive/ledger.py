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

In-flight runs are tracked runs that no committed manifest names and that are not
abandoned. A Dagster cursor only schedules polls; losing it loses nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

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

OUTCOMES = ("accepted", "rejected", "unknown")


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


def _safe_run_id(run_id: str) -> str:
    """Run ids become object names, so only plain id characters are allowed."""
    if not run_id or len(run_id) > 100 or not all(c.isalnum() or c in "-_" for c in run_id):
        raise ValueError(f"not a valid run id: {run_id!r}")
    return run_id


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
        _safe_run_id(run_id)
        now = now or datetime.now(UTC)
        # Idempotent within the two days the sensor lists; a re-track later than that only
        # adds a harmless second record (the manifest log still archives the run once).
        if self._recent_tracked(run_id, now) is not None:
            return False
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
            return False
        return True

    def _recent_tracked(self, run_id: str, around: datetime) -> TrackedRun | None:
        for day in (around.date(), (around - timedelta(days=1)).date()):
            key = tracked_key(day, run_id)
            if self.store.exists(key):
                return _tracked(self.store.get_bytes(key))
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

    def tracked(self, *, since: date | None = None) -> Iterator[TrackedRun]:
        """Tracked runs, oldest day first, each once; `since` limits the listing to recent days."""
        seen: set[str] = set()
        if since is None:
            listing = self.store.list(TRACKED_PREFIX)
        else:
            today = datetime.now(UTC).date()
            days = [since + timedelta(days=i) for i in range((today - since).days + 2)]
            listing = (i for d in days for i in self.store.list(tracked_day_prefix(d)))
        for info in listing:
            run_id = tracked_run_id(info.key)
            if run_id in seen:
                continue
            seen.add(run_id)
            if info.key not in self._records:
                self._records[info.key] = _tracked(self.store.get_bytes(info.key))
            record = self._records[info.key]
            if record is not None:
                yield record

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


def _tracked(data: bytes) -> TrackedRun | None:
    try:
        doc = json.loads(data)
        return TrackedRun(**{k: doc.get(k) for k in TrackedRun.__dataclass_fields__ if k in doc})
    except (ValueError, TypeError):
        return None
