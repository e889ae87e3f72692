"""Bugs the soak found, each pinned by a small deterministic test (see docs/reliability.md)."""

import asyncio
import hashlib

from spine_pipeline.spine import AsyncSpineClient, RetryPolicy, SpineClient

FAST = RetryPolicy(max_retries=4, base_delay=0.01, max_delay=0.05, jitter=0.0)


def _terminal_run(simulator, client):
    run_id = client.create_run("[scenario:completed] downloads", template="report").run_id
    simulator.world.finish(run_id)
    return client.get_run(run_id)


def test_download_answered_429_is_retried(simulator, tmp_path):
    """Soak, 40 runs: 9 of 103 artifacts were archived without bytes after one 429."""
    with SpineClient(api_key=simulator.api_key, base_url=simulator.base_url, retry=FAST) as c:
        run = _terminal_run(simulator, c)
        art = run.artifacts[0]
        truth = simulator.world.ground_truth(run.run_id).artifacts[art.id]
        simulator.set_faults("download:429=0x2")
        with open(tmp_path / "a.bin", "w+b") as fh:
            got = c.download(art.download_url, fh)
    assert got.sha256 == truth.sha256
    assert simulator.world.fault_counts["download:429"] == 2

    async def async_download() -> str:
        async with AsyncSpineClient(
            api_key=simulator.api_key, base_url=simulator.base_url, retry=FAST
        ) as client:
            fresh = await client.get_run(run.run_id)
            simulator.set_faults("download:429=0x2")
            with open(tmp_path / "b.bin", "w+b") as fh:
                return (await client.download(fresh.artifacts[0].download_url, fh)).sha256

    assert asyncio.run(async_download()) == truth.sha256
    assert hashlib.sha256((tmp_path / "b.bin").read_bytes()).hexdigest() == truth.sha256
