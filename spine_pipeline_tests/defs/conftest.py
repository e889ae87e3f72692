"""A real Dagster instance, definitions built from the environment, a simulator, an archive
(and, for the webhook tests, a real receiver on loopback the simulator delivers to)."""

import time

import dagster as dg
import pytest

from spine_pipeline.archive.ledger import Ledger
from spine_pipeline.archive.stores import open_store
from spine_pipeline.definitions import build_definitions
from spine_pipeline.driver import evaluate_poll_sensor, evaluate_webhook_sensor
from spine_pipeline.spine import RetryPolicy, SpineClient
from spine_pipeline.submission import SubmitSpec, submit_and_record

FAST = RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05, jitter=0.0)


class Pipeline:
    """Definitions wired to one simulator and one archive, plus the moves tests need."""

    def __init__(self, sim, archive_uri, audit_db, instance):
        self.sim = sim
        self.archive_uri = archive_uri
        self.audit_db = audit_db
        self.instance = instance
        self.defs = build_definitions()
        self.store = open_store(archive_uri)
        self.ledger = Ledger(self.store)

    def submit(self, *prompts, template="report"):
        with SpineClient(api_key=self.sim.api_key, base_url=self.sim.base_url, retry=FAST) as c:
            return [
                submit_and_record(
                    c,
                    self.ledger,
                    SubmitSpec(p, template=template, request_name="test"),
                    source="test",
                ).created.run_id
                for p in prompts
            ]

    def wait_terminal(self, run_ids, timeout=30.0):
        deadline = time.monotonic() + timeout
        with SpineClient(api_key=self.sim.api_key, base_url=self.sim.base_url, retry=FAST) as c:
            for run_id in run_ids:
                while not c.get_run(run_id).is_terminal:
                    assert time.monotonic() < deadline, f"{run_id} not terminal"
                    time.sleep(0.05)

    def tick(self, cursor=None):
        return evaluate_poll_sensor(self.defs, self.instance, cursor)

    def tick_webhooks(self, cursor=None):
        return evaluate_webhook_sensor(self.defs, self.instance, cursor)


def _pipeline(simulator, archive, tmp_path, monkeypatch):
    audit_db = str(tmp_path / "audit.duckdb")
    monkeypatch.setenv("SPINE_API_KEY", simulator.api_key)
    monkeypatch.setenv("SPINE_BASE_URL", simulator.base_url)
    monkeypatch.setenv("SPINE_ARCHIVE_URI", archive)
    monkeypatch.setenv("SPINE_AUDIT_DB", audit_db)
    monkeypatch.setenv("SPINE_POLL_MIN_INTERVAL_SECONDS", "0.3")
    monkeypatch.setenv("SPINE_POLL_MAX_INTERVAL_SECONDS", "0.6")
    monkeypatch.setenv("SPINE_ARCHIVE_BATCH_SIZE", "3")
    with dg.instance_for_test() as instance:
        yield Pipeline(simulator, archive, audit_db, instance)


@pytest.fixture
def pipeline(simulator, tmp_path, monkeypatch):
    yield from _pipeline(simulator, str(tmp_path / "archive"), tmp_path, monkeypatch)


@pytest.fixture
def any_pipeline(simulator, archive_uri, tmp_path, monkeypatch):
    """`pipeline` on each archive backend (local disk, S3)."""
    yield from _pipeline(simulator, archive_uri, tmp_path, monkeypatch)


WEBHOOK_SECRET = "whsec_defs_tests"


@pytest.fixture
def hooked(make_simulator, archive_uri, tmp_path, monkeypatch):
    """`pipeline` on each backend, with a real webhook receiver storing in the archive and a
    simulator delivering signed webhooks to it. Runs last an hour unless a test ends them
    (`sim.world.finish`), so what turns a run terminal is always the test's decision."""
    from spine_pipeline.webhooks.app import create_app
    from spine_pipeline.webhooks.server import WebhookServer

    with WebhookServer(create_app(open_store(archive_uri), [WEBHOOK_SECRET])) as receiver:
        sim = make_simulator(
            run_seconds=(3600.0, 3600.0),
            webhook_url=receiver.url,
            webhook_secret=WEBHOOK_SECRET,
            webhook_backoff_seconds=0.05,
        )
        pipeline_gen = _pipeline(sim, archive_uri, tmp_path, monkeypatch)
        pipeline = next(pipeline_gen)
        pipeline.receiver = receiver
        try:
            yield pipeline
        finally:
            pipeline.sim.stop()  # no delivery to a receiver that is going away
            pipeline_gen.close()
