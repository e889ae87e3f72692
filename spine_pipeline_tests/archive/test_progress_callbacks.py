"""Progress callbacks of verify, gc, audit rebuild and archive --wait (counts, schedule)."""

import asyncio
from collections import Counter
from datetime import timedelta

from spine_pipeline.archive.gc import collect_garbage
from spine_pipeline.archive.service import (
    WAIT_CAP_SECONDS,
    archive_now,
    wait_delay,
    wait_until_terminal,
)
from spine_pipeline.archive.verify import verify_archive
from spine_pipeline.audit import rebuild_audit_db
from spine_pipeline.spine import AsyncSpineClient, SpineClient
from spine_pipeline_tests.archive.conftest import ArchiveKit


def _manifests(kit, n):
    """n manifests, one run each (submitted together: one wait)."""
    ids = kit.submit(*(f"[scenario:completed] run {i}" for i in range(n)))
    for run_id in ids:
        kit.archiver().archive([run_id])


def test_verify_gc_and_rebuild_report_each_manifest_and_phase(simulator, tmp_path):
    # what is counted is the loop, not the store: one backend (both run verify elsewhere)
    kit = ArchiveKit(simulator, str(tmp_path / "archive"))
    _manifests(kit, 2)
    steps = []
    assert verify_archive(kit.store, progress=steps.append).ok
    manifests = [(s.done, s.total) for s in steps if s.stage == "verify: manifests"]
    assert manifests == [(0, 2), (1, 2), (2, 2)]
    assert steps[0].stage == "verify: listing the archive"
    assert steps[-1].stage == "verify: signatures and checkpoints"

    steps.clear()
    collect_garbage(kit.store, grace=timedelta(0), dry_run=True, progress=steps.append)
    assert [(s.stage, s.done, s.total) for s in steps] == [
        ("gc: reading the manifest log", 0, None),
        ("gc: areas", 0, 1),
        ("gc: areas", 1, 1),
    ]
    assert steps[-1].detail == "would remove 0 object(s)"

    steps.clear()
    report = rebuild_audit_db(kit.uri, tmp_path / "audit.duckdb", progress=steps.append)
    assert report.last_seq == 2
    stages = Counter(s.stage for s in steps)
    ingest = [(s.done, s.total) for s in steps if s.stage == "audit: ingesting manifests"]
    assert ingest == [(0, 2), (2, 2)]  # a rebuild ingests in bulk groups
    assert stages["audit: reading the manifest log"] == 1
    assert stages["audit: clustering the search index"] == 1
    assert steps[-1].stage == "audit: writing the snapshot"


def test_the_wait_backoff_is_capped():
    schedule = [wait_delay(i) for i in range(8)]
    assert schedule == [0.5, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    assert wait_delay(10_000) == WAIT_CAP_SECONDS  # no overflow on a long wait


def test_a_run_finishing_shortly_after_is_polled_within_the_cap_and_archived(
    make_simulator, tmp_path
):
    """The run ends about 1.5 s after the wait starts: every pause between polls follows
    the capped schedule, so it is seen (and archived) at most the cap after it ended."""
    sim = make_simulator(run_seconds=(1.4, 1.6))
    with SpineClient(api_key=sim.api_key, base_url=sim.base_url) as client:
        run_id = client.create_run("[scenario:completed] soon", template="report").run_id

    def factory():
        return AsyncSpineClient(api_key=sim.api_key, base_url=sim.base_url)

    slept, steps = [], []

    async def sleep(seconds):
        slept.append(seconds)
        await asyncio.sleep(seconds)

    asyncio.run(
        wait_until_terminal(factory, [run_id], timeout=60, progress=steps.append, sleep=sleep)
    )
    assert slept, "the run was still running at the first poll"
    assert slept == [wait_delay(i) for i in range(len(slept))]
    assert max(slept) <= WAIT_CAP_SECONDS
    first, last = steps[0], steps[-1]
    assert (first.done, first.total) == (0, 1) and f"{run_id} running" in first.detail
    assert "s elapsed" in first.detail and "s left" in first.detail
    assert (last.done, last.total) == (1, 1) and f"{run_id} completed" in last.detail
    (outcome,) = archive_now(str(tmp_path / "archive"), [run_id], client_factory=factory)
    assert outcome.outcome == "archived"
