"""Archive-level operations shared by the CLI and Dagster: archive now, list run states."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from spine_pipeline.archive.archiver import Archiver, RunOutcome
from spine_pipeline.archive.ledger import Ledger, in_flight, inflight_since
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.stores import ObjectStore, open_store
from spine_pipeline.progress import ProgressFn, Step, no_progress
from spine_pipeline.spine import AsyncSpineClient
from spine_pipeline.spine.poll_pass import PollResult, poll_runs

ClientFactory = Callable[[], AsyncSpineClient]


#: `archive --wait` polls again after 0.5 s, 1 s, then every `WAIT_CAP_SECONDS`: a run that
#: finishes is archived at most that long after (one GET per pending run per round).
WAIT_FIRST_SECONDS = 0.5
WAIT_CAP_SECONDS = 2.0
#: Runs named one by one in a waiting step; the rest are counted.
WAIT_RUNS_SHOWN = 5
Sleep = Callable[[float], Awaitable[None]]


def wait_delay(round_index: int) -> float:
    """Seconds between poll round `round_index` (0-based) and the next: doubling, capped."""
    return min(WAIT_FIRST_SECONDS * 2 ** min(round_index, 16), WAIT_CAP_SECONDS)


def _run_state(result: PollResult) -> str:
    if result.run is not None:
        return result.run.status or "no status"
    if result.not_found:
        return "not found"
    return "not polled" if not result.polled else "poll failed"


async def wait_until_terminal(
    client_factory: ClientFactory,
    run_ids: Sequence[str],
    *,
    timeout: float,
    progress: ProgressFn = no_progress,
    sleep: Sleep = asyncio.sleep,
) -> None:
    """Poll (backoff `wait_delay`) until every run is terminal or gone, or `timeout` passes.

    Each round is one progress step: every run's state, the time elapsed and the time left
    before the timeout, so a user can tell a slow run from a stuck command.
    """
    started = time.monotonic()
    deadline = started + timeout
    wanted = list(dict.fromkeys(run_ids))
    pending = list(wanted)
    round_index = 0
    async with client_factory() as client:
        while pending and time.monotonic() < deadline:
            passed = await poll_runs(client, pending, deadline=min(deadline, time.monotonic() + 60))
            settled = {r.run_id for r in passed.results if r.is_terminal or r.not_found}
            states = [f"{r.run_id} {_run_state(r)}" for r in passed.results]
            pending = [r for r in pending if r not in settled]
            now = time.monotonic()
            delay = max(0.0, min(wait_delay(round_index), deadline - now))
            shown = ", ".join(states[:WAIT_RUNS_SHOWN])
            if len(states) > WAIT_RUNS_SHOWN:
                shown += f" and {len(states) - WAIT_RUNS_SHOWN} more"
            timing = f"{now - started:.0f} s elapsed, {max(0.0, deadline - now):.0f} s left"
            progress(
                Step(
                    "waiting for runs",
                    len(wanted) - len(pending),
                    len(wanted),
                    f"{shown}; {timing}" if pending else f"{shown}; all terminal",
                )
            )
            if not pending:
                return
            await sleep(delay)
            round_index += 1


def archive_now(
    archive_uri: str,
    run_ids: Sequence[str],
    *,
    wait: bool = False,
    timeout: float = 8100.0,
    progress: ProgressFn = no_progress,
    client_factory: ClientFactory | None = None,
) -> list[RunOutcome]:
    """Archive the given runs into `archive_uri` now, optionally waiting for them first."""
    store = open_store(archive_uri)
    factory = client_factory or AsyncSpineClient
    requests = Ledger(store).archive_requests(run_ids)
    if wait:
        asyncio.run(wait_until_terminal(factory, run_ids, timeout=timeout, progress=progress))
        progress(Step("archiving", detail=f"{len(requests)} run(s)"))
    return Archiver(store, factory).archive(requests).outcomes


@dataclass(frozen=True)
class RunState:
    run_id: str
    # archived | in_flight | abandoned | stale (tracked before the in-flight window, never
    # archived nor abandoned: no sensor polls it) | unknown
    state: str
    status: str | None = None
    request_name: str | None = None
    since: str | None = None
    seq: int | None = None


def run_states(
    store: ObjectStore, run_ids: Sequence[str] = (), *, now: datetime | None = None
) -> list[RunState]:
    """Every tracked or archived run (or just `run_ids`) with where it stands.

    In flight means what it means to the poll sensor (`ledger.in_flight`, one window);
    a run tracked earlier and never archived nor abandoned is `stale`.
    """
    log = ManifestLog(store)
    log.refresh()
    archived = {r.run_id: (m.seq, r) for m in log for r in m.runs}
    ledger = Ledger(store)
    abandoned = ledger.abandoned()
    tracked = {t.run_id: t for t in ledger.tracked()}
    since = inflight_since(now or datetime.now(UTC))
    flying = in_flight(ledger.tracked(since=since), archived, abandoned)
    wanted = list(dict.fromkeys(run_ids)) or list(dict.fromkeys([*tracked, *flying, *archived]))
    rows = []
    for run_id in wanted:
        t = tracked.get(run_id)
        name = t.request_name if t else None
        if run_id in archived:
            seq, entry = archived[run_id]
            rows.append(RunState(run_id, "archived", entry.status, name, entry.terminal_at, seq))
        elif run_id in abandoned:
            rows.append(RunState(run_id, "abandoned", None, name, t.tracked_at if t else None))
        elif run_id in flying:
            f = flying[run_id]
            rows.append(RunState(run_id, "in_flight", None, f.request_name, f.tracked_at))
        elif t is not None:
            rows.append(RunState(run_id, "stale", None, name, t.tracked_at))
        else:
            rows.append(RunState(run_id, "unknown"))
    return rows
