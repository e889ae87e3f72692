"""The alert sensor: failed asset checks and overdue runs, posted to `SPINE_ALERT_WEBHOOK_URL`.

Each tick (every minute) it reads the newest evaluations of every asset check in the
definitions (the budget and anomaly checks, the archive checks, the overdue check) and the
in-flight runs (the ledger's rule, through the poll sensor's cached reader); what is new,
a failed evaluation it has not sent or a run newly past `OVERDUE_AFTER`, goes out as one
Slack-compatible message (`spine_pipeline/alerts.py`: bounded timeout, retried).

Sent once: the cursor remembers the evaluation ids and the overdue run ids it delivered
(the run ids only while the runs are in flight). A message that was not delivered leaves
the cursor as it was, so the next tick sends it again. Without the variable the sensor
skips at once (it reads nothing), so it can run by default.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

import dagster as dg

from spine_pipeline.alerts import Alert, AlertSendError, origin, post_alert, slack_message
from spine_pipeline.archive.ledger import OVERDUE_AFTER, in_flight_for, is_overdue
from spine_pipeline.defs.names import ALERT_SENSOR
from spine_pipeline.defs.resources import ArchiveResource
from spine_pipeline.settings import Settings

ALERT_SENSOR_INTERVAL_SECONDS = 60
#: Newest evaluations read per check per tick: more than a minute of batches produces.
EVALUATIONS_READ = 10
#: Check evaluation ids the cursor keeps (the newest); older ones are never read again.
SENT_CHECKS_KEPT = 2000


@dataclass
class AlertCursor:
    """What was delivered: check evaluation ids, and overdue runs still in flight."""

    checks: list[int] = field(default_factory=list)
    overdue: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, raw: str | None) -> AlertCursor:
        """The cursor, or an empty one if it is absent or unreadable (alerts may repeat once)."""
        try:
            doc = json.loads(raw or "{}")
            return cls(
                checks=[int(i) for i in doc.get("checks", [])],
                overdue=[str(r) for r in doc.get("overdue", [])],
            )
        except (ValueError, TypeError, AttributeError):
            return cls()

    def dump(self) -> str:
        return json.dumps(
            {"checks": sorted(self.checks)[-SENT_CHECKS_KEPT:], "overdue": sorted(self.overdue)}
        )


def check_alerts(context: dg.SensorEvaluationContext, sent: set[int]) -> dict[int, Alert]:
    """Failed evaluations of the definitions' asset checks not sent yet, by evaluation id."""
    storage = context.instance.event_log_storage
    repository = context.repository_def
    keys = repository.asset_graph.asset_check_keys if repository is not None else set()
    out: dict[int, Alert] = {}
    for key in sorted(keys, key=str):
        for record in storage.get_asset_check_execution_history(key, limit=EVALUATIONS_READ):
            evaluation = record.event.asset_check_evaluation if record.event else None
            if evaluation is None or evaluation.passed or record.id in sent:
                continue
            severity = evaluation.severity.value if evaluation.severity else "ERROR"
            where = f"{key.asset_key.to_user_string()}:{key.name}"
            partition = f" [{record.partition}]" if record.partition else ""
            out[record.id] = Alert(
                key=f"check:{record.id}",
                severity=severity,
                title=f"check {where}{partition} failed",
                detail=evaluation.description or f"Dagster run {record.run_id}",
            )
    return out


def overdue_alerts(archive: ArchiveResource, now: datetime) -> dict[str, Alert]:
    """In-flight runs past `OVERDUE_AFTER`, by Spine run id."""
    runs = archive.in_flight_source().load(now)
    return {
        run_id: Alert(
            key=f"overdue:{run_id}",
            severity="WARN",
            title=f"run {run_id} overdue",
            detail=f"in flight for {in_flight_for(run, now).total_seconds() / 3600:.1f} h "
            f"(over {OVERDUE_AFTER.total_seconds() / 3600:g} h), request "
            f"{run.request_name or '(ad hoc)'}; still polled, abandoned after 24 h",
        )
        for run_id, run in runs.items()
        if is_overdue(run, now)
    }


@dg.sensor(
    name=ALERT_SENSOR,
    minimum_interval_seconds=ALERT_SENSOR_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Posts failed asset checks and overdue runs to SPINE_ALERT_WEBHOOK_URL "
    "(Slack-compatible), each once; skips when the variable is not set.",
)
def spine_alert_sensor(
    context: dg.SensorEvaluationContext, archive: ArchiveResource
) -> dg.SensorResult:
    url = Settings.from_env().alert_webhook_url
    if not url:
        return dg.SensorResult(skip_reason="SPINE_ALERT_WEBHOOK_URL is not set")
    cursor = AlertCursor.parse(context.cursor)
    checks = check_alerts(context, set(cursor.checks))
    overdue = overdue_alerts(archive, datetime.now(UTC))
    still = [r for r in cursor.overdue if r in overdue]  # forget runs no longer in flight
    new_overdue = {r: a for r, a in overdue.items() if r not in cursor.overdue}
    alerts = [*checks.values(), *new_overdue.values()]
    if not alerts:
        kept = AlertCursor(cursor.checks, still)
        return dg.SensorResult(skip_reason="nothing new to alert", cursor=kept.dump())
    try:
        post_alert(url, slack_message(alerts))
    except AlertSendError as exc:
        context.log.warning("%s; %d alert(s) sent again next tick", exc, len(alerts))
        return dg.SensorResult(
            skip_reason=f"{len(alerts)} alert(s) not delivered", cursor=context.cursor
        )
    context.log.info("sent %d alert(s) to %s", len(alerts), origin(url))
    sent = AlertCursor([*cursor.checks, *checks], [*still, *new_overdue])
    return dg.SensorResult(
        skip_reason=f"sent {len(alerts)} alert(s) to {origin(url)}", cursor=sent.dump()
    )
