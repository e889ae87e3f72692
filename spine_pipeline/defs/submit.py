"""Submit assets: one per catalog entry, and a cron schedule for entries that have one.

A submit costs credits, so none happens by accident: every submit asset requires
`confirm: true` in its run config (a required field with no default). Dagster validates run
config before it creates a run, so the UI's "Materialize all" (or a selection with a submit
asset in it) opens the launchpad instead of launching, and a run given `confirm: false`
fails before calling Spine. The schedules and `submit_catalog` launches from code carry the
confirmation (`names.submit_run_config`). Schedules start stopped unless the catalog entry
says `enabled: true`.
"""

from pathlib import Path

import dagster as dg

from spine_pipeline.archive.identity import SpineMismatchError
from spine_pipeline.catalog import CatalogRequest, load_catalog
from spine_pipeline.defs.names import (
    DEFAULT_OWNER,
    SUBMIT_ALL_JOB,
    submit_asset_name,
    submit_run_config,
)
from spine_pipeline.defs.resources import ArchiveResource, SpineResource
from spine_pipeline.spine import SpineError, SubmitOutcomeUnknownError, canvas_url
from spine_pipeline.submission import (
    RunIdReused,
    SubmissionNotRecorded,
    SubmitSpec,
    submit_and_record,
)

GROUP = "spine_requests"


class SubmitConfig(dg.Config):
    """The deliberate choice to spend credits: `confirm: true` submits this request to
    Spine. No default, so that a run must say it ("Materialize all" cannot)."""

    confirm: bool


def owner(request: CatalogRequest) -> str:
    """The Dagster owner of a request's submit asset: its catalog team, else the default."""
    return f"team:{request.team}" if request.team else DEFAULT_OWNER


def submit_asset(request: CatalogRequest) -> dg.AssetsDefinition:
    """An asset whose materialisation submits one run of `request` and records it."""

    @dg.asset(
        name=submit_asset_name(request.name),
        group_name=GROUP,
        owners=[owner(request)],
        kinds={"spine"},
        description=request.description or f"Submit the '{request.name}' request to Spine.",
        tags={f"spine/{k}": v for k, v in request.tags.items()}
        | {"spine/template": request.template},
        metadata={"prompt": request.prompt, "template": request.template},
        # Never retried by Dagster: a blind retry of an unknown outcome could bill twice.
        op_tags={"dagster/max_retries": 0},
    )
    def _submit(
        context: dg.AssetExecutionContext,
        config: SubmitConfig,
        spine: SpineResource,
        archive: ArchiveResource,
    ) -> dg.MaterializeResult:
        if not config.confirm:
            raise dg.Failure(
                description="not submitted: the run config says confirm: false "
                "(set confirm: true to submit; it costs credits)",
                allow_retries=False,
            )
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
            run_config=submit_run_config([r.name]),
            default_status=dg.DefaultScheduleStatus.RUNNING
            if r.enabled
            else dg.DefaultScheduleStatus.STOPPED,
            description=f"Recurring submit of '{r.name}' (catalog: enabled: "
            f"{'true' if r.enabled else 'false'}).",
        )
        for r in catalog
        if r.schedule
    ]
    submit_all = dg.define_asset_job(
        SUBMIT_ALL_JOB,
        selection=dg.AssetSelection.groups(GROUP),
        description="Submit every catalog request once (needs confirm: true per request).",
    )
    return dg.Definitions(assets=list(assets.values()), schedules=schedules, jobs=[submit_all])
