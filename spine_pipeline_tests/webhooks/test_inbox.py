"""The durable inbox on both archive backends: storing, deduplicating, crash recovery,
concurrent receivers, and reading back in order with a cursor."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest

from spine_pipeline.archive.layout import (
    webhook_event_key,
    webhook_id_key,
    webhook_run_marker_key,
)
from spine_pipeline.archive.stores import StoreError, open_store
from spine_pipeline.webhooks.inbox import (
    LOOKBACK,
    SETTLE,
    Inbox,
    InboxCorrupt,
    MalformedEvent,
    ParsedEvent,
    decode_record,
    parse_event,
)
from spine_pipeline_tests.webhooks.helpers import (
    VECTOR_BODY,
    body_of,
    entry_keys,
    envelope,
    event_id,
    webhook_keys,
)

NOW = datetime(2026, 5, 4, 10, 59, 58, 123456, tzinfo=UTC)


def _event(*args, **kw) -> ParsedEvent:
    return parse_event(body_of(envelope(*args, **kw)))


@pytest.fixture
def store(archive_uri):
    return open_store(archive_uri)


# -- storing ---------------------------------------------------------------------------------


def test_a_run_event_is_stored_whole_with_its_marker(store) -> None:
    doc = envelope("run.completed", "run-a")
    body = body_of(doc)
    headers = {"Spine-Signature": "t=1,v1=ab", "User-Agent": "Spine-Webhooks/1.0", "X-Other": "no"}
    result = Inbox(store).store_event(
        parse_event(body), received_at=NOW, signature_t=1, headers=headers
    )
    assert result.stored and not result.duplicate and result.duplicate_of is None
    key = webhook_event_key(NOW, doc["id"])
    assert result.key == key
    assert sorted(webhook_keys(store)) == sorted(
        [key, webhook_id_key(doc["id"]), webhook_run_marker_key("run-a", "run.completed")]
    )
    # The claim and the entry hold the same bytes; the body comes back byte for byte.
    assert store.get_bytes(key) == store.get_bytes(webhook_id_key(doc["id"]))
    record = decode_record(store.get_bytes(key), key)
    assert record is not None
    assert record.body == body
    assert (record.event_id, record.type, record.run_id) == (doc["id"], "run.completed", "run-a")
    assert (record.created, record.livemode, record.api_version) == (
        doc["created"],
        False,
        "2026-04-01",
    )
    assert record.received_at == NOW and record.signature_t == 1 and not record.duplicate
    assert record.headers == {"spine-signature": "t=1,v1=ab", "user-agent": "Spine-Webhooks/1.0"}


def test_ping_and_unknown_types_are_stored_without_a_marker(store) -> None:
    inbox = Inbox(store)
    ping = parse_event(VECTOR_BODY)
    odd = _event("canvas.exploded", None, something={"nested": [1, 2]})
    weird_run = _event("run.paused", "run-b")  # unknown type naming a run: deduped like others
    for event in (ping, odd, weird_run):
        assert inbox.store_event(event, received_at=NOW).stored
    events, _ = inbox.since(None, now=NOW)
    # Received in the same microsecond: key order is event id order.
    expected = sorted([ping, odd, weird_run], key=lambda e: e.event_id)
    assert [e.type for e in events] == [e.type for e in expected]
    assert {e.body for e in events} == {ping.body, odd.body, weird_run.body}
    markers = [k for k in webhook_keys(store) if "/runs/" in k]
    assert markers == [webhook_run_marker_key("run-b", "run.paused")]


def test_a_redelivered_event_id_is_acknowledged_not_rewritten(store) -> None:
    inbox = Inbox(store)
    event = _event("run.completed", "run-a")
    first = inbox.store_event(event, received_at=NOW, headers={"Spine-Signature": "first"})
    before = {k: store.get_bytes(k) for k in webhook_keys(store)}
    later = NOW + timedelta(minutes=3)
    again = Inbox(open_store(store.uri)).store_event(
        event, received_at=later, headers={"Spine-Signature": "second"}
    )
    assert not again.stored and again.key == first.key and not again.duplicate
    assert {k: store.get_bytes(k) for k in webhook_keys(store)} == before
    events, _ = inbox.since(None, now=later)
    assert [e.event_id for e in events] == [event.event_id]


def test_a_resend_with_a_new_id_is_stored_and_flagged(store) -> None:
    inbox = Inbox(store)
    original = _event("run.completed", "run-a")
    resend = _event("run.completed", "run-a")
    assert original.event_id != resend.event_id
    assert not inbox.store_event(original, received_at=NOW).duplicate
    result = inbox.store_event(resend, received_at=NOW + timedelta(seconds=1))
    assert result.stored and result.duplicate and result.duplicate_of == original.event_id
    # Another type of the same run, and the same type of another run, are not duplicates.
    assert not inbox.store_event(_event("run.started", "run-a"), received_at=NOW).duplicate
    assert not inbox.store_event(_event("run.completed", "run-z"), received_at=NOW).duplicate
    events, _ = inbox.since(None, now=NOW + timedelta(seconds=2))
    flags = {e.event_id: (e.duplicate, e.duplicate_of) for e in events}
    assert flags[original.event_id] == (False, None)
    assert flags[resend.event_id] == (True, original.event_id)
    assert sum(dup for dup, _ in flags.values()) == 1
    # The resend redelivered (same id) is still the flagged record, not re-decided.
    again = inbox.store_event(resend, received_at=NOW + timedelta(minutes=1))
    assert not again.stored and again.duplicate and again.duplicate_of == original.event_id


# -- refusing unsafe names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ({"id": "evt/../x", "type": "run.completed"}, "invalid id"),
        ({"id": "", "type": "run.completed"}, "invalid id"),
        ({"id": "e" * 129, "type": "run.completed"}, "invalid id"),
        ({"id": 7, "type": "run.completed"}, "invalid id"),
        ({"id": "evt_1", "type": "../run"}, "invalid type"),
        ({"id": "evt_1", "type": ".."}, "invalid type"),
        ({"id": "evt_1", "type": "run/completed"}, "invalid type"),
        ({"type": "run.completed"}, "missing id"),
        ({"id": "evt_1"}, "missing type"),
        (
            {"id": "evt_1", "type": "run.completed", "data": {"object": {"run_id": "a/b"}}},
            "invalid run_id",
        ),
        (
            {"id": "evt_1", "type": "run.completed", "data": {"object": {"run_id": ".."}}},
            "invalid run_id",
        ),
        (
            {"id": "evt_1", "type": "run.completed", "data": {"object": {"run_id": "."}}},
            "invalid run_id",
        ),
        (
            {
                "id": "evt_1",
                "type": "run.completed",
                "data": {"object": {"run_id": ".tmp-spine-x"}},
            },
            "invalid run_id",
        ),
        (
            {"id": "evt_1", "type": "run.completed", "data": {"object": {"run_id": ""}}},
            "invalid run_id",
        ),
        (
            {"id": "evt_1", "type": "run.completed", "data": {"object": {"run_id": 12}}},
            "invalid run_id",
        ),
        (
            {"id": "evt_1", "type": "run.completed", "data": {"object": {"run_id": "r" * 129}}},
            "invalid run_id",
        ),
    ],
)
def test_unsafe_names_are_refused(doc, reason) -> None:
    with pytest.raises(MalformedEvent) as caught:
        parse_event(json.dumps(doc).encode())
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "malformed JSON"),
        (b'{"id": "evt_1", "type": "x"', "malformed JSON"),
        (b"[1, 2]", "JSON body is not an object"),
        (b'"evt_1"', "JSON body is not an object"),
        (b"\xff\xfe{}", "body is not UTF-8"),
        ('{"id":"evt_1","type":"x"}'.encode("utf-16"), "body is not UTF-8"),
        (b'\xef\xbb\xbf{"id":"evt_1","type":"x"}', "malformed JSON"),  # a BOM
        (b'{"id":"evt_1","id":"evt_2","type":"x"}', "malformed JSON"),  # two ids
        (b'{"id":"evt_1","type":"x","n":NaN}', "malformed JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "malformed JSON"),
    ],
)
def test_malformed_bodies_are_refused(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedEvent) as caught:
        parse_event(body)
    assert caught.value.reason == reason


def test_fields_of_the_wrong_type_read_as_absent() -> None:
    event = parse_event(
        json.dumps(
            {
                "id": "evt_1",
                "type": "x",
                "created": True,
                "livemode": "yes",
                "api_version": 3,
                "data": [],
            }
        ).encode()
    )
    assert (event.created, event.livemode, event.api_version, event.run_id) == (
        None,
        None,
        None,
        None,
    )


def test_store_event_refuses_a_hand_made_unsafe_event(store) -> None:
    for event in (
        ParsedEvent("../evt", "run.completed", None, None, None, None, b"{}"),
        ParsedEvent("evt_1", "a/b", None, None, None, None, b"{}"),
        ParsedEvent("evt_1", "run.completed", "../../manifests", None, None, None, b"{}"),
    ):
        with pytest.raises(ValueError, match="not a storable event"):
            Inbox(store).store_event(event, received_at=NOW)
    with pytest.raises(ValueError, match="timezone"):
        Inbox(store).store_event(_event(), received_at=NOW.replace(tzinfo=None))
    assert list(store.list("")) == []


# -- crashes between the writes ---------------------------------------------------------------


class FailingStore:
    """The real store, failing the first write whose key contains `fail_on` (a crash there)."""

    def __init__(self, inner, fail_on: str) -> None:
        self.inner, self.fail_on, self.uri = inner, fail_on, inner.uri

    def put_bytes(self, key, data, *, content_type=None):
        if self.fail_on and self.fail_on in key:
            self.fail_on = ""
            raise StoreError(f"simulated crash before writing {key}")
        self.inner.put_bytes(key, data, content_type=content_type)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_crash_between_claim_and_entry_is_healed_by_the_redelivery(store) -> None:
    event = _event("run.completed", "run-a")
    with pytest.raises(StoreError):
        Inbox(FailingStore(store, "/events/")).store_event(event, received_at=NOW)
    assert entry_keys(store) == []  # never acknowledged, so Spine delivers it again
    assert store.exists(webhook_id_key(event.event_id))
    again = Inbox(store).store_event(event, received_at=NOW + timedelta(seconds=30))
    assert not again.stored and again.key == webhook_event_key(NOW, event.event_id)
    assert entry_keys(store) == [again.key]
    assert store.get_bytes(again.key) == store.get_bytes(webhook_id_key(event.event_id))
    events, _ = Inbox(store).since(None, now=NOW + timedelta(minutes=1))
    assert [e.event_id for e in events] == [event.event_id]


def test_a_crash_after_the_marker_loses_nothing(store) -> None:
    original = _event("run.completed", "run-a")
    with pytest.raises(StoreError):
        Inbox(FailingStore(store, "/ids/")).store_event(original, received_at=NOW)
    assert store.exists(webhook_run_marker_key("run-a", "run.completed"))
    # Spine gives up on that delivery and resends under a new id: it counts as the first.
    resend = _event("run.completed", "run-a")
    result = Inbox(store).store_event(resend, received_at=NOW + timedelta(seconds=5))
    assert result.stored and not result.duplicate
    # And the original, delivered again after all, is stored too (at least once, never lost).
    late = Inbox(store).store_event(original, received_at=NOW + timedelta(seconds=6))
    assert late.stored and not late.duplicate
    events, _ = Inbox(store).since(None, now=NOW + timedelta(minutes=1))
    assert sorted(e.event_id for e in events) == sorted([original.event_id, resend.event_id])


def test_an_unreadable_claim_is_a_store_error_not_an_acknowledgement(store) -> None:
    event = _event("run.completed", "run-a")
    store.put_bytes(webhook_id_key(event.event_id), b"{planted")
    with pytest.raises(InboxCorrupt):
        Inbox(store).store_event(event, received_at=NOW)
    assert entry_keys(store) == []


# -- concurrent receivers ------------------------------------------------------------------------


def _race(n: int, work) -> list:
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


def test_concurrent_receivers_store_one_event_once(store) -> None:
    event = _event("run.completed", "run-a")
    results = _race(
        6,
        lambda i: Inbox(open_store(store.uri)).store_event(
            event, received_at=NOW + timedelta(milliseconds=i)
        ),
    )
    assert sum(r.stored for r in results) == 1
    assert len({r.key for r in results}) == 1
    assert entry_keys(store) == [results[0].key]
    assert [k for k in webhook_keys(store) if "/ids/" in k] == [webhook_id_key(event.event_id)]


def test_concurrent_resends_are_all_stored_one_first(store) -> None:
    events = [_event("run.failed", "run-a") for _ in range(5)]
    results = _race(
        5, lambda i: Inbox(open_store(store.uri)).store_event(events[i], received_at=NOW)
    )
    assert all(r.stored for r in results)
    marker = json.loads(store.get_bytes(webhook_run_marker_key("run-a", "run.failed")))
    first = marker["event_id"]
    by_id = {e.event_id: r for e, r in zip(events, results, strict=True)}
    assert not by_id[first].duplicate
    # A duplicate always points at the stored first event (never at an unstored one).
    assert {r.duplicate_of for r in results if r.duplicate} <= {first}
    assert len(entry_keys(store)) == 5


# -- reading back --------------------------------------------------------------------------------


def _store_at(inbox: Inbox, *times: datetime, run_id: str | None = None) -> list[str]:
    ids = []
    for at in times:
        event = _event("run.completed", run_id or f"run-{event_id()[-8:]}")
        inbox.store_event(event, received_at=at)
        ids.append(event.event_id)
    return ids


def test_since_returns_each_event_once_in_receive_order_across_hours(store) -> None:
    inbox = Inbox(store)
    times = [NOW - timedelta(hours=5), NOW - timedelta(seconds=1), NOW + timedelta(seconds=3)]
    ids = _store_at(inbox, *times)  # 05:59, 10:59:57 and 11:00:01: three hour partitions
    events, cursor = inbox.since(None, now=NOW + timedelta(seconds=5))
    assert [e.event_id for e in events] == ids
    assert [e.received_at for e in events] == times
    assert inbox.since(cursor, now=NOW + timedelta(seconds=6))[0] == []
    [new] = _store_at(inbox, NOW + timedelta(seconds=10))
    events, cursor = inbox.since(cursor, now=NOW + timedelta(seconds=11))
    assert [e.event_id for e in events] == [new]
    assert inbox.since(cursor, now=NOW + timedelta(hours=1))[0] == []


def test_an_entry_that_appears_late_is_still_returned(store) -> None:
    inbox = Inbox(store)
    _store_at(inbox, NOW)
    events, cursor = inbox.since(None, now=NOW + timedelta(seconds=1))
    assert len(events) == 1
    # A slow receiver (or one whose clock is behind) writes an entry received earlier.
    late_at = NOW + timedelta(seconds=1) - SETTLE + timedelta(seconds=5)
    [late] = _store_at(inbox, late_at)
    events, cursor = inbox.since(cursor, now=NOW + timedelta(seconds=2))
    assert [e.event_id for e in events] == [late]
    assert inbox.since(cursor, now=NOW + timedelta(minutes=30))[0] == []


def test_the_limit_never_skips_an_event(store) -> None:
    inbox = Inbox(store)
    ids = _store_at(inbox, *(NOW - timedelta(hours=2, seconds=i) for i in range(7, 0, -1)))
    got, cursor = [], None
    for _ in range(5):
        events, cursor = inbox.since(cursor, now=NOW, limit=3)
        got.extend(e.event_id for e in events)
    assert got == ids


def test_the_cursor_stays_small_and_a_bad_cursor_rereads_the_window(store) -> None:
    inbox = Inbox(store)
    ids = _store_at(inbox, NOW - timedelta(hours=1), NOW)
    _events, cursor = inbox.since(None, now=NOW)
    assert len(json.loads(cursor)["seen"]) == 1  # only what is after the settle mark
    for bad in (
        "garbage",
        "{}",
        '{"v": 2}',
        json.dumps({"v": 1, "mark": "x", "seen": []}),
        json.dumps({"v": 1, "mark": "2026504T1T1Z", "seen": []}),  # strptime would take it
        json.dumps({"v": 1, "mark": "99991231T235959000000Z", "seen": [1]}),
    ):
        again, _ = inbox.since(bad, now=NOW)
        assert [e.event_id for e in again] == ids


def test_events_older_than_the_lookback_are_not_read(store) -> None:
    inbox = Inbox(store)
    _store_at(inbox, NOW - LOOKBACK - timedelta(hours=2))
    recent = _store_at(inbox, NOW - LOOKBACK + timedelta(hours=2))
    events, _cursor = inbox.since(None, now=NOW)
    assert [e.event_id for e in events] == recent
    # An old cursor is clamped to the window too.
    old = json.dumps({"v": 1, "mark": "20200101T000000000000Z", "seen": []})
    assert [e.event_id for e in inbox.since(old, now=NOW)[0]] == recent


def test_planted_entries_are_skipped_and_not_read_again(store) -> None:
    inbox = Inbox(store)
    [real] = _store_at(inbox, NOW)
    junk = webhook_event_key(NOW, "evt_planted")
    store.put_bytes(junk, b"{not a record")
    # A real record copied under another event's key is refused too.
    copied = webhook_event_key(NOW, "evt_copied")
    store.put_bytes(copied, store.get_bytes(webhook_id_key(real)))
    store.put_bytes("ledger/webhooks/events/dt=2026-05-04/hour=10/notakey.json", b"{}")
    events, cursor = inbox.since(None, now=NOW)
    assert [e.event_id for e in events] == [real]
    assert inbox.since(cursor, now=NOW)[0] == []
    assert decode_record(store.get_bytes(webhook_id_key(real)), webhook_id_key(real)) is not None
    assert decode_record(store.get_bytes(copied), copied) is None
