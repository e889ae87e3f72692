"""The poll sensor: a thin shell around `spine_pipeline.poll_plan.run_tick`.

Each tick reads the new webhook events (a terminal event makes its run due now; with
`SPINE_TRACK_FROM_WEBHOOKS=1` a `run.started` tracks an unknown run), polls due in-flight
runs (bounded concurrency, 40 s budget), hands terminal runs to `archive_spine_runs` in
batches (not those the webhook sensor handed already: `handed_since`), asks for one
`refresh_audit_db` run when committed manifests wait for the audit database, and stores
the poll schedule and its place in the inbox as its cursor. It never fails a tick because
of Spine: errors are logged and the runs are polled again later.
"""

import time

import dagster as dg

from spine_pipeline.defs.archive import handed_since, spine_runs
from spine_pipeline.defs.audit import archive_job, audit_job, audit_lag, audit_refresh_request
from spine_pipeline.defs.names import POLL_SENSOR, archive_run_config
from spine_pipeline.defs.resources import ArchiveResource, SpineResource
from spine_pipeline.poll_plan import run_tick
from spine_pipeline.settings import Settings


def batches(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@dg.sensor(
    name=POLL_SENSOR,
    jobs=[archive_job, audit_job],
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Polls in-flight Spine runs and requests batched archive runs for terminal ones.",
)
def spine_poll_sensor(
    context: dg.SensorEvaluationContext, spine: SpineResource, archive: ArchiveResource
) -> dg.SensorResult:
    settings = Settings.from_env()
    report = run_tick(
        archive.in_flight_source(),
        spine.polling_client,
        context.cursor,
        budget_seconds=settings.poll_budget_seconds,
        handed_elsewhere=lambda since: handed_since(context.instance, since),
        track_from_webhooks=settings.track_from_webhooks,
    )
    if report.cursor_recovered:
        context.log.warning("poll cursor was unreadable; rebuilt it from the ledger")
    if report.inbox_error:
        context.log.warning("webhook inbox not read this tick: %s", report.inbox_error)
    for run_id in report.tracked_from_events:
        context.log.info("tracking run %s (a run.started webhook named it)", run_id)
    if report.stopped_early:
        context.log.warning("polling stopped early this tick: %s", report.stopped_early)
    for run_id in report.overdue:
        context.log.warning("run %s is overdue (in flight for more than 3 h)", run_id)
    for run_id in report.abandoned:
        context.log.error("run %s abandoned: not terminal 24 h after submission", run_id)
    stamp = int(time.time() * 1000)
    requests = [
        dg.RunRequest(
            job_name=archive_job.name,
            run_key=f"archive-{stamp}-{i}",
            # The tracking records this tick loaded: the archive run need not re-read them.
            run_config=archive_run_config(
                batch, [report.tracked[r] for r in batch if r in report.tracked]
            ),
            tags={"spine/run_count": str(len(batch))},
        )
        for i, batch in enumerate(batches(report.to_archive, archive.batch_size))
    ]
    archive_requests = len(requests)
    lag = audit_lag(context.instance, report.committed_seq, time.time())
    if lag.warning:
        context.log.warning(lag.warning)
    if lag.request:
        requests.append(audit_refresh_request(lag, report.committed_seq))
    context.log.info(
        "tick: %d in flight, %d webhook event(s) (%d run(s) due early), %d polled, "
        "%d to archive in %d batch(es), audit: %s, %.2fs",
        report.in_flight,
        report.events,
        len(report.woken),
        report.polled,
        len(report.to_archive),
        archive_requests,
        lag.reason,
        report.seconds,
    )
    partitions = [spine_runs.build_add_request(report.to_archive)] if report.to_archive else []
    return dg.SensorResult(
        run_requests=requests,
        cursor=report.cursor,
        dynamic_partitions_requests=partitions,
        skip_reason=None if requests else f"{report.in_flight} run(s) in flight, none terminal",
    )
