"""poll_runs against a real simulator: what a pass reports when it stops early."""

import asyncio
import time

from spine_pipeline.spine import AsyncSpineClient, SpineClient
from spine_pipeline.spine.poll_pass import poll_runs


def _runs(sim, n):
    with SpineClient(api_key=sim.api_key, base_url=sim.base_url) as client:
        return [client.create_run(f"Poll pass {i}").run_id for i in range(n)]


def _pass(sim, run_ids, seconds, concurrency=4):
    async def go():
        async with AsyncSpineClient(api_key=sim.api_key, base_url=sim.base_url) as client:
            return await poll_runs(
                client, run_ids, deadline=time.monotonic() + seconds, concurrency=concurrency
            )

    return asyncio.run(go())


def test_polls_cut_by_the_deadline_are_not_polled_and_not_timeouts(make_simulator):
    sim = make_simulator(run_seconds=(600, 600))
    ids = _runs(sim, 6)
    sim.set_faults("get:latency=2000")
    done = _pass(sim, ids, 0.5)
    # Requests in flight at the deadline time out (their timeouts are capped to it): that
    # is the pass's budget, not Spine failing, so no error and every run is due again.
    assert done.stopped_early == "deadline reached"
    assert [r.polled for r in done.results] == [False] * 6
    assert all(r.error is None for r in done.results)


def test_a_real_timeout_before_the_deadline_stops_the_pass(make_simulator):
    sim = make_simulator(run_seconds=(600, 600))
    ids = _runs(sim, 3)
    sim.set_faults("get:latency=3000")

    async def go():
        client = AsyncSpineClient(api_key=sim.api_key, base_url=sim.base_url, timeout=0.3)
        async with client:
            return await poll_runs(client, ids, deadline=time.monotonic() + 30, concurrency=1)

    done = asyncio.run(go())
    assert done.stopped_early is not None and done.stopped_early.startswith("SpineTimeoutError")
    first = done.results[0]
    assert first.polled and first.error and "timed out" in first.error
    assert [r.polled for r in done.results[1:]] == [False, False]
