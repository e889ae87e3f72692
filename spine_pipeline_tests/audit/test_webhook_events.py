"""`webhook_events` (one row per event id, the body verbatim) and `runs_without_terminal_event`,
filled from the webhook inbox by refresh and rebuild, each inbox entry fetched once."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from spine_pipeline.archive.layout import WEBHOOK_EVENTS_PREFIX
from spine_pipeline.archive.stores import open_store
from spine_pipeline.audit import connect_readonly, rebuild_audit_db, refresh_audit_db
from spine_pipeline.webhooks.inbox import Inbox, parse_event
from spine_pipeline_tests.audit.conftest import World, rows
from spine_pipeline_tests.audit.test_ledger_reads import CountingStore
from spine_pipeline_tests.webhooks.helpers import body_of, envelope

COLUMNS = (
    "event_id, type, run_id, created, received_at, livemode, api_version, duplicate, "
    "duplicate_of, raw_body, ledger_key"
)


def _statuses(db: Path) -> dict[str, str]:
    con = connect_readonly(db)
    try:
        return dict(rows(con, "SELECT run_id, status FROM runs"))
    finally:
        con.close()


def _table(db: Path, sql: str = f"SELECT {COLUMNS} FROM webhook_events ORDER BY event_id"):
    con = connect_readonly(db)
    try:
        return rows(con, sql)
    finally:
        con.close()


def _webhook_reads(store: CountingStore) -> dict[str, int]:
    got = {k: n for k, n in store.gets.items() if k.startswith(WEBHOOK_EVENTS_PREFIX)}
    store.gets.clear()
    return got


def test_webhook_events_and_runs_without_terminal_event(
    world: World, archive_copy: Callable[[], tuple[str, Path]], tmp_path: Path
) -> None:
    uri, db = archive_copy()
    statuses = _statuses(world.db)
    completed = sorted(r for r, s in statuses.items() if s == "completed")
    failed = sorted(r for r, s in statuses.items() if s == "failed")
    partial = sorted(r for r, s in statuses.items() if s == "partial")
    assert len(completed) > 3 and failed and partial
    inbox = Inbox(open_store(uri))
    start = datetime.now(UTC) - timedelta(days=12)  # the receiver listened before every run
    bodies: dict[str, bytes] = {}

    def deliver(doc: dict, at: datetime) -> None:
        body = body_of(doc)
        inbox.store_event(parse_event(body), received_at=at, signature_t=int(time.time()))
        bodies[doc["id"]] = body

    deliver(envelope("webhook.ping", None), start)
    missing = completed[0]
    for i, run_id in enumerate(completed[1:]):
        deliver(envelope("run.started", run_id), start + timedelta(hours=i))
        deliver(envelope("run.completed", run_id), start + timedelta(hours=i, minutes=5))
    resend = envelope("run.completed", completed[1], note="resent with a new id")
    deliver(resend, start + timedelta(days=1))
    deliver(envelope("run.completed", failed[0], status="failed"), start)  # wrong type: missed
    for run_id in failed[1:]:
        deliver(envelope("run.failed", run_id), start + timedelta(minutes=1))
    deliver(envelope("run.started", "never-archived"), start)

    store = CountingStore(open_store(uri))
    report = refresh_audit_db(uri, db, store=store)
    assert report.webhook_events == len(bodies)
    reads = _webhook_reads(store)
    assert len(reads) == len(bodies) and set(reads.values()) == {1}

    table = _table(db)
    assert [r[0] for r in table] == sorted(bodies)  # one row per event id
    by_id = {r[0]: r for r in table}
    for eid, body in bodies.items():
        assert by_id[eid][9] == body.decode("utf-8")  # raw body verbatim
        assert by_id[eid][4] >= start and by_id[eid][5] is False and by_id[eid][6] == "2026-04-01"
        assert isinstance(by_id[eid][3], datetime)
    assert by_id[resend["id"]][7:9] == (
        True,
        next(r for r in table if r[2] == completed[1] and r[1] == "run.completed" and not r[7])[0],
    )
    assert sum(r[7] for r in table) == 1

    view = _table(
        db,
        "SELECT run_id, status, expected_event, events_received FROM runs_without_terminal_event ORDER BY run_id",
    )
    expected = sorted(
        [
            (missing, "completed", "run.completed", None),
            (failed[0], "failed", "run.failed", ["run.completed"]),
        ]
    )
    assert view == expected  # partial runs have no event to miss; others got theirs

    # Nothing new: nothing fetched, nothing added. A new event: only it is fetched.
    assert refresh_audit_db(uri, db, store=store).webhook_events == 0
    assert _webhook_reads(store) == {}
    deliver(envelope("run.completed", missing), datetime.now(UTC))
    assert refresh_audit_db(uri, db, store=store).webhook_events == 1
    assert len(_webhook_reads(store)) == 1
    view = _table(db, "SELECT run_id FROM runs_without_terminal_event")
    assert view == [(failed[0],)]

    # A rebuild from the archive alone agrees row for row.
    refreshed = _table(db)
    rebuild_audit_db(uri, db)
    assert _table(db) == refreshed


def test_one_row_per_event_id_whatever_the_inbox_holds(
    archive_copy: Callable[[], tuple[str, Path]], tmp_path: Path
) -> None:
    uri, db = archive_copy()
    store = open_store(uri)
    doc = envelope("run.completed", "run-x")
    now = datetime.now(UTC)
    Inbox(store).store_event(parse_event(body_of(doc)), received_at=now)
    # The same event id stored elsewhere at another time, its entry copied in (bypassing the
    # claim), plus junk under the events prefix: neither adds a row.
    other = open_store(str(tmp_path / "other"))
    copy = Inbox(other).store_event(parse_event(body_of(doc)), received_at=now - timedelta(hours=1))
    store.put_bytes(copy.key, other.get_bytes(copy.key))
    junk = copy.key.replace(doc["id"], "evt_junk")
    store.put_bytes(junk, b'{"v": 1}')
    report = refresh_audit_db(uri, db)
    assert report.webhook_events == 1
    assert _table(db, "SELECT event_id, count(*) FROM webhook_events GROUP BY ALL") == [
        (doc["id"], 1)
    ]
    rebuild_audit_db(uri, db)
    assert _table(db, "SELECT event_id, count(*) FROM webhook_events GROUP BY ALL") == [
        (doc["id"], 1)
    ]
    assert json.loads(store.get_bytes(junk)) == {"v": 1}  # the audit never touches the archive
