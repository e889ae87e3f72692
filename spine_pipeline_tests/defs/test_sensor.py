"""The poll sensor, evaluated as Dagster evaluates it, against a real instance and simulator."""

import json
import time

import dagster as dg
import pytest

from spine_pipeline.archive.ledger import Ledger
from spine_pipeline.archive.read import read_committed
from spine_pipeline.archive.service import archive_now
from spine_pipeline.definitions import build_definitions
from spine_pipeline.defs.names import (
    ARCHIVE_BATCH_OP,
    ARCHIVE_JOB,
    AUDIT_JOB,
    archive_run_config,
    archive_run_ids,
)
from spine_pipeline.driver import execute_request
from spine_pipeline.spine import AsyncSpineClient


def _requested(result):
    return [archive_run_ids(r.run_config) for r in result.run_requests if r.job_name == ARCHIVE_JOB]


def _refreshes(result):
    return [r for r in result.run_requests if r.job_name == AUDIT_JOB]


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
    # Immediately again: nothing is due, nothing polled, the schedule unchanged (only the
    # cursor's place in the webhook inbox moves with the clock).
    second = pipeline.tick(first.cursor)
    assert not _requested(second)
    assert json.loads(second.cursor)["runs"] == json.loads(first.cursor)["runs"]
    pipeline.wait_terminal(ids)
    cursor, batches = second.cursor, _requested(first)  # a fast run may end before tick 1
    keys = {r.run_key for r in first.run_requests if r.job_name == ARCHIVE_JOB}
    added = [k for req in first.dynamic_partitions_requests for k in req.partition_keys]
    for _ in range(3):  # a poll may be cut short by a slow machine; the next tick resumes
        result = pipeline.tick(_time_passes(cursor))
        cursor = result.cursor
        batches += _requested(result)
        keys |= {r.run_key for r in result.run_requests if r.job_name == ARCHIVE_JOB}
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


def _archive_elsewhere(pipeline, ids):
    """Commit the runs' manifest without Dagster (as `spine-pipeline archive` would)."""
    archive_now(
        pipeline.archive_uri,
        ids,
        client_factory=lambda: AsyncSpineClient(
            api_key=pipeline.sim.api_key, base_url=pipeline.sim.base_url
        ),
    )


def test_archived_and_abandoned_runs_leave_the_schedule(pipeline):
    ids = pipeline.submit("[scenario:completed] archive me")
    pipeline.wait_terminal(ids)
    _archive_elsewhere(pipeline, ids)
    result = pipeline.tick()
    assert json.loads(result.cursor)["runs"] == {}
    assert not _requested(result)


def _execute(pipeline, request, defs=None):
    return execute_request(defs or pipeline.defs, pipeline.instance, request)


def test_one_audit_refresh_is_requested_while_manifests_wait(pipeline):
    ids = pipeline.submit("[scenario:completed] first", "[scenario:partial] second")
    pipeline.wait_terminal(ids)
    _archive_elsewhere(pipeline, ids[:1])
    _archive_elsewhere(pipeline, ids[1:])  # two manifests wait for the audit database
    (request,) = _refreshes(pipeline.tick())
    assert request.tags["spine/manifests"] == "1-2"
    # Requested (the daemon has created the run, not yet started): later ticks do not ask again.
    queued = pipeline.instance.create_run_for_job(
        pipeline.defs.resolve_job_def(AUDIT_JOB), status=dg.DagsterRunStatus.NOT_STARTED
    )
    assert _refreshes(pipeline.tick()) == []
    pipeline.instance.delete_run(queued.run_id)
    assert _execute(pipeline, request).success
    assert _refreshes(pipeline.tick()) == []  # caught up: nothing to ask for
    assert (
        pipeline.instance.get_latest_materialization_event(dg.AssetKey("audit_database"))
        .asset_materialization.metadata["last_seq"]
        .value
        == 2
    )


def test_the_audit_refresh_also_publishes_to_the_ducklake_catalog(pipeline, monkeypatch, tmp_path):
    monkeypatch.setenv("SPINE_AUDIT_CATALOG", f"ducklake:{tmp_path / 'lake' / 'meta.ducklake'}")
    ids = pipeline.submit("[scenario:completed] to the lake")
    pipeline.wait_terminal(ids)
    _archive_elsewhere(pipeline, ids)
    (request,) = _refreshes(pipeline.tick())
    assert _execute(pipeline, request).success
    metadata = pipeline.instance.get_latest_materialization_event(
        dg.AssetKey("audit_database")
    ).asset_materialization.metadata
    assert metadata["catalog_last_seq"].value == metadata["last_seq"].value == 1
    assert (tmp_path / "lake" / "meta.ducklake").is_file()


def test_a_failed_audit_refresh_is_retried_after_its_delay(pipeline, monkeypatch, tmp_path):
    ids = pipeline.submit("[scenario:completed] refresh fails")
    pipeline.wait_terminal(ids)
    _archive_elsewhere(pipeline, ids)
    (request,) = _refreshes(pipeline.tick())
    # An audit database the refresh cannot create: a file where its directory should be.
    (tmp_path / "blocked").write_text("not a directory")
    monkeypatch.setenv("SPINE_AUDIT_DB", str(tmp_path / "blocked" / "audit.duckdb"))
    assert not _execute(pipeline, request, build_definitions()).success
    monkeypatch.setenv("SPINE_AUDIT_RETRY_SECONDS", "3600")
    assert _refreshes(pipeline.tick()) == []  # failed just now: wait before asking again
    monkeypatch.setenv("SPINE_AUDIT_RETRY_SECONDS", "0")
    (again,) = _refreshes(pipeline.tick())
    assert _execute(pipeline, again).success  # the original definitions: a working database
    assert _refreshes(pipeline.tick()) == []


def test_tick_stays_in_budget_when_the_api_is_slow(pipeline, monkeypatch):
    monkeypatch.setenv("SPINE_POLL_BUDGET_SECONDS", "3")
    ids = pipeline.submit(*[f"slow api {i}" for i in range(5)])
    pipeline.sim.set_faults("get:latency=20000")
    started = time.monotonic()
    result = pipeline.tick()
    elapsed = time.monotonic() - started
    # Without the budget this tick would wait 20 s per poll; it must come back on its own.
    assert elapsed < 12, elapsed
    assert not _requested(result)
    pipeline.sim.set_faults("")
    plan = json.loads(result.cursor)
    assert set(plan["runs"]) == set(ids)


def test_429_stops_the_tick_early_without_failing_it(pipeline):
    ids = pipeline.submit(*[f"[scenario:completed] throttled {i}" for i in range(6)])
    pipeline.wait_terminal(ids)
    pipeline.sim.set_faults("get:429=30")
    result = pipeline.tick()
    assert not _requested(result)
    assert pipeline.sim.world.fault_counts.get("get:429", 0) >= 1
    pipeline.sim.set_faults("")
    time.sleep(0.7)
    later = pipeline.tick(result.cursor)
    assert sorted(r for b in _requested(later) for r in b) == sorted(ids)


def _no_ledger_reads(*args, **kwargs):
    raise AssertionError("the archive run read the ledger again")


def test_the_archive_run_takes_the_tracking_records_from_its_config(pipeline, monkeypatch):
    ids = pipeline.submit("[scenario:completed] named from config")
    pipeline.wait_terminal(ids)
    (request,) = [r for r in pipeline.tick().run_requests if r.job_name == ARCHIVE_JOB]
    assert archive_run_ids(request.run_config) == ids
    (record,) = request.run_config["ops"][ARCHIVE_BATCH_OP]["config"]["tracked"]
    assert record["run_id"] == ids[0] and record["request_name"] == "test"
    assert json.loads(json.dumps(request.run_config)) == request.run_config  # JSON-able
    # The sensor's records are all the run needs: no lookup of the ledger per run.
    monkeypatch.setattr(Ledger, "find_tracked", _no_ledger_reads)
    monkeypatch.setattr(Ledger, "tracked", _no_ledger_reads)
    assert _execute(pipeline, request).success
    (run,) = read_committed(pipeline.store, "runs").to_pylist()
    assert run["request_name"] == "test"
    assert run["submitted_at"].isoformat().replace("+00:00", "Z") == record["submitted_at"]


def test_an_archive_run_without_records_reads_them_from_the_ledger(pipeline):
    """A manual launch (or a run queued by an older sensor) has only the run ids."""
    ids = pipeline.submit("[scenario:completed] named from the ledger")
    pipeline.wait_terminal(ids)
    request = dg.RunRequest(job_name=ARCHIVE_JOB, run_config=archive_run_config(ids))
    assert "tracked" not in request.run_config["ops"][ARCHIVE_BATCH_OP]["config"]
    assert _execute(pipeline, request).success
    (run,) = read_committed(pipeline.store, "runs").to_pylist()
    assert run["request_name"] == "test" and run["submitted_at"] is not None
