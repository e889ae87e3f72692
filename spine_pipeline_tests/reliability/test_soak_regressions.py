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


def _archive_kit(simulator, tmp_path):
    from spine_pipeline.archive.archiver import Archiver
    from spine_pipeline.archive.stores import open_store

    store = open_store(str(tmp_path / "archive"))

    def client():
        return AsyncSpineClient(api_key=simulator.api_key, base_url=simulator.base_url, retry=FAST)

    return store, (lambda: Archiver(store, client))


def _artifact_rows(store):
    from spine_pipeline.archive.read import read_committed

    return read_committed(store, "artifacts").to_pylist()


def test_a_failed_url_refresh_leaves_the_run_for_later_instead_of_losing_the_artifact(
    simulator, tmp_path
):
    """Soak: an expired URL whose refresh GET hit a fault was archived as 'no download_url'."""
    import pytest

    from spine_pipeline.archive.artifacts import download_artifact
    from spine_pipeline.archive.fetch import TransientFetchError
    from spine_pipeline.archive.stores import open_store
    from spine_pipeline.spine import SpineConnectionError

    with SpineClient(api_key=simulator.api_key, base_url=simulator.base_url, retry=FAST) as c:
        run = _terminal_run(simulator, c)

    async def attempt() -> None:
        async def broken_refresh():
            raise SpineConnectionError("GET /v1/run failed: cannot reach Spine")

        async with AsyncSpineClient(
            api_key=simulator.api_key, base_url=simulator.base_url, retry=FAST
        ) as client:
            simulator.set_faults("download:expiredx1")
            await download_artifact(
                client, open_store(str(tmp_path / "a")), run.artifacts[0], broken_refresh, tmp_path
            )

    with pytest.raises(TransientFetchError, match="refreshing the URL"):
        asyncio.run(attempt())

    # Through the archiver: the run is not committed now, and is committed whole later.
    store, archiver = _archive_kit(simulator, tmp_path)
    simulator.set_faults("download:expiredx1,get:503x99")
    first = archiver().archive([run.run_id])
    assert first.outcomes[0].outcome == "failed" and first.manifest is None
    simulator.set_faults("")
    assert archiver().archive([run.run_id]).outcomes[0].outcome == "archived"
    truth = simulator.world.ground_truth(run.run_id)
    rows = _artifact_rows(store)
    assert {a["artifact_id"]: a["sha256"] for a in rows} == {
        k: v.sha256 for k, v in truth.artifacts.items()
    }


def test_repeated_transient_download_failures_still_end_with_the_bytes(simulator, tmp_path):
    """Three expiries in a row, and more 503s than one round of client retries."""
    with SpineClient(api_key=simulator.api_key, base_url=simulator.base_url, retry=FAST) as c:
        run = _terminal_run(simulator, c)
    store, archiver = _archive_kit(simulator, tmp_path)
    simulator.set_faults("download:expiredx3,download:503x7")
    result = archiver().archive([run.run_id])
    assert result.outcomes[0].outcome == "archived"
    assert result.outcomes[0].artifact_errors == 0
    assert simulator.world.fault_counts["download:expired"] == 3
    assert simulator.world.fault_counts["download:503"] == 7
    truth = simulator.world.ground_truth(run.run_id)
    assert {a["artifact_id"]: a["sha256"] for a in _artifact_rows(store)} == {
        k: v.sha256 for k, v in truth.artifacts.items()
    }


class _FlakyStore:
    """A local store whose ledger writes fail `failures` times (an S3 outage), then work."""

    def __init__(self, root, failures):
        from spine_pipeline.archive.stores import open_store

        self.inner = open_store(str(root))
        self.uri = self.inner.uri
        self.failures = failures

    def put_bytes(self, key, data, *, content_type=None):
        from spine_pipeline.archive.layout import LEDGER_PREFIX
        from spine_pipeline.archive.stores import StoreError

        if key.startswith(LEDGER_PREFIX) and self.failures > 0:
            self.failures -= 1
            raise StoreError(f"S3 put s3://bucket/{key} failed: cannot reach http://127.0.0.1:9")
        return self.inner.put_bytes(key, data, content_type=content_type)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_created_run_is_recorded_through_a_short_store_outage(simulator, tmp_path, monkeypatch):
    """Soak, S3 restart during a submit wave: 4 billable runs were recorded nowhere."""
    from spine_pipeline import submission
    from spine_pipeline.archive.ledger import Ledger
    from spine_pipeline.submission import SubmitSpec, submit_and_record

    monkeypatch.setattr(submission, "RECORD_BACKOFF", 0.0)
    store = _FlakyStore(tmp_path / "archive", failures=2)
    with SpineClient(api_key=simulator.api_key, base_url=simulator.base_url, retry=FAST) as c:
        result = submit_and_record(c, Ledger(store), SubmitSpec("outage"), source="test")
    ledger = Ledger(store.inner)
    assert [d["run_id"] for _, d in ledger.submissions()] == [result.created.run_id]
    assert [t.run_id for t in ledger.tracked()] == [result.created.run_id]


def test_a_created_run_the_store_cannot_record_is_named_in_the_error(
    simulator, tmp_path, monkeypatch
):
    import pytest

    from spine_pipeline import submission
    from spine_pipeline.archive.ledger import Ledger
    from spine_pipeline.archive.stores import StoreError
    from spine_pipeline.submission import SubmissionNotRecorded, SubmitSpec, submit_and_record

    monkeypatch.setattr(submission, "RECORD_BACKOFF", 0.0)
    store = _FlakyStore(tmp_path / "archive", failures=99)
    with SpineClient(api_key=simulator.api_key, base_url=simulator.base_url, retry=FAST) as c:
        with pytest.raises(SubmissionNotRecorded) as caught:
            submit_and_record(c, Ledger(store), SubmitSpec("store down"), source="test")
        (run_id,) = simulator.world.run_ids()
        assert run_id in str(caught.value) and f"spine-pipeline track {run_id}" in str(caught.value)
        assert isinstance(caught.value, StoreError)  # the CLI prints it as one line
        # An unknown outcome that cannot be recorded says so, and the prompt is never re-sent.
        simulator.set_faults("create:500-afterx1")
        with pytest.raises(SubmissionNotRecorded, match="outcome unknown"):
            submit_and_record(c, Ledger(store), SubmitSpec("unknown, store down"), source="t")
    assert simulator.world.created_count == 2


def test_dagster_submit_failure_names_an_unrecorded_run(simulator, tmp_path, monkeypatch):
    import dagster as dg

    from spine_pipeline import submission
    from spine_pipeline.archive.ledger import Ledger
    from spine_pipeline.definitions import build_definitions
    from spine_pipeline.defs.resources import ArchiveResource
    from spine_pipeline.driver import execute_submit_catalog, step_failures

    catalog = tmp_path / "requests.yaml"
    catalog.write_text("requests:\n  - name: outage_probe\n    prompt: Submit during an outage\n")
    for name, value in {
        "SPINE_API_KEY": simulator.api_key,
        "SPINE_BASE_URL": simulator.base_url,
        "SPINE_ARCHIVE_URI": str(tmp_path / "archive"),
        "SPINE_AUDIT_DB": str(tmp_path / "audit.duckdb"),
        "SPINE_CATALOG": str(catalog),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(submission, "RECORD_BACKOFF", 0.0)
    store = _FlakyStore(tmp_path / "archive", failures=99)
    monkeypatch.setattr(ArchiveResource, "ledger", lambda self: Ledger(store))
    defs = build_definitions()
    with dg.instance_for_test() as instance:
        result = execute_submit_catalog(defs, instance)
        failures = step_failures(result)  # a dg.Failure's description, as the UI shows it
        (run_id,) = simulator.world.run_ids()
        assert failures
        description = failures[0].message
        assert run_id in description and "not tracked" in description
        # ...and that failure is durable: it is in the instance's event log.
        stored = [e for e in instance.all_logs(result.run_id) if e.is_dagster_event]
        assert any(run_id in str(e.dagster_event.event_specific_data) for e in stored)
