"""The run ledger: write-once records, idempotent tracking, recent-day listing, and the
rules every reader shares (decoding, first record wins, in flight, archive requests)."""

import json
from datetime import UTC, datetime, timedelta

import pytest

from spine_pipeline.archive.layout import tracked_key
from spine_pipeline.archive.ledger import (
    INFLIGHT_LOOKBACK,
    Ledger,
    Submission,
    TrackedRun,
    decode_tracked,
    inflight_since,
)
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


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b'["run_id"]',  # a list or string naming a field crashed every listing (and tick)
        b'"run_id tracked_at"',
        b'{"run_id": "r1"}',  # no tracked_at
        b'{"run_id": "r1", "tracked_at": "yesterday"}',  # unreadable: tracked_time would fail
        b'{"run_id": "../r1", "tracked_at": "2026-11-28T09:00:00Z"}',
        b'{"run_id": 7, "tracked_at": "2026-11-28T09:00:00Z"}',
        b"[" * 100_000,
    ],
)
def test_records_no_reader_may_use_are_skipped(ledger, body):
    assert decode_tracked(body) is None
    ledger.store.put_bytes(tracked_key(datetime.now(UTC).date(), "bad"), body)
    ledger.track("good-run")
    assert [t.run_id for t in ledger.tracked()] == ["good-run"]


def test_one_decoder_for_stored_bytes_and_their_text():
    body = {"run_id": "r1", "tracked_at": "2026-11-28T09:00:00Z", "request_name": 5}
    data = json.dumps(body).encode()
    record = decode_tracked(data)
    assert record == decode_tracked(data.decode()) == TrackedRun("r1", "2026-11-28T09:00:00Z")
    assert TrackedRun("r1", "t", submitted_at=None).compact() == {
        "run_id": "r1",
        "tracked_at": "t",
        "source": "cli",
    }


def test_the_first_record_of_a_run_wins(ledger):
    now = datetime.now(UTC)
    ledger.track("run-1", request_name="first", now=now - timedelta(days=5))
    ledger.track("run-1", request_name="again", now=now)  # past the idempotency window
    keys = list(ledger.tracked_keys())
    assert len(keys) == 1 and f"dt={now - timedelta(days=5):%Y-%m-%d}" in keys[0]
    assert [t.request_name for t in ledger.tracked()] == ["first"]
    assert [t.request_name for t in ledger.tracked(since=inflight_since(now))] == ["again"]


def test_in_flight_is_tracked_minus_archived_minus_abandoned_in_one_window(ledger):
    now = datetime.now(UTC)
    oldest_day = datetime.combine(inflight_since(now), datetime.min.time(), UTC)
    assert inflight_since(now) == (now - INFLIGHT_LOOKBACK).date()
    ledger.track("fresh", now=now)
    ledger.track("oldest-day", now=oldest_day + timedelta(minutes=1))
    ledger.track("before-window", now=oldest_day - timedelta(minutes=1))
    ledger.track("archived", now=now)
    ledger.track("abandoned", now=now - timedelta(hours=30))
    ledger.abandon("abandoned", "test")
    flying = ledger.load_in_flight({"archived"}, now=now)
    assert set(flying) == {"fresh", "oldest-day"}
    assert flying["fresh"].run_id == "fresh"


class _NoReads:
    """A store that fails the test on any read: what must not be touched is not."""

    uri = "memory://no-reads"

    def __getattr__(self, name):
        def refuse(*args, **kwargs):
            raise AssertionError(f"store.{name} called")

        return refuse


def test_archive_requests_from_given_records_read_nothing():
    submitted = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
    given = [
        TrackedRun("run-1", "2026-11-28T09:00:01Z", "daily", "2026-11-28T09:00:00Z"),
        TrackedRun("run-2", "2026-11-28T09:00:01Z"),
    ]
    requests = Ledger(_NoReads()).archive_requests(["run-1", "run-2", "run-1"], given)
    assert [(r.run_id, r.request_name, r.submitted_at) for r in requests] == [
        ("run-1", "daily", submitted),
        ("run-2", None, None),
    ]


def test_archive_requests_fall_back_to_the_ledger(ledger):
    submitted = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
    ledger.track("run-1", request_name="daily", submitted_at=submitted)
    requests = ledger.archive_requests(["run-1", "never-tracked", "not a run id"])
    assert [(r.run_id, r.request_name, r.submitted_at) for r in requests] == [
        ("run-1", "daily", submitted),
        ("never-tracked", None, None),
        ("not a run id", None, None),
    ]
