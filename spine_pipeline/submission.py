"""Submit one request and record what happened, whatever happened (invariant 2).

Shared by the Dagster submit assets and `spine-pipeline submit`. Every attempt leaves a
ledger record: `accepted` (and the run is tracked for polling), `rejected` (Spine said no,
or the request provably never left), or `unknown` (it may have created a billable run; it
is never retried automatically and the error is re-raised so the caller fails loudly).

The ledger lives in the archive store, which can be down when Spine answers. A created run
that is not recorded is billed and never archived, and Spine has no endpoint to list runs,
so ledger writes after the POST are retried with backoff, and if the store stays down the
error raised (`SubmissionNotRecorded`) names the run id and how to track it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from spine_pipeline.archive.identity import check_store_spine, spine_of
from spine_pipeline.archive.ledger import Ledger, Submission
from spine_pipeline.archive.stores import StoreError
from spine_pipeline.spine import (
    CreatedRun,
    SpineClient,
    SpineError,
    SubmitOutcomeUnknownError,
    UploadFile,
)

T = TypeVar("T")
RECORD_ATTEMPTS = 4
RECORD_BACKOFF = 2.0  # seconds before the 2nd attempt, doubling (on top of boto3's retries)


class SubmissionNotRecorded(StoreError):
    """Spine answered but the ledger could not record it; the message says what to do."""


class RunIdReused(ValueError):
    """Spine created a run under an id this archive already tracks (one line, what to do)."""


def _durably(write: Callable[[], T], failed: Callable[[StoreError], str]) -> T:
    """A ledger write retried with backoff; `failed(error)` words the final error."""
    delay = RECORD_BACKOFF
    for attempt in range(RECORD_ATTEMPTS):
        try:
            return write()
        except StoreError as exc:
            if attempt == RECORD_ATTEMPTS - 1:
                raise SubmissionNotRecorded(failed(exc)) from None
        time.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


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
    """POST the run, record the attempt, track the run; re-raise failures after recording.

    Nothing is sent to an archive that serves another Spine (`SpineMismatchError`): a run
    billed there could never be archived.
    """
    check_store_spine(ledger.store, spine_of(client.base_url))
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
        unknown = str(exc)
        _durably(
            lambda: record("unknown", None, unknown, None),
            lambda err: (
                f"{unknown}; recording this unknown outcome in the archive ledger failed "
                f"({err}): check Spine for a run of this prompt before submitting it again"
            ),
        )
        raise
    except SpineError as exc:
        rejected = str(exc)
        _durably(
            lambda: record("rejected", None, rejected, None),
            lambda err: f"{rejected}; recording the rejection in the archive ledger failed ({err})",
        )
        raise
    run_id = created.run_id

    def not_recorded(err: StoreError) -> str:
        return (
            f"Spine created run {run_id}, but the archive ledger could not record it ({err}); "
            f"it is not tracked: run `spine-pipeline track {run_id}` once the archive is "
            "reachable"
        )

    submission = _durably(lambda: record("accepted", run_id, None, created.canvas_id), not_recorded)
    tracked = _durably(
        lambda: ledger.track(
            run_id, request_name=spec.request_name, submitted_at=submitted_at, source=source
        ),
        not_recorded,
    )
    if not tracked:
        _refuse_reused_id(ledger, run_id, submitted_at)
    return SubmitResult(created=created, submission=submission, tracked=tracked)


def _refuse_reused_id(ledger: Ledger, run_id: str, submitted_at: datetime) -> None:
    """A run just created cannot already be tracked, unless Spine handed out its id before.

    Then the archive holds (or will hold) the other run under that id, and the new run would
    be skipped as already archived without a word: fail loudly instead (`RunIdReused`).
    The submission record stays. Only a record made before our POST is another run's: one
    made since is ours (a retried write that had landed, or a `run.started` webhook that
    tracked the run first).
    """
    record = ledger.find_tracked(run_id, around=submitted_at)
    if record is None or record.tracked_time >= submitted_at:
        return
    raise RunIdReused(
        f"Spine created run {run_id}, but this archive already tracks a run of that id "
        f"(tracked {record.tracked_at}): the Spine reuses run ids (a simulator restarted "
        "with the same --seed?) and this run cannot be archived here: point "
        "SPINE_ARCHIVE_URI at a fresh path"
    )
