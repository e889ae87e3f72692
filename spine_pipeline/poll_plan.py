"""One poll tick: which in-flight runs to ask about now, and what to do with the answers.

Plain library (no Dagster) so that the sensor stays thin and the logic is testable on its
own. Durable truth comes from the archive root: the ledger says which runs are tracked, the
manifest log which are archived. The plan (a Dagster cursor) only schedules the next poll
of each run; if it is lost or corrupt, every in-flight run is simply due again.

Timing rules: a run is polled 15 s after it was last seen running, backing off to 60 s
(15, 30, 60, 60, ...), like Spine's own guidance. Terminal runs are handed to archiving in
batches and re-requested only if still unarchived 10 minutes later (by whichever sensor
handed them: `may_hand`). A run in flight for more than 3 h is overdue; after 24 h it is
abandoned (recorded in the ledger).

Webhook events (the receiver's inbox, `webhooks/inbox.py`) only hurry polling: a
`run.completed`/`run.failed` for an in-flight run makes it due now (`PollPlan.wake`),
and with `SPINE_TRACK_FROM_WEBHOOKS=1` a `run.started` for a run nobody tracks starts
tracking it. An event never makes a run terminal: the run is still fetched from Spine,
so a stale or forged (but validly signed) event costs a poll, never a wrong archive
(docs/decisions.md). `run_inbox_tick` is the fast inbox sensor's tick: it reads only the
inbox and hands the runs those events name, once Spine confirms they are terminal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from spine_pipeline.archive.layout import manifest_key
from spine_pipeline.archive.ledger import (
    ABANDON_AFTER,
    Ledger,
    TrackedRun,
    in_flight_for,
    is_overdue,
    plausible_run_id,
)
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.stores import StoreError
from spine_pipeline.settings import (
    Settings,
)
from spine_pipeline.spine import AsyncSpineClient
from spine_pipeline.spine.poll_pass import PollResult, poll_runs
from spine_pipeline.webhooks.inbox import Inbox, InboxEvent

log = logging.getLogger(__name__)

PLAN_VERSION = 1


def _cursor_doc(cursor: str) -> dict[str, Any]:
    """A sensor cursor's JSON object, of this `PLAN_VERSION`; `ValueError` otherwise (the
    one rule both sensors' cursors are read by: an unknown cursor is started over)."""
    doc = json.loads(cursor)
    if not isinstance(doc, dict) or doc.get("v") != PLAN_VERSION:
        raise ValueError("unknown cursor version")
    return doc


#: Webhook events that say a run ended (`partial` has none): the run is polled at once.
TERMINAL_EVENT_TYPES = ("run.completed", "run.failed")
#: The webhook event that may start tracking a run (`SPINE_TRACK_FROM_WEBHOOKS=1`).
STARTED_EVENT_TYPE = "run.started"
#: Inbox events one tick reads at most: each is one store read, and the rest wait for the
#: next tick (the inbox cursor never skips one).
INBOX_LIMIT = 200
#: The share of a poll tick's budget the inbox read may take; polling keeps the rest.
INBOX_SHARE = 0.25
#: The fast inbox sensor's tick budget (the poll budget when that is smaller): it runs
#: every few seconds, so a slow store must not hold it for long.
INBOX_TICK_BUDGET_SECONDS = 10.0
#: Runs the inbox sensor remembers having handed to archiving (until they are ingested by
#: the audit database, or the re-request grace passes); beyond it the oldest are forgotten.
INBOX_HANDED_MAX = 5000

T = TypeVar("T")


def terminal_event_runs(events: Iterable[InboxEvent]) -> list[str]:
    """The runs that terminal events name, once each, in event order: runs to poll now.

    Duplicates (a resend of a (run, type) under a new id, which the inbox flags) are not
    acted on again. What an event may do to a run is this and only this: make it due. It
    never says the run is terminal; Spine's answer to the poll does.
    """
    return list(
        dict.fromkeys(
            e.run_id
            for e in events
            if e.type in TERMINAL_EVENT_TYPES and not e.duplicate and e.run_id is not None
        )
    )


def started_event_runs(events: Iterable[InboxEvent]) -> list[str]:
    """The runs that (non-duplicate) `run.started` events name, once each, in event order."""
    return list(
        dict.fromkeys(
            e.run_id
            for e in events
            if e.type == STARTED_EVENT_TYPE and not e.duplicate and e.run_id is not None
        )
    )


def may_hand(requested: float, now: float, rerequest: float) -> bool:
    """Whether a terminal run may be handed to archiving now: never handed, or handed more
    than `rerequest` seconds ago and still not archived. The one rule of both sensors."""
    return not requested or now - requested > rerequest


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
    #: Where the sensor is in the webhook inbox (`Inbox.since`'s cursor); None reads the
    #: inbox's look-back window again, which only makes in-flight runs due once more.
    inbox: str | None = None

    @classmethod
    def loads(cls, cursor: str | None) -> PollPlan:
        if not cursor:
            return cls()
        try:
            doc = _cursor_doc(cursor)
            runs = {str(k): RunSchedule.unpack(v) for k, v in doc["runs"].items()}
        except (ValueError, TypeError, KeyError, AttributeError):
            return cls(recovered=True)
        inbox = doc.get("inbox")
        return cls(runs=runs, inbox=inbox if isinstance(inbox, str) else None)

    def dumps(self) -> str:
        packed = {k: v.pack() for k, v in sorted(self.runs.items())}
        doc: dict[str, object] = {"v": PLAN_VERSION, "runs": packed}
        if self.inbox is not None:
            doc["inbox"] = self.inbox
        return json.dumps(doc, separators=(",", ":"))

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

    def wake(self, run_ids: Iterable[str]) -> list[str]:
        """Make these runs due now, ahead of the others (a terminal event named them).

        Their backoff is skipped once, not reset: if Spine still says running (a late or
        forged event), the next poll comes after the run's usual interval. Runs the plan
        does not hold (untracked, archived) or already knows terminal are left alone.
        Returns the runs woken.
        """
        woken = []
        for run_id in run_ids:
            entry = self.runs.get(run_id)
            if entry is not None and not _is_terminal(entry.status):
                entry.next_poll = 0.0
                woken.append(run_id)
        return woken

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

    def to_archive(self, now: float, handed_elsewhere: HandedElsewhere | None = None) -> list[str]:
        """Terminal runs not yet handed to archiving (or handed long ago and still not done).

        `handed_elsewhere(since)` names runs another sensor (the inbox sensor) or a person
        handed to archiving since then, with when: asked only when some run is ready, so
        that a run is not handed twice while its archive run is queued or running.
        """
        rerequest = Settings.from_env().poll_rerequest_seconds
        out = [
            run_id
            for run_id, s in sorted(self.runs.items())
            if _is_terminal(s.status) and may_hand(s.requested, now, rerequest)
        ]
        if out and handed_elsewhere is not None:
            elsewhere = handed_elsewhere(now - rerequest)
            for run_id in out:
                entry = self.runs[run_id]
                entry.requested = max(entry.requested, elsewhere.get(run_id, 0.0))
            out = [r for r in out if may_hand(self.runs[r].requested, now, rerequest)]
        for run_id in out:
            self.runs[run_id].requested = now
        return out


#: `handed_elsewhere(since)`: run id -> when an archive run naming it was requested, for
#: the archive runs requested since then (the sensors read it from the Dagster instance).
HandedElsewhere = Callable[[float], Mapping[str, float]]


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
    events: int = 0  # webhook inbox events read
    woken: list[str] = field(default_factory=list)  # runs a terminal event made due now
    tracked_from_events: list[str] = field(default_factory=list)  # run.started, tracked now
    inbox_error: str | None = None  # why the inbox could not be read this tick


class StorageTimeout(RuntimeError):
    """The archive store did not answer within the tick's budget (the tick fails, cursor kept)."""


@dataclass
class InboxRead:
    """What one bounded read of the webhook inbox gave.

    `cursor` is the inbox cursor to keep: the next one after a read, the old one after an
    `error` (the same events are read again next time). `tracked` are the tracking records
    written for `run.started` events of runs nobody tracked (when asked to).
    """

    events: list[InboxEvent]
    cursor: str | None
    tracked: list[TrackedRun] = field(default_factory=list)
    error: str | None = None


def _within(
    lock: threading.Lock,
    fn: Callable[[], T],
    seconds: float,
    what: str,
    then: str = "this tick is skipped and its cursor kept",
) -> T:
    """`fn()` in a worker thread holding `lock`, given up after `seconds` (`StorageTimeout`).

    A store that hangs or retries must not hold a tick past its budget. The call goes on in
    the background (its result is dropped, its caches kept) and holds `lock` until it ends,
    so the next tick waits for it, within its own budget, instead of piling up readers.
    """
    done: dict[str, object] = {}

    def call() -> None:
        try:
            done["value"] = fn()
        except BaseException as exc:  # handed to the caller below
            done["error"] = exc
        finally:
            lock.release()

    if not lock.acquire(timeout=max(0.0, seconds)):
        raise StorageTimeout(
            f"archive store: the previous tick's read is still running after {seconds:.0f}s"
        )
    worker = threading.Thread(target=call, name="spine-store-read", daemon=True)
    worker.start()
    worker.join(max(0.0, seconds))
    if worker.is_alive():
        raise StorageTimeout(f"archive store did not answer within {seconds:.0f}s ({what}); {then}")
    if "error" in done:
        raise done["error"]  # type: ignore[misc]
    return done["value"]  # type: ignore[return-value]


class InFlightSource:
    """In-flight runs from the ledger and manifest log, cached between ticks, and the
    webhook inbox in the same archive root.

    Tracking records and manifests are immutable, so a long-lived process (the Dagster
    code server) reads each one once; a tick costs a listing of two day-partitions and one
    probe for a new manifest. Both sensors share one source per archive root.
    """

    def __init__(self, ledger: Ledger, log: ManifestLog) -> None:
        self.ledger = ledger
        self.log = log
        self.inbox = Inbox(ledger.store)
        self._lock = threading.Lock()  # one reader of the caches at a time
        self._inbox_lock = threading.Lock()  # one inbox read at a time

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
        """`load`, but give up after `seconds` (`StorageTimeout`); the read goes on in the
        background and fills the caches for the next tick."""
        return _within(self._lock, lambda: self._load(now), seconds, "ledger and manifest reads")

    def read_events_within(
        self,
        cursor: str | None,
        now: datetime,
        seconds: float,
        *,
        limit: int = INBOX_LIMIT,
        track_unknown: Container[str] | None = None,
    ) -> InboxRead:
        """Inbox events since `cursor`, read within `seconds`; never raises for the store.

        With `track_unknown` (the runs known already: in flight or archived), each
        `run.started` naming another run starts tracking it, as `spine-pipeline track`
        does (source `webhook`, request name unknown). The events only hurry polling, so
        a store that fails or hangs here costs this tick its events, not the tick.
        """

        def read() -> InboxRead:
            events, after = self.inbox.since(cursor, now=now, limit=limit)
            tracked = []
            if track_unknown is not None:
                for run_id in started_event_runs(events):
                    if run_id in track_unknown or run_id in self.log.committed_runs:
                        continue
                    if not plausible_run_id(run_id):
                        log.warning("not tracking %r from a webhook: not a ledger run id", run_id)
                        continue
                    record = self.ledger.track_record(run_id, source="webhook", now=now)
                    if record is not None:
                        tracked.append(record)
            return InboxRead(events, after, tracked)

        try:
            return _within(
                self._inbox_lock, read, seconds, "webhook inbox reads", "read again next tick"
            )
        except (StorageTimeout, StoreError, OSError) as exc:
            return InboxRead([], cursor, error=str(exc))


def run_tick(
    source: InFlightSource,
    client_factory: Callable[[], AsyncSpineClient],
    cursor: str | None,
    *,
    budget_seconds: float = 40.0,
    concurrency: int = 64,
    clock: Callable[[], float] = time.time,
    handed_elsewhere: HandedElsewhere | None = None,
    track_from_webhooks: bool = False,
) -> TickReport:
    """Poll what is due within the budget; return runs to archive and the next cursor.

    The budget bounds the whole tick: reading the ledger and manifests (`StorageTimeout` if
    the store does not answer in time), then the new webhook events (a share of the budget;
    skipped, cursor kept, if the store is slow), then polling, which stops at the deadline.
    Terminal events make their runs due now; with `track_from_webhooks`, `run.started`
    events track runs nobody tracks (see `InFlightSource.read_events_within`).
    """
    started = time.monotonic()
    deadline = started + max(1.0, budget_seconds - 2.0)  # keep a margin for the caller
    now_dt = datetime.fromtimestamp(clock(), UTC)
    tracked = source.load_within(now_dt, deadline - time.monotonic())
    plan = PollPlan.loads(cursor)
    read = source.read_events_within(
        plan.inbox,
        now_dt,
        min(deadline - time.monotonic(), budget_seconds * INBOX_SHARE),
        track_unknown=tracked if track_from_webhooks else None,
    )
    plan.inbox = read.cursor
    for record in read.tracked:
        tracked.setdefault(record.run_id, record)
    plan.sync(set(tracked))

    overdue, abandoned = [], []
    for run_id, t in tracked.items():
        if in_flight_for(t, now_dt) > ABANDON_AFTER and not _is_terminal(plan.runs[run_id].status):
            if source.ledger.abandon(run_id, f"not terminal {ABANDON_AFTER} after submission"):
                abandoned.append(run_id)
            plan.runs.pop(run_id, None)
        elif is_overdue(t, now_dt) and not _is_terminal(plan.runs[run_id].status):
            overdue.append(run_id)

    woken = plan.wake(terminal_event_runs(read.events))
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
        to_archive=plan.to_archive(clock(), handed_elsewhere),
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
        events=len(read.events),
        woken=woken,
        tracked_from_events=[t.run_id for t in read.tracked],
        inbox_error=read.error,
    )


# -- the fast inbox sensor ------------------------------------------------------------------


@dataclass
class InboxPlan:
    """The inbox sensor's cursor: its place in the inbox, and the runs it handed to
    archiving (with when) that the audit database has not ingested yet."""

    inbox: str | None = None
    handed: dict[str, float] = field(default_factory=dict)
    recovered: bool = False

    @classmethod
    def loads(cls, cursor: str | None) -> InboxPlan:
        if not cursor:
            return cls()
        try:
            doc = _cursor_doc(cursor)
            inbox = doc.get("inbox")
            if inbox is not None and not isinstance(inbox, str):
                raise ValueError("bad inbox cursor")
            handed = {str(k): float(v) for k, v in doc.get("handed", {}).items()}
        except (ValueError, TypeError, AttributeError):
            return cls(recovered=True)
        return cls(inbox=inbox, handed=handed)

    def dumps(self) -> str:
        doc: dict[str, object] = {"v": PLAN_VERSION, "inbox": self.inbox}
        doc["handed"] = {k: round(v, 3) for k, v in sorted(self.handed.items())}
        return json.dumps(doc, separators=(",", ":"))


@dataclass
class InboxTickReport:
    """What one inbox-sensor tick did; the sensor turns it into run requests and log lines."""

    to_archive: list[str]  # in-flight runs Spine says are terminal, not handed yet
    cursor: str
    events: int  # inbox events read
    named: list[str]  # in-flight runs that terminal events named
    not_terminal: list[str]  # ... of which Spine did not confirm the end (left to polling)
    tracked: dict[str, TrackedRun]  # in-flight runs' tracking records (for the run config)
    audit_waits: bool  # runs it handed are committed and not yet in the audit database
    committed_seq: int
    inbox_error: str | None
    stopped_early: str | None
    cursor_recovered: bool
    seconds: float


def run_inbox_tick(
    source: InFlightSource,
    client_factory: Callable[[], AsyncSpineClient],
    cursor: str | None,
    *,
    ingested_seq: Callable[[], int],
    handed_elsewhere: HandedElsewhere | None = None,
    budget_seconds: float = INBOX_TICK_BUDGET_SECONDS,
    clock: Callable[[], float] = time.time,
) -> InboxTickReport:
    """One tick of the fast inbox sensor: new terminal events -> runs to archive now.

    Reads the inbox events since `cursor` (a bounded number, within the budget). For the
    in-flight runs that terminal events name, it asks Spine (one GET each, as a poll): the
    ones Spine says are terminal and nobody handed to archiving recently (`may_hand`, with
    `handed_elsewhere` from the Dagster instance) are returned to archive. A run Spine says
    is still running is left to the poll sensor, whatever the event said.

    It also follows the runs it handed until the audit database (`ingested_seq()`, the
    last manifest it ingested) has them: `audit_waits` says a refresh is wanted.
    A store that does not answer fails the tick (`StorageTimeout`) with its cursor kept,
    so no event is lost; one that fails the inbox read costs this tick, cursor kept.
    """
    started = time.monotonic()
    deadline = started + max(1.0, budget_seconds - 1.0)
    now_dt = datetime.fromtimestamp(clock(), UTC)
    plan = InboxPlan.loads(cursor)
    read = source.read_events_within(plan.inbox, now_dt, (deadline - time.monotonic()) / 2)
    runs = terminal_event_runs(read.events)
    tracked: dict[str, TrackedRun] = {}
    if runs or plan.handed:  # the manifest log is refreshed by this read
        tracked = source.load_within(now_dt, deadline - time.monotonic())
    plan.inbox = read.cursor
    named = [r for r in runs if r in tracked]
    terminal: list[str] = []
    stopped = None
    if named and time.monotonic() < deadline:

        async def poll() -> None:
            nonlocal stopped
            async with client_factory() as client:
                result = await poll_runs(client, named, deadline=deadline)
            stopped = result.stopped_early
            terminal.extend(r.run_id for r in result.results if r.is_terminal)

        asyncio.run(poll())
    now = clock()
    rerequest = Settings.from_env().poll_rerequest_seconds
    to_archive: list[str] = []
    if terminal:
        elsewhere = handed_elsewhere(now - rerequest) if handed_elsewhere else {}
        to_archive = [
            r
            for r in terminal
            if may_hand(max(elsewhere.get(r, 0.0), plan.handed.get(r, 0.0)), now, rerequest)
        ]
    for run_id in to_archive:
        plan.handed[run_id] = now
    audit_waits = _follow_handed(plan, source.log.committed_runs, ingested_seq, now, rerequest)
    return InboxTickReport(
        to_archive=to_archive,
        cursor=plan.dumps(),
        events=len(read.events),
        named=named,
        not_terminal=[r for r in named if r not in terminal],
        tracked={r: tracked[r] for r in to_archive},
        audit_waits=audit_waits,
        committed_seq=source.log.last_seq,
        inbox_error=read.error,
        stopped_early=stopped,
        cursor_recovered=plan.recovered,
        seconds=round(time.monotonic() - started, 3),
    )


def _follow_handed(
    plan: InboxPlan,
    committed: Mapping[str, int],
    ingested_seq: Callable[[], int],
    now: float,
    rerequest: float,
) -> bool:
    """Forget handed runs the audit database has (or that waited past the re-request grace:
    the poll sensor takes them over); True if some are committed but not ingested yet."""
    for run_id, when in list(plan.handed.items()):
        if now - when > rerequest:
            del plan.handed[run_id]
    for run_id, _ in sorted(plan.handed.items(), key=lambda kv: kv[1])[:-INBOX_HANDED_MAX]:
        del plan.handed[run_id]
    seqs = {r: committed[r] for r in plan.handed if r in committed}
    if not seqs:
        return False
    ingested = ingested_seq()
    for run_id, seq in seqs.items():
        if seq <= ingested:
            del plan.handed[run_id]
    return any(seq > ingested for seq in seqs.values())
