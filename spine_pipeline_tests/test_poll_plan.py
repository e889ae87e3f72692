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
