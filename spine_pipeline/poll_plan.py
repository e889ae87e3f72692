"""One poll tick: which in-flight runs to ask about now, and what to do with the answers.

Plain library (no Dagster) so that the sensor stays thin and the logic is testable on its
own. Durable truth comes from the archive root: the ledger says which runs are tracked, the
manifest log which are archived. The plan (a Dagster cursor) only schedules the next poll
of each run; if it is lost or corrupt, every in-flight run is simply due again.

Timing rules: a run is polled 15 s after it was last seen running, backing off to 60 s
(15, 30, 60, 60, ...), like Spine's own guidance. Terminal runs are handed to archiving in
batches and re-requested only if still unarchived 10 minutes later. A run in flight for
more than 3 h is overdue; after 24 h it is abandoned (recorded in the ledger).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from spine_pipeline.archive.layout import manifest_key
from spine_pipeline.archive.ledger import ABANDON_AFTER, Ledger, TrackedRun
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.settings import (
    Settings,
)
from spine_pipeline.spine import AsyncSpineClient
from spine_pipeline.spine.poll_pass import PollResult, poll_runs

OVERDUE_AFTER = timedelta(hours=3)
PLAN_VERSION = 1


@dataclass
class RunSchedule:
    """Per-run polling state: when to poll next, the current backoff, last answer."""

    next_poll: float = 0.0
    interval: float = 0.0
    status: str | None = None
    requested: float = 0.0  # when it was last handed to archiving (0 = never)
    errors: int = 0

    def pack(self) -> list[object]:
        return [
            round(self.next_poll, 3),
            self.interval,
            self.status,
            round(self.requested, 3),
            self.errors,
        ]

    @classmethod
    def unpack(cls, raw: object) -> RunSchedule:
        if not isinstance(raw, list) or len(raw) != 5:
            raise ValueError("bad entry")
        next_poll, interval, status, requested, errors = raw
        return cls(
            float(next_poll),
            float(interval),
            status if isinstance(status, str) else None,
            float(requested),
            int(errors),
        )


def _default_min() -> float:
    return Settings.from_env().poll_min_interval_seconds


def _default_max() -> float:
    return Settings.from_env().poll_max_interval_seconds


@dataclass
class PollPlan:
    """The poll schedule of every in-flight run; serialised as the sensor cursor."""

    runs: dict[str, RunSchedule] = field(default_factory=dict)
    recovered: bool = False  # True when the cursor was unreadable and was reset
    min_interval: float = field(default_factory=_default_min)
    max_interval: float = field(default_factory=_default_max)

    @classmethod
    def loads(cls, cursor: str | None) -> PollPlan:
        if not cursor:
            return cls()
        try:
            doc = json.loads(cursor)
            if not isinstance(doc, dict) or doc.get("v") != PLAN_VERSION:
                raise ValueError("unknown cursor version")
            runs = {str(k): RunSchedule.unpack(v) for k, v in doc["runs"].items()}
        except (ValueError, TypeError, KeyError, AttributeError):
            return cls(recovered=True)
        return cls(runs=runs)

    def dumps(self) -> str:
        packed = {k: v.pack() for k, v in sorted(self.runs.items())}
        return json.dumps({"v": PLAN_VERSION, "runs": packed}, separators=(",", ":"))

    def sync(self, in_flight: set[str]) -> None:
        """Schedule newly tracked runs (due now) and forget archived or abandoned ones."""
        for run_id in list(self.runs):
            if run_id not in in_flight:
                del self.runs[run_id]
        for run_id in in_flight:
            self.runs.setdefault(run_id, RunSchedule())

    def due(self, now: float) -> list[str]:
        """Non-terminal runs whose next poll time has come, most overdue first."""
        ready = [
            (s.next_poll, run_id)
            for run_id, s in self.runs.items()
            if s.next_poll <= now and not _is_terminal(s.status)
        ]
        return [run_id for _, run_id in sorted(ready)]

    def record(self, result: PollResult, now: float) -> None:
        entry = self.runs.setdefault(result.run_id, RunSchedule())
        if not result.polled:
            return  # not asked this tick: still due
        if result.run is not None:
            entry.status = result.status
            entry.errors = 0
        else:
            entry.errors += 1
        entry.interval = min(self.max_interval, max(self.min_interval, entry.interval * 2))
        entry.next_poll = now + entry.interval

    def to_archive(self, now: float) -> list[str]:
        """Terminal runs not yet handed to archiving (or handed long ago and still not done)."""
        rerequest = Settings.from_env().poll_rerequest_seconds
        out = [
            run_id
            for run_id, s in sorted(self.runs.items())
            if _is_terminal(s.status) and (not s.requested or now - s.requested > rerequest)
        ]
        for run_id in out:
            self.runs[run_id].requested = now
        return out


def _is_terminal(status: str | None) -> bool:
    return status in ("completed", "partial", "failed")


@dataclass
class TickReport:
    """What one tick did; the sensor turns it into run requests and log lines."""

    to_archive: list[str]
    cursor: str
    in_flight: int
    polled: int
    overdue: list[str]
    abandoned: list[str]
    stopped_early: str | None
    cursor_recovered: bool
    seconds: float
    tracked: dict[str, TrackedRun]
    committed_seq: int = 0  # the newest committed manifest (for the audit refresh)


class StorageTimeout(RuntimeError):
    """The archive store did not answer within the tick's budget (the tick fails, cursor kept)."""


class InFlightSource:
    """In-flight runs from the ledger and manifest log, cached between ticks.

    Tracking records and manifests are immutable, so a long-lived process (the Dagster
    code server) reads each one once; a tick costs a listing of two day-partitions and one
    probe for a new manifest.
    """

    def __init__(self, ledger: Ledger, log: ManifestLog) -> None:
        self.ledger = ledger
        self.log = log
        self._lock = threading.Lock()  # one reader of the caches at a time

    def load(self, now: datetime) -> dict[str, TrackedRun]:
        with self._lock:
            return self._load(now)

    def _load(self, now: datetime) -> dict[str, TrackedRun]:
        if self.log.last_seq and not self.log.store.exists(manifest_key(self.log.last_seq)):
            # The archive root was replaced under this long-lived process (recreated, or
            # restored from an older copy): the cached records describe another archive.
            self.log = ManifestLog(self.log.store)
            self.ledger = Ledger(self.ledger.store)
        self.log.refresh()
        return self.ledger.load_in_flight(self.log.committed_runs, now=now)

    def load_within(self, now: datetime, seconds: float) -> dict[str, TrackedRun]:
        """`load`, but give up after `seconds`: a store that hangs or retries must not hold
        the tick past its budget. The read goes on in the background and fills the caches
        for the next tick (which waits for it, within its own budget)."""
        done: dict[str, object] = {}

        def read() -> None:
            try:
                done["value"] = self._load(now)
            except BaseException as exc:  # handed to the tick below
                done["error"] = exc
            finally:
                self._lock.release()

        if not self._lock.acquire(timeout=max(0.0, seconds)):
            raise StorageTimeout(
                f"archive store: the previous tick's read is still running after {seconds:.0f}s"
            )
        worker = threading.Thread(target=read, name="spine-inflight-read", daemon=True)
        worker.start()
        worker.join(max(0.0, seconds))
        if worker.is_alive():
            raise StorageTimeout(
                f"archive store did not answer within {seconds:.0f}s (ledger and manifest "
                "reads); this tick is skipped and its cursor kept"
            )
        if "error" in done:
            raise done["error"]  # type: ignore[misc]
        return done["value"]  # type: ignore[return-value]


def run_tick(
    source: InFlightSource,
    client_factory: Callable[[], AsyncSpineClient],
    cursor: str | None,
    *,
    budget_seconds: float = 40.0,
    concurrency: int = 64,
    clock: Callable[[], float] = time.time,
) -> TickReport:
    """Poll what is due within the budget; return runs to archive and the next cursor.

    The budget bounds the whole tick: reading the ledger and manifests (`StorageTimeout` if
    the store does not answer in time) and then polling, which stops at the deadline.
    """
    started = time.monotonic()
    deadline = started + max(1.0, budget_seconds - 2.0)  # keep a margin for the caller
    now_dt = datetime.fromtimestamp(clock(), UTC)
    tracked = source.load_within(now_dt, deadline - time.monotonic())
    plan = PollPlan.loads(cursor)
    plan.sync(set(tracked))

    overdue, abandoned = [], []
    for run_id, t in tracked.items():
        age = now_dt - (t.submitted_time or t.tracked_time)
        if age > ABANDON_AFTER and not _is_terminal(plan.runs[run_id].status):
            if source.ledger.abandon(run_id, f"not terminal {ABANDON_AFTER} after submission"):
                abandoned.append(run_id)
            plan.runs.pop(run_id, None)
        elif age > OVERDUE_AFTER and not _is_terminal(plan.runs[run_id].status):
            overdue.append(run_id)

    due = plan.due(clock())
    polled = 0
    stopped = None
    if due and time.monotonic() < deadline:

        async def poll() -> None:
            nonlocal polled, stopped
            async with client_factory() as client:
                result = await poll_runs(client, due, deadline=deadline, concurrency=concurrency)
            stopped = result.stopped_early
            now = clock()
            for r in result.results:
                plan.record(r, now)
                polled += int(r.polled)

        asyncio.run(poll())
    return TickReport(
        to_archive=plan.to_archive(clock()),
        cursor=plan.dumps(),
        in_flight=len(plan.runs),
        polled=polled,
        overdue=sorted(overdue),
        abandoned=abandoned,
        stopped_early=stopped,
        cursor_recovered=plan.recovered,
        seconds=round(time.monotonic() - started, 3),
        tracked=tracked,
        committed_seq=source.log.last_seq,
    )
