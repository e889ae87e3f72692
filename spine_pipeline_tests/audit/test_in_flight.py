"""One definition of in flight: the sensor, `spine-pipeline status` and the audit agree.

In flight = tracked within `INFLIGHT_LOOKBACK` (the sensor's window) - archived - abandoned.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from spine_pipeline.archive.ledger import Ledger, inflight_since
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.service import run_states
from spine_pipeline.archive.stores import open_store
from spine_pipeline.audit import connect_readonly, refresh_audit_db
from spine_pipeline.poll_plan import InFlightSource
from spine_pipeline_tests.audit.conftest import World, rows


def test_sensor_status_and_audit_agree_on_what_is_in_flight(
    world: World, archive_copy: Callable[[], tuple[str, Path]]
) -> None:
    uri, db = archive_copy()
    store = open_store(uri)
    ledger = Ledger(store)
    now = datetime.now(UTC)
    oldest_day = datetime.combine(inflight_since(now), datetime.min.time(), UTC)
    archived = world.runs[-1].run_id
    ledger.track(archived, request_name="archived-and-tracked")
    ledger.track("edge-of-window", now=oldest_day + timedelta(minutes=1))
    ledger.track("before-window", now=oldest_day - timedelta(minutes=1))
    ledger.track("given-up", now=now - timedelta(hours=30))
    assert ledger.abandon("given-up", "test")
    expected = {world.inflight_overdue, world.inflight_recent, "edge-of-window"}

    sensor = InFlightSource(Ledger(store), ManifestLog(store)).load(now)
    states = {r.run_id: r.state for r in run_states(store, now=now)}
    refresh_audit_db(uri, db)
    con = connect_readonly(db)
    try:
        audit = {r[0] for r in rows(con, "SELECT run_id FROM inflight_runs")}
    finally:
        con.close()

    assert set(sensor) == expected
    assert {r for r, state in states.items() if state == "in_flight"} == expected
    assert audit == expected
    assert states["before-window"] == "stale"  # tracked, never archived nor abandoned
    assert states["given-up"] == "abandoned" and states[archived] == "archived"
