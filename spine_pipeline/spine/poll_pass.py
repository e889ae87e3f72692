"""Poll many runs at once, within a deadline, stopping early when Spine pushes back.

Shared by the Dagster sensor (one bounded pass per tick) and `spine-pipeline archive
--wait` (passes until everything is terminal). A 429, a timeout or a transport failure
stops dispatching further polls in this pass: hammering a struggling API only makes it
worse, and the runs not polled now are simply polled next time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from spine_pipeline.spine.client import AsyncSpineClient
from spine_pipeline.spine.errors import (
    NotFoundError,
    RateLimitError,
    ServerError,
    SpineConnectionError,
    SpineError,
    SpineTimeoutError,
)
from spine_pipeline.spine.models import Run

_BACK_OFF = (RateLimitError, ServerError, SpineTimeoutError, SpineConnectionError)
_DEADLINE_SLACK = 0.1  # seconds: a timeout this close to the deadline was the deadline's


def _at(deadline: float) -> bool:
    return deadline - time.monotonic() <= _DEADLINE_SLACK


@dataclass(frozen=True)
class PollResult:
    """One run's answer in a pass: a `Run`, or an error, or neither (not polled)."""

    run_id: str
    run: Run | None = None
    error: str | None = None
    not_found: bool = False
    polled: bool = True

    @property
    def status(self) -> str | None:
        return self.run.status if self.run is not None else None

    @property
    def is_terminal(self) -> bool:
        return self.run is not None and self.run.is_terminal


@dataclass
class PollPass:
    results: list[PollResult]
    stopped_early: str | None = None  # why dispatching stopped, if it did

    @property
    def terminal(self) -> list[PollResult]:
        return [r for r in self.results if r.is_terminal]


async def poll_runs(
    client: AsyncSpineClient,
    run_ids: Sequence[str],
    *,
    deadline: float,
    concurrency: int = 32,
) -> PollPass:
    """GET each run once, at most `concurrency` at a time, all finished by `deadline`.

    `concurrency` workers take the next run id from one shared iterator, rather than one
    task per run waiting on a semaphore: a pass over thousands of runs then creates and
    wakes a few dozen tasks, not thousands.
    """
    stop: list[str] = []
    results: dict[str, PollResult] = {}

    async def one(run_id: str) -> None:
        if stop or time.monotonic() >= deadline:
            results[run_id] = PollResult(run_id, polled=False)
            return
        try:
            run = await client.get_run(run_id, deadline=deadline)
            results[run_id] = PollResult(run_id, run=run)
        except NotFoundError as exc:
            results[run_id] = PollResult(run_id, error=str(exc), not_found=True)
        except _BACK_OFF as exc:
            if isinstance(exc, SpineTimeoutError) and _at(deadline):
                # Cut short by the pass's deadline (every timeout is capped to it), not
                # by Spine: not polled, due again next time, like a poll still waiting.
                stop.append("deadline reached")
                results[run_id] = PollResult(run_id, polled=False)
            else:
                stop.append(f"{type(exc).__name__}: {exc}")
                results[run_id] = PollResult(run_id, error=str(exc))
        except SpineError as exc:
            results[run_id] = PollResult(run_id, error=str(exc))

    queue = iter(run_ids)

    async def worker() -> None:
        for run_id in queue:  # one event loop: no two workers take the same id
            await one(run_id)

    tasks = [asyncio.ensure_future(worker()) for _ in range(min(max(1, concurrency), len(run_ids)))]
    # A little past the deadline: requests in flight then end by their own timeouts (capped
    # to the deadline) and are counted as not polled above; only what is still pending after
    # that (a retry's sleep, a stuck connect) is cancelled here.
    remaining = deadline - time.monotonic() + _DEADLINE_SLACK
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, remaining))
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            stop.append("deadline reached")
    ordered = [results.get(r, PollResult(r, polled=False)) for r in run_ids]
    return PollPass(results=ordered, stopped_early=stop[0] if stop else None)
