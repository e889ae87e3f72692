"""`spine-pipeline demo`: the real Dagster path, in process, against the embedded simulator.

It is what `dagster dev` plus the daemon would do, driven step by step so that it finishes
on its own: materialise the submit assets, evaluate the poll sensor on its interval, execute
the runs it requests (archive batches, then audit refreshes), until every run submitted by
this demo is archived and the audit database has caught up. State persists under `data/`
(archive, audit DB, DAGSTER_HOME), so a second demo adds new runs and never duplicates old
ones.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.read import read_committed
from spine_pipeline.archive.store import open_store
from spine_pipeline.archive.verify import verify_archive
from spine_pipeline.audit import credit_report
from spine_pipeline.audit.sql import format_table
from spine_pipeline.defs.names import SUBMIT_ALL_JOB
from spine_pipeline.settings import Settings

DEFAULT_DAGSTER_HOME = Path("data/dagster_home")
# Dagster's console logger at WARNING: the demo prints its own progress lines.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
# One audit-database writer at a time: the only pool is spine_audit_db.
_INSTANCE_YAML = "telemetry:\n  enabled: false\nconcurrency:\n  pools:\n    default_limit: 1\n"


@dataclass
class DemoReport:
    submitted: list[str] = field(default_factory=list)
    archived: list[str] = field(default_factory=list)
    ticks: int = 0
    archive_runs: int = 0
    audit_refreshes: int = 0
    seconds: float = 0.0
    verify_ok: bool = False
    verify_summary: str = ""
    failed_submits: list[str] = field(default_factory=list)


def prepare_dagster_home() -> Path:
    """Use $DAGSTER_HOME, or a persistent `data/dagster_home` created on first use.

    A directory created here is private (0700): Dagster's SQLite files inside take the
    process umask, and run storage holds run configs (Spine run ids, request names).
    """
    home = Path(Settings.from_env().dagster_home or DEFAULT_DAGSTER_HOME).resolve()
    if not home.exists():
        home.mkdir(parents=True, mode=0o700)
        home.chmod(0o700)  # mkdir's mode is masked by the umask
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(_INSTANCE_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


POLL_SENSOR = "spine_poll_sensor"


def evaluate_poll_sensor(
    defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None
) -> dg.SensorResult:
    """One evaluation of the poll sensor, exactly as the daemon performs it."""
    sensor = defs.resolve_sensor_def(POLL_SENSOR)
    with dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        definitions=defs,
        sensor_name=sensor.name,
        resources=defs.resources,
    ) as context:
        return sensor.evaluate_tick(context)


ARCHIVE_JOB = "archive_spine_runs"


@dataclass
class Tick:
    """One sensor evaluation and the runs it led to."""

    requested: list[list[str]]  # the Spine run ids of each archive batch
    cursor: str | None
    skip_reason: str | None
    refreshes: int = 0  # audit refresh runs
    failed: int = 0  # requested runs that did not succeed

    @property
    def idle(self) -> bool:
        return not self.requested and not self.refreshes


def archive_batch_ids(request: dg.RunRequest) -> list[str]:
    """The Spine run ids of an archive request (empty for other jobs)."""
    if (request.job_name or ARCHIVE_JOB) != ARCHIVE_JOB:
        return []
    return list(request.run_config["ops"]["archive_batch"]["config"]["run_ids"])


def tick_and_archive(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    cursor: str | None,
    say: Callable[[str], None] = print,
) -> Tick:
    """Evaluate the poll sensor as the daemon would, then execute the runs it requests."""
    tick = evaluate_poll_sensor(defs, instance, cursor)
    for request in tick.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
    out = Tick(requested=[], cursor=tick.cursor, skip_reason=tick.skip_message)
    for request in tick.run_requests or []:
        name = request.job_name or ARCHIVE_JOB
        if name == ARCHIVE_JOB:
            ids = archive_batch_ids(request)
            out.requested.append(ids)
            say(f"  archiving a batch of {len(ids)} terminal run(s)")
        else:
            out.refreshes += 1
            say(f"  refreshing the audit database ({name})")
        result = defs.resolve_job_def(name).execute_in_process(
            run_config={**request.run_config, **QUIET},
            instance=instance,
            tags={**request.tags, "dagster/sensor_name": POLL_SENSOR},
            raise_on_error=False,
        )
        out.failed += not result.success
    return out


def submit_catalog(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    report: DemoReport,
    say: Callable[[str], None],
) -> None:
    """Materialise every submit asset in one run; record run ids and failures."""
    submit_job = defs.resolve_job_def(SUBMIT_ALL_JOB)
    say(f"submitting the catalog through the submit assets ({submit_job.name})")
    result = submit_job.execute_in_process(
        instance=instance, run_config=QUIET, raise_on_error=False
    )
    for event in result.get_asset_materialization_events():
        run_id = str(event.materialization.metadata["run_id"].value)
        report.submitted.append(run_id)
        say(f"  {event.asset_key.to_user_string()}: run {run_id}")
    for event in result.all_events:
        if event.is_step_failure:
            report.failed_submits.append(event.step_key or "?")
            say(f"  {event.step_key} failed: {event.event_specific_data.error.message.strip()}")


def archive_until_done(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    archive_uri: str,
    report: DemoReport,
    *,
    timeout: float,
    tick_every: float,
    say: Callable[[str], None],
) -> None:
    """Tick the sensor until every submitted run is committed and the audit DB caught up.

    The sensor asks for an audit refresh when committed manifests wait; once every run is
    archived, ticks follow each other without waiting until one asks for nothing.
    """
    started = time.monotonic()
    store = open_store(archive_uri)
    log = ManifestLog(store)
    cursor: str | None = None
    pending = set(report.submitted)
    while time.monotonic() - started < timeout:
        tick_started = time.monotonic()
        tick = tick_and_archive(defs, instance, cursor, say=say)
        report.ticks += 1
        report.archive_runs += len(tick.requested)
        report.audit_refreshes += tick.refreshes
        cursor = tick.cursor
        log.refresh()
        done = pending & set(log.committed_runs)
        if done:
            report.archived.extend(sorted(done))
            pending -= done
            say(f"tick {report.ticks}: archived {len(report.archived)}/{len(report.submitted)}")
        elif pending:
            say(f"tick {report.ticks}: {len(pending)} run(s) still in flight")
        if not pending:
            if tick.idle or tick.failed:
                return  # nothing left to do (or a refresh failed: retried by later ticks)
            continue
        time.sleep(max(0.0, tick_every - (time.monotonic() - tick_started)))


def run_demo(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    archive_uri: str,
    *,
    timeout: float = 110.0,
    tick_every: float = 3.0,
    say: Callable[[str], None] = print,
) -> DemoReport:
    """Submit the catalog, then tick the sensor and run archive jobs until all are archived."""
    started = time.monotonic()
    report = DemoReport()
    submit_catalog(defs, instance, report, say)
    archive_until_done(
        defs, instance, archive_uri, report, timeout=timeout, tick_every=tick_every, say=say
    )
    verified = verify_archive(open_store(archive_uri))
    report.verify_ok = verified.ok
    report.verify_summary = (
        f"{verified.manifests} manifests, {verified.files} files, {verified.artifacts} "
        f"artifacts: " + ("OK" if verified.ok else f"{len(verified.problems)} problem(s)")
    )
    report.seconds = round(time.monotonic() - started, 1)
    return report


def summary_lines(report: DemoReport, settings: Settings) -> list[str]:
    """This demo's runs by status; credits by template from the audit database."""
    runs = read_committed(open_store(settings.archive_uri), "runs", columns=["run_id", "status"])
    mine = set(report.submitted)
    by_status = Counter(r["status"] for r in runs.to_pylist() if r["run_id"] in mine)
    credits = credit_report(settings.audit_db, by="template")
    return [
        "",
        f"this demo: {len(report.submitted)} submitted, {len(report.archived)} archived, "
        f"{report.ticks} sensor ticks, {report.archive_runs} archive runs, "
        f"{report.audit_refreshes} audit refreshes, {report.seconds}s",
        "runs by status: " + ", ".join(f"{k}={v}" for k, v in sorted(by_status.items())),
        f"credits by template (audit database {settings.audit_db}, all archived runs):",
        format_table(credits.columns, credits.rows),
        f"archive: {settings.archive_uri}  verify: {report.verify_summary}",
    ]


def demo_on_simulator(
    settings: Settings,
    *,
    timeout: float,
    run_seconds: str,
    say: Callable[[str], None] = print,
) -> bool:
    """Start the simulator, point the definitions at it, run the demo; True if all archived."""
    from spine_pipeline.simulator import SimulatorConfig, SimulatorServer, parse_run_seconds

    # A fresh seed per demo: new run ids, so a second demo adds runs instead of colliding.
    config = SimulatorConfig(
        seed=time.time_ns() % 2**31, run_seconds=parse_run_seconds(run_seconds)
    )
    with SimulatorServer(config, port=0) as sim:
        say(f"simulator: {sim.base_url} (embedded Spine)")
        os.environ["SPINE_API_KEY"] = sim.api_key
        os.environ["SPINE_BASE_URL"] = sim.base_url
        home = prepare_dagster_home()
        say(f"dagster home: {home}; archive: {settings.archive_uri}")
        from spine_pipeline.definitions import build_definitions

        defs = build_definitions()
        with dg.DagsterInstance.get() as instance:
            report = run_demo(defs, instance, settings.archive_uri, timeout=timeout, say=say)
    for line in summary_lines(report, settings):
        say(line)
    return (
        not report.failed_submits
        and len(report.archived) == len(report.submitted)
        and report.verify_ok
    )
