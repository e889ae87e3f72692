"""The soak: the real Dagster path under every fault at once, checked against ground truth.

What runs, exactly as in production (only faster clocks):
- submit: the `submit_catalog` job materialises one submit asset per request (waves of
  catalog entries with unique prompts);
- poll: `spine_poll_sensor` evaluated as the daemon would, every `tick_every` seconds;
- archive: each run request (`archive_spine_runs` batches, `refresh_audit_db` refreshes) is
  executed by a separate worker process against the shared DAGSTER_HOME;
- audit: the DuckDB audit database those refreshes write, and the daily credit report.

What goes wrong on purpose, each at `fault_rate` (default 5 %):
- the Spine API and downloads (simulator rules: 429, 5xx, latency, dropped connections,
  malformed JSON, expired and truncated downloads), including on `POST /v1/run`, each
  kind at least once;
- storage (S3 backend): a loopback proxy answers 503 SlowDown, and the S3 server is stopped
  and restarted while archive runs are writing;
- processes: an archive worker is SIGKILLed mid-batch (after a random delay, or as soon as
  its first data file appears), and the sensor is evaluated in a fresh process with its
  cursor kept, lost or garbage.

A killed worker's Dagster run is then marked failed and its pool slot freed, which is what
the daemon's run monitoring does for a dead run worker. Unknown submissions are reconciled
against the simulator (Spine has no list endpoint; an operator would use the portal) and the
runs they created are tracked, so at the end every run Spine created must be archived once.
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from spine_pipeline.soak.check import Check, check_against_ground_truth
from spine_pipeline.soak.config import SoakConfig, prompt_for
from spine_pipeline.soak.s3 import S3ServerLike, start_seaweedfs
from spine_pipeline.soak.slowdown import SlowDownProxy
from spine_pipeline.soak.workers import ARCHIVE_JOB, AUDIT_JOB, QUIET, Job, Worker, WorkerPool

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_LOST = "LOST: created, in neither the ledger nor a Dagster failure"
_INSTANCE_YAML = "telemetry:\n  enabled: false\nconcurrency:\n  pools:\n    default_limit: 1\n"
_RESTART_MODES = ("kept", "none", "garbage")
#: Dispatch numbers from which the n-th forced kill is armed; a forced kill whose batch
#: finishes before it fires is armed again on the next dispatch, until the minimum is met.
_FORCED_KILL_DISPATCHES = (2, 5, 9, 14)
_LAST_FORCED_KILL = len(_FORCED_KILL_DISPATCHES) - 1  # later kills arm from its dispatch
_FORCED_RESTART_TICKS = (2, 4, 7, 10)
_FORCED_S3_DISPATCH = 3
_RESTART_TICKS = 4


class SoakError(RuntimeError):
    """The soak could not finish (timeout, a worker that cannot start)."""


@dataclass
class SoakReport:
    """Everything the soak measured; `ok` is the verdict."""

    config: SoakConfig
    seconds: float = 0.0
    checks: list[Check] = field(default_factory=list)
    api_faults: dict[str, int] = field(default_factory=dict)
    storage_faults: dict[str, int] = field(default_factory=dict)
    events: Counter[str] = field(default_factory=Counter)
    kills: list[dict[str, Any]] = field(default_factory=list)
    sensor_restarts: list[dict[str, Any]] = field(default_factory=list)
    s3_restarts: list[dict[str, Any]] = field(default_factory=list)
    tick_seconds: list[float] = field(default_factory=list)
    failed_ticks: list[str] = field(default_factory=list)
    submissions: Counter[str] = field(default_factory=Counter)
    reconciled: Counter[str] = field(default_factory=Counter)
    archive_jobs: Counter[str] = field(default_factory=Counter)
    audit_jobs: Counter[str] = field(default_factory=Counter)
    figures: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.checks) and all(c.ok for c in self.checks)


@contextlib.contextmanager
def _environment(values: dict[str, str], unset: tuple[str, ...] = ()) -> Iterator[None]:
    """Set (and unset) environment variables for the soak; restore the previous values after."""
    saved = {k: os.environ.get(k) for k in (*values, *unset)}
    for key in unset:
        os.environ.pop(key, None)
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Soak:
    """One soak run; `run()` returns the report (it never raises for a failed check)."""

    def __init__(
        self,
        config: SoakConfig,
        *,
        s3_server: S3ServerLike | None = None,
        say: Callable[[str], None] = print,
    ) -> None:
        self.cfg = config
        self.say = say
        self.report = SoakReport(config)
        self.rng = random.Random(f"{config.seed}:soak")
        self.s3_server = s3_server
        self.lock = threading.RLock()
        self.queue: deque[Job] = deque()
        self.cursor: str | None = None
        self.dispatches = 0
        self.kills_armed = 0  # kill threads not yet fired or given up
        self.ticks = 0
        self.next_index = 0
        self.waves = 0
        self.submitting_done = False
        self.reconciled = False
        self.pending_restart: str | None = None
        self.s3_thread: threading.Thread | None = None
        self.spare: Worker | None = None
        self.submitter: Worker | None = None
        self.next_wave = 0.0
        self.expected: set[str] = set()
        self.calm = False  # no more injected process or storage faults (the final phase)
        self.named_in_failures: set[str] = set()  # run ids named by failed submit steps
        self.tick_windows: list[tuple[float, float]] = []  # (start, end) of each ok tick
        self.outages: list[tuple[float, float]] = []  # S3 down: stop until ready again
        self.last_progress = time.monotonic()
        self._log: Any = None  # the harness's incremental view of the manifest log

    # -- setup ------------------------------------------------------------------------------

    def run(self) -> SoakReport:
        started = time.monotonic()
        base = self.cfg.workdir or Path(tempfile.mkdtemp(prefix="spine-soak-"))
        base.mkdir(parents=True, exist_ok=True)
        self.workdir = base
        try:
            with contextlib.ExitStack() as stack:
                self._setup(stack)
                try:
                    self._loop()
                    self._finish()
                except SoakError as exc:
                    self.report.error = str(exc)
                    self.say(f"soak failed: {exc}")
        finally:
            self.report.seconds = round(time.monotonic() - started, 1)
            if not self.cfg.keep_workdir and self.cfg.workdir is None and self.report.ok:
                shutil.rmtree(base, ignore_errors=True)
        return self.report

    def _setup(self, stack: contextlib.ExitStack) -> None:
        import dagster as dg

        from spine_pipeline.simulator import SimulatorConfig, SimulatorServer

        cfg = self.cfg
        home = self.workdir / "dagster_home"
        home.mkdir(exist_ok=True)
        (home / "dagster.yaml").write_text(_INSTANCE_YAML)
        (self.workdir / "logs").mkdir(exist_ok=True)
        (self.workdir / "catalogs").mkdir(exist_ok=True)
        self.sim = stack.enter_context(
            SimulatorServer(
                SimulatorConfig(
                    seed=cfg.seed,
                    run_seconds=cfg.run_seconds,
                    api_key=cfg.api_key,
                    faults=cfg.fault_spec,
                    artifact_size_scale=cfg.artifact_size_scale,
                ),
                port=0,
            )
        )
        env = {
            "DAGSTER_HOME": str(home),
            "SPINE_API_KEY": self.sim.api_key,
            "SPINE_BASE_URL": self.sim.base_url,
            "SPINE_AUDIT_DB": str(self.workdir / "audit.duckdb"),
            "SPINE_CATALOG": str(self._write_catalog([])),
            "SPINE_ARCHIVE_BATCH_SIZE": str(cfg.batch_size),
            "SPINE_POLL_MIN_INTERVAL_SECONDS": str(cfg.poll_min_interval),
            "SPINE_POLL_MAX_INTERVAL_SECONDS": str(cfg.poll_max_interval),
            "SPINE_POLL_REREQUEST_SECONDS": str(cfg.rerequest_after),
            "SPINE_POLL_BUDGET_SECONDS": str(cfg.tick_budget),
            "SPINE_AUDIT_RETRY_SECONDS": str(cfg.audit_retry),
            **cfg.extra_env,
        }
        self.proxy: SlowDownProxy | None = None
        if cfg.backend == "s3":
            if self.s3_server is None:
                self.say("starting SeaweedFS")
                self.s3_server = start_seaweedfs(self.workdir / "seaweedfs")
                stack.callback(self.s3_server.stop)
            bucket = self.s3_server.make_bucket()
            self.report.figures["bucket"] = bucket
            self.proxy = stack.enter_context(
                SlowDownProxy(self.s3_server.endpoint_url, rate=cfg.fault_rate, seed=cfg.seed)
            )
            env |= {
                "SPINE_ARCHIVE_URI": f"s3://{bucket}/soak",
                "AWS_ENDPOINT_URL_S3": self.proxy.endpoint_url,
                "AWS_ACCESS_KEY_ID": self.s3_server.access_key,
                "AWS_SECRET_ACCESS_KEY": self.s3_server.secret_key,
                "AWS_REGION": self.s3_server.region,
            }
        else:
            env["SPINE_ARCHIVE_URI"] = str(self.workdir / "archive")
        self.archive_uri = env["SPINE_ARCHIVE_URI"]
        unset = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL") if self.proxy else ()
        stack.enter_context(_environment(env, unset))
        from spine_pipeline.archive.stores import open_store
        from spine_pipeline.definitions import build_definitions

        self.store = open_store(self.archive_uri)
        self.observer = self._observer_store()
        self.defs = build_definitions()
        self.instance = stack.enter_context(dg.DagsterInstance.get())
        self.pool = WorkerPool(dict(os.environ), self.workdir / "logs")
        stack.callback(self.pool.shutdown)
        stack.callback(self._stop_s3_chaos)
        self.say(
            f"soak: {cfg.runs} runs on {cfg.backend} ({self.archive_uri}), faults at "
            f"{cfg.fault_rate:.0%}, {cfg.workers} archive workers, workdir {self.workdir}"
        )
        for _ in range(cfg.workers):
            self.pool.spawn("archive")
        self.spare = self.pool.spawn("spare")
        self.submitter = self.pool.spawn("submitter")
        self._wait_ready(timeout=120)

    def _observer_store(self) -> Any:
        """The harness's own view of the archive: straight to S3, not through the fault proxy.

        The harness lists and reads a lot (kill triggers, progress, the final checks); none of
        it is pipeline traffic, so it must neither be throttled nor counted as such.
        """
        from spine_pipeline.archive.stores import open_store

        if self.s3_server is None:
            return self.store
        from botocore.config import Config

        client = self.s3_server.client(
            config=Config(
                s3={"addressing_style": "path"},
                retries={"mode": "standard", "max_attempts": 10},
                connect_timeout=2,
                read_timeout=60,
            )
        )
        return open_store(self.archive_uri, s3_client=client)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while any(not w.ready for w in self.pool.workers):
            if time.monotonic() > deadline:
                raise SoakError("worker processes did not start (see logs/)")
            self._drain_events(0.2)

    def _write_catalog(self, requests: list[dict[str, str]]) -> Path:
        path = self.workdir / "catalogs" / f"wave-{self.next_index:05d}.yaml"
        path.write_text(yaml.safe_dump({"requests": requests}, sort_keys=False))
        return path

    # -- the loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        deadline = time.monotonic() + self.cfg.timeout
        last_tick = 0.0
        last_done_check = 0.0
        while True:
            now = time.monotonic()
            if now > deadline:
                raise SoakError(f"not finished after {self.cfg.timeout:.0f}s: {self._progress()}")
            idle = self.submitter is not None and self.submitter.ready and not self.submitter.job
            if not self.submitting_done and idle and now >= self.next_wave:
                self._submit_wave()
            if time.monotonic() - last_tick >= self.cfg.tick_every:
                last_tick = time.monotonic()
                self._tick()
            self._drain_events(0.05)
            self._dispatch()
            if self.submitting_done and not self.reconciled:
                self._reconcile()
            if time.monotonic() - self.last_progress > 15:
                self.last_progress = time.monotonic()
                self.say(self._progress())
            if self.reconciled and time.monotonic() - last_done_check > 0.5:
                last_done_check = time.monotonic()
                # Every run committed, and the sensor restarted at least the minimum number of
                # times (a restart waits for the warm spare; a short soak can finish first).
                restarts = len(self.report.sensor_restarts)
                if restarts >= self.cfg.min_sensor_restarts and self._all_committed():
                    return

    def _progress(self) -> str:
        from spine_pipeline.archive.manifest import ManifestLog

        log = ManifestLog(self.observer)
        with contextlib.suppress(Exception):
            log.refresh()
        created = self.sim.world.created_count
        return (
            f"{created} created, {len(log.committed_runs)} archived, queue {len(self.queue)}, "
            f"busy workers {sum(1 for w in self.pool.workers if w.job)}"
        )

    def _all_committed(self) -> bool:
        from spine_pipeline.archive.manifest import ManifestLog

        if self._log is None:
            self._log = ManifestLog(self.observer)
        try:
            self._log.refresh()
        except Exception:
            return False  # the store is down right now
        return self.expected <= set(self._log.committed_runs)

    # -- submit -----------------------------------------------------------------------------

    def _submit_wave(self) -> None:
        """Hand the next catalog wave to the submitter process (one `submit_catalog` run)."""
        missing = self.cfg.runs - self.sim.world.created_count
        if missing <= 0:
            self.submitting_done = True
            return
        count = min(self.cfg.wave_size, missing)
        requests = []
        for index in range(self.next_index, self.next_index + count):
            prompt, template = prompt_for(self.cfg.seed, index, self.cfg.scenario_rate)
            requests.append({"name": f"soak_{index:05d}", "prompt": prompt, "template": template})
        catalog = self._write_catalog(requests)
        self.next_index += count
        self.report.submissions["attempts"] += count
        assert self.submitter is not None
        self.submitter.job = Job(str(uuid.uuid4()), [], {}, {}, started=time.monotonic())
        self.submitter.send(op="submit", catalog=str(catalog))

    def _submitted(self, message: dict[str, Any]) -> None:
        subs = self.report.submissions
        subs["accepted"] += len(message["accepted"])
        for text in message["failures"]:
            if "archive ledger" in text:  # SubmissionNotRecorded: counted with the others
                subs["failed_other"] += 1
                self.named_in_failures.update(_UUID.findall(text))
                self.report.figures.setdefault("submit_other_errors", []).append(text[:300])
            elif "outcome unknown" in text:
                subs["unknown"] += 1
            elif "rejected the submit" in text:
                subs["rejected"] += 1
            else:
                subs["failed_other"] += 1
                self.named_in_failures.update(_UUID.findall(text))
                self.report.figures.setdefault("submit_other_errors", []).append(text[:300])
        self.report.figures.setdefault("wave_seconds", []).append(message["seconds"])
        self.waves += 1
        self.say(
            f"wave {self.waves}: {len(message['accepted'])} accepted, "
            f"{len(message['failures'])} failed, "
            f"{self.sim.world.created_count}/{self.cfg.runs} runs created"
        )

    def _reconcile(self) -> None:
        """Unknown outcomes: which created a run? Track those; prove none was created twice."""
        from spine_pipeline.archive.ledger import Ledger
        from spine_pipeline.archive.stores import StoreError

        world = self.sim.world
        rec: Counter[str] = Counter()
        try:
            ledger = Ledger(self.observer)
            records = [doc for _, doc in ledger.submissions()]
            tracked = {t.run_id for t in ledger.tracked()}
            accepted = Counter(d["run_id"] for d in records if d.get("outcome") == "accepted")
            by_prompt: dict[str, list[dict[str, Any]]] = {}
            for doc in records:
                by_prompt.setdefault(doc.get("prompt") or "", []).append(doc)
            created_prompts = Counter(world.get_run(r).form.prompt for r in world.run_ids())
            for run_id in world.run_ids():
                if run_id in tracked:
                    continue  # the ledger knows it and the sensor polls it
                named = run_id in self.named_in_failures
                if run_id in accepted:
                    rec["accepted, tracking record not written"] += 1
                else:
                    docs = by_prompt.get(world.get_run(run_id).form.prompt, [])
                    outcomes = sorted({str(d.get("outcome")) for d in docs})
                    rec[f"created, outcome {'/'.join(outcomes) or 'not recorded'}"] += 1
                if not docs_or_accepted(run_id, accepted, by_prompt, world) and not named:
                    rec[_LOST] += 1
                ledger.track(run_id, source="reconcile")
            unknown = {d.get("prompt") for d in records if d.get("outcome") == "unknown"}
            rec["unknown, not created"] = sum(1 for p in unknown if p not in created_prompts)
        except StoreError:
            return  # S3 is being restarted: try again next loop
        self.report.reconciled = rec
        self.expected = set(world.run_ids())
        self.report.figures["ledger_accepted"] = len(accepted)
        self.report.figures["accepted_duplicates"] = sum(n - 1 for n in accepted.values() if n > 1)
        self.report.figures["prompts_created_twice"] = sum(
            1 for n in created_prompts.values() if n > 1
        )
        self.report.figures["created_without_accepted_record"] = sum(
            1 for r in world.run_ids() if r not in accepted
        )
        self.reconciled = True
        self.say(f"reconciled: {dict(rec)}")

    # -- sensor -----------------------------------------------------------------------------

    def _tick(self) -> None:
        self.ticks += 1
        forced = (
            len(self.report.sensor_restarts) < self.cfg.min_sensor_restarts
            and self.ticks >= _FORCED_RESTART_TICKS[min(len(self.report.sensor_restarts), 3)]
        )
        if self.pending_restart is None and (forced or self.rng.random() < self.cfg.fault_rate):
            self.pending_restart = _RESTART_MODES[len(self.report.sensor_restarts) % 3]
        if self.pending_restart and self.spare is not None and self.spare.ready:
            self._restart_tick(self.pending_restart)
            self.pending_restart = None
            return
        import dagster as dg

        sensor = self.defs.resolve_sensor_def("spine_poll_sensor")
        started = time.monotonic()
        try:
            with dg.build_sensor_context(
                instance=self.instance,
                cursor=self.cursor,
                definitions=self.defs,
                sensor_name=sensor.name,
                resources=self.defs.resources,
            ) as context:
                tick = sensor.evaluate_tick(context)
        except Exception as exc:  # as in the daemon: a failed tick does not move the cursor
            self._failed_tick(exc, time.monotonic() - started)
            return
        self._tick_done(started)
        self.cursor = tick.cursor
        for request in tick.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(
                request.partitions_def_name, list(request.partition_keys)
            )
        for request in tick.run_requests or []:
            self._enqueue(dict(request.run_config), dict(request.tags), request.job_name)

    def _tick_done(self, started: float) -> None:
        self.report.tick_seconds.append(round(time.monotonic() - started, 3))
        self.tick_windows.append((started, time.monotonic()))

    def _failed_tick(self, exc: Exception, seconds: float) -> None:
        self._failed_tick_reply(f"{type(exc).__name__}: {str(exc)[:200]}", seconds)

    def _failed_tick_reply(self, error: str, seconds: float) -> None:
        self.report.failed_ticks.append(error)
        self.report.figures.setdefault("failed_tick_seconds", []).append(round(seconds, 2))

    def _restart_tick(self, mode: str) -> None:
        """The sensor in a fresh process (empty caches), with its cursor kept, lost or garbage.

        A restarted daemon keeps ticking: with a large ledger its first ticks may stop at the
        budget while the fresh process reads every tracking record in the background, so the
        same process ticks again (up to `_RESTART_TICKS` times, with the cursor the failed
        tick left in place, as Dagster does).
        """
        spare = self.spare
        assert spare is not None
        cursor = {"kept": self.cursor, "none": None, "garbage": "{not json at all"}[mode]
        record: dict[str, Any] = {"mode": mode, "ok": False, "attempts": 0}
        self.report.sensor_restarts.append(record)
        reply: dict[str, Any] = {}
        for _ in range(_RESTART_TICKS):
            started = time.monotonic()
            spare.send(op="tick", cursor=cursor)
            reply = self._wait_for(spare, "tick", timeout=120)
            record["attempts"] += 1
            if reply.get("ok"):
                break
            self._failed_tick_reply(str(reply.get("error")), float(reply.get("seconds") or 0.0))
            until = time.monotonic() + self.cfg.tick_every  # the daemon's next tick
            while time.monotonic() < until:
                self._drain_events(0.1)
                self._dispatch()
        self.spare = None
        self.pool.retire(spare)
        self.spare = self.pool.spawn("spare")
        record |= {"ok": reply.get("ok", False), "seconds": reply.get("seconds")}
        if not reply.get("ok"):
            return
        self.report.tick_seconds.append(reply["seconds"])
        self.tick_windows.append((started, time.monotonic()))
        self.cursor = reply["cursor"]
        for part in reply["partitions"]:
            self.instance.add_dynamic_partitions(part["name"], part["keys"])
        for request in reply["requests"]:
            self._enqueue(request["run_config"], request["tags"], request.get("job"))
        record["requests"] = len(reply["requests"])

    def _wait_for(self, worker: Worker, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                who, message = self.pool.events.get(timeout=0.2)
            except queue.Empty:
                continue
            if who is worker and message.get("event") == event:
                return message
            self._handle(who, message)
        raise SoakError(f"{worker.name} did not answer {event!r} within {timeout:.0f}s")

    # -- archive workers --------------------------------------------------------------------

    def _enqueue(
        self, run_config: dict[str, Any], tags: dict[str, str], job_name: str | None = None
    ) -> None:
        name = job_name or ARCHIVE_JOB
        if name == AUDIT_JOB:
            # The daemon would have created a QUEUED run, which the sensor sees and does not
            # request again; this queue is not in Dagster, so keep one refresh pending at most.
            if any(j.job_name == AUDIT_JOB for j in self.queue):
                self.report.events["audit refresh already queued"] += 1
                return
            self.queue.append(Job(str(uuid.uuid4()), [], run_config, tags, AUDIT_JOB))
            return
        ids = list(run_config["ops"]["archive_batch"]["config"]["run_ids"])
        self.queue.append(Job(str(uuid.uuid4()), ids, run_config, tags))

    def _dispatch(self) -> None:
        for worker in list(self.pool.workers):
            if not self.queue:
                return
            if worker in (self.spare, self.submitter):
                continue
            if not worker.ready or worker.job or worker.exiting:
                continue
            job = self.queue.popleft()
            self.dispatches += 1
            done = len(self.report.kills)
            forced = (
                done < self.cfg.min_worker_kills
                and self.kills_armed == 0
                and self.dispatches >= _FORCED_KILL_DISPATCHES[min(done, _LAST_FORCED_KILL)]
            )
            if not self.calm and (forced or self.rng.random() < self.cfg.fault_rate):
                # An audit refresh writes no archive files: it is killed after a delay.
                triggers = ("delay", "first-data-file") if job.run_ids else ("delay", "delay")
                job.kill_trigger = triggers[self.dispatches % 2]
            job.started = time.monotonic()
            with self.lock:
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
                with self.lock:
                    self.kills_armed += 1
                threading.Thread(
                    target=self._kill_when_due, args=(worker, job), daemon=True
                ).start()
            self._maybe_restart_s3()

    def _jobs(self, job: Job | None) -> Counter[str]:
        """The counters of the job's kind (archive batches or audit refreshes)."""
        if job is not None and job.job_name == AUDIT_JOB:
            return self.report.audit_jobs
        return self.report.archive_jobs

    def _kill_when_due(self, worker: Worker, job: Job) -> None:
        try:
            self._kill_if_running(worker, job)
        finally:
            with self.lock:
                self.kills_armed -= 1

    def _kill_if_running(self, worker: Worker, job: Job) -> None:
        if job.kill_trigger == "delay":
            time.sleep(self.rng.uniform(0.3, 2.5))
        else:
            baseline = self._table_keys()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and worker.job is job:
                if self._table_keys() - baseline:
                    break
                time.sleep(0.05)
        with self.lock:
            if worker.job is not job or worker.killed:
                self.report.events["kill armed, batch finished first"] += 1
                return
            self.report.kills.append(
                {
                    "trigger": job.kill_trigger,
                    "after_seconds": round(time.monotonic() - job.started, 2),
                    "pid": worker.pid,
                    "runs": len(job.run_ids),
                    "job": job.job_name,
                    "dagster_run_id": job.dagster_run_id,
                }
            )
            self.pool.kill(worker)

    def _table_keys(self) -> set[str]:
        try:
            return {info.key for info in self.observer.list("tables/")}
        except Exception:
            return set()

    def _drain_events(self, timeout: float) -> None:
        try:
            who, message = self.pool.events.get(timeout=timeout)
        except queue.Empty:
            return
        self._handle(who, message)
        while True:
            try:
                who, message = self.pool.events.get_nowait()
            except queue.Empty:
                return
            self._handle(who, message)

    def _handle(self, worker: Worker, message: dict[str, Any]) -> None:
        event = message.get("event")
        if event == "ready":
            worker.ready = True
        elif event == "done":
            with self.lock:
                job, worker.job = worker.job, None
            outcome = "succeeded" if message.get("ok") else "failed"
            self._jobs(job)[outcome] += 1
            if message.get("error"):
                name = job.job_name if job is not None else "?"
                errors = self.report.figures.setdefault("worker_errors", [])
                errors.append(f"{name}: {message['error']}")
            if job is not None:
                self.report.figures.setdefault("job_seconds", []).append(message.get("seconds"))
        elif event == "submitted":
            worker.job = None
            self.next_wave = time.monotonic() + self.cfg.wave_every
            self._submitted(message)
        elif event == "exit":
            self._on_exit(worker, message)

    def _on_exit(self, worker: Worker, message: dict[str, Any]) -> None:
        job = worker.job
        self.pool.reap(worker)
        if worker.exiting and not worker.killed:
            return
        if worker.killed:
            self._jobs(job)["killed"] += 1
            if job is not None:
                self._after_kill(job)
        else:
            self._jobs(job)["crashed"] += 1
            self.report.figures.setdefault("crashes", []).append(
                f"{worker.name} rc={message.get('rc')}"
            )
        if worker is self.spare:
            self.spare = self.pool.spawn("spare")
            return
        if worker is self.submitter:
            self.submitter = self.pool.spawn("submitter")
            return
        # The warm spare replaces the lost archive worker; a new spare starts in the background.
        if self.spare is not None:
            self.spare = None
        else:
            self.pool.spawn("archive")
        self.spare = self.pool.spawn("spare")

    def _after_kill(self, job: Job) -> None:
        """What run monitoring does for a dead run worker: fail the run, free its pool slot."""
        from dagster._core.storage.dagster_run import DagsterRunStatus

        record = self.report.kills[-1] if self.report.kills else {}
        run = self.instance.get_run_by_id(job.dagster_run_id)
        record["dagster_status_at_kill"] = run.status.value if run else "not created"
        if run is not None and run.status not in (
            DagsterRunStatus.SUCCESS,
            DagsterRunStatus.FAILURE,
            DagsterRunStatus.CANCELED,
        ):
            self.instance.report_run_failed(run, "run worker killed (SIGKILL) by the soak")
        freed = self.instance.event_log_storage.free_concurrency_slots_for_run(job.dagster_run_id)
        record["freed_slots"] = freed or 0
        record["phase"] = (
            "during an audit refresh"
            if job.job_name == AUDIT_JOB
            else self._kill_phase(record.get("pid"), job)
        )

    def _kill_phase(self, pid: int | None, job: Job) -> str:
        """Where the killed batch was, from what the archive holds after the kill."""
        from spine_pipeline.archive.manifest import ManifestLog

        log = ManifestLog(self.observer)
        try:
            log.refresh()
            tables = self._table_keys()
        except Exception:
            return "unknown (store down)"
        if any(m.writer.get("pid") == pid for m in log.manifests):
            return "after its manifest was committed"
        listed = {f.key for m in log.manifests for f in m.files}
        if tables - listed:
            return "before its manifest, uncommitted data files present"
        referenced = {a.key for m in log.manifests for a in m.artifacts}
        artifacts = {i.key for i in self.observer.list("artifacts/")}
        if artifacts - referenced:
            return "while downloading, unreferenced artifacts present"
        return "before any data file was written"

    # -- storage chaos ----------------------------------------------------------------------

    def _maybe_restart_s3(self) -> None:
        if self.cfg.backend != "s3" or self.s3_server is None or self.calm:
            return
        if self.s3_thread is not None and self.s3_thread.is_alive():
            return
        forced = len(
            self.report.s3_restarts
        ) < self.cfg.min_s3_restarts and self.dispatches >= _FORCED_S3_DISPATCH + 4 * len(
            self.report.s3_restarts
        )
        if forced or self.rng.random() < self.cfg.fault_rate:
            self.s3_thread = threading.Thread(target=self._restart_s3, daemon=True)
            self.s3_thread.start()

    def _restart_s3(self) -> None:
        server = self.s3_server
        assert server is not None
        time.sleep(self.rng.uniform(0.2, 1.0))  # land in the middle of the batch
        busy = sum(1 for w in self.pool.workers if w.job)
        started = time.monotonic()
        server.stop()
        time.sleep(self.rng.uniform(*self.cfg.s3_outage_seconds))
        server.start()
        self.outages.append((started, time.monotonic()))
        self.report.s3_restarts.append(
            {"outage_seconds": round(time.monotonic() - started, 1), "busy_workers": busy}
        )

    def _stop_s3_chaos(self) -> None:
        self.calm = True
        if self.s3_thread is not None:
            self.s3_thread.join(timeout=120)
        if self.s3_server is not None and not self.s3_server.running:
            self.s3_server.start()

    # -- the end ----------------------------------------------------------------------------

    def _finish(self) -> None:
        from spine_pipeline.archive.gc import collect_garbage
        from spine_pipeline.archive.verify import verify_archive

        self._stop_s3_chaos()
        self.queue.clear()  # anything still queued is a re-request of archived runs
        deadline = time.monotonic() + 240
        while any(w.job for w in self.pool.workers) or any(not w.ready for w in self.pool.workers):
            if time.monotonic() > deadline:
                raise SoakError("archive workers did not finish their last batches")
            self._drain_events(0.2)
        # One last audit refresh catches up on manifests committed since the last one.
        self._enqueue({}, {}, AUDIT_JOB)
        self._dispatch()
        while any(w.job for w in self.pool.workers):
            if time.monotonic() > deadline:
                raise SoakError("the final audit refresh did not finish")
            self._drain_events(0.2)
        self._credit_report()
        self.pool.shutdown()
        if self.proxy is not None:
            self.proxy.set_rate(0.0)
        gc = collect_garbage(self.observer, grace=timedelta(0), include_artifacts=True)
        verified = verify_archive(self.observer)
        checks = check_against_ground_truth(
            self.sim.world, self.observer, os.environ["SPINE_AUDIT_DB"], self.expected
        )
        self._job_timings()
        world = self.sim.world
        figures = self.report.figures
        dups = figures.get("accepted_duplicates", 0) + figures.get("prompts_created_twice", 0)
        accepted = figures.get("ledger_accepted", 0)
        unaccounted = figures.get("created_without_accepted_record", 0)
        checks.append(
            Check(
                "no duplicate submission",
                dups == 0 and world.created_count == accepted + unaccounted,
                f"{world.created_count} runs created = {accepted} accepted + {unaccounted} "
                f"created by submits whose outcome was unknown; prompts created twice: "
                f"{figures.get('prompts_created_twice', 0)}",
            )
        )
        lost = self.report.reconciled.get(
            "LOST: created, in neither the ledger nor a Dagster failure", 0
        )
        checks.append(
            Check(
                "every created run recorded (ledger, or named by its failed submit)",
                lost == 0,
                f"{lost} created runs recorded nowhere",
            )
        )
        checks.append(
            Check(
                "verify clean (after gc of crashed batches)",
                verified.ok,
                f"{verified.manifests} manifests, {verified.files} files, {verified.artifacts} "
                f"artifacts; gc removed {len(gc.deleted)} uncommitted objects"
                + ("" if verified.ok else f"; {[str(p) for p in verified.problems[:3]]}"),
            )
        )
        # Invariant 4: the budget bounds the whole tick, polling and the archive-store reads
        # before it (a store that does not answer in time fails the tick at its deadline).
        # Ticks that overlapped an S3 outage are also reported apart.
        stormy = [
            seconds
            for (start, end), seconds in zip(
                self.tick_windows, self.report.tick_seconds, strict=True
            )
            if any(start < o_end and end > o_start for o_start, o_end in self.outages)
        ]
        failed = list(figures.get("failed_tick_seconds", []))
        every = [*self.report.tick_seconds, *failed]
        over = [s for s in every if s > self.cfg.tick_budget]
        checks.append(
            Check(
                "every sensor tick inside its budget (Spine API and storage faults)",
                not over,
                f"{len(self.report.tick_seconds)} ok and {len(failed)} failed ticks, max "
                f"{max(every, default=0):.2f}s, budget {self.cfg.tick_budget:g}s"
                + (f"; over: {sorted(over)[-3:]}" if over else ""),
            )
        )
        figures["ticks_during_s3_outages"] = {
            "count": len(stormy),
            "max_seconds": max(stormy, default=0.0),
        }
        self.report.checks = checks
        self.report.api_faults = dict(world.fault_counts)
        self.report.storage_faults = dict(self.proxy.counts) if self.proxy else {}
        figures |= {
            "runs_created": world.created_count,
            "runs_archived": len(self.expected),
            "manifests": verified.manifests,
            "gc_deleted": len(gc.deleted),
            "sensor_ticks": len(self.report.tick_seconds) + len(self.report.failed_ticks),
            "requests_served": world.requests_served,
        }

    def _job_timings(self) -> None:
        """Per-phase seconds of the archive runs, from their materialisation metadata."""
        import dagster as dg

        found: dict[str, list[float]] = {}
        for key, fields in (
            ("archive_batch", ("fetch_seconds", "write_seconds")),
            ("audit_database", ("seconds",)),
        ):
            records = self.instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(key)), limit=10_000
            ).records
            for record in records:
                meta = record.asset_materialization.metadata if record.asset_materialization else {}
                for name in fields:
                    if name in meta:
                        label = f"{key}.{name}"
                        found.setdefault(label, []).append(float(meta[name].value))
        self.report.figures["phase_seconds"] = found

    def _credit_report(self) -> None:
        import dagster as dg

        job = self.defs.resolve_implicit_global_asset_job_def()
        result = job.execute_in_process(
            instance=self.instance,
            asset_selection=[dg.AssetKey("credit_report")],
            run_config=QUIET,
            raise_on_error=False,
        )
        self.report.figures["credit_report"] = "ok" if result.success else "failed"


def docs_or_accepted(
    run_id: str,
    accepted: Counter[str],
    by_prompt: dict[str, list[dict[str, Any]]],
    world: Any,
) -> bool:
    """Whether the ledger holds any record (accepted, or an outcome for its prompt) of a run."""
    return run_id in accepted or bool(by_prompt.get(world.get_run(run_id).form.prompt))


def run_soak(
    config: SoakConfig,
    *,
    s3_server: S3ServerLike | None = None,
    say: Callable[[str], None] = print,
) -> SoakReport:
    """Run one soak (see the module docstring) and return its report."""
    return Soak(config, s3_server=s3_server, say=say).run()
