"""The poll plan: per-run backoff, batching inputs, cursor loss recovery."""

from spine_pipeline.poll_plan import PollPlan
from spine_pipeline.settings import DEFAULT_POLL_MAX_INTERVAL as MAX_INTERVAL
from spine_pipeline.settings import DEFAULT_POLL_MIN_INTERVAL as MIN_INTERVAL
from spine_pipeline.settings import DEFAULT_POLL_REREQUEST as REREQUEST_AFTER
from spine_pipeline.spine.poll_pass import PollResult


class FakeRun:
    def __init__(self, status):
        self.status = status
        self.is_terminal = status in ("completed", "partial", "failed")


def answer(run_id, status):
    return PollResult(run_id, run=FakeRun(status))


def test_new_runs_are_due_at_once_and_back_off_15_30_60():
    plan = PollPlan()
    plan.sync({"a"})
    assert plan.due(now=0.0) == ["a"]
    now, gaps = 0.0, []
    for _ in range(4):
        plan.record(answer("a", "running"), now)
        nxt = plan.runs["a"].next_poll
        gaps.append(nxt - now)
        assert plan.due(nxt - 0.001) == []
        assert plan.due(nxt) == ["a"]
        now = nxt
    assert gaps == [MIN_INTERVAL, 30.0, MAX_INTERVAL, MAX_INTERVAL]


def test_errors_back_off_too_and_unpolled_runs_stay_due():
    plan = PollPlan()
    plan.sync({"a", "b"})
    plan.record(PollResult("a", error="HTTP 500"), 100.0)
    plan.record(PollResult("b", polled=False), 100.0)
    assert plan.runs["a"].errors == 1
    assert plan.due(100.0) == ["b"]
    assert plan.due(100.0 + MIN_INTERVAL) == ["b", "a"] or set(plan.due(115.0)) == {"a", "b"}


def test_terminal_runs_are_handed_over_once_then_again_after_the_grace():
    plan = PollPlan()
    plan.sync({"a", "b", "c"})
    plan.record(answer("a", "completed"), 0.0)
    plan.record(answer("b", "failed"), 0.0)
    plan.record(answer("c", "running"), 0.0)
    assert plan.to_archive(1.0) == ["a", "b"]
    assert plan.to_archive(2.0) == []
    assert "a" not in plan.due(10_000.0)  # terminal runs are not polled again
    assert plan.to_archive(1.0 + REREQUEST_AFTER + 1) == ["a", "b"]


def test_unknown_status_is_polled_again_not_archived():
    plan = PollPlan()
    plan.sync({"a"})
    plan.record(answer("a", "cancelled"), 0.0)
    assert plan.to_archive(1.0) == []
    assert plan.due(MIN_INTERVAL) == ["a"]


def test_sync_forgets_archived_runs():
    plan = PollPlan()
    plan.sync({"a", "b"})
    plan.sync({"b", "c"})
    assert set(plan.runs) == {"b", "c"}


def test_cursor_round_trip_and_garbage_recovery():
    plan = PollPlan()
    plan.sync({"a"})
    plan.record(answer("a", "running"), 50.0)
    again = PollPlan.loads(plan.dumps())
    assert again.runs == plan.runs and not again.recovered
    for garbage in ["{not json", '{"v": 99, "runs": {}}', '{"v": 1, "runs": {"a": [1]}}', "[]"]:
        recovered = PollPlan.loads(garbage)
        assert recovered.recovered and recovered.runs == {}
    assert PollPlan.loads(None).runs == {} and not PollPlan.loads(None).recovered


class _HangingStore:
    """A real local store whose listings hang while `gate` is closed (a store that hangs)."""

    def __init__(self, store, gate):
        self._store = store
        self._gate = gate
        self.uri = store.uri

    def list(self, prefix=""):
        self._gate.wait()
        return self._store.list(prefix)

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_a_hanging_store_fails_the_tick_within_its_budget_and_loses_nothing(tmp_path, simulator):
    import threading

    import pytest

    from spine_pipeline.archive.ledger import Ledger
    from spine_pipeline.archive.manifest import ManifestLog
    from spine_pipeline.archive.stores import open_store
    from spine_pipeline.poll_plan import InFlightSource, StorageTimeout, run_tick
    from spine_pipeline.spine import AsyncSpineClient, SpineClient

    store = open_store(str(tmp_path / "archive"))
    with SpineClient(api_key=simulator.api_key, base_url=simulator.base_url) as client:
        run_id = client.create_run("[scenario:completed] tracked while the store hangs").run_id
    Ledger(store).track(run_id)
    gate = threading.Event()
    hanging = _HangingStore(store, gate)
    source = InFlightSource(Ledger(hanging), ManifestLog(hanging))

    def factory():
        return AsyncSpineClient(api_key=simulator.api_key, base_url=simulator.base_url)

    with pytest.raises(StorageTimeout, match="did not answer within"):
        run_tick(source, factory, None, budget_seconds=3.0)
    # The first tick's read still hangs: the next tick gives up too instead of piling up.
    with pytest.raises(StorageTimeout, match="previous tick's read is still running"):
        run_tick(source, factory, None, budget_seconds=3.0)
    gate.set()  # the store answers again: the next tick finds the run, nothing was lost
    report = run_tick(source, factory, None, budget_seconds=30.0)
    assert set(report.tracked) == {run_id}
    assert report.polled == 1


def test_a_replaced_archive_root_is_read_afresh(tmp_path):
    """A long-lived code server whose archive root is recreated must not trust its caches."""
    import shutil
    from datetime import UTC, datetime

    from spine_pipeline.archive.ledger import Ledger
    from spine_pipeline.archive.manifest import Manifest, ManifestLog, RunEntry
    from spine_pipeline.archive.stores import open_store
    from spine_pipeline.poll_plan import InFlightSource

    root = tmp_path / "archive"
    store = open_store(str(root))
    Ledger(store).track("run-a")
    run = RunEntry("run-a", "completed", "2026-12-01", "2026-12-01T00:00:00Z")
    draft = Manifest(0, "b1", "", None, "1", (run,), (), ())
    assert ManifestLog(store).commit(draft) is not None
    source = InFlightSource(Ledger(store), ManifestLog(store))

    assert source.load(datetime.now(UTC)) == {}  # archived: not in flight
    shutil.rmtree(root)
    fresh = open_store(str(root))
    Ledger(fresh).track("run-a")  # the same run, tracked again in the new, empty archive
    assert set(source.load(datetime.now(UTC))) == {"run-a"}


# -- webhook events -------------------------------------------------------------------------


def _event(event_type, run_id="r1", *, duplicate=False):
    from datetime import UTC, datetime

    from spine_pipeline.webhooks.inbox import InboxEvent

    return InboxEvent(
        key="k",
        event_id="evt_1",
        type=event_type,
        run_id=run_id,
        created=None,
        livemode=None,
        api_version=None,
        duplicate=duplicate,
        duplicate_of="evt_0" if duplicate else None,
        received_at=datetime.now(UTC),
        signature_t=None,
        body=b"{}",
    )


def test_only_first_terminal_events_name_runs_to_hurry():
    from spine_pipeline.poll_plan import started_event_runs, terminal_event_runs

    events = [
        _event("run.started", "a"),
        _event("run.completed", "a"),
        _event("run.completed", "a"),  # the same run twice: once
        _event("run.failed", "b", duplicate=True),  # a resend of a pair already stored
        _event("run.failed", "c"),
        _event("webhook.ping", None),
        _event("run.cancelled", "d"),  # unknown types are recorded, never acted on
        _event("run.completed", None),
    ]
    assert terminal_event_runs(events) == ["a", "c"]
    assert started_event_runs(events) == ["a"]
    assert started_event_runs([_event("run.started", "e", duplicate=True)]) == []


def test_a_woken_run_is_due_first_and_keeps_its_backoff():
    plan = PollPlan()
    plan.sync({"a", "b", "c"})
    for run_id in ("a", "b"):
        for now in (0.0, 15.0, 45.0):
            plan.record(answer(run_id, "running"), now)
    plan.record(answer("c", "completed"), 0.0)
    assert plan.due(50.0) == []
    assert plan.wake(["b", "c", "unknown"]) == ["b"]  # not terminal, not untracked runs
    assert plan.due(50.0) == ["b"]
    plan.record(answer("b", "running"), 50.0)  # a late or forged event: still running
    assert plan.runs["b"].next_poll == 50.0 + MAX_INTERVAL


def test_a_run_handed_elsewhere_is_not_handed_again_until_the_grace_passes():
    plan = PollPlan()
    plan.sync({"a", "b"})
    plan.record(answer("a", "completed"), 0.0)
    plan.record(answer("b", "completed"), 0.0)
    asked = []

    def elsewhere(since):
        asked.append(since)
        return {"a": 90.0}

    assert plan.to_archive(100.0, elsewhere) == ["b"]
    assert asked == [100.0 - REREQUEST_AFTER]
    assert plan.to_archive(101.0, elsewhere) == []  # b handed here, a elsewhere
    assert len(asked) == 1  # nothing was ready: the instance is not asked
    assert plan.to_archive(91.0 + REREQUEST_AFTER, elsewhere) == ["a"]


def test_the_inbox_cursor_rides_in_the_poll_cursor():
    plan = PollPlan()
    plan.sync({"a"})
    plan.inbox = '{"v": 1, "mark": "x", "seen": []}'
    again = PollPlan.loads(plan.dumps())
    assert again.inbox == plan.inbox and again.runs == plan.runs
    assert PollPlan.loads('{"v": 1, "runs": {}, "inbox": 7}').inbox is None
    assert PollPlan.loads('{"v": 1, "runs": {}}').inbox is None  # an older cursor


def test_the_inbox_sensor_cursor_round_trips_and_recovers():
    from spine_pipeline.poll_plan import InboxPlan

    plan = InboxPlan(inbox="c", handed={"a": 1.5})
    assert InboxPlan.loads(plan.dumps()) == plan
    for garbage in [
        "{",
        "[]",
        '{"v": 2}',
        '{"v": 1, "inbox": 3}',
        '{"v": 1, "handed": {"a": "x"}}',
    ]:
        recovered = InboxPlan.loads(garbage)
        assert recovered.recovered and recovered.inbox is None and recovered.handed == {}


class _FailingInboxStore:
    """A real local store whose webhook inbox cannot be listed (failing or hanging)."""

    def __init__(self, store, failure):
        self._store = store
        self._failure = failure
        self.uri = store.uri

    def list(self, prefix=""):
        from spine_pipeline.archive.layout import WEBHOOKS_PREFIX

        if prefix.startswith(WEBHOOKS_PREFIX):
            self._failure()
        return self._store.list(prefix)

    def __getattr__(self, name):
        return getattr(self._store, name)


def _broken():
    from spine_pipeline.archive.stores import StoreError

    raise StoreError("inbox listing refused")


def test_an_unreadable_inbox_costs_the_tick_its_events_not_the_tick(tmp_path, simulator):
    import threading

    from spine_pipeline.archive.ledger import Ledger
    from spine_pipeline.archive.manifest import ManifestLog
    from spine_pipeline.archive.stores import open_store
    from spine_pipeline.poll_plan import InFlightSource, run_tick
    from spine_pipeline.spine import AsyncSpineClient, SpineClient

    store = open_store(str(tmp_path / "archive"))
    with SpineClient(api_key=simulator.api_key, base_url=simulator.base_url) as client:
        run_id = client.create_run("[scenario:completed] polled without its events").run_id
    Ledger(store).track(run_id)

    def factory():
        return AsyncSpineClient(api_key=simulator.api_key, base_url=simulator.base_url)

    gate = threading.Event()
    release = threading.Timer(60.0, gate.set)  # if the bound breaks: fail, do not hang
    release.start()
    for failure in (_broken, gate.wait):  # a store that refuses, then one that hangs
        failing = _FailingInboxStore(store, failure)
        source = InFlightSource(Ledger(failing), ManifestLog(failing))
        before = PollPlan(inbox='{"v": 1, "mark": "20260101T000000000000Z", "seen": []}')
        report = run_tick(source, factory, before.dumps(), budget_seconds=8.0)
        assert report.inbox_error and report.seconds < 30.0  # the hang is cut at 2 s
        assert report.polled == 1 and set(report.tracked) == {run_id}
        assert PollPlan.loads(report.cursor).inbox == before.inbox  # read again next time
    gate.set()
    release.cancel()
