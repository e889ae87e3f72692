"""What `dagster dev`'s daemon does for a burst, driven in process: tick, queue, launch.

The poll sensor is evaluated here on a short interval; the runs it requests go to a queue
and are executed by `workers` warm run-worker processes at a time (the soak's workers: the
real definitions, `execute_in_process` against the shared DAGSTER_HOME), like Dagster's
QueuedRunCoordinator with `max_concurrent_runs` and a launcher that reuses warm processes.
As with the daemon, a run the sensor requested is visible to the next tick (here: the queue
holds at most one audit refresh, which the sensor would see as a queued run).
"""

from __future__ import annotations

import contextlib
import os
import queue
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from soak.workers import Job, Worker, WorkerPool
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.defs.names import AUDIT_JOB
from spine_pipeline.driver import requested_job, sensor_tags, tick


@dataclass
class DaemonFacts:
    """What the emulated daemon did for one burst."""

    ticks: int = 0
    archive_runs: int = 0
    audit_refreshes: int = 0
    failed_runs: list[str] = field(default_factory=list)


@contextlib.contextmanager
def run_workers(count: int, log_dir: Path, timeout: float = 180.0) -> Iterator[WorkerPool]:
    """`count` warm run workers on the current environment (DAGSTER_HOME, SPINE_*)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    pool = WorkerPool(dict(os.environ), log_dir)
    try:
        for _ in range(count):
            pool.spawn("run")
        deadline = time.monotonic() + timeout
        while not all(w.ready for w in pool.workers):
            if time.monotonic() > deadline:
                raise RuntimeError(f"run workers did not start (see {log_dir})")
            who, message = pool.events.get(timeout=timeout)
            if message.get("event") == "ready":
                who.ready = True
            elif message.get("event") == "exit":
                raise RuntimeError(f"a run worker exited at start (see {log_dir})")
        yield pool
    finally:
        pool.shutdown()


def drive_burst(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    pool: WorkerPool,
    log: ManifestLog,
    expected: int,
    *,
    tick_every: float,
    timeout: float,
) -> DaemonFacts:
    """Tick and launch until `expected` runs are committed and a tick after the last run
    finished asks for nothing (the audit database has caught up)."""
    facts = DaemonFacts()
    pending: deque[Job] = deque()
    running: dict[str, Job] = {}  # worker name -> job
    cursor: str | None = None
    last_tick = float("-inf")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pending and time.monotonic() - last_tick >= tick_every:
            idle_before = not running
            last_tick = time.monotonic()
            result = tick(defs, instance, cursor, lambda r: _enqueue(r, pending, running, facts))
            facts.ticks += 1
            cursor = result.cursor
            log.refresh()
            if idle_before and not result.run_requests and len(log.committed_runs) >= expected:
                return facts
        for worker in pool.workers:
            if pending and worker.ready and worker.name not in running:
                job = pending.popleft()
                running[worker.name] = job
                worker.send(
                    op="archive",
                    job=job.job_name,
                    dagster_run_id=job.dagster_run_id,
                    run_config=job.run_config,
                    tags=job.tags,
                )
        _collect(pool, running, facts)
    raise RuntimeError(f"burst not archived within {timeout:.0f}s: {log.last_seq} manifests")


def _enqueue(
    request: dg.RunRequest, pending: deque[Job], running: dict[str, Job], facts: DaemonFacts
) -> None:
    name = requested_job(request)
    if name == AUDIT_JOB:
        if any(j.job_name == AUDIT_JOB for j in [*pending, *running.values()]):
            return  # the daemon's queued run would have stopped the sensor asking again
        facts.audit_refreshes += 1
    else:
        facts.archive_runs += 1
    job = Job(str(uuid.uuid4()), [], dict(request.run_config), sensor_tags(request.tags), name)
    pending.append(job)


def _collect(pool: WorkerPool, running: dict[str, Job], facts: DaemonFacts) -> None:
    try:
        who, message = pool.events.get(timeout=0.05)
    except queue.Empty:
        return
    while True:
        _handle(who, message, running, facts)
        try:
            who, message = pool.events.get_nowait()
        except queue.Empty:
            return


def _handle(
    worker: Worker, message: dict[str, Any], running: dict[str, Job], facts: DaemonFacts
) -> None:
    event = message.get("event")
    if event == "done":
        job = running.pop(worker.name)
        if not message.get("ok"):
            facts.failed_runs.append(f"{job.job_name}: {message.get('error') or 'failed'}")
    elif event == "exit":
        raise RuntimeError(f"run worker {worker.name} exited (rc {message.get('rc')})")
