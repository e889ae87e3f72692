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

import dagster as dg

from spine_pipeline.archive.identity import SIMULATOR, check_store_spine
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.read import read_committed
from spine_pipeline.archive.signing import VerifyKeys
from spine_pipeline.archive.stores import open_store
from spine_pipeline.archive.tlog import Witness
from spine_pipeline.archive.verify import verify_archive
from spine_pipeline.audit import credit_report
from spine_pipeline.audit.sql import format_table
from spine_pipeline.defs.names import SUBMIT_ALL_JOB
from spine_pipeline.driver import (
    execute_submit_catalog,
    prepare_dagster_home,
    step_failures,
    submitted_runs,
    tick_and_launch,
)
from spine_pipeline.settings import Settings

#: The demo's poll intervals (first, longest; seconds), for the simulator's short runs.
DEMO_POLL_INTERVALS = (1.0, 2.0)


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


def submit_catalog(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    report: DemoReport,
    say: Callable[[str], None],
) -> None:
    """Materialise every submit asset in one run; record run ids and failures."""
    say(f"submitting the catalog through the submit assets ({SUBMIT_ALL_JOB})")
    result = execute_submit_catalog(defs, instance)
    for asset, run_id in submitted_runs(result):
        report.submitted.append(run_id)
        say(f"  {asset}: run {run_id}")
    for failure in step_failures(result):
        report.failed_submits.append(failure.step_key)
        say(f"  {failure.step_key} failed: {failure.message.strip()}")


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
        tick = tick_and_launch(defs, instance, cursor, say=say)
        report.ticks += 1
        report.archive_runs += len(tick.requested)
        report.audit_refreshes += tick.refreshes
        cursor = tick.cursor
        log.refresh()
        done = pending & set(log.committed_runs)
        if done:
            report.archived.extend(sorted(done))
            pending -= done
            say(
                f"tick {report.ticks}: archived {len(report.archived)}/{len(report.submitted)} "
                f"({time.monotonic() - started:.1f}s)"
            )
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
    # Verified as `spine-pipeline verify` would with the same settings: with a verify key and
    # witnesses when they are set (a signed demo: docs/integrity.md).
    settings = Settings.from_env()
    keys = VerifyKeys.load(settings.verify_key) if settings.verify_key else None
    verified = verify_archive(
        open_store(archive_uri),
        keys=keys,
        witnesses=[Witness.open(uri, must_exist=True) for uri in settings.witness_uris],
    )
    report.verify_ok = verified.ok
    signed = (
        f", {verified.signed} signed and checked, checkpoint at size "
        f"{verified.checkpoint.size if verified.checkpoint else 0}"
        if keys is not None
        else ""
    )
    report.verify_summary = (
        f"{verified.manifests} manifests{signed}, {verified.files} files, "
        f"{verified.artifacts} artifacts: "
        + ("OK" if verified.ok else f"{len(verified.problems)} problem(s)")
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
    seed: int | None = None,
    say: Callable[[str], None] = print,
) -> bool:
    """Start the simulator, point the definitions at it, run the demo; True if all archived."""
    from spine_pipeline.simulator import SimulatorConfig, SimulatorServer, parse_run_seconds
    from spine_pipeline.simulator.config import random_seed

    # Before anything is submitted: the simulator's runs never go into a real Spine's archive.
    check_store_spine(open_store(settings.archive_uri), SIMULATOR)
    # The config's random seed: new run ids, so a second demo adds runs instead of colliding.
    config = SimulatorConfig(
        seed=random_seed() if seed is None else seed, run_seconds=parse_run_seconds(run_seconds)
    )
    with SimulatorServer(config, port=0) as sim:
        say(f"simulator: {sim.base_url} (embedded Spine, seed {config.seed})")
        os.environ["SPINE_API_KEY"] = sim.api_key
        os.environ["SPINE_BASE_URL"] = sim.base_url
        # Runs of a few seconds: poll each one every second or two, not on the real Spine's
        # 15-60 s backoff, so the demo ends soon after its last run does.
        os.environ["SPINE_POLL_MIN_INTERVAL_SECONDS"] = str(DEMO_POLL_INTERVALS[0])
        os.environ["SPINE_POLL_MAX_INTERVAL_SECONDS"] = str(DEMO_POLL_INTERVALS[1])
        home = prepare_dagster_home()
        say(f"dagster home: {home}; archive: {settings.archive_uri}")
        from spine_pipeline.definitions import build_definitions

        defs = build_definitions()
        with dg.DagsterInstance.get() as instance:
            report = run_demo(
                defs,
                instance,
                settings.archive_uri,
                timeout=timeout,
                tick_every=DEMO_POLL_INTERVALS[0],
                say=say,
            )
    for line in summary_lines(report, settings):
        say(line)
    return (
        not report.failed_submits
        and len(report.archived) == len(report.submitted)
        and report.verify_ok
    )
