"""The poll sensor, evaluated as Dagster evaluates it, against a real instance and simulator."""

import json
import time

import pytest


def _requested(result):
    return [r.run_config["ops"]["archive_batch"]["config"]["run_ids"] for r in result.run_requests]


def _time_passes(cursor):
    """The cursor as it would look once every scheduled poll is due."""
    plan = json.loads(cursor)
    for entry in plan["runs"].values():
        entry[0] = 0.0
    return json.dumps(plan)


def test_cursor_progresses_and_terminal_runs_are_batched(pipeline, monkeypatch):
    monkeypatch.setenv("SPINE_POLL_MIN_INTERVAL_SECONDS", "30")
    monkeypatch.setenv("SPINE_POLL_MAX_INTERVAL_SECONDS", "60")
    ids = pipeline.submit(*[f"[scenario:completed] batch {i}" for i in range(7)])
    first = pipeline.tick()
    plan = json.loads(first.cursor)
    assert set(plan["runs"]) == set(ids)
    assert all(entry[0] > time.time() + 20 for entry in plan["runs"].values())  # 30 s backoff
    # Immediately again: nothing is due, nothing polled, cursor unchanged.
    second = pipeline.tick(first.cursor)
    assert not second.run_requests and second.cursor == first.cursor
    pipeline.wait_terminal(ids)
    cursor, batches = second.cursor, _requested(first)  # a fast run may end before tick 1
    keys = {r.run_key for r in first.run_requests}
    added = [k for req in first.dynamic_partitions_requests for k in req.partition_keys]
    for _ in range(3):  # a poll may be cut short by a slow machine; the next tick resumes
        result = pipeline.tick(_time_passes(cursor))
        cursor = result.cursor
        batches += _requested(result)
        keys |= {r.run_key for r in result.run_requests}
        added += [k for req in result.dynamic_partitions_requests for k in req.partition_keys]
        if sorted(r for b in batches for r in b) == sorted(ids):
            break
    assert sorted(r for b in batches for r in b) == sorted(ids)  # each run requested once
    assert all(len(b) <= 3 for b in batches) and len(batches) < len(ids)
    assert len(keys) == len(batches)
    assert sorted(added) == sorted(ids)
    # Later ticks do not request the same runs again (until the re-request grace passes).
    assert _requested(pipeline.tick(_time_passes(cursor))) == []


@pytest.mark.parametrize("cursor", [None, "garbage{", '{"v": 1, "runs": {"x": "y"}}'])
def test_lost_or_corrupt_cursor_loses_nothing(pipeline, cursor):
    ids = pipeline.submit("[scenario:completed] survive", "[scenario:failed] survive too")
    pipeline.wait_terminal(ids)
    result = pipeline.tick(cursor)
    assert sorted(r for b in _requested(result) for r in b) == sorted(ids)
    assert json.loads(result.cursor)["v"] == 1


def test_archived_and_abandoned_runs_leave_the_schedule(pipeline):
    ids = pipeline.submit("[scenario:completed] archive me")
    pipeline.wait_terminal(ids)
    from spine_pipeline.archive.service import archive_now

    archive_now(
        pipeline.archive_uri,
        ids,
        client_factory=lambda: __import__(
            "spine_pipeline.spine", fromlist=["AsyncSpineClient"]
        ).AsyncSpineClient(api_key=pipeline.sim.api_key, base_url=pipeline.sim.base_url),
    )
    result = pipeline.tick()
    assert json.loads(result.cursor)["runs"] == {}
    assert not result.run_requests


def test_tick_stays_in_budget_when_the_api_is_slow(pipeline, monkeypatch):
    monkeypatch.setenv("SPINE_POLL_BUDGET_SECONDS", "3")
    ids = pipeline.submit(*[f"slow api {i}" for i in range(5)])
    pipeline.sim.set_faults("get:latency=20000")
    started = time.monotonic()
    result = pipeline.tick()
    elapsed = time.monotonic() - started
    # Without the budget this tick would wait 20 s per poll; it must come back on its own.
    assert elapsed < 12, elapsed
    assert not result.run_requests
    pipeline.sim.set_faults("")
    plan = json.loads(result.cursor)
    assert set(plan["runs"]) == set(ids)


def test_429_stops_the_tick_early_without_failing_it(pipeline):
    ids = pipeline.submit(*[f"[scenario:completed] throttled {i}" for i in range(6)])
    pipeline.wait_terminal(ids)
    pipeline.sim.set_faults("get:429=30")
    result = pipeline.tick()
    assert not result.run_requests
    assert pipeline.sim.world.fault_counts.get("get:429", 0) >= 1
    pipeline.sim.set_faults("")
    time.sleep(0.7)
    later = pipeline.tick(result.cursor)
    assert sorted(r for b in _requested(later) for r in b) == sorted(ids)
