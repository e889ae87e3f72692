"""Submit assets: one per catalog entry, and a cron schedule for entries that have one."""

from pathlib import Path

import dagster as dg

from spine_pipeline.archive.identity import SpineMismatchError
from spine_pipeline.catalog import CatalogRequest, load_catalog
from spine_pipeline.defs.names import SUBMIT_ALL_JOB
from spine_pipeline.defs.resources import ArchiveResource, SpineResource
from spine_pipeline.spine import SpineError, SubmitOutcomeUnknownError, canvas_url
from spine_pipeline.submission import (
    RunIdReused,
    SubmissionNotRecorded,
    SubmitSpec,
    submit_and_record,
)

GROUP = "spine_requests"


def submit_asset(request: CatalogRequest) -> dg.AssetsDefinition:
    """An asset whose materialisation submits one run of `request` and records it."""

    @dg.asset(
        name=f"submit_{request.name}",
        group_name=GROUP,
        kinds={"spine"},
        description=request.description or f"Submit the '{request.name}' request to Spine.",
        tags={f"spine/{k}": v for k, v in request.tags.items()}
        | {"spine/template": request.template},
        metadata={"prompt": request.prompt, "template": request.template},
        # Never retried by Dagster: a blind retry of an unknown outcome could bill twice.
        op_tags={"dagster/max_retries": 0},
    )
    def _submit(
        context: dg.AssetExecutionContext, spine: SpineResource, archive: ArchiveResource
    ) -> dg.MaterializeResult:
        spec = SubmitSpec(
            prompt=request.prompt,
            template=request.template,
            blocks=request.blocks,
            agent_instructions=request.agent_instructions,
            files=request.uploads(),
            request_name=request.name,
        )
        with spine.client() as client:
            try:
                result = submit_and_record(client, archive.ledger(), spec, source="dagster")
            except SubmitOutcomeUnknownError as exc:
                raise dg.Failure(
                    description=f"outcome unknown (recorded as 'unknown', not retried): {exc}",
                    allow_retries=False,
                ) from None
            except SpineError as exc:
                raise dg.Failure(
                    description=f"Spine rejected the submit (recorded): {exc}",
                    allow_retries=False,
                ) from None
            except (SubmissionNotRecorded, RunIdReused, SpineMismatchError) as exc:
                raise dg.Failure(description=str(exc), allow_retries=False) from None
        created = result.created
        context.log.info("submitted %s as run %s", request.name, created.run_id)
        metadata: dict[str, dg.MetadataValue | str | list[str]] = {
            "run_id": created.run_id,
            "template": request.template,
            "submitted_at": result.submission.submitted_at,
            "files": [f.name for f in request.files],
        }
        link = canvas_url(created.canvas_id)
        metadata["canvas"] = (
            dg.MetadataValue.url(link) if link else "pending (canvas id not returned yet)"
        )
        return dg.MaterializeResult(metadata=metadata)

    return _submit


def submit_definitions(catalog_path: str | Path) -> dg.Definitions:
    """Assets and schedules for every entry of the catalog."""
    catalog = load_catalog(catalog_path)
    assets = {r.name: submit_asset(r) for r in catalog}
    schedules = [
        dg.ScheduleDefinition(
            name=f"{r.name}_schedule",
            target=assets[r.name],
            cron_schedule=r.schedule,
            execution_timezone="UTC",
            description=f"Recurring submit of '{r.name}'.",
        )
        for r in catalog
        if r.schedule
    ]
    submit_all = dg.define_asset_job(
        SUBMIT_ALL_JOB,
        selection=dg.AssetSelection.groups(GROUP),
        description="Submit every catalog request once.",
    )
    return dg.Definitions(assets=list(assets.values()), schedules=schedules, jobs=[submit_all])
