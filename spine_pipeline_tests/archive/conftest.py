"""Helpers for archive tests: simulator runs, an archiver, and reading committed tables."""

import time

import pytest

from spine_pipeline.archive.archiver import Archiver
from spine_pipeline.archive.arrow_schemas import TABLES
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.read import read_committed
from spine_pipeline.archive.stores import open_store
from spine_pipeline.spine import AsyncSpineClient, RetryPolicy, SpineClient

FAST = RetryPolicy(max_retries=4, base_delay=0.01, max_delay=0.05, jitter=0.0)


class ArchiveKit:
    """A simulator plus one archive root, with the moves every archive test needs."""

    def __init__(self, sim, uri):
        self.sim = sim
        self.uri = uri
        self.store = open_store(uri)

    def client(self):
        return SpineClient(api_key=self.sim.api_key, base_url=self.sim.base_url, retry=FAST)

    def async_client(self):
        return AsyncSpineClient(api_key=self.sim.api_key, base_url=self.sim.base_url, retry=FAST)

    def archiver(self, **kw):
        return Archiver(open_store(self.uri), self.async_client, **kw)

    def submit(self, *prompts, template="report", wait=True, **kw):
        with self.client() as client:
            ids = [client.create_run(p, template=template, **kw).run_id for p in prompts]
        if wait:
            self.wait(ids)
        return ids

    def wait(self, run_ids, timeout=30.0):
        deadline = time.monotonic() + timeout
        with self.client() as client:
            pending = list(run_ids)
            while pending:
                assert time.monotonic() < deadline, f"runs not terminal: {pending}"
                pending = [r for r in pending if not client.get_run(r).is_terminal]
                if pending:
                    time.sleep(0.05)

    def tables(self):
        """Every committed table that has rows, read from exactly the manifest-listed files."""
        log = ManifestLog(self.store)
        log.refresh()
        tables = {name: read_committed(self.store, name, log=log) for name in TABLES}
        return {name: t for name, t in tables.items() if t.num_rows}


@pytest.fixture
def kit(simulator, archive_uri):
    return ArchiveKit(simulator, archive_uri)
