"""Chaos: the process and storage faults, when they strike, and what they leave behind.

Each fault is drawn at `fault_rate` from the soak's one random generator, and forced on a
fixed schedule until its minimum count is met (a short soak would otherwise miss some):
- an archive worker SIGKILLed mid-batch, after a random delay or as soon as its first data
  file appears; its Dagster run is then failed and its pool slot freed, which is what the
  daemon's run monitoring does for a dead run worker;
- the sensor evaluated in a fresh process (a restarted daemon) with its cursor kept, lost or
  garbage (the tick itself is the dispatcher's: `Dispatcher.restart_tick`);
- on S3, the server stopped and restarted while archive runs are writing (the 503 SlowDown
  answers come from the proxy `set_up` puts in front of it: `soak/slowdown.py`).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import dagster as dg

from soak.workers import Job, Worker
from spine_pipeline.archive.layout import ARTIFACT_AREA, TABLE_PREFIX
from spine_pipeline.defs.names import AUDIT_JOB

if TYPE_CHECKING:
    from soak.setup import Rig

#: Dispatch numbers from which the n-th forced kill is armed; a forced kill whose batch
#: finishes before it fires is armed again on the next dispatch, until the minimum is met.
_FORCED_KILL_DISPATCHES = (2, 5, 9, 14)
_LAST_FORCED_KILL = len(_FORCED_KILL_DISPATCHES) - 1  # later kills arm from its dispatch
_FORCED_RESTART_TICKS = (2, 4, 7, 10)
_LAST_FORCED_RESTART = len(_FORCED_RESTART_TICKS) - 1
_FORCED_S3_DISPATCH = 3
#: How the cursor survives a sensor restart, in turn.
_RESTART_MODES = ("kept", "none", "garbage")
_GARBAGE_CURSOR = "{not json at all"
_FINISHED = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


class Chaos:
    """Decides and injects the process and storage faults; `stop()` ends them (calm)."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.calm = False  # no more injected process or storage faults (the final phase)
        self.kills_armed = 0  # kill threads not yet fired or given up
        self.pending_restart: str | None = None
        self.s3_thread: threading.Thread | None = None
        self.outages: list[tuple[float, float]] = []  # S3 down: stop until ready again

    # -- worker kills -----------------------------------------------------------------------

    def kill_trigger(self, job: Job, dispatches: int) -> str | None:
        """Whether to kill the worker `job` is dispatched to, and on what trigger."""
        cfg = self.rig.cfg
        done = len(self.rig.report.kills)
        forced = (
            done < cfg.min_worker_kills
            and self.kills_armed == 0
            and dispatches >= _FORCED_KILL_DISPATCHES[min(done, _LAST_FORCED_KILL)]
        )
        if not self.calm and (forced or self.rig.rng.random() < cfg.fault_rate):
            # An audit refresh writes no archive files: it is killed after a delay.
            triggers = ("delay", "first-data-file") if job.run_ids else ("delay", "delay")
            return triggers[dispatches % 2]
        return None

    def arm_kill(self, worker: Worker, job: Job) -> None:
        """Watch a dispatched job whose `kill_trigger` is set; kill its worker when due."""
        with self.rig.lock:
            self.kills_armed += 1
        threading.Thread(target=self._kill_when_due, args=(worker, job), daemon=True).start()

    def _kill_when_due(self, worker: Worker, job: Job) -> None:
        try:
            self._kill_if_running(worker, job)
        finally:
            with self.rig.lock:
                self.kills_armed -= 1

    def _kill_if_running(self, worker: Worker, job: Job) -> None:
        rig = self.rig
        if job.kill_trigger == "delay":
            time.sleep(rig.rng.uniform(0.3, 2.5))
        else:
            baseline = self.table_keys()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and worker.job is job:
                if self.table_keys() - baseline:
                    break
                time.sleep(0.05)
        with rig.lock:
            if worker.job is not job or worker.killed:
                rig.report.events["kill armed, batch finished first"] += 1
                return
            rig.report.kills.append(
                {
                    "trigger": job.kill_trigger,
                    "after_seconds": round(time.monotonic() - job.started, 2),
                    "pid": worker.pid,
                    "runs": len(job.run_ids),
                    "job": job.job_name,
                    "dagster_run_id": job.dagster_run_id,
                }
            )
            rig.pool.kill(worker)

    def table_keys(self) -> set[str]:
        """The data files in the archive now (empty while the store is down)."""
        try:
            return {info.key for info in self.rig.observer.list(TABLE_PREFIX)}
        except Exception:
            return set()

    def after_kill(self, job: Job) -> None:
        """What run monitoring does for a dead run worker: fail the run, free its pool slot."""
        instance = self.rig.instance
        record = self.rig.report.kills[-1] if self.rig.report.kills else {}
        run = instance.get_run_by_id(job.dagster_run_id)
        record["dagster_status_at_kill"] = run.status.value if run else "not created"
        if run is not None and run.status not in _FINISHED:
            instance.report_run_failed(run, "run worker killed (SIGKILL) by the soak")
        freed = instance.event_log_storage.free_concurrency_slots_for_run(job.dagster_run_id)
        record["freed_slots"] = freed or 0
        record["phase"] = (
            "during an audit refresh"
            if job.job_name == AUDIT_JOB
            else self._kill_phase(record.get("pid"))
        )

    def _kill_phase(self, pid: int | None) -> str:
        """Where the killed batch was, from what the archive holds after the kill."""
        from spine_pipeline.archive.manifest import ManifestLog

        observer = self.rig.observer
        log = ManifestLog(observer)
        try:
            log.refresh()
            tables = self.table_keys()
        except Exception:
            return "unknown (store down)"
        if any(m.writer.get("pid") == pid for m in log.manifests):
            return "after its manifest was committed"
        listed = {f.key for m in log.manifests for f in m.files}
        if tables - listed:
            return "before its manifest, uncommitted data files present"
        referenced = {a.key for m in log.manifests for a in m.artifacts}
        artifacts = {i.key for i in observer.list(ARTIFACT_AREA)}
        if artifacts - referenced:
            return "while downloading, unreferenced artifacts present"
        return "before any data file was written"

    # -- sensor restarts --------------------------------------------------------------------

    def sensor_restart(self, ticks: int, spare_ready: bool) -> str | None:
        """The cursor mode of a sensor restart to perform on this tick, if one is due.

        A restart drawn while the warm spare is not ready waits for a later tick.
        """
        cfg, report = self.rig.cfg, self.rig.report
        done = len(report.sensor_restarts)
        forced = (
            done < cfg.min_sensor_restarts
            and ticks >= _FORCED_RESTART_TICKS[min(done, _LAST_FORCED_RESTART)]
        )
        if self.pending_restart is None and (forced or self.rig.rng.random() < cfg.fault_rate):
            self.pending_restart = _RESTART_MODES[done % len(_RESTART_MODES)]
        if self.pending_restart and spare_ready:
            mode, self.pending_restart = self.pending_restart, None
            return mode
        return None

    @staticmethod
    def restarted_cursor(mode: str, cursor: str | None) -> str | None:
        """The cursor a restarted sensor starts from: kept, lost, or garbage."""
        return {"kept": cursor, "none": None, "garbage": _GARBAGE_CURSOR}[mode]

    # -- storage ----------------------------------------------------------------------------

    def maybe_restart_s3(self, dispatches: int) -> None:
        """After a dispatch: maybe stop and restart the S3 server in the background."""
        rig = self.rig
        if rig.cfg.backend != "s3" or rig.s3_server is None or self.calm:
            return
        if self.s3_thread is not None and self.s3_thread.is_alive():
            return
        done = len(rig.report.s3_restarts)
        forced = done < rig.cfg.min_s3_restarts and dispatches >= _FORCED_S3_DISPATCH + 4 * done
        if forced or rig.rng.random() < rig.cfg.fault_rate:
            self.s3_thread = threading.Thread(target=self._restart_s3, daemon=True)
            self.s3_thread.start()

    def _restart_s3(self) -> None:
        rig = self.rig
        server = rig.s3_server
        assert server is not None
        time.sleep(rig.rng.uniform(0.2, 1.0))  # land in the middle of the batch
        busy = sum(1 for w in rig.pool.workers if w.job)
        started = time.monotonic()
        server.stop()
        time.sleep(rig.rng.uniform(*rig.cfg.s3_outage_seconds))
        server.start()
        self.outages.append((started, time.monotonic()))
        rig.report.s3_restarts.append(
            {"outage_seconds": round(time.monotonic() - started, 1), "busy_workers": busy}
        )

    def stop(self) -> None:
        """No more faults: wait for an S3 restart under way, and leave the server running."""
        self.calm = True
        if self.s3_thread is not None:
            self.s3_thread.join(timeout=120)
        server = self.rig.s3_server
        if server is not None and not server.running:
            server.start()
