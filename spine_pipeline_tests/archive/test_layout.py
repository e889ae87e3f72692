"""The archive layout: its key templates as documented, their parsers, and one shared scope.

The literal keys here are the one place the tests pin the documented layout
(docs/archive-format.md); every other test builds keys with `archive.layout`.
"""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, date, datetime, timedelta

import pytest

from spine_pipeline.archive import layout
from spine_pipeline.archive.arrow_schemas import TABLES
from spine_pipeline.archive.gc import collect_garbage
from spine_pipeline.archive.layout import (
    TableKey,
    abandoned_key,
    artifact_key,
    credit_report_key,
    key_dt,
    manifest_key,
    parse_abandoned_run_id,
    parse_artifact_key,
    parse_manifest_seq,
    parse_submission_day,
    parse_table_key,
    parse_webhook_event_key,
    submission_key,
    table_key,
    tracked_key,
    tracked_run_id,
    webhook_event_key,
    webhook_id_key,
    webhook_run_marker_key,
)
from spine_pipeline.archive.manifest import ArtifactEntry, FileEntry, Manifest, ManifestLog
from spine_pipeline.archive.stores import ObjectStore, open_store, validate_key
from spine_pipeline.archive.stores.s3 import LOCKED_PREFIXES
from spine_pipeline.archive.verify import verify_archive

SHA = hashlib.sha256(b"artifact bytes").hexdigest()
BATCH = "20261128T101500Z-3f2a9c1b7d4e"
TS = datetime(2026, 11, 28, 10, 15, 2, 123456, tzinfo=UTC)
#: A manifest name in Arabic-Indic digits: `\d` and `int()` accept them, the layout does not.
NON_ASCII_MANIFEST = "manifests/" + "\u0660" * 11 + "\u0662.json"


def test_templates_are_the_documented_layout() -> None:
    assert table_key("runs", "2026-11-28", BATCH) == f"tables/runs/dt=2026-11-28/{BATCH}.parquet"
    assert table_key("runs", date(2026, 11, 28), BATCH) == table_key("runs", "2026-11-28", BATCH)
    assert artifact_key(SHA) == f"artifacts/sha256/{SHA[:2]}/{SHA}"
    assert manifest_key(1) == "manifests/000000000001.json"
    assert manifest_key(42) == "manifests/000000000042.json"
    assert (
        submission_key(TS, "0123456789ab")
        == "ledger/submissions/dt=2026-11-28/20261128T101502123456Z-0123456789ab.json"
    )
    assert tracked_key(TS, "run-1") == "ledger/tracked/dt=2026-11-28/run-1.json"
    assert tracked_key(TS.date(), "run-1") == tracked_key(TS, "run-1")
    assert abandoned_key("run-1") == "ledger/abandoned/run-1.json"
    assert credit_report_key(TS) == "reports/credits/2026-11-28/credits-101502.html"
    assert (
        webhook_event_key(TS, "evt_1")
        == "ledger/webhooks/events/dt=2026-11-28/hour=10/20261128T101502123456Z-evt_1.json"
    )
    assert webhook_id_key("evt_1") == "ledger/webhooks/ids/evt_1.json"
    assert webhook_run_marker_key("run-1", "run.completed") == (
        "ledger/webhooks/runs/run-1/run.completed.json"
    )
    assert (
        credit_report_key(TS, microseconds=True)
        == "reports/credits/2026-11-28/credits-101502123456.html"
    )


@pytest.mark.parametrize("table", sorted(TABLES))
def test_table_keys_round_trip(table: str) -> None:
    key = table_key(table, "2026-11-28", BATCH)
    assert parse_table_key(key) == TableKey(table, "2026-11-28", BATCH)
    assert key_dt(key) == "2026-11-28"
    validate_key(key)


def test_other_keys_round_trip() -> None:
    assert parse_artifact_key(artifact_key(SHA)) == SHA
    for seq in (1, 42, 10**12 - 1):
        assert parse_manifest_seq(manifest_key(seq)) == seq
    assert parse_submission_day(submission_key(TS, "0123456789ab")) == "2026-11-28"
    assert tracked_run_id(tracked_key(TS, "run-1")) == "run-1"
    assert parse_abandoned_run_id(abandoned_key("run-1")) == "run-1"
    assert parse_webhook_event_key(webhook_event_key(TS, "evt_1")) == (
        "2026-11-28",
        "20261128T101502123456Z",
        "evt_1",
    )
    for key in (
        webhook_event_key(TS, "evt_1"),
        webhook_id_key("evt_1"),
        webhook_run_marker_key("run-1", "run.completed"),
        artifact_key(SHA),
        manifest_key(1),
        submission_key(TS, "0123456789ab"),
        tracked_key(TS, "run-1"),
        abandoned_key("run-1"),
        credit_report_key(TS),
    ):
        validate_key(key)  # no key collides with the store's reserved names
        assert not any(s.startswith(layout.TEMP_PREFIX) for s in key.split("/"))


@pytest.mark.parametrize(
    "key",
    [
        "manifests/1.json",
        "manifests/0000000000001.json",
        "manifests/000000000001.json.tmp",
        "manifests/x/000000000001.json",
        "000000000001.json",
        NON_ASCII_MANIFEST,
    ],
)
def test_only_manifest_keys_parse_as_manifests(key: str) -> None:
    assert parse_manifest_seq(key) is None


def test_parsers_refuse_keys_the_writer_does_not_make() -> None:
    assert parse_artifact_key(f"artifacts/sha256/zz/{SHA}") is None  # wrong fan-out directory
    assert parse_artifact_key(f"artifacts/sha256/{SHA[:2]}/{SHA.upper()}") is None
    assert parse_artifact_key(f"artifacts/{SHA[:2]}/{SHA}") is None
    assert parse_table_key("tables/runs/2026-11-28/b.parquet") is None
    assert parse_table_key("tables/runs/dt=2026-11-28/b.json") is None
    assert parse_table_key("tables/runs/dt=2026-11-28/x/b.parquet") is None
    assert key_dt("tables/runs/b.parquet") is None
    assert parse_submission_day(tracked_key(TS, "run-1")) is None
    assert parse_abandoned_run_id(tracked_key(TS, "run-1")) is None
    event = webhook_event_key(TS, "evt_1")
    for wrong in (
        event.replace("hour=10", "hour=11"),  # the hour disagrees with the receive time
        event.replace("dt=2026-11-28", "dt=2026-11-27"),
        event.replace("-evt_1", "-evt/1"),
        event.replace("-evt_1", "-evt.1"),
        event.replace("123456Z", "12345Z"),
        event.removesuffix(".json"),
        webhook_id_key("evt_1"),
    ):
        assert parse_webhook_event_key(wrong) is None, wrong


def test_manifest_key_order_is_commit_order() -> None:
    seqs = [1, 2, 9, 10, 11, 99, 100, 12345, 10**11]
    shuffled = random.Random(7).sample(seqs, len(seqs))
    assert sorted(manifest_key(s) for s in shuffled) == [manifest_key(s) for s in seqs]


def test_prefixes_cover_exactly_what_they_should() -> None:
    table = table_key("runs", "2026-11-28", BATCH)
    artifact, manifest = artifact_key(SHA), manifest_key(1)
    ledger = [
        submission_key(TS, "n"),
        tracked_key(TS, "r"),
        abandoned_key("r"),
        webhook_event_key(TS, "evt_1"),
        webhook_id_key("evt_1"),
        webhook_run_marker_key("r", "run.completed"),
    ]
    # verify's scope is every committed kind, and nothing outside the chain
    for key in (table, artifact, manifest):
        assert key.startswith(layout.CHAINED_PREFIXES), key
    for key in [*ledger, credit_report_key(TS)]:
        assert not key.startswith(layout.CHAINED_PREFIXES), key
        assert key.startswith((layout.LEDGER_PREFIX, layout.REPORTS_PREFIX))
    # S3 Object Lock holds the commit log and the evidence; table files stay collectable
    assert manifest.startswith(LOCKED_PREFIXES) and artifact.startswith(LOCKED_PREFIXES)
    assert not table.startswith(LOCKED_PREFIXES)
    assert not any(k.startswith(LOCKED_PREFIXES) for k in ledger)


def _commit_one_batch(store: ObjectStore) -> set[str]:
    """A committed batch written with the writer's own key templates; returns its keys."""
    table_bytes, artifact_bytes = b"parquet bytes", b"artifact bytes"
    table = table_key("blocks", "2026-11-28", BATCH)  # no runs file: the batch lists no runs
    store.put_bytes(table, table_bytes)
    store.put_bytes(artifact_key(SHA), artifact_bytes)
    log = ManifestLog(store)
    log.refresh()
    committed = log.commit(
        Manifest(
            seq=0,
            batch_id=BATCH,
            committed_at="",
            prev_sha256=None,
            schema_version="1",
            runs=(),
            files=(
                FileEntry(
                    table, "blocks", 0, len(table_bytes), hashlib.sha256(table_bytes).hexdigest()
                ),
            ),
            artifacts=(ArtifactEntry("run-1", "a-1", SHA, len(artifact_bytes), artifact_key(SHA)),),
        )
    )
    assert committed is not None
    return {table, artifact_key(SHA), manifest_key(1)}


def test_gc_and_verify_agree_with_the_writer_on_every_prefix(archive_uri: str) -> None:
    """`verify` reports exactly the strays under the chained prefixes; `gc` removes exactly
    those (all but the manifest area, which it never touches), and nothing else."""
    store = open_store(archive_uri)
    committed = _commit_one_batch(store)
    assert verify_archive(store).ok
    other_sha = hashlib.sha256(b"orphan").hexdigest()
    collectable = {
        table_key("blocks", "2026-11-27", "20261127T000000Z-000000000000"),  # crashed batch
        artifact_key(other_sha),  # its artifact
        "artifacts/legacy/x.bin",  # under the artifact area, outside the content addresses
    }
    never_collected = {NON_ASCII_MANIFEST, "manifests/notes.txt"}
    outside_chain = {
        tracked_key(TS, "run-9"),
        abandoned_key("run-9"),
        credit_report_key(TS),
        webhook_event_key(TS, "evt_9"),
        webhook_id_key("evt_9"),
        webhook_run_marker_key("run-9", "run.failed"),
    }
    for key in collectable | never_collected | outside_chain:
        store.put_bytes(key, b"stray")

    report = verify_archive(store)
    assert {p.key for p in report.warnings} == collectable  # uncommitted: WARN, exit 0
    assert {p.key for p in report.problems} == never_collected  # foreign in the commit log
    assert {p.kind for p in report.problems + report.warnings} == {"unlisted"}

    later = datetime.now(UTC) + timedelta(minutes=5)
    gc = collect_garbage(store, grace=timedelta(0), include_artifacts=True, now=later)
    assert set(gc.deleted) == collectable
    remaining = {i.key for i in store.list()}
    assert remaining == committed | never_collected | outside_chain
    assert {p.key for p in verify_archive(store).problems} == never_collected

    # Without include_artifacts, gc takes only the table area.
    store.put_bytes(artifact_key(other_sha), b"stray")
    store.put_bytes(table_key("runs", "2026-11-27", "x"), b"stray")
    gc = collect_garbage(store, grace=timedelta(0), now=later)
    assert gc.deleted == [table_key("runs", "2026-11-27", "x")]


def test_a_stray_non_ascii_manifest_name_is_unlisted_not_a_crash(archive_uri: str) -> None:
    """Regression: `\\d{12}` matched other scripts' digits, so verify looked for
    `manifests/000000000002.json` and crashed, and the log refused to load."""
    store = open_store(archive_uri)
    _commit_one_batch(store)
    strays = {NON_ASCII_MANIFEST, NON_ASCII_MANIFEST.replace("\u0662", "\u0661")}  # 2, and 1
    for key in strays:
        store.put_bytes(key, b"stray")
    report = verify_archive(store)
    assert {(p.kind, p.key) for p in report.problems} == {("unlisted", k) for k in strays}
    log = ManifestLog(store)
    assert [m.seq for m in log.refresh()] == [1]
