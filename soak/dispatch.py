"""Dispatch: the daemon's part, emulated: sensor ticks, the run queue, launches onto workers.

The poll sensor is evaluated here every `tick_every` seconds (through the driver, as the
daemon evaluates it); the runs it requests are queued and each is sent to an idle archive
worker, like Dagster's QueuedRunCoordinator with a launcher that reuses warm processes. The
workers' replies come back as events: a finished run, a submitted wave, a worker that exited
(killed on purpose, or crashed), which the warm spare replaces.
"""

from __future__ import annotations

import queue
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import dagster as dg

from soak.chaos import Chaos
from soak.setup import SoakError
from soak.workers import Job, Worker
from spine_pipeline.defs.names import ARCHIVE_JOB, AUDIT_JOB, archive_run_ids
from spine_pipeline.driver import (
    apply_partition_requests,
    evaluate_poll_sensor,
    launch_requested,
    requested_job,
    sensor_tags,
)

if TYPE_CHECKING:
    from soak.setup import Rig

#: Ticks a restarted sensor process gets to succeed (see `Dispatcher.restart_tick`).
_RESTART_TICKS = 4


class Dispatcher:
    """Owns the run queue, the sensor cursor and the worker roles (archive, spare, submitter)."""

    def __init__(
        self, rig: Rig, chaos: Chaos, on_submitted: Callable[[dict[str, Any]], None]
    ) -> None:
        self.rig = rig
        self.chaos = chaos
        self.on_submitted = on_submitted
        self.queue: deque[Job] = deque()
        self.cursor: str | None = None
        self.ticks = 0
        self.dispatches = 0
        self.spare: Worker | None = None  # warm: the next restarted sensor or archive worker
        self.submitter: Worker | None = None
        self.tick_windows: list[tuple[float, float]] = []  # (start, end) of each ok tick

    # -- workers ----------------------------------------------------------------------------

    def start_workers(self, timeout: float) -> None:
        """Spawn the archive workers, the warm spare and the submitter; wait until all serve."""
        pool = self.rig.pool
        for _ in range(self.rig.cfg.workers):
            pool.spawn("archive")
        self.spare = pool.spawn("spare")
        self.submitter = pool.spawn("submitter")
        deadline = time.monotonic() + timeout
        while any(not w.ready for w in pool.workers):
            if time.monotonic() > deadline:
                raise SoakError("worker processes did not start (see logs/)")
            self.drain_events(0.2)

    @property
    def busy(self) -> int:
        """Workers running a job now."""
        return sum(1 for w in self.rig.pool.workers if w.job)

    # -- the sensor -------------------------------------------------------------------------

    def tick(self) -> None:
        """One sensor tick in this process, or (chaos) in a fresh one with its cursor changed."""
        self.ticks += 1
        spare_ready = self.spare is not None and self.spare.ready
        mode = self.chaos.sensor_restart(self.ticks, spare_ready)
        if mode is not None:
            self.restart_tick(mode)
            return
        rig = self.rig
        started = time.monotonic()
        try:
            result = evaluate_poll_sensor(rig.defs, rig.instance, self.cursor)
        except Exception as exc:  # as in the daemon: a failed tick does not move the cursor
            error = f"{type(exc).__name__}: {str(exc)[:200]}"
            self._failed_tick(error, time.monotonic() - started)
            return
        self._tick_done(started, time.monotonic())
        self.cursor = result.cursor
        launch_requested(rig.instance, result, self.enqueue_request)

    def _tick_done(self, started: float, ended: float) -> None:
        self.rig.report.tick_seconds.append(round(ended - started, 3))
        self.tick_windows.append((started, ended))

    def _failed_tick(self, error: str, seconds: float) -> None:
        self.rig.report.failed_ticks.append(error)
        self.rig.report.figures.setdefault("failed_tick_seconds", []).append(round(seconds, 2))

    def restart_tick(self, mode: str) -> None:
        """The sensor in a fresh process (empty caches), with its cursor kept, lost or garbage.

        A restarted daemon keeps ticking: with a large ledger its first ticks may stop at the
        budget while the fresh process reads every tracking record in the background, so the
        same process ticks again (up to `_RESTART_TICKS` times, with the cursor the failed
        tick left in place, as Dagster does).
        """
        rig = self.rig
        spare = self.spare
        assert spare is not None
        cursor = self.chaos.restarted_cursor(mode, self.cursor)
        record: dict[str, Any] = {"mode": mode, "ok": False, "attempts": 0}
        rig.report.sensor_restarts.append(record)
        reply: dict[str, Any] = {}
        for _ in range(_RESTART_TICKS):
            started = time.monotonic()
            spare.send(op="tick", cursor=cursor)
            reply = self.wait_for(spare, "tick", timeout=120)
            record["attempts"] += 1
            if reply.get("ok"):
                break
            self._failed_tick(str(reply.get("error")), float(reply.get("seconds") or 0.0))
            until = time.monotonic() + rig.cfg.tick_every  # the daemon's next tick
            while time.monotonic() < until:
                self.drain_events(0.1)
                self.dispatch()
        self.spare = None
        rig.pool.retire(spare)
        self.spare = rig.pool.spawn("spare")
        record |= {"ok": reply.get("ok", False), "seconds": reply.get("seconds")}
        if not reply.get("ok"):
            return
        rig.report.tick_seconds.append(reply["seconds"])
        self.tick_windows.append((started, time.monotonic()))
        self.cursor = reply["cursor"]
        # The fresh process evaluated the sensor; its requests are launched here, as ever.
        apply_partition_requests(
            rig.instance,
            [
                dg.AddDynamicPartitionsRequest(
                    partitions_def_name=p["name"], partition_keys=p["keys"]
                )
                for p in reply["partitions"]
            ],
        )
        for request in reply["requests"]:
            self.enqueue(request["run_config"], sensor_tags(request["tags"]), request["job"])
        record["requests"] = len(reply["requests"])

    def wait_for(self, worker: Worker, event: str, timeout: float) -> dict[str, Any]:
        """The next `event` from `worker`; every other event is handled meanwhile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                who, message = self.rig.pool.events.get(timeout=0.2)
            except queue.Empty:
                continue
            if who is worker and message.get("event") == event:
                return message
            self._handle(who, message)
        raise SoakError(f"{worker.name} did not answer {event!r} within {timeout:.0f}s")

    # -- the run queue ----------------------------------------------------------------------

    def enqueue_request(self, request: dg.RunRequest) -> None:
        """Queue a run the sensor requested, tagged as the daemon tags it."""
        self.enqueue(dict(request.run_config), sensor_tags(request.tags), requested_job(request))

    def enqueue(
        self, run_config: dict[str, Any], tags: dict[str, str], job_name: str = ARCHIVE_JOB
    ) -> None:
        if job_name == AUDIT_JOB:
            # The daemon would have created a QUEUED run, which the sensor sees and does not
            # request again; this queue is not in Dagster, so keep one refresh pending at most.
            if any(j.job_name == AUDIT_JOB for j in self.queue):
                self.rig.report.events["audit refresh already queued"] += 1
                return
            self.queue.append(Job(str(uuid.uuid4()), [], run_config, tags, AUDIT_JOB))
            return
        ids = archive_run_ids(run_config)
        self.queue.append(Job(str(uuid.uuid4()), ids, run_config, tags, job_name))

    def dispatch(self) -> None:
        """Send queued runs to idle archive workers (chaos may arm a kill for each)."""
        rig = self.rig
        for worker in list(rig.pool.workers):
            if not self.queue:
                return
            if worker in (self.spare, self.submitter):
                continue
            if not worker.ready or worker.job or worker.exiting:
                continue
            job = self.queue.popleft()
            self.dispatches += 1
            job.kill_trigger = self.chaos.kill_trigger(job, self.dispatches)
            job.started = time.monotonic()
            with rig.lock:
                worker.job = job
            worker.send(
                op="archive",
                job=job.job_name,
                dagster_run_id=job.dagster_run_id,
                run_config=job.run_config,
                tags={**job.tags, "spine/soak": "archive"},
            )
            self._jobs(job)["dispatched"] += 1
            if job.kill_trigger:
                self.chaos.arm_kill(worker, job)
            self.chaos.maybe_restart_s3(self.dispatches)

    def settle(self, deadline: float) -> None:
        """The end: let the last runs finish, then one audit refresh catches up the database.

        Anything still queued is a re-request of archived runs, so the queue is dropped.
        """
        pool = self.rig.pool
        self.queue.clear()
        while any(w.job for w in pool.workers) or any(not w.ready for w in pool.workers):
            if time.monotonic() > deadline:
                raise SoakError("archive workers did not finish their last batches")
            self.drain_events(0.2)
        self.enqueue({}, {}, AUDIT_JOB)
        self.dispatch()
        while any(w.job for w in pool.workers):
            if time.monotonic() > deadline:
                raise SoakError("the final audit refresh did not finish")
            self.drain_events(0.2)

    def _jobs(self, job: Job | None) -> Counter[str]:
        """The counters of the job's kind (archive batches or audit refreshes)."""
        if job is not None and job.job_name == AUDIT_JOB:
            return self.rig.report.audit_jobs
        return self.rig.report.archive_jobs

    # -- worker events ----------------------------------------------------------------------

    def drain_events(self, timeout: float) -> None:
        """Handle every worker event waiting, after waiting up to `timeout` for the first."""
        events = self.rig.pool.events
        try:
            who, message = events.get(timeout=timeout)
        except queue.Empty:
            return
        self._handle(who, message)
        while True:
            try:
                who, message = events.get_nowait()
            except queue.Empty:
                return
            self._handle(who, message)

    def _handle(self, worker: Worker, message: dict[str, Any]) -> None:
        report = self.rig.report
        event = message.get("event")
        if event == "ready":
            worker.ready = True
        elif event == "done":
            with self.rig.lock:
                job, worker.job = worker.job, None
            outcome = "succeeded" if message.get("ok") else "failed"
            self._jobs(job)[outcome] += 1
            if message.get("error"):
                name = job.job_name if job is not None else "?"
                errors = report.figures.setdefault("worker_errors", [])
                errors.append(f"{name}: {message['error']}")
            if job is not None:
                report.figures.setdefault("job_seconds", []).append(message.get("seconds"))
        elif event == "submitted":
            worker.job = None
            self.on_submitted(message)
        elif event == "exit":
            self._on_exit(worker, message)

    def _on_exit(self, worker: Worker, message: dict[str, Any]) -> None:
        pool = self.rig.pool
        job = worker.job
        pool.reap(worker)
        if worker.exiting and not worker.killed:
            return
        if worker.killed:
            self._jobs(job)["killed"] += 1
            if job is not None:
                self.chaos.after_kill(job)
        else:
            self._jobs(job)["crashed"] += 1
            self.rig.report.figures.setdefault("crashes", []).append(
                f"{worker.name} rc={message.get('rc')}"
            )
        if worker is self.spare:
            self.spare = pool.spawn("spare")
            return
        if worker is self.submitter:
            self.submitter = pool.spawn("submitter")
            return
        # The warm spare replaces the lost archive worker; a new spare starts in the background.
        if self.spare is not None:
            self.spare = None
        else:
            pool.spawn("archive")
        self.spare = pool.spawn("spare")
