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

This module runs the loop; each part has its own: `setup` (simulator, archive, S3, the
environment, DAGSTER_HOME, the worker pool), `submissions` (waves, reconciliation),
`dispatch` (sensor ticks, the run queue, launches onto workers), `chaos` (kills, sensor and
S3 restarts), `verdict` (the checks against ground truth and the figures).
"""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from soak import verdict
from soak.chaos import Chaos
from soak.config import SoakConfig
from soak.dispatch import Dispatcher
from soak.report import SoakReport
from soak.s3 import S3ServerLike
from soak.setup import Rig, SoakError, set_up
from soak.submissions import Submissions


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
        self.last_progress = time.monotonic()
        self._log: Any = None  # the harness's incremental view of the manifest log

    def run(self) -> SoakReport:
        started = time.monotonic()
        base = self.cfg.workdir or Path(tempfile.mkdtemp(prefix="spine-soak-"))
        base.mkdir(parents=True, exist_ok=True)
        try:
            with contextlib.ExitStack() as stack:
                self.rig = set_up(
                    self.cfg,
                    base,
                    stack,
                    report=self.report,
                    rng=self.rng,
                    s3_server=self.s3_server,
                    say=self.say,
                )
                self.chaos = Chaos(self.rig)
                stack.callback(self.chaos.stop)
                self.submissions = Submissions(self.rig)
                self.dispatcher = Dispatcher(self.rig, self.chaos, self.submissions.submitted)
                self.dispatcher.start_workers(timeout=120)
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

    def _loop(self) -> None:
        rig, subs, dispatcher = self.rig, self.submissions, self.dispatcher
        deadline = time.monotonic() + self.cfg.timeout
        last_tick = 0.0
        last_done_check = 0.0
        while True:
            now = time.monotonic()
            if now > deadline:
                raise SoakError(f"not finished after {self.cfg.timeout:.0f}s: {self._progress()}")
            if subs.due(dispatcher.submitter, now):
                assert dispatcher.submitter is not None
                subs.submit_wave(dispatcher.submitter)
            if time.monotonic() - last_tick >= self.cfg.tick_every:
                last_tick = time.monotonic()
                dispatcher.tick()
            dispatcher.drain_events(0.05)
            dispatcher.dispatch()
            if subs.done and not subs.reconciled:
                subs.reconcile()
            if time.monotonic() - self.last_progress > 15:
                self.last_progress = time.monotonic()
                self.say(self._progress())
            if subs.reconciled and time.monotonic() - last_done_check > 0.5:
                last_done_check = time.monotonic()
                # Every run committed, and the sensor restarted at least the minimum number of
                # times (a restart waits for the warm spare; a short soak can finish first).
                restarts = len(rig.report.sensor_restarts)
                if restarts >= self.cfg.min_sensor_restarts and self._all_committed():
                    return

    def _progress(self) -> str:
        from spine_pipeline.archive.manifest import ManifestLog

        log = ManifestLog(self.rig.observer)
        with contextlib.suppress(Exception):
            log.refresh()
        created = self.rig.sim.world.created_count
        return (
            f"{created} created, {len(log.committed_runs)} archived, "
            f"queue {len(self.dispatcher.queue)}, busy workers {self.dispatcher.busy}"
        )

    def _all_committed(self) -> bool:
        from spine_pipeline.archive.manifest import ManifestLog

        if self._log is None:
            self._log = ManifestLog(self.rig.observer)
        try:
            self._log.refresh()
        except Exception:
            return False  # the store is down right now
        return self.submissions.expected <= set(self._log.committed_runs)

    def _finish(self) -> None:
        rig: Rig = self.rig
        self.chaos.stop()
        self.dispatcher.settle(deadline=time.monotonic() + 240)
        verdict.credit_report(rig)
        rig.pool.shutdown()
        if rig.proxy is not None:
            rig.proxy.set_rate(0.0)
        verdict.judge(
            rig,
            expected=self.submissions.expected,
            tick_windows=self.dispatcher.tick_windows,
            outages=self.chaos.outages,
        )


def run_soak(
    config: SoakConfig,
    *,
    s3_server: S3ServerLike | None = None,
    say: Callable[[str], None] = print,
) -> SoakReport:
    """Run one soak (see the module docstring) and return its report."""
    return Soak(config, s3_server=s3_server, say=say).run()
