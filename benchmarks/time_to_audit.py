"""Benchmark 6: time from a run turning terminal to its rows being queryable in the audit DB.

Measured: for each of RUNS runs, the wall time from the moment the benchmark makes it
terminal on the simulator (`/_sim/finish`: the simulator's ground truth) until an audit
refresh that has its `runs` row has finished (the row is then queryable), through the real
path: both sensors evaluated as the daemon evaluates them, the archive and audit runs they
request executed by warm run workers, the webhook receiver in its own process.

Two modes, same conditions (same seed, same runs, same finishing schedule, same workers,
same sensor intervals; a fresh archive, audit database and Dagster instance each):

- **webhooks**: the simulator delivers signed webhooks to `spine-pipeline webhooks serve`;
  `spine_webhook_sensor` hands the runs whose end an event announced.
- **polling only**: no webhooks; runs are archived when their next poll finds them ended.

The emulated daemon (as in `benchmarks/daemon.py`, here for two sensors): each sensor is
evaluated at its definition's `minimum_interval_seconds` (15 s and 5 s, what `dagster dev`
does; its loop runs every 5 s), a requested run is created in the instance at once (as the
daemon creates it, queued) so the next ticks see it, and WORKERS warm run workers execute
the queue. `dagster dev`'s default launcher starts a fresh process per run instead, which
adds a few seconds to each of the two runs on a run's path (archive, then audit refresh).

Workload: RUNS runs submitted one every GAP seconds on average (and tracked, as the submit
path does), each made terminal DURATION seconds after its submission (seeded, the same in
both modes), so that runs are at every phase of their poll backoff (15, 30, then 60 s)
when they end, as in production. The simulator's default outcome mix: about 15 % end
`partial`, which has no webhook event, so polling archives those in both modes (their
figures are in the facts separately).
"""

from __future__ import annotations

import math
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import httpx

from benchmarks.common import BENCH_DIR, ROOT, Result, Row, say
from benchmarks.daemon import run_workers
from benchmarks.dagster_env import pipeline_env
from benchmarks.sim import SimProcess
from soak.workers import Job, WorkerPool
from spine_pipeline.archive.ledger import Ledger
from spine_pipeline.archive.stores import open_store
from spine_pipeline.audit import run_sql
from spine_pipeline.defs.names import AUDIT_JOB, POLL_SENSOR, WEBHOOK_SENSOR
from spine_pipeline.driver import (
    already_launched,
    apply_partition_requests,
    evaluate_sensor,
    requested_job,
    sensor_tags,
)
from spine_pipeline.simulator import SimulatorConfig

RUNS = 100
TARGET_P50_SECONDS = 10.0
WORKERS = 2  # concurrent Dagster runs, as in the burst benchmark
GAP_SECONDS = 1.0  # mean time between two submissions
DURATION = (45.0, 105.0)  # a run's life, submission to end (seconds, uniform)
QUICK_DURATION = (20.0, 50.0)
TIMEOUT_SECONDS = 600.0
SECRET = "whsec_benchmark_time_to_audit"
SEED = 31


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list: a value that occurred."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


@dataclass
class _Queued:
    job: Job
    placeholder: str  # the run the daemon would have created at request time


@dataclass
class _Mode:
    """What one mode measured."""

    latency: dict[str, float] = field(default_factory=dict)  # run id -> seconds
    outcome: dict[str, str] = field(default_factory=dict)
    archive_runs: int = 0
    audit_refreshes: int = 0
    ticks: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    deliveries: dict[str, int] = field(default_factory=dict)
    every: dict[str, float] = field(default_factory=dict)  # sensor -> interval (s)


class _Daemon:
    """Both sensors on their intervals, requested runs queued in the instance and executed
    by the worker pool; after each audit refresh, which runs have become queryable."""

    def __init__(
        self,
        defs: dg.Definitions,
        instance: dg.DagsterInstance,
        pool: WorkerPool,
        audit_db: Path,
        mode: _Mode,
    ) -> None:
        self.defs = defs
        self.instance = instance
        self.pool = pool
        self.audit_db = audit_db
        self.mode = mode
        self.every = {
            name: float(defs.resolve_sensor_def(name).minimum_interval_seconds or 30)
            for name in (POLL_SENSOR, WEBHOOK_SENSOR)
        }
        mode.every = dict(self.every)
        self.last = dict.fromkeys(self.every, float("-inf"))
        self.cursors: dict[str, str | None] = dict.fromkeys(self.every)
        self.pending: deque[_Queued] = deque()
        self.running: dict[str, _Queued] = {}  # worker name -> job
        self.queryable: dict[str, float] = {}  # run id -> wall time its row was queryable

    def step(self) -> None:
        """One pass of the loop: due sensor ticks, dispatch, collect (waits up to 50 ms)."""
        for name, every in self.every.items():
            if time.monotonic() - self.last[name] >= every:
                self.last[name] = time.monotonic()
                self._tick(name)
        for worker in self.pool.workers:
            if self.pending and worker.ready and worker.name not in self.running:
                queued = self.pending.popleft()
                self.running[worker.name] = queued
                job = queued.job
                worker.send(
                    op="archive",
                    job=job.job_name,
                    dagster_run_id=job.dagster_run_id,
                    run_config=job.run_config,
                    tags=job.tags,
                )
        self._collect()

    def _tick(self, sensor: str) -> None:
        result = evaluate_sensor(self.defs, self.instance, self.cursors[sensor], sensor)
        self.cursors[sensor] = result.cursor
        self.mode.ticks[sensor] = self.mode.ticks.get(sensor, 0) + 1
        apply_partition_requests(self.instance, result.dynamic_partitions_requests)
        for request in result.run_requests or []:
            if already_launched(self.instance, request, sensor):
                continue
            name = requested_job(request)
            tags = sensor_tags(request.tags, sensor, request.run_key)
            placeholder = self.instance.create_run_for_job(
                self.defs.resolve_job_def(name),
                run_config=request.run_config,
                tags=tags,
                status=dg.DagsterRunStatus.NOT_STARTED,
            )
            job = Job(str(uuid.uuid4()), [], dict(request.run_config), tags, name)
            self.pending.append(_Queued(job, placeholder.run_id))
            if name == AUDIT_JOB:
                self.mode.audit_refreshes += 1
            else:
                self.mode.archive_runs += 1

    def _collect(self) -> None:
        import queue

        try:
            who, message = self.pool.events.get(timeout=0.05)
        except queue.Empty:
            return
        while True:
            if message.get("event") == "exit":
                raise RuntimeError(f"run worker {who.name} exited (rc {message.get('rc')})")
            if message.get("event") == "done":
                queued = self.running.pop(who.name)
                self.instance.delete_run(queued.placeholder)
                if not message.get("ok"):
                    self.mode.failures.append(f"{queued.job.job_name}: {message.get('error')}")
                elif queued.job.job_name == AUDIT_JOB:
                    self._stamp(time.time())
            try:
                who, message = self.pool.events.get_nowait()
            except queue.Empty:
                return

    def _stamp(self, done_at: float) -> None:
        _, rows = run_sql(self.audit_db, "SELECT run_id FROM runs")
        for (run_id,) in rows:
            self.queryable.setdefault(str(run_id), done_at)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Receiver:
    """`spine-pipeline webhooks serve` in its own process, as it would be deployed."""

    def __init__(self, archive: Path, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/webhooks/spine"
        env = {
            **os.environ,
            "SPINE_ARCHIVE_URI": str(archive),
            "SPINE_WEBHOOK_SECRET": SECRET,
        }
        self._log = log.open("wb")
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "spine_pipeline.cli",
                "webhooks",
                "serve",
                "--port",
                f"{self.port}",
            ],
            env=env,
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).is_success:
                    return
            except httpx.HTTPError:
                pass
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"webhook receiver did not start (see {log})")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._log.close()


def _schedule(n: int, duration: tuple[float, float]) -> list[tuple[float, float]]:
    """(submitted, ended) in seconds from the start, for each run: seeded, so that both
    modes see the same workload."""
    rng = random.Random(SEED)
    at, out = 0.0, []
    for _ in range(n):
        out.append((at, at + rng.uniform(*duration)))
        at += rng.uniform(0.5, 1.5) * GAP_SECONDS
    return out


def _run_mode(webhooks: bool, n: int, duration: tuple[float, float], workdir: Path) -> _Mode:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    archive = workdir / "archive"
    mode = _Mode()
    receiver = _Receiver(archive, workdir / "receiver.log") if webhooks else None
    try:
        config = SimulatorConfig(
            seed=SEED,
            run_seconds=(20_000, 20_000),  # they end when the benchmark says so
            webhook_url=receiver.url if receiver else "",
            webhook_secret=SECRET if receiver else "",
        )
        with SimProcess(config) as sim:
            with (
                pipeline_env(base_url=sim.base_url, api_key=sim.api_key, workdir=workdir) as (
                    defs,
                    instance,
                ),
                run_workers(WORKERS, workdir / "worker-logs") as pool,
            ):
                daemon = _Daemon(defs, instance, pool, workdir / "audit.duckdb", mode)
                ledger = Ledger(open_store(str(archive)))
                terminal_at = _drive(daemon, sim, ledger, _schedule(n, duration))
            ids = list(terminal_at)
            mode.outcome = {r: _status(sim, r) for r in ids}
            if receiver:
                summary = sim.state().get("webhooks") or {}
                mode.deliveries = dict(summary.get("outcomes") or {})
    finally:
        if receiver:
            receiver.stop()
    if mode.failures:
        raise RuntimeError(f"Dagster runs failed: {mode.failures[:3]}")
    mode.latency = {r: daemon.queryable[r] - terminal_at[r] for r in ids}
    return mode


def _drive(
    daemon: _Daemon, sim: SimProcess, ledger: Ledger, schedule: list[tuple[float, float]]
) -> dict[str, float]:
    """Run the daemon while submitting and ending runs on schedule, until every run is
    queryable; returns when each run turned terminal (wall clock)."""
    start = time.monotonic()
    events = sorted(
        [(submit, "submit", i) for i, (submit, _) in enumerate(schedule)]
        + [(end, "end", i) for i, (_, end) in enumerate(schedule)]
    )
    ids: dict[int, str] = {}
    terminal_at: dict[str, float] = {}
    limit = schedule[-1][1] + TIMEOUT_SECONDS if schedule else TIMEOUT_SECONDS
    with httpx.Client(base_url=sim.base_url, headers={"X-API-KEY": sim.api_key}, timeout=30) as api:
        while len(terminal_at) < len(schedule) or not terminal_at.keys() <= daemon.queryable.keys():
            if time.monotonic() - start > limit:
                missing = len(terminal_at.keys() - daemon.queryable.keys())
                raise RuntimeError(f"{missing} run(s) not queryable {TIMEOUT_SECONDS:.0f}s on")
            while events and time.monotonic() - start >= events[0][0]:
                _, kind, i = events.pop(0)
                if kind == "submit":
                    ids[i] = _submit(api, ledger, i)
                else:
                    terminal_at[ids[i]] = time.time()  # the simulator's clock is the wall clock
                    api.post("/_sim/finish", json={"run_id": ids[i]}).raise_for_status()
            daemon.step()
    return terminal_at


def _submit(api: httpx.Client, ledger: Ledger, i: int) -> str:
    """Submit one run and track it, as the submit path does (setup, not measured)."""
    form = {"prompt": f"Time to audit {i}: grid battery suppliers", "template": "report"}
    r = api.post("/v1/run", data=form)
    r.raise_for_status()
    run_id = str(r.json()["data"]["run_id"])
    now = datetime.now(UTC)
    ledger.track(run_id, request_name="time_to_audit", submitted_at=now, now=now)
    return run_id


def _status(sim: SimProcess, run_id: str) -> str:
    r = httpx.get(f"{sim.base_url}/v1/run/{run_id}", headers={"X-API-KEY": sim.api_key}, timeout=30)
    r.raise_for_status()
    return str(r.json()["data"]["status"])


def _summary(mode: _Mode, prefix: str) -> dict[str, Any]:
    values = list(mode.latency.values())
    evented = [v for r, v in mode.latency.items() if mode.outcome[r] != "partial"]
    partial = [v for r, v in mode.latency.items() if mode.outcome[r] == "partial"]
    out: dict[str, Any] = {
        f"{prefix}_min_s": round(min(values), 2),
        f"{prefix}_p50_s": round(_percentile(values, 50), 2),
        f"{prefix}_p95_s": round(_percentile(values, 95), 2),
        f"{prefix}_max_s": round(max(values), 2),
        f"{prefix}_archive_runs": mode.archive_runs,
        f"{prefix}_audit_refreshes": mode.audit_refreshes,
        f"{prefix}_ticks": dict(mode.ticks),
    }
    if evented:
        out[f"{prefix}_completed_failed_p50_s"] = round(_percentile(evented, 50), 2)
        out[f"{prefix}_completed_failed_p95_s"] = round(_percentile(evented, 95), 2)
    if partial:
        out[f"{prefix}_partial_p50_s"] = round(_percentile(partial, 50), 2)
    if mode.deliveries:
        out[f"{prefix}_deliveries"] = mode.deliveries
    return out


def run(reps: int = 5, quick: bool = False) -> Result:
    """One pass per mode: each is already RUNS samples (`reps` does not apply)."""
    n = 20 if quick else RUNS
    duration = QUICK_DURATION if quick else DURATION
    result = Result("time_to_audit")
    base = BENCH_DIR / "scratch" / "time_to_audit"
    span = n * GAP_SECONDS + duration[1]
    say(f"time_to_audit: webhooks, {n} runs (about {span:.0f} s, then the slowest to audit)")
    hooks = _run_mode(True, n, duration, base / "webhooks")
    say(f"time_to_audit: polling only, {n} runs")
    polling = _run_mode(False, n, duration, base / "polling")
    w = sorted(hooks.latency.values())
    p = sorted(polling.latency.values())
    w50, w95 = _percentile(w, 50), _percentile(w, 95)
    p50, p95 = _percentile(p, 50), _percentile(p, 95)
    result.rows.append(
        Row(
            "time_to_audit",
            f"time to audit, p50 of {n} runs, webhooks",
            w50,
            baseline=p50,
            baseline_name="polling only",
            ratio_kind="speedup",
            target=f"< {TARGET_P50_SECONDS:.0f} s",
            met=w50 < TARGET_P50_SECONDS,
            runs=n,
            samples=[round(v, 2) for v in w],
            baseline_samples=[round(v, 2) for v in p],
        )
    )
    result.rows.append(
        Row(
            "time_to_audit",
            f"time to audit, p95 of {n} runs, webhooks",
            w95,
            baseline=p95,
            baseline_name="polling only",
            ratio_kind="speedup",
            target="reported (partial runs have no event)",
            runs=n,
        )
    )
    result.facts.update(
        {
            "runs": n,
            "outcomes": dict(sorted(Counter(hooks.outcome.values()).items())),
            "workers": WORKERS,
            "sensor_every_s": hooks.every,
            "run_duration_s": f"{duration[0]:.0f}-{duration[1]:.0f}",
            "mean_submission_gap_s": GAP_SECONDS,
            **_summary(hooks, "webhooks"),
            **_summary(polling, "polling"),
        }
    )
    say(f"time_to_audit: webhooks p50 {w50:.1f} s, p95 {w95:.1f} s")
    say(f"time_to_audit: polling only p50 {p50:.1f} s, p95 {p95:.1f} s")
    return result
