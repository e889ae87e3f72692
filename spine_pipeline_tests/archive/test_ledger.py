"""The run ledger: write-once records, idempotent tracking, recent-day listing."""

from datetime import UTC, datetime, timedelta

import pytest

from spine_pipeline.archive.layout import tracked_key
from spine_pipeline.archive.ledger import Ledger, Submission
from spine_pipeline.archive.stores import AlreadyExists, open_store


@pytest.fixture
def ledger(archive_uri):
    return Ledger(open_store(archive_uri))


def test_track_is_idempotent_and_write_once(ledger):
    now = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
    assert ledger.track("run-1", request_name="r", submitted_at=now, now=now)
    assert not ledger.track("run-1", now=now + timedelta(hours=1))
    record = ledger.find_tracked("run-1", around=now)
    assert record.request_name == "r" and record.submitted_time == now
    key = tracked_key(now, "run-1")
    with pytest.raises(AlreadyExists):
        ledger.store.put_bytes(key, b"{}")


def test_recent_listing_and_full_listing(ledger):
    today = datetime.now(UTC)
    old = today - timedelta(days=10)
    ledger.track("old-run", now=old)
    ledger.track("new-run", now=today)
    recent = {t.run_id for t in ledger.tracked(since=(today - timedelta(days=1)).date())}
    assert recent == {"new-run"}
    assert {t.run_id for t in ledger.tracked()} == {"old-run", "new-run"}
    assert ledger.find_tracked("old-run").run_id == "old-run"  # found by the full listing


def test_abandon_once(ledger):
    assert ledger.abandon("run-2", "not terminal after 24 h")
    assert not ledger.abandon("run-2", "again")
    assert ledger.abandoned() == {"run-2"}


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "x" * 101, "run id", "\x00"])
def test_run_ids_never_become_paths(ledger, bad):
    with pytest.raises(ValueError, match="not a valid run id"):
        ledger.track(bad)
    with pytest.raises(ValueError, match="not a valid run id"):
        ledger.abandon(bad, "x")


def test_submissions_are_appended_never_overwritten(ledger):
    for outcome in ("accepted", "rejected", "unknown"):
        ledger.record_submission(
            Submission(
                request_name="r",
                run_id="run-3" if outcome == "accepted" else None,
                submitted_at="2026-11-28T09:00:00Z",
                outcome=outcome,
            )
        )
    docs = [doc for _, doc in ledger.submissions()]
    assert sorted(d["outcome"] for d in docs) == ["accepted", "rejected", "unknown"]
    with pytest.raises(ValueError, match="unknown submission outcome"):
        ledger.record_submission(
            Submission(request_name=None, run_id=None, submitted_at="x", outcome="maybe")
        )
