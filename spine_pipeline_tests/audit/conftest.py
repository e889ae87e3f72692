"""A real archive built by the real Archiver from the real simulator, and its audit DB.

One archive per session (simulator runs are fast, but archiving is the slow part): 16 runs
spread over 9 UTC days (submitted_at in the past, so terminal_at/dt land on those days),
with a spike day for the anomaly rule, failed and partial outcomes, catalog request names,
ledger submission records and tracked in-flight runs. Tests that damage an archive work on
a copy (`archive_copy`).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from spine_pipeline.archive.archiver import Archiver, ArchiveRequest, BatchResult
from spine_pipeline.archive.ledger import Ledger, Submission
from spine_pipeline.archive.stores import open_store
from spine_pipeline.audit import refresh_audit_db
from spine_pipeline.simulator import RunTruth, SimulatorConfig, SimulatorServer
from spine_pipeline.spine import AsyncSpineClient, SpineClient
from spine_pipeline_tests.archive.conftest import ArchiveKit

TERMINAL = ("completed", "partial", "failed")


@dataclass
class ArchivedRun:
    run_id: str
    request_name: str | None
    template: str
    submitted_at: datetime
    truth: RunTruth

    @property
    def day(self) -> date:
        duration = self.truth.final_run["duration_ms"]
        return (self.submitted_at + timedelta(milliseconds=duration)).date()

    @property
    def credits(self) -> int:
        return self.truth.credits

    @property
    def models(self) -> list[str]:
        meta = self.truth.final_run.get("metadata") or {}
        return list(meta.get("models_used") or [])


@dataclass
class World:
    """What the session archive holds, with the simulator's ground truth per run."""

    sim: SimulatorServer
    archive_uri: str
    db: Path
    runs: list[ArchivedRun] = field(default_factory=list)
    rejected: int = 0
    inflight_overdue: str = "inflight-overdue-run"
    inflight_recent: str = "inflight-recent-run"

    def client(self) -> SpineClient:
        return SpineClient(api_key=self.sim.api_key, base_url=self.sim.base_url)

    def archiver(self, uri: str | None = None) -> Archiver:
        sim = self.sim
        return Archiver(
            open_store(uri or self.archive_uri),
            lambda: AsyncSpineClient(api_key=sim.api_key, base_url=sim.base_url),
        )


def create_runs(sim: SimulatorServer, specs: list[tuple[str, str]]) -> list[str]:
    """Create runs (prompt, template) and wait until every one is terminal."""
    with SpineClient(api_key=sim.api_key, base_url=sim.base_url) as client:
        ids = [client.create_run(prompt, template=template).run_id for prompt, template in specs]
        deadline = time.monotonic() + 30
        pending = set(ids)
        while pending and time.monotonic() < deadline:
            pending = {r for r in pending if client.get_run(r).status not in TERMINAL}
            if pending:
                time.sleep(0.1)
    assert not pending, f"runs not terminal: {pending}"
    return ids


def archive_runs(
    sim: SimulatorServer, uri: str, requests: list[ArchiveRequest | str]
) -> BatchResult:
    result = Archiver(
        open_store(uri), lambda: AsyncSpineClient(api_key=sim.api_key, base_url=sim.base_url)
    ).archive(requests)
    assert result.ok, [o for o in result.outcomes if o.outcome not in ("archived",)]
    return result


# (days ago, request name, template, prompt suffix)
_PLAN: list[tuple[int, str | None, str, str]] = [
    (9, "daily-brief", "report", ""),
    (8, "daily-brief", "report", ""),
    (7, "daily-brief", "report", ""),
    (6, "daily-brief", "report", ""),
    (5, "daily-brief", "report", ""),
    (4, "daily-brief", "report", ""),
    (3, "competitor-watch", "deep_research", " [scenario:failed]"),
    (2, "competitor-watch", "deep_research", " [scenario:partial]"),
    (1, "board-deck", "slides", ""),
    (1, "board-deck", "slides", ""),
    (1, "competitor-watch", "deep_research", ""),
    (1, "competitor-watch", "deep_research", ""),
    (1, None, "auto", ""),
    (1, None, "auto", ""),
    (1, "daily-brief", "report", ""),
    (1, "daily-brief", "report", ""),
]


@pytest.fixture(scope="session")
def audit_sim() -> Iterator[SimulatorServer]:
    server = SimulatorServer(SimulatorConfig(seed=4242, run_seconds=(0.2, 0.5))).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def world(audit_sim: SimulatorServer, tmp_path_factory: pytest.TempPathFactory) -> World:
    base = tmp_path_factory.mktemp("audit-world")
    w = World(sim=audit_sim, archive_uri=str(base / "archive"), db=base / "audit.duckdb")
    topics = ["solar panel supply chains", "EU battery regulation", "coffee futures"]
    specs = [
        (f"Research {topics[i % len(topics)]} briefing {i}{suffix}", template)
        for i, (_, _, template, suffix) in enumerate(_PLAN)
    ]
    ids = create_runs(audit_sim, specs)
    now = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    store = open_store(w.archive_uri)
    ledger = Ledger(store)
    requests = []
    for run_id, (days_ago, name, template, _), (prompt, _) in zip(ids, _PLAN, specs, strict=True):
        submitted = now - timedelta(days=days_ago)
        requests.append(ArchiveRequest(run_id, request_name=name, submitted_at=submitted))
        w.runs.append(
            ArchivedRun(run_id, name, template, submitted, audit_sim.world.ground_truth(run_id))
        )
        if name is not None:
            ledger.record_submission(
                Submission(
                    request_name=name,
                    run_id=run_id,
                    submitted_at=submitted.isoformat().replace("+00:00", "Z"),
                    outcome="accepted",
                    prompt=prompt,
                    template=template,
                    source="test",
                )
            )
    ledger.record_submission(
        Submission(
            request_name="board-deck",
            run_id=None,
            submitted_at=now.isoformat().replace("+00:00", "Z"),
            outcome="rejected",
            error="HTTP 400: prompt too long",
            prompt="x",
            template="slides",
            source="test",
        )
    )
    w.rejected = 1
    real_now = datetime.now(UTC)
    ledger.track(
        w.inflight_overdue, request_name="slow-job", submitted_at=real_now - timedelta(hours=4)
    )
    ledger.track(w.inflight_recent, request_name="quick-job", submitted_at=real_now)
    archive_runs(audit_sim, w.archive_uri, requests[:8])
    archive_runs(audit_sim, w.archive_uri, requests[8:])
    refresh_audit_db(w.archive_uri, w.db)
    return w


@pytest.fixture
def kit(simulator: SimulatorServer, archive_uri: str) -> ArchiveKit:
    """A fresh archive on each backend, as the archive tests have it (`archive/conftest.py`)."""
    return ArchiveKit(simulator, archive_uri)


@pytest.fixture
def no_log_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No signing, verify or witness setting from the developer's shell reaches the test."""
    for name in ("SPINE_SIGNING_KEY", "SPINE_VERIFY_KEY", "SPINE_WITNESS_URI"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def archive_copy(world: World, tmp_path: Path) -> Callable[[], tuple[str, Path]]:
    """A private copy of the session archive (and a fresh DB path) to damage or extend."""

    def make() -> tuple[str, Path]:
        dest = tmp_path / "archive"
        shutil.copytree(world.archive_uri, dest)
        return str(dest), tmp_path / "audit.duckdb"

    return make


def rows(con: Any, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return con.execute(sql, list(params)).fetchall()
