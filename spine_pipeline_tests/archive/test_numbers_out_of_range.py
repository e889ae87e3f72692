"""Numbers that fit JSON but not their column: kept in raw_json, null, named in fetch_errors.

`duration_ms` 9e18 fits int64 but no datetime can add it (`terminal_at` is submit time plus
duration): the run used to fail with an OverflowError traceback on every attempt. Credits
beyond int64 were silently null. Both are now archived: the typed column is null, the exact
number stays in `raw_json`, and `fetch_errors` says which value was left out and why.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from spine_pipeline.archive.archiver import Archiver, ArchiveRequest
from spine_pipeline.archive.fetch import terminal_time
from spine_pipeline.archive.flatten import flatten_run
from spine_pipeline.archive.flatten.values import MAX_DURATION_MS, as_duration_ms, checked_int
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.read import read_committed
from spine_pipeline.archive.records import BatchContext, FetchedRun, RawDoc
from spine_pipeline.archive.stores import open_store
from spine_pipeline.spine import AsyncSpineClient, RetryPolicy, Run
from spine_pipeline.spine.envelope import unwrap
from spine_pipeline_tests.archive.spine_routes import run_doc, spine_routes
from spine_pipeline_tests.fixtures.hostile import HostileServer

HUGE_DURATION = 9_000_000_000_000_000_000  # < 2**63 - 1, > timedelta.max in ms
HUGE_CREDITS = 2**70
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CTX = BatchContext(batch_id="b1", archived_at=T0)
FAST = RetryPolicy(max_retries=1, base_delay=0.01, max_delay=0.05, jitter=0.0)


def _run(data: dict[str, Any]) -> Run:
    return Run(unwrap(200, json.dumps({"success": True, "data": data}).encode(), None))


def test_terminal_time_of_a_duration_past_any_datetime_is_when_it_was_seen() -> None:
    observed = T0 + timedelta(hours=1)
    assert terminal_time(_run({"duration_ms": HUGE_DURATION}), T0, observed) == observed
    # Within timedelta's range but past year 9999 once added: the same answer.
    late = datetime(9999, 12, 31, tzinfo=UTC)
    assert terminal_time(_run({"duration_ms": MAX_DURATION_MS}), late, observed) == observed
    assert terminal_time(_run({"duration_ms": 60_000}), T0, observed) == T0 + timedelta(minutes=1)


def test_checked_ints_name_what_they_null() -> None:
    problems: list[str] = []
    assert as_duration_ms(HUGE_DURATION, problems) is None
    assert as_duration_ms(-HUGE_DURATION, problems) is None
    assert as_duration_ms(MAX_DURATION_MS, problems) == MAX_DURATION_MS
    assert checked_int(HUGE_CREDITS, "metadata.credits_consumed", problems) is None
    assert checked_int(10**400, "x", problems) is None  # str() of it would raise
    assert checked_int(2.5, "x", problems) is None and checked_int(True, "x", problems) is None
    assert len(problems) == 4  # wrong types stay silent nulls, as documented
    assert problems[0].startswith(f"duration_ms: {HUGE_DURATION} is out of range")
    assert "kept in raw_json" in problems[0]
    assert problems[3].startswith("x: an integer of 1329 bits")


def test_flattened_run_keeps_the_numbers_in_raw_json_and_names_them() -> None:
    text = json.dumps(
        run_doc("r1", duration_ms=HUGE_DURATION, metadata={"credits_consumed": HUGE_CREDITS})
    )
    run = FetchedRun(
        run_id="r1",
        run=RawDoc.parse(text),
        dag=None,
        tasks=None,
        artifacts=[],
        fetch_errors=[],
        request_name=None,
        submitted_at=T0,
        terminal_at=T0,
    )
    row = flatten_run(run, CTX)["runs"].to_pylist()[0]
    assert row["duration_ms"] is None and row["credits_consumed"] is None
    assert str(HUGE_DURATION) in row["raw_json"] and str(HUGE_CREDITS) in row["raw_json"]
    assert [e.split(":")[0] for e in row["fetch_errors"]] == [
        "metadata.credits_consumed",
        "duration_ms",
    ]


def test_a_run_with_an_overflowing_duration_is_archived(tmp_path: Path) -> None:
    routes = {
        **spine_routes("ok"),
        **spine_routes("huge", duration_ms=HUGE_DURATION),
    }
    store = open_store(str(tmp_path / "archive"))
    requests = [ArchiveRequest("huge", submitted_at=T0), ArchiveRequest("ok", submitted_at=T0)]
    with HostileServer(routes) as server:

        def client() -> AsyncSpineClient:
            return AsyncSpineClient(api_key="sk_test_hostile", base_url=server.url, retry=FAST)

        result = Archiver(store, client).archive(requests)
    assert {o.run_id: o.outcome for o in result.outcomes} == {"huge": "archived", "ok": "archived"}
    log = ManifestLog(store)
    log.refresh()
    rows = {r["run_id"]: r for r in read_committed(store, "runs", log=log).to_pylist()}
    huge = rows["huge"]
    assert huge["duration_ms"] is None
    assert str(HUGE_DURATION) in huge["raw_json"]
    assert any(e.startswith("duration_ms: ") for e in huge["fetch_errors"])
    assert huge["terminal_at"] >= T0  # when it was seen terminal: the sum fits no datetime
    ok = rows["ok"]
    assert ok["duration_ms"] == 1500 and ok["fetch_errors"] == []
    assert ok["terminal_at"] == T0 + timedelta(milliseconds=1500)
