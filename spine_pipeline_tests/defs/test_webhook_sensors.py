"""Webhook events driving archiving: both sensors evaluated as the daemon evaluates them.

Every test has a real receiver on loopback storing into the archive (local disk and S3), a
simulator delivering signed webhooks to it, and runs that last an hour until the test ends
them, with an hour-long poll backoff: whether a run is archived on the next tick is then
decided by the events alone, never by timing. `_time_passes` makes every scheduled poll
due, standing in for the backoff running out.
"""

import json
import time

import dagster as dg
import httpx
import pytest

from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.read import read_committed
from spine_pipeline.audit import run_sql
from spine_pipeline.defs.names import (
    ARCHIVE_JOB,
    AUDIT_JOB,
    POLL_SENSOR,
    WEBHOOK_SENSOR,
    archive_run_ids,
)
from spine_pipeline.defs.webhook_sensor import webhook_run_key
from spine_pipeline.driver import (
    RUN_KEY_TAG,
    execute_request,
    launch_requested,
    sensor_tags,
    tick_and_launch,
)
from spine_pipeline.spine import SpineClient
from spine_pipeline_tests.defs.conftest import FAST, WEBHOOK_SECRET
from spine_pipeline_tests.webhooks.helpers import body_of, envelope, headers_for

HOUR = "3600"


@pytest.fixture(autouse=True)
def _hour_long_backoff(hooked, monkeypatch):
    """After `hooked` (which sets the defs tests' short intervals)."""
    monkeypatch.setenv("SPINE_POLL_MIN_INTERVAL_SECONDS", HOUR)
    monkeypatch.setenv("SPINE_POLL_MAX_INTERVAL_SECONDS", HOUR)


def _time_passes(cursor):
    """The poll cursor as it would look once every scheduled poll is due."""
    plan = json.loads(cursor)
    for entry in plan["runs"].values():
        entry[0] = 0.0
    return json.dumps(plan)


def _launch(p, cursor, sensor):
    return tick_and_launch(p.defs, p.instance, cursor, say=lambda _: None, sensor=sensor)


def _poll(p, cursor=None):
    return _launch(p, cursor, POLL_SENSOR)


def _hooks(p, cursor=None):
    return _launch(p, cursor, WEBHOOK_SENSOR)


def _finish(p, *run_ids):
    """End the runs on the simulator and wait until their deliveries settled (stored)."""
    for run_id in run_ids:
        p.sim.world.finish(run_id)
    assert p.sim.webhooks.wait_idle(30)


def _committed(p):
    log = ManifestLog(p.store)
    log.refresh()
    return set(log.committed_runs)


def _statuses(p):
    return {r["run_id"]: r["status"] for r in read_committed(p.store, "runs").to_pylist()}


def _archive_runs(p):
    """The Spine run ids of every archive Dagster run in the instance."""
    runs = p.instance.get_runs(dg.RunsFilter(job_name=ARCHIVE_JOB))
    return [archive_run_ids(dict(r.run_config)) for r in runs]


def _archive_requests(result):
    return [r for r in result.run_requests or [] if r.job_name == ARCHIVE_JOB]


def _gets(p, run_id):
    return p.sim.world.get_run(run_id).get_count


def _post_signed(p, doc):
    body = body_of(doc)
    headers = headers_for(body, secret=WEBHOOK_SECRET, doc=doc)
    return httpx.post(p.receiver.url, content=body, headers=headers, timeout=10)


def _queue(p, request, sensor):
    """What the daemon does with a request before a run worker starts it: a queued run."""
    return p.instance.create_run_for_job(
        p.defs.resolve_job_def(ARCHIVE_JOB),
        run_config=request.run_config,
        tags=sensor_tags(request.tags, sensor, request.run_key),
        status=dg.DagsterRunStatus.NOT_STARTED,
    )


def test_a_terminal_event_makes_the_run_due_on_the_next_poll_tick(hooked):
    (run_id,) = hooked.submit("[scenario:completed] hurried by its event")
    first = _poll(hooked)
    assert first.requested == []
    (entry,) = json.loads(first.cursor)["runs"].values()
    assert entry[0] > time.time() + 3000  # its next poll is an hour away
    _finish(hooked, run_id)
    second = _poll(hooked, first.cursor)
    assert second.requested == [[run_id]]
    assert _committed(hooked) == {run_id}
    assert _statuses(hooked) == {run_id: "completed"}


def test_the_webhook_sensor_archives_and_gets_the_rows_into_the_audit_database(hooked):
    ids = hooked.submit(
        "[scenario:completed] fast a", "[scenario:failed] fast b", "[scenario:completed] later"
    )
    poll = _poll(hooked)  # all running: an hour's backoff
    _finish(hooked, *ids[:2])
    first = _hooks(hooked)
    assert sorted(r for batch in first.requested for r in batch) == sorted(ids[:2])
    assert first.refreshes == 0  # nothing was committed when it asked
    (run,) = hooked.instance.get_runs(dg.RunsFilter(job_name=ARCHIVE_JOB))
    assert run.tags[RUN_KEY_TAG] == webhook_run_key(ids[:2])
    assert run.tags["dagster/sensor_name"] == WEBHOOK_SENSOR
    second = _hooks(hooked, first.cursor)
    assert second.requested == [] and second.refreshes == 1
    _, rows = run_sql(hooked.audit_db, "SELECT run_id, status FROM runs")
    assert dict(rows) == {ids[0]: "completed", ids[1]: "failed"}
    assert _hooks(hooked, second.cursor).idle  # caught up: nothing more to ask for
    # The poll sensor, once its backoff runs out, finds them archived: nothing handed twice.
    later = _poll(hooked, _time_passes(poll.cursor))
    assert later.requested == [] and later.refreshes == 0
    assert [sorted(batch) for batch in _archive_runs(hooked)] == [sorted(ids[:2])]


def test_a_run_one_sensor_handed_is_not_handed_again_by_the_other(hooked):
    first_by_hooks, first_by_poll = hooked.submit(
        "[scenario:completed] the webhook sensor's", "[scenario:completed] the poll sensor's"
    )
    poll = _poll(hooked)
    _finish(hooked, first_by_hooks)
    hooks = hooked.tick_webhooks()
    (request,) = _archive_requests(hooks)
    assert archive_run_ids(request.run_config) == [first_by_hooks]
    queued = [_queue(hooked, request, WEBHOOK_SENSOR)]  # queued, not started yet
    # The event wakes the run for the poll sensor too; Spine says it ended; but its archive
    # run is queued already.
    gets = _gets(hooked, first_by_hooks)
    tick = hooked.tick(poll.cursor)
    assert _gets(hooked, first_by_hooks) == gets + 1
    assert _archive_requests(tick) == []
    # The other way round: the poll sensor hands it first, then the webhook sensor learns.
    hooked.sim.world.finish(first_by_poll)
    tick = hooked.tick(_time_passes(tick.cursor))
    (request,) = _archive_requests(tick)
    assert archive_run_ids(request.run_config) == [first_by_poll]
    queued.append(_queue(hooked, request, POLL_SENSOR))
    assert hooked.sim.webhooks.wait_idle(30)
    gets = _gets(hooked, first_by_poll)
    again = hooked.tick_webhooks(hooks.cursor)
    assert _gets(hooked, first_by_poll) == gets + 1  # asked Spine: terminal, but handed
    assert _archive_requests(again) == []
    assert {r for run in queued for r in archive_run_ids(run.run_config)} == {
        first_by_hooks,
        first_by_poll,
    }


@pytest.mark.parametrize("tracking", ["1", "0"])
def test_run_started_tracks_an_unknown_run_only_when_asked(hooked, monkeypatch, tracking):
    monkeypatch.setenv("SPINE_TRACK_FROM_WEBHOOKS", tracking)
    sim = hooked.sim
    with SpineClient(api_key=sim.api_key, base_url=sim.base_url, retry=FAST) as client:
        run_id = client.create_run("[scenario:completed] submitted elsewhere").run_id
    assert sim.webhooks.wait_idle(30)  # its run.started is in the inbox
    assert hooked.ledger.find_tracked(run_id) is None
    poll = _poll(hooked)
    _finish(hooked, run_id)
    hooks = _hooks(hooked)
    if tracking == "1":
        record = hooked.ledger.find_tracked(run_id)
        assert record is not None and record.source == "webhook" and record.request_name is None
        assert set(json.loads(poll.cursor)["runs"]) == {run_id}
        assert hooks.requested == [[run_id]]
        assert _committed(hooked) == {run_id}
        (row,) = read_committed(hooked.store, "runs").to_pylist()
        assert row["request_name"] is None and row["status"] == "completed"
    else:
        assert hooked.ledger.find_tracked(run_id) is None
        assert json.loads(poll.cursor)["runs"] == {}
        assert hooks.requested == []
        assert _poll(hooked, _time_passes(poll.cursor)).requested == []
        assert _committed(hooked) == set()


def test_a_partial_run_has_no_event_and_is_archived_by_polling(hooked):
    (run_id,) = hooked.submit("[scenario:partial] ends without an event")
    poll = _poll(hooked)
    _finish(hooked, run_id)
    types = {r.type for r in hooked.sim.webhooks.records() if r.run_id == run_id}
    assert types == {"run.started"}
    assert _hooks(hooked).requested == []
    assert _poll(hooked, poll.cursor).requested == []  # nothing hurries it: an hour away
    assert _poll(hooked, _time_passes(poll.cursor)).requested == [[run_id]]
    assert _statuses(hooked) == {run_id: "partial"}


def test_dropped_deliveries_leave_the_run_to_polling(hooked):
    hooked.sim.set_faults("webhook:drop")
    (run_id,) = hooked.submit("[scenario:completed] its events are lost")
    poll = _poll(hooked)
    _finish(hooked, run_id)
    outcomes = {r.outcome for r in hooked.sim.webhooks.records() if r.run_id == run_id}
    assert outcomes == {"dropped"}
    assert _hooks(hooked).requested == []
    assert _poll(hooked, poll.cursor).requested == []
    assert _poll(hooked, _time_passes(poll.cursor)).requested == [[run_id]]
    assert _committed(hooked) == {run_id}


@pytest.mark.parametrize("fault", ["duplicate", "resend"])
def test_duplicate_and_resent_events_launch_no_extra_run(hooked, fault):
    hooked.sim.set_faults(f"webhook:{fault}")
    ids = hooked.submit("[scenario:completed] twice a", "[scenario:failed] twice b")
    poll = _poll(hooked)
    _finish(hooked, *ids)
    copies = [
        r
        for r in hooked.sim.webhooks.records()
        if r.copy == fault and r.delivered and r.type in ("run.completed", "run.failed")
    ]
    assert {r.run_id for r in copies} == set(ids)  # every terminal event came twice
    first = hooked.tick_webhooks()
    # The daemon evaluates the same tick again (it died before saving the cursor): the
    # same run keys, so it launches nothing new.
    replayed = hooked.tick_webhooks()
    assert [r.run_key for r in _archive_requests(replayed)] == [
        r.run_key for r in _archive_requests(first)
    ]
    launched = []

    def launch(request):
        launched.append(request.run_key)
        assert _launch_one(hooked, request, WEBHOOK_SENSOR)

    launch_requested(hooked.instance, first, launch, WEBHOOK_SENSOR)
    launch_requested(hooked.instance, replayed, launch, WEBHOOK_SENSOR)
    assert len(launched) == 1  # the replayed request was skipped by its run key
    cursor = first.cursor
    for _ in range(2):
        cursor = _hooks(hooked, cursor).cursor
    _poll(hooked, poll.cursor)
    _poll(hooked, _time_passes(poll.cursor))
    assert [sorted(batch) for batch in _archive_runs(hooked)] == [sorted(ids)]
    assert _committed(hooked) == set(ids)


def _launch_one(p, request, sensor):
    return execute_request(p.defs, p.instance, request, sensor=sensor).success


def test_a_forged_terminal_event_for_a_running_run_archives_nothing(hooked):
    (run_id,) = hooked.submit("[scenario:completed] forged as failed")
    poll = _poll(hooked)
    forged = envelope("run.failed", run_id, status="failed")
    assert _post_signed(hooked, forged).status_code == 200  # validly signed: stored
    gets = _gets(hooked, run_id)
    hooks = _hooks(hooked)
    tick = _poll(hooked, poll.cursor)
    assert _gets(hooked, run_id) == gets + 2  # each sensor asked Spine: still running
    assert hooks.requested == [] and tick.requested == []
    assert json.loads(tick.cursor)["runs"][run_id][2] == "running"
    assert _committed(hooked) == set()
    # The real end: its own event is another type, so it hurries the run as usual, and the
    # archive says what Spine says, not what the forgery said.
    _finish(hooked, run_id)
    assert _hooks(hooked, hooks.cursor).requested == [[run_id]]
    assert _statuses(hooked) == {run_id: "completed"}


def test_an_event_for_a_pair_already_seen_is_not_acted_on_again(hooked):
    """A forged `run.completed` took the (run, type) first: the real one, stored as its
    duplicate, hurries nothing, and polling archives the run when its backoff runs out."""
    (run_id,) = hooked.submit("[scenario:completed] its event came early")
    poll = _poll(hooked)
    assert _post_signed(hooked, envelope("run.completed", run_id)).status_code == 200
    hooks = _hooks(hooked)
    tick = _poll(hooked, poll.cursor)
    assert hooks.requested == [] and tick.requested == []  # Spine: running
    _finish(hooked, run_id)
    (real,) = [
        r for r in hooked.sim.webhooks.records() if r.run_id == run_id and r.type == "run.completed"
    ]
    assert real.delivered
    gets = _gets(hooked, run_id)
    assert _hooks(hooked, hooks.cursor).requested == []
    assert _poll(hooked, tick.cursor).requested == []
    assert _gets(hooked, run_id) == gets  # neither sensor was hurried by the duplicate
    assert _poll(hooked, _time_passes(tick.cursor)).requested == [[run_id]]


def test_audit_refresh_is_requested_once_for_what_the_webhook_sensor_handed(hooked):
    (run_id,) = hooked.submit("[scenario:completed] one refresh")
    _poll(hooked)
    _finish(hooked, run_id)
    first = hooked.tick_webhooks()
    (request,) = _archive_requests(first)
    assert _launch_one(hooked, request, WEBHOOK_SENSOR)
    second = hooked.tick_webhooks(first.cursor)
    (refresh,) = [r for r in second.run_requests if r.job_name == AUDIT_JOB]
    queued = hooked.instance.create_run_for_job(
        hooked.defs.resolve_job_def(AUDIT_JOB), status=dg.DagsterRunStatus.NOT_STARTED
    )
    # A refresh is queued: the next ticks of either sensor do not ask for another one.
    third = hooked.tick_webhooks(second.cursor)
    assert [r for r in third.run_requests if r.job_name == AUDIT_JOB] == []
    hooked.instance.delete_run(queued.run_id)
    assert _launch_one(hooked, refresh, WEBHOOK_SENSOR)
    fourth = hooked.tick_webhooks(third.cursor)
    assert not fourth.run_requests
    assert json.loads(fourth.cursor)["handed"] == {}  # ingested: no longer followed
