"""Submit one request and record what happened, whatever happened (invariant 2).

Shared by the Dagster submit assets and `spine-pipeline submit`. Every attempt leaves a
ledger record: `accepted` (and the run is tracked for polling), `rejected` (Spine said no,
or the request provably never left), or `unknown` (it may have created a billable run; it
is never retried automatically and the error is re-raised so the caller fails loudly).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from spine_pipeline.archive.ledger import Ledger, Submission
from spine_pipeline.spine import (
    CreatedRun,
    SpineClient,
    SpineError,
    SubmitOutcomeUnknownError,
    UploadFile,
)


@dataclass(frozen=True)
class SubmitSpec:
    """What to send: a catalog entry or an ad-hoc CLI request."""

    prompt: str
    template: str | None = None
    blocks: Sequence[str] | None = None
    agent_instructions: str | None = None
    files: Sequence[UploadFile] = ()
    request_name: str | None = None


@dataclass(frozen=True)
class SubmitResult:
    created: CreatedRun
    submission: Submission
    tracked: bool


def submit_and_record(
    client: SpineClient, ledger: Ledger, spec: SubmitSpec, *, source: str
) -> SubmitResult:
    """POST the run, record the attempt, track the run; re-raise failures after recording."""
    submitted_at = datetime.now(UTC)

    def record(
        outcome: str, run_id: str | None, error: str | None, canvas_id: str | None
    ) -> Submission:
        submission = Submission(
            request_name=spec.request_name,
            run_id=run_id,
            submitted_at=submitted_at.isoformat().replace("+00:00", "Z"),
            outcome=outcome,
            error=error,
            prompt=spec.prompt,
            template=spec.template,
            blocks=list(spec.blocks) if spec.blocks is not None else None,
            agent_instructions=spec.agent_instructions,
            files=[f.name for f in spec.files],
            source=source,
            canvas_id=canvas_id,
        )
        ledger.record_submission(submission)
        return submission

    try:
        created = client.create_run(
            spec.prompt,
            template=spec.template,
            blocks=spec.blocks,
            agent_instructions=spec.agent_instructions,
            files=spec.files,
        )
    except SubmitOutcomeUnknownError as exc:
        record("unknown", None, str(exc), None)
        raise
    except SpineError as exc:
        record("rejected", None, str(exc), None)
        raise
    submission = record("accepted", created.run_id, None, created.canvas_id)
    tracked = ledger.track(
        created.run_id, request_name=spec.request_name, submitted_at=submitted_at, source=source
    )
    return SubmitResult(created=created, submission=submission, tracked=tracked)
