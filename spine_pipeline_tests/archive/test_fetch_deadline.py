"""One run's fetching has a deadline, and a refused reply is a persistent fetch failure.

Against `fixtures.hostile.HostileServer` as Spine: a run whose reply trickles a byte every
half second (read timeouts never fire) is cut at `SPINE_RUN_FETCH_DEADLINE_SECONDS`, left
for the next attempt and named; its healthy batch-mate commits. A reply refused for its
decoded size is never repeated: for the DAG it is a `fetch_errors` entry of an archived run,
for the run itself a failed outcome that names it; batch-mates commit either way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spine_pipeline.archive.archiver import Archiver, BatchResult
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.read import read_committed
from spine_pipeline.archive.stores import ObjectStore, open_store
from spine_pipeline.spine import AsyncSpineClient, RetryPolicy
from spine_pipeline_tests.archive.spine_routes import run_doc, spine_routes
from spine_pipeline_tests.fixtures.hostile import HostileServer, envelope, gzip_bomb, trickle

FAST = RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.05, jitter=0.0)


def factory(server: HostileServer, **kw: Any) -> Callable[[], AsyncSpineClient]:
    def make() -> AsyncSpineClient:
        return AsyncSpineClient(api_key="sk_test_hostile", base_url=server.url, retry=FAST, **kw)

    return make


def outcomes(result: BatchResult) -> dict[str, str]:
    return {o.run_id: o.outcome for o in result.outcomes}


def committed_runs(store: ObjectStore) -> dict[str, dict[str, Any]]:
    log = ManifestLog(store)
    log.refresh()
    rows = read_committed(store, "runs", log=log).to_pylist()
    return {r["run_id"]: r for r in rows}


def _slow_body(run_id: str) -> bytes:
    return json.dumps({"success": True, "data": run_doc(run_id)}).encode("utf-8")


# -- the deadline --------------------------------------------------------------------------------


def test_a_trickling_run_is_cut_at_the_deadline_and_its_batch_mate_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SPINE_RUN_FETCH_DEADLINE_SECONDS", "2")
    routes = {**spine_routes("ok"), **spine_routes("slow")}
    # One byte every half second: each byte resets any read timeout; the body needs minutes.
    routes["/v1/run/slow"] = trickle(_slow_body("slow"), every=0.5)
    store = open_store(str(tmp_path / "archive"))
    with HostileServer(routes, max_seconds=30) as server:
        archiver = Archiver(store, factory(server))
        assert archiver.fetch_deadline == 2.0
        with caplog.at_level(logging.WARNING, logger="spine_pipeline.archive.archiver"):
            result = archiver.archive(["ok", "slow"])
        assert outcomes(result) == {"ok": "archived", "slow": "failed"}
        slow = next(o for o in result.outcomes if o.run_id == "slow")
        assert slow.message.startswith("fetch deadline"), slow.message
        assert "left for the next attempt" in slow.message
        assert any(
            "slow" in r.getMessage() and "fetch deadline" in r.getMessage() for r in caplog.records
        )
        assert result.manifest is not None
        assert [r.run_id for r in result.manifest.runs] == ["ok"]

        # Left for the next attempt, not given up on: once Spine answers, it is archived.
        server.route("/v1/run/slow", envelope(run_doc("slow")))
        again = archiver.archive(["ok", "slow"])
    assert outcomes(again) == {"ok": "already_archived", "slow": "archived"}
    assert set(committed_runs(store)) == {"ok", "slow"}


def test_the_deadline_covers_the_canvas_too(tmp_path: Path) -> None:
    routes = {**spine_routes("ok"), **spine_routes("slow")}
    dag = json.dumps({"success": True, "data": {"nodes": [], "edges": []}}).encode()
    routes["/v1/canvas/c-slow/dag"] = trickle(dag, every=0.5)
    store = open_store(str(tmp_path / "archive"))
    with HostileServer(routes, max_seconds=30) as server:
        result = Archiver(store, factory(server), fetch_deadline=1.5).archive(["slow", "ok"])
    assert outcomes(result) == {"slow": "failed", "ok": "archived"}
    assert result.by_outcome("failed")[0].message.startswith("fetch deadline")
    assert set(committed_runs(store)) == {"ok"}


def test_the_default_deadline_is_ten_minutes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SPINE_RUN_FETCH_DEADLINE_SECONDS", raising=False)
    store = open_store(str(tmp_path / "archive"))
    assert Archiver(store, lambda: AsyncSpineClient(api_key="k")).fetch_deadline == 600.0


# -- replies refused for their size --------------------------------------------------------------


def test_a_refused_dag_is_a_fetch_error_of_an_archived_run(tmp_path: Path) -> None:
    routes = {**spine_routes("ok"), **spine_routes("bomb")}
    routes["/v1/canvas/c-bomb/dag"] = gzip_bomb(8 << 20)
    store = open_store(str(tmp_path / "archive"))
    with HostileServer(routes) as server:
        archiver = Archiver(store, factory(server, max_reply_bytes=1 << 20))
        result = archiver.archive(["bomb", "ok"])
        dag_asks = sum(1 for r in server.requests if r.path == "/v1/canvas/c-bomb/dag")
    assert outcomes(result) == {"bomb": "archived", "ok": "archived"}
    assert dag_asks == 1  # not repeated: the same reply would be refused again
    row = committed_runs(store)["bomb"]
    assert row["dag_raw_json"] is None and row["block_count"] == 0
    [error] = row["fetch_errors"]
    assert error.startswith("dag: ") and "exceeds 1048576 bytes decoded" in error
    assert "\n" not in error


def test_a_refused_run_fails_by_name_once_and_its_batch_mates_commit(tmp_path: Path) -> None:
    routes = {**spine_routes("ok"), "/v1/run/bomb": gzip_bomb(8 << 20)}
    store = open_store(str(tmp_path / "archive"))
    with HostileServer(routes) as server:
        result = Archiver(store, factory(server, max_reply_bytes=1 << 20)).archive(["bomb", "ok"])
        run_asks = sum(1 for r in server.requests if r.path == "/v1/run/bomb")
    assert outcomes(result) == {"bomb": "failed", "ok": "archived"}
    assert run_asks == 1
    message = result.by_outcome("failed")[0].message
    assert "GET /v1/run/bomb" in message and "exceeds 1048576 bytes decoded" in message
    assert "\n" not in message
    assert set(committed_runs(store)) == {"ok"}
