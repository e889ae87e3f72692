"""Root Definitions: the only object workspace.yaml loads.

Everything is chosen from the environment, parsed once by `spine_pipeline.settings` (a bad
setting fails the load with one line naming it): resources in `defs/resources.py`, the
catalog path from `SPINE_CATALOG` (default `data/requests.yaml`).
"""

import dagster as dg

from spine_pipeline.defs.alert_sensor import spine_alert_sensor
from spine_pipeline.defs.archive import (
    archive_batch,
    archive_log_consistent_with_witness,
    archive_log_job,
    recheck_job,
    spine_run_check,
    spine_run_with_requests,
)
from spine_pipeline.defs.audit import (
    archive_job,
    audit_database,
    audit_job,
    budget_checks,
    credit_report,
    credit_report_schedule,
    no_credit_anomaly,
    no_overdue_runs,
)
from spine_pipeline.defs.poll_sensor import spine_poll_sensor
from spine_pipeline.defs.resources import build_resources
from spine_pipeline.defs.submit import submit_definitions
from spine_pipeline.defs.webhook_sensor import spine_webhook_sensor
from spine_pipeline.settings import Settings


def build_definitions() -> dg.Definitions:
    settings = Settings.from_env()
    submits = submit_definitions(settings.catalog_path)
    submit_keys = [a.key for a in submits.assets or () if isinstance(a, dg.AssetsDefinition)]
    core = dg.Definitions(
        assets=[spine_run_with_requests(submit_keys), archive_batch, audit_database, credit_report],
        asset_checks=[
            spine_run_check,
            archive_log_consistent_with_witness,
            no_overdue_runs,
            *budget_checks,
            no_credit_anomaly,
        ],
        jobs=[archive_job, audit_job, recheck_job, archive_log_job],
        sensors=[spine_poll_sensor, spine_webhook_sensor, spine_alert_sensor],
        schedules=[credit_report_schedule],
        resources=build_resources(settings),
    )
    return dg.Definitions.merge(submits, core)


defs = build_definitions()
