"""The webhook sensor: a thin, fast shell around `spine_pipeline.poll_plan.run_inbox_tick`.

Every few seconds it reads only the new webhook events. For the in-flight runs that a
`run.completed`/`run.failed` names, it asks Spine (the event is never trusted on its own:
docs/decisions.md) and hands the ones Spine says are terminal to `archive_spine_runs`,
then asks for a `refresh_audit_db` once they are committed, so that a finished run is
queryable seconds after its event instead of after its next poll.

It never hands a run twice with the poll sensor: both read which runs an archive run was
requested for within the re-request grace from the Dagster instance (`handed_since`), and
its run keys are derived from the runs, so a tick the daemon evaluates again with the same
cursor (a crash between launch and cursor save) launches nothing new. Runs whose event is
lost, late or never sent (`partial` has none) are the poll sensor's, as before.
"""

import hashlib
import time

import dagster as dg

from spine_pipeline.defs.archive import handed_since, spine_runs
from spine_pipeline.defs.audit import (
    archive_job,
    audit_job,
    audit_lag,
    audit_refresh_request,
    ingested_seq,
)
from spine_pipeline.defs.names import WEBHOOK_SENSOR, archive_run_config
from spine_pipeline.defs.poll_sensor import batches
from spine_pipeline.defs.resources import ArchiveResource, SpineResource
from spine_pipeline.poll_plan import INBOX_TICK_BUDGET_SECONDS, run_inbox_tick
from spine_pipeline.settings import Settings

#: The daemon evaluates sensors in a loop of about 5 s, so a shorter interval gains nothing.
WEBHOOK_SENSOR_INTERVAL_SECONDS = 5


def webhook_run_key(run_ids: list[str]) -> str:
    """The run key of the archive run for these Spine runs (the same for the same set)."""
    digest = hashlib.sha256("\n".join(sorted(run_ids)).encode("utf-8")).hexdigest()
    return f"webhook-archive-{digest[:32]}"


@dg.sensor(
    name=WEBHOOK_SENSOR,
    jobs=[archive_job, audit_job],
    minimum_interval_seconds=WEBHOOK_SENSOR_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Reads the webhook inbox and archives runs whose end a webhook announced "
    "and Spine confirmed, within seconds; polling stays the source of truth.",
)
def spine_webhook_sensor(
    context: dg.SensorEvaluationContext, spine: SpineResource, archive: ArchiveResource
) -> dg.SensorResult:
    settings = Settings.from_env()
    report = run_inbox_tick(
        archive.in_flight_source(),
        spine.polling_client,
        context.cursor,
        ingested_seq=lambda: ingested_seq(context.instance),
        handed_elsewhere=lambda since: handed_since(context.instance, since),
        budget_seconds=min(INBOX_TICK_BUDGET_SECONDS, settings.poll_budget_seconds),
    )
    if report.cursor_recovered:
        context.log.warning("webhook sensor cursor was unreadable; reading the inbox afresh")
    if report.inbox_error:
        context.log.warning("webhook inbox not read this tick: %s", report.inbox_error)
    if report.stopped_early:
        context.log.warning("confirming runs stopped early this tick: %s", report.stopped_early)
    for run_id in report.not_terminal:
        context.log.info("run %s: a webhook said it ended, Spine does not (yet)", run_id)
    requests = [
        dg.RunRequest(
            job_name=archive_job.name,
            run_key=webhook_run_key(batch),
            run_config=archive_run_config(batch, [report.tracked[r] for r in batch]),
            tags={"spine/run_count": str(len(batch)), "spine/trigger": "webhook"},
        )
        for batch in batches(report.to_archive, archive.batch_size)
    ]
    audit = "nothing handed waits"
    if report.audit_waits:
        lag = audit_lag(context.instance, report.committed_seq, time.time())
        audit = lag.reason
        if lag.request:
            requests.append(audit_refresh_request(lag, report.committed_seq))
    context.log.info(
        "tick: %d webhook event(s), %d in-flight run(s) named, %d to archive, audit: %s, %.2fs",
        report.events,
        len(report.named),
        len(report.to_archive),
        audit,
        report.seconds,
    )
    partitions = [spine_runs.build_add_request(report.to_archive)] if report.to_archive else []
    return dg.SensorResult(
        run_requests=requests,
        cursor=report.cursor,
        dynamic_partitions_requests=partitions,
        skip_reason=None if requests else f"{report.events} webhook event(s), nothing to hand",
    )
