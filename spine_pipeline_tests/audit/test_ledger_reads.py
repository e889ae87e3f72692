"""Refreshes read each write-once ledger record once, whatever the history (reliability 8.4).

A counting wrapper around the real local ObjectStore sees every GET; four refreshes (new
snapshot, copied spare, reused spare twice) must fetch every submission and tracking
record exactly once in all, while `inflight_runs` stays right.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from spine_pipeline.archive.layout import (
    ABANDONED_PREFIX,
    LEDGER_PREFIX,
    TRACKED_PREFIX,
    tracked_key,
)
from spine_pipeline.archive.ledger import Ledger, Submission
from spine_pipeline.archive.stores import ObjectInfo, ObjectStore, open_store
from spine_pipeline.audit import connect_readonly, rebuild_audit_db, refresh_audit_db
from spine_pipeline_tests.audit.conftest import World, rows


class CountingStore:
    """The real store, counting reads per key (GETs and streamed reads)."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.gets: Counter[str] = Counter()

    def get_bytes(self, key: str) -> bytes:
        self.gets[key] += 1
        return self.inner.get_bytes(key)

    def open_read(self, key: str) -> BinaryIO:
        self.gets[key] += 1
        return self.inner.open_read(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def url(self, key: str) -> str:
        return self.inner.url(key)

    def put_bytes(self, key: str, data: bytes, *, content_type: str | None = None) -> None:
        self.inner.put_bytes(key, data, content_type=content_type)

    def put_file(
        self, key: str, path: Path, *, sha256_hex: str, content_type: str | None = None
    ) -> None:
        self.inner.put_file(key, path, sha256_hex=sha256_hex, content_type=content_type)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def ledger_reads(self) -> Counter[str]:
        """Reads of ledger records since the last call."""
        got = Counter({k: n for k, n in self.gets.items() if k.startswith(LEDGER_PREFIX)})
        self.gets.clear()
        return got


def _inflight(db: Path) -> dict[str, str | None]:
    con = connect_readonly(db)
    try:
        return dict(rows(con, "SELECT run_id, request_name FROM inflight_runs"))
    finally:
        con.close()


def _submission(name: str) -> Submission:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return Submission(request_name=name, run_id=None, submitted_at=now, outcome="rejected")


def test_refreshes_fetch_each_ledger_record_once(
    world: World, archive_copy: Callable[[], tuple[str, Path]]
) -> None:
    uri, db = archive_copy()
    store = CountingStore(open_store(uri))
    ledger = Ledger(open_store(uri))  # writes bypass the counter
    expected = _inflight(world.db)
    assert expected  # the session world has runs in flight

    first = refresh_audit_db(uri, db, store=store)
    assert first.snapshot == "new"
    initial = store.ledger_reads()
    ledger_keys = {
        i.key for i in open_store(uri).list(LEDGER_PREFIX) if not i.key.startswith(ABANDONED_PREFIX)
    }
    assert set(initial) == ledger_keys and max(initial.values()) == 1
    assert _inflight(db) == expected

    # A garbage tracking record is read once too, and never shows up in flight.
    garbage = tracked_key(datetime.now(UTC), "garbage-run")
    open_store(uri).put_bytes(garbage, b"{not json")
    ledger.track("tracked-later-1", request_name="later")
    sub_key = ledger.record_submission(_submission("later"))
    second = refresh_audit_db(uri, db, store=store)
    assert second.snapshot == "copied" and second.submissions == 1
    new_keys = {garbage, sub_key} | {k for k in _tracked_keys(uri) if "tracked-later-1" in k}
    assert store.ledger_reads() == Counter(dict.fromkeys(new_keys, 1))
    expected["tracked-later-1"] = "later"
    assert _inflight(db) == expected

    # The reused spare is one refresh behind: it adopts what the published snapshot read.
    ledger.track("tracked-later-2")
    third = refresh_audit_db(uri, db, store=store)
    assert third.snapshot == "reused" and third.submissions == 0 and third.tracked_read == 1
    (key,) = store.ledger_reads()
    assert key.endswith("/tracked-later-2.json")
    expected["tracked-later-2"] = None
    assert _inflight(db) == expected

    # Nothing new: no ledger record is fetched at all; abandoning is seen from the listing.
    assert ledger.abandon("tracked-later-1", "test")
    fourth = refresh_audit_db(uri, db, store=store)
    assert fourth.snapshot == "reused" and fourth.tracked_read == 0
    assert store.ledger_reads() == Counter()
    del expected["tracked-later-1"]
    assert _inflight(db) == expected

    # A rebuild reads the archive alone (every record again) and agrees with the refreshes.
    rebuild_audit_db(uri, db, store=store)
    assert set(store.ledger_reads()) == ledger_keys | new_keys | {key}
    assert _inflight(db) == expected


def _tracked_keys(uri: str) -> list[str]:
    return [i.key for i in open_store(uri).list(TRACKED_PREFIX)]
