"""Signed webhook deliveries from the simulator (spine-api.md section 5), with injectable faults.

The real Spine pushes ``run.started``, ``run.completed``, ``run.failed`` and ``webhook.ping`` to a
portal-configured endpoint. The simulator does the same when ``SimulatorConfig.webhook_url`` and
``webhook_secret`` are set, so the receiver and the sensors can be tested (and benchmarked)
against deliveries that are late, repeated, reordered, lost or forged on purpose.

Design:

- Everything happens on one private asyncio loop in a daemon thread. API handlers and test code
  only hand work over with ``call_soon_threadsafe``, so a slow or dead receiver never stalls the
  simulated API.
- Runs turn terminal by the simulator clock, not by an event, so a watcher sleeps until the next
  run is due (or until ``World`` says the clock moved) and then emits the terminal event.
- Every delivery is one task: optional fault delay, then attempts with a per-attempt timeout and
  doubling backoff on non-2xx or connection errors. A resend keeps the event id and body and is
  re-signed with a fresh timestamp (the sender enforces the same 300 s window as the receiver).
- The number of unsettled deliveries is bounded (``max_pending``); beyond it an event is recorded
  as ``overflow`` and never sent, like a sender shedding load.
- A run's terminal event waits until its ``run.started`` delivery has settled, so the only way a
  receiver sees ``completed`` before ``started`` is the ``out-of-order`` fault (ground truth
  stays unambiguous).
- Every delivery is recorded (:class:`WebhookDelivery`) for tests and the benchmark.

Faults use the simulator's fault-spec language with the route ``webhook`` (docs/simulator.md).
Probability draws are keyed by (seed, rule, event), so the same seed and the same runs give the
same faults whatever order the background tasks run in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import httpx

from spine_pipeline.webhooks.signature import SIGNATURE_HEADER, sign

from .config import FaultRule, redact_url
from .jsonio import dumps

if TYPE_CHECKING:
    from .world import Run, World

log = logging.getLogger("spine_pipeline.simulator.webhooks")

API_VERSION = "2026-04-01"
USER_AGENT = "Spine-Webhooks/1.0"
ROUTE = "webhook"
RUN_STARTED, RUN_COMPLETED, RUN_FAILED, PING = (
    "run.started",
    "run.completed",
    "run.failed",
    "webhook.ping",
)
TERMINAL_EVENTS: dict[str, str] = {"completed": RUN_COMPLETED, "failed": RUN_FAILED}
"""Terminal status -> event type. ``partial`` has no event (spine-api.md section 5)."""

_ALL_KINDS = frozenset({"duplicate", "out-of-order", "delay", "resend", "drop", "bad-signature"})
_NOT_STARTED_KINDS = _ALL_KINDS - {"out-of-order"}
MAX_BACKOFF_SECONDS = 60.0
PENDING, DELIVERED, FAILED, DROPPED, OVERFLOW, CANCELLED = (
    "pending",
    "delivered",
    "failed",
    "dropped",
    "overflow",
    "cancelled",
)


def envelope_body(event_id: str, event_type: str, created: int, obj: dict[str, Any]) -> bytes:
    """The exact delivery body: compact JSON in the key order of the docs' example.

    Compact separators and raw UTF-8 reproduce the fact sheet's test vector byte for byte.
    """
    envelope = {
        "id": event_id,
        "type": event_type,
        "created": created,
        "livemode": False,
        "api_version": API_VERSION,
        "data": {"object": obj},
    }
    return dumps(envelope).encode("utf-8")


def webhook_object(payload: dict[str, Any]) -> dict[str, Any]:
    """``data.object`` for a run event: the GET /v1/run data with ``result`` lifted to the top.

    That is the documented shape mismatch: in the docs' example ``final_output`` and
    ``artifacts`` sit directly in ``data.object``, while GET nests them under ``result``.
    """
    obj = {k: v for k, v in payload.items() if k != "result"}
    result = payload.get("result")
    if isinstance(result, dict):
        obj.update(result)
    return obj


@dataclass
class WebhookDelivery:
    """Ground truth for one delivery (one POST sequence of one body).

    A ``duplicate`` fault gives two records with the same ``event_id`` (``copy`` "original" and
    "duplicate"); ``resend`` gives a second record with a new id (``copy`` "resend",
    ``original_id`` set). ``faults`` lists the fault kinds applied to the event (on both records).
    ``sent_at`` is the wall time of the first attempt, ``delivered_at`` when a 2xx came back.
    ``outcome``: pending, delivered, failed (attempts exhausted), dropped (fault), overflow
    (queue full) or cancelled (sender stopped first).
    """

    event_id: str
    type: str
    run_id: str | None
    created: int
    header_event_id: str
    body: bytes = field(repr=False)
    faults: tuple[str, ...] = ()
    delay_seconds: float = 0.0
    copy: str = "original"
    original_id: str | None = None
    signature_ok: bool = True
    queued_at: float = 0.0
    outcome: str = PENDING
    attempts: int = 0
    sent_at: float | None = None
    delivered_at: float | None = None
    status_code: int | None = None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        """True once the receiver answered 2xx."""
        return self.outcome == DELIVERED


@dataclass
class _Item:
    """A delivery plus what to do once it settles (bookkeeping for the loop thread only)."""

    record: WebhookDelivery
    then: list[_Item] = field(default_factory=list)
    copy_kind: str | None = None


class WebhookSender:
    """Sends the simulator's webhook deliveries from a background thread (see module doc).

    ``World`` calls :meth:`run_created` and :meth:`clock_moved`; tests and the admin endpoint
    call :meth:`ping`, :meth:`records` and :meth:`wait_idle`. ``start``/``stop`` follow the
    server's lifetime.
    """

    def __init__(
        self,
        world: World,
        *,
        concurrency: int = 8,
        max_pending: int = 10_000,
    ) -> None:
        config = world.config
        if not config.webhook_url or not config.webhook_secret:
            raise ValueError("webhooks need webhook_url and webhook_secret")
        self.world = world
        self.url = config.webhook_url
        self._secret = config.webhook_secret
        self.timeout = config.webhook_timeout_seconds
        self.max_attempts = config.webhook_max_attempts
        self.backoff = config.webhook_backoff_seconds
        self.concurrency = concurrency
        self.max_pending = max_pending
        self._seed = config.seed
        self._lock = threading.Lock()
        self._records: list[WebhookDelivery] = []
        self._unsettled = 0
        self._building = 0
        self._pings = 0
        self._pending_runs: dict[str, Run] = {}
        self._started: dict[str, _Item] = {}
        self._parked: dict[str, _Item] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._accepting = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._wake: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._client: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._loop is not None

    def start(self) -> WebhookSender:
        """Start the delivery thread and wait until it accepts work."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._thread_main, args=(ready,), name="spine-simulator-webhooks", daemon=True
        )
        self._thread.start()
        if not ready.wait(15) or not self._accepting:
            self.stop()
            raise RuntimeError("webhook sender did not start")
        log.info("webhook deliveries to %s", redact_url(self.url))
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel what is still pending (recorded as ``cancelled``) and end the thread."""
        loop, thread, stop = self._loop, self._thread, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop may have closed already
                loop.call_soon_threadsafe(stop.set)
        if thread is not None:
            thread.join(timeout)
        self._thread = None

    def _thread_main(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._main(ready))
        except Exception:  # never take the simulator down with it
            log.exception("webhook sender crashed")
        finally:
            self._accepting = False
            self._loop = None
            ready.set()

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout),
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=self.concurrency),
        )
        watcher = asyncio.create_task(self._watch())
        self._accepting = True
        ready.set()
        try:
            await self._stop.wait()
        finally:
            self._accepting = False  # from here on, new events are recorded as cancelled
            watcher.cancel()
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(watcher, *tasks, return_exceptions=True)
            self._parked.clear()
            with self._lock:
                for record in self._records:
                    if record.outcome == PENDING:
                        record.outcome = CANCELLED
                        self._unsettled -= 1
            await self._client.aclose()

    # ------------------------------------------------------------------ API for World / tests

    def run_created(self, run: Run) -> None:
        """Queue ``run.started`` and watch the run until it is terminal (never blocks)."""
        self._call(self._run_created, run)

    def _run_created(self, run: Run) -> None:
        obj: dict[str, Any] = {"run_id": run.run_id, "status": "running"}
        if run.canvas_on_create:
            obj["canvas_id"] = run.canvas_id
        if self._accepting:
            with self._lock:
                self._pending_runs[run.run_id] = run
            assert self._wake is not None
            self._wake.set()
        self._emit(RUN_STARTED, run.run_id, obj)

    def clock_moved(self) -> None:
        """Re-check which runs are due now (after ``advance``/``finish``/a create)."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)

    def ping(self) -> str:
        """Send a ``webhook.ping`` (the portal's "Send test event"); returns its event id."""
        with self._lock:
            self._pings += 1
            number = self._pings
        event_id, _ = self._event_id(f"{PING}:{number}")
        self._call(self._emit, PING, None, {}, f"{PING}:{number}")
        return event_id

    def records(self) -> list[WebhookDelivery]:
        """A snapshot of every delivery so far, in the order the events were queued."""
        with self._lock:
            return [replace(record) for record in self._records]

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until every due event was emitted and every delivery settled; False on timeout.

        Runs that are still running (for example ``slow`` ones) do not count.
        """
        deadline = time.monotonic() + timeout
        while True:
            now = self.world.now()
            with self._lock:
                idle = (
                    self._unsettled == len(self._parked)
                    and self._building == 0
                    and all(run.finish_at > now for run in self._pending_runs.values())
                )
            if idle:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)

    def summary(self) -> dict[str, Any]:
        """Counts by outcome and type, for the admin endpoint."""
        with self._lock:
            outcomes: dict[str, int] = {}
            types: dict[str, int] = {}
            for record in self._records:
                outcomes[record.outcome] = outcomes.get(record.outcome, 0) + 1
                types[record.type] = types.get(record.type, 0) + 1
        return {"url": redact_url(self.url), "outcomes": outcomes, "types": types}

    # ------------------------------------------------------------------ internals

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the sender loop, counted as in progress until it has run.

        When the loop is not running, ``fn`` runs here and records its event as cancelled.
        """

        def counted() -> None:
            try:
                fn(*args)
            finally:
                with self._lock:
                    self._building -= 1

        with self._lock:
            self._building += 1
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(counted)
                return
            except RuntimeError:  # the loop closed in between
                pass
        counted()

    def _event_id(self, key: str) -> tuple[str, str]:
        """``(evt_<hex>, <uuid>)`` for an event: deterministic from the seed and the event key."""
        value = uuid.UUID(int=random.Random(f"{self._seed}:webhook-id:{key}").getrandbits(128))
        value = uuid.UUID(int=value.int, version=4)
        return f"evt_{value.hex}", str(value)

    def _new_record(
        self, event_type: str, run_id: str | None, obj: dict[str, Any], key: str
    ) -> WebhookDelivery:
        event_id, header_id = self._event_id(key)
        created = int(time.time())
        return WebhookDelivery(
            event_id=event_id,
            type=event_type,
            run_id=run_id,
            created=created,
            header_event_id=header_id,
            body=envelope_body(event_id, event_type, created, obj),
            queued_at=time.time(),
        )

    def _emit(
        self,
        event_type: str,
        run_id: str | None,
        obj: dict[str, Any],
        key: str | None = None,
        after: _Item | None = None,
    ) -> None:
        """Build one event, decide its faults, and queue (or park, or drop) it. Loop thread."""
        key = key or f"{event_type}:{run_id}"
        kinds = _ALL_KINDS if event_type == RUN_STARTED else _NOT_STARTED_KINDS
        delay, rule = self.world.faults.decide_keyed(ROUTE, key, kinds)
        record = self._new_record(event_type, run_id, obj, key)
        faults = (("delay",) if delay else ()) + ((rule.kind,) if rule else ())
        record.faults = faults
        record.delay_seconds = delay
        item = _Item(record)
        self._fault(item, rule)
        self._admit(record)
        if record.outcome != PENDING:
            if record.outcome == OVERFLOW:
                log.warning("webhook queue full; %s %s not sent", event_type, record.event_id)
            item.copy_kind = None
            self._settled(item)
            return
        if event_type == RUN_STARTED and run_id is not None:
            self._started[run_id] = item
            if rule is not None and rule.kind == "out-of-order":
                self._parked[run_id] = item
                return
        if rule is not None and rule.kind == "drop":
            self._finish(item, DROPPED)
            return
        if after is not None and after.record.outcome == PENDING:
            after.then.append(item)
            return
        self._send(item)

    def _admit(self, record: WebhookDelivery) -> None:
        """Record a delivery and take a queue slot for it; when stopping or full, its outcome
        says so (cancelled / overflow) and it is never sent."""
        with self._lock:
            self._records.append(record)
            if not self._accepting:
                record.outcome = CANCELLED
            elif self._unsettled >= self.max_pending:
                record.outcome = OVERFLOW
            else:
                self._unsettled += 1

    def _fault(self, item: _Item, rule: FaultRule | None) -> None:
        if rule is None:
            return
        if rule.kind == "bad-signature":
            item.record.signature_ok = False
        elif rule.kind in ("duplicate", "resend"):
            item.copy_kind = rule.kind

    def _send(self, item: _Item) -> None:
        if not self._accepting:
            return  # still pending: the shutdown marks it cancelled
        task = asyncio.ensure_future(self._attempts(item))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _attempts(self, item: _Item) -> None:
        """Deliver one record: fault delay, then attempts with timeout and doubling backoff."""
        record = item.record
        assert self._client is not None and self._slots is not None
        if record.delay_seconds and record.copy == "original":
            await asyncio.sleep(record.delay_seconds)
        secret = self._secret if record.signature_ok else self._secret + ".wrong"
        for attempt in range(1, self.max_attempts + 1):
            async with self._slots:
                t = int(time.time())
                headers = {
                    "Content-Type": "application/json",
                    "User-Agent": USER_AGENT,
                    SIGNATURE_HEADER: sign(secret, t, record.body),
                    "Spine-Event-Id": record.header_event_id,
                    "Spine-Event-Type": record.type,
                }
                with self._lock:
                    record.attempts = attempt
                    if record.sent_at is None:
                        record.sent_at = time.time()
                try:
                    response = await asyncio.wait_for(
                        self._client.post(self.url, content=record.body, headers=headers),
                        self.timeout,
                    )
                    status: int | None = response.status_code
                    error = None if 200 <= response.status_code < 300 else f"HTTP {status}"
                except Exception as exc:  # any failure is a failed attempt, retried
                    status = None
                    error = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            with self._lock:
                record.status_code = status
                record.error = error
                if error is None:
                    record.delivered_at = time.time()
            if error is None:
                self._finish(item, DELIVERED)
                return
            log.debug("webhook %s attempt %d: %s", record.event_id, attempt, error)
            if attempt < self.max_attempts:
                wait = min(self.backoff * 2 ** (attempt - 1), MAX_BACKOFF_SECONDS)
                await asyncio.sleep(wait)
        self._finish(item, FAILED)

    def _finish(self, item: _Item, outcome: str) -> None:
        with self._lock:
            item.record.outcome = outcome
            self._unsettled -= 1
        self._settled(item)

    def _settled(self, item: _Item) -> None:
        """Follow-ups of a settled delivery: its copy, chained events, a parked ``started``."""
        record = item.record
        followers, item.then = item.then, []
        if item.copy_kind is not None:
            # the copy goes next; events chained behind this one wait for the copy too
            followers = self._queue_copy(record, item.copy_kind, followers)
        for follower in followers:
            self._send(follower)
        if record.type in (RUN_COMPLETED, RUN_FAILED) and record.run_id is not None:
            self._release(record.run_id)

    def _queue_copy(
        self, original: WebhookDelivery, kind: str, followers: list[_Item]
    ) -> list[_Item]:
        """Queue the second delivery of a ``duplicate`` (same id) or ``resend`` (new id) fault.

        Returns the followers to send now: none when the copy is queued (it carries them).
        """
        if kind == "duplicate":
            copy = replace(
                original,
                copy="duplicate",
                outcome=PENDING,
                attempts=0,
                sent_at=None,
                delivered_at=None,
                status_code=None,
                error=None,
                queued_at=time.time(),
            )
        else:
            key = f"{original.type}:{original.run_id or original.event_id}:resend"
            event_id, header_id = self._event_id(key)
            body = original.body.replace(
                f'"id":"{original.event_id}"'.encode(), f'"id":"{event_id}"'.encode(), 1
            )
            copy = replace(
                original,
                event_id=event_id,
                header_event_id=header_id,
                body=body,
                copy="resend",
                original_id=original.event_id,
                outcome=PENDING,
                attempts=0,
                sent_at=None,
                delivered_at=None,
                status_code=None,
                error=None,
                queued_at=time.time(),
            )
        self._admit(copy)
        if copy.outcome != PENDING:
            return followers
        self._send(_Item(copy, then=followers))
        return []

    def _release(self, run_id: str) -> None:
        """Send a ``run.started`` held back by ``out-of-order`` (its run's end was handled)."""
        item = self._parked.pop(run_id, None)
        if item is not None:
            self._send(item)

    async def _watch(self) -> None:
        """Emit terminal events as runs become due on the simulator clock."""
        assert self._wake is not None
        while True:
            self._wake.clear()
            now = self.world.now()
            due: list[Run] = []
            next_at = math.inf
            with self._lock:
                for run in self._pending_runs.values():
                    if run.finish_at <= now:
                        due.append(run)
                    else:
                        next_at = min(next_at, run.finish_at)
                for run in due:
                    del self._pending_runs[run.run_id]
                self._building += len(due)
            for run in sorted(due, key=lambda r: (r.finish_at, r.index)):
                self._terminal(run)
            wait = min(max(next_at - self.world.now(), 0.0), 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    def _terminal(self, run: Run) -> None:
        event_type = TERMINAL_EVENTS.get(run.outcome)
        if event_type is None:  # partial: no event; a held-back started may go now
            with self._lock:
                self._building -= 1
            self._started.pop(run.run_id, None)
            self._release(run.run_id)
            return
        task = asyncio.ensure_future(self._terminal_event(run, event_type))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _terminal_event(self, run: Run, event_type: str) -> None:
        """Build the terminal payload off the loop (it generates content) and emit it."""
        loop = asyncio.get_running_loop()
        try:
            payload = await loop.run_in_executor(None, self.world.terminal_payload, run)
            started = self._started.pop(run.run_id, None)
            if started is not None and run.run_id in self._parked:
                started = None  # out-of-order: the terminal event goes first
            self._emit(event_type, run.run_id, webhook_object(payload), None, started)
        finally:
            with self._lock:
                self._building -= 1
