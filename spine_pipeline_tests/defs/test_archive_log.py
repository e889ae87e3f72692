"""Verifiable history in Dagster: each batch's checkpoint in its metadata, and the
`archive_log_consistent_with_witness` check against rollback and fork (both backends)."""

import dagster as dg
import pytest

from spine_pipeline.archive.layout import checkpoint_key, manifest_key
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.signing import SigningKey, generate_keypair
from spine_pipeline.defs.archive import SPINE_RUN
from spine_pipeline.defs.names import (
    ARCHIVE_BATCH_OP,
    ARCHIVE_JOB,
    ARCHIVE_LOG_CHECK,
    ARCHIVE_LOG_JOB,
    archive_run_config,
)
from spine_pipeline.driver import execute_run

BATCH = dg.AssetKey(ARCHIVE_BATCH_OP)
CHECKPOINT_FIELDS = ("checkpoint_size", "checkpoint_root", "checkpoint_time", "checkpoint_key_ids")


@pytest.fixture
def key(monkeypatch):
    """SPINE_SIGNING_KEY as PEM text; the key."""
    private, _ = generate_keypair()
    monkeypatch.setenv("SPINE_SIGNING_KEY", private.decode())
    return SigningKey.from_pem(private)


@pytest.fixture
def witness(any_pipeline, tmp_path, monkeypatch):
    """SPINE_WITNESS_URI: another prefix of the bucket on S3, another directory locally."""
    uri = any_pipeline.archive_uri
    witness = uri.rsplit("/", 1)[0] + "/witness" if uri.startswith("s3://") else str(tmp_path / "w")
    monkeypatch.setenv("SPINE_WITNESS_URI", witness)
    return witness


def _archive(pipeline, *prompts):
    ids = pipeline.submit(*prompts)
    pipeline.wait_terminal(ids)
    result = execute_run(pipeline.defs, pipeline.instance, ARCHIVE_JOB, archive_run_config(ids), {})
    assert result.success
    return ids


def _materialization(pipeline, asset, partition=None):
    (record,) = pipeline.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset, asset_partitions=[partition] if partition else None),
        limit=1,
    ).records
    return record.asset_materialization.metadata


def _check(pipeline):
    result = execute_run(pipeline.defs, pipeline.instance, ARCHIVE_LOG_JOB, {}, {})
    assert result.success
    (evaluation,) = [
        e.event_specific_data
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    assert evaluation.asset_key == SPINE_RUN and evaluation.check_name == ARCHIVE_LOG_CHECK
    return evaluation


def _roll_back(pipeline, size):
    """Delete the newest manifest and its checkpoint: a shorter log that verifies alone."""
    pipeline.store.delete(manifest_key(size))
    pipeline.store.delete(checkpoint_key(size))


def test_a_signed_batch_carries_its_checkpoint(any_pipeline, key, witness):
    (run_id,) = _archive(any_pipeline, "[scenario:completed] signed")
    log = ManifestLog(any_pipeline.store)
    log.refresh()
    for metadata in (
        _materialization(any_pipeline, SPINE_RUN, run_id),
        _materialization(any_pipeline, BATCH),
    ):
        assert metadata["checkpoint_size"].value == 1
        assert metadata["checkpoint_root"].value == log.tree.root().hex()
        assert metadata["checkpoint_key_ids"].value == key.key_id
        assert metadata["checkpoint_time"].value.endswith("Z")
        link = metadata["checkpoint"].value
        assert link == any_pipeline.store.url(checkpoint_key(1))
        assert any_pipeline.store.exists(checkpoint_key(1))


def test_an_unsigned_batch_says_so(any_pipeline, monkeypatch):
    monkeypatch.delenv("SPINE_SIGNING_KEY", raising=False)
    (run_id,) = _archive(any_pipeline, "[scenario:completed] unsigned")
    for metadata in (
        _materialization(any_pipeline, SPINE_RUN, run_id),
        _materialization(any_pipeline, BATCH),
    ):
        assert metadata["checkpoint"].value == "unsigned: set SPINE_SIGNING_KEY"
        assert not set(CHECKPOINT_FIELDS) & set(metadata)


def test_the_check_passes_on_a_clean_archive_with_a_witness(any_pipeline, key, witness):
    _archive(any_pipeline, "[scenario:completed] first")
    _archive(any_pipeline, "[scenario:completed] second")
    evaluation = _check(any_pipeline)
    assert evaluation.passed, evaluation.description
    assert evaluation.metadata["archive_size"].value == 2
    log = ManifestLog(any_pipeline.store)
    log.refresh()
    assert evaluation.metadata["archive_root"].value == log.tree.root().hex()
    assert evaluation.metadata["witness_sizes"].value == {witness: 2}


def test_the_check_fails_on_a_rolled_back_archive(any_pipeline, key, witness):
    _archive(any_pipeline, "[scenario:completed] rolled back")
    _roll_back(any_pipeline, 1)
    evaluation = _check(any_pipeline)
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.description.startswith(f"witness {witness}: rollback:")
    assert evaluation.metadata["archive_size"].value == 0
    assert evaluation.metadata["witness_sizes"].value == {witness: 1}


def test_the_check_fails_on_a_forked_archive(any_pipeline, key, witness, monkeypatch):
    _archive(any_pipeline, "[scenario:completed] original history")
    _roll_back(any_pipeline, 1)
    monkeypatch.delenv("SPINE_WITNESS_URI")  # a writer that does not ask the witness
    _archive(any_pipeline, "[scenario:completed] another history")
    monkeypatch.setenv("SPINE_WITNESS_URI", witness)
    evaluation = _check(any_pipeline)
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.description.startswith(f"witness {witness}: fork:")
    assert evaluation.metadata["archive_size"].value == 1


def test_the_check_fails_on_a_checkpoint_no_verify_key_signed(
    any_pipeline, key, witness, monkeypatch
):
    _archive(any_pipeline, "[scenario:completed] signed by the writer")
    monkeypatch.setenv("SPINE_VERIFY_KEY", generate_keypair()[1].decode())  # another key
    evaluation = _check(any_pipeline)
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.description.startswith(f"{checkpoint_key(1)}: ")
    assert "no signature on the note is from a known key" in evaluation.description


def test_the_check_warns_without_a_witness(any_pipeline, key, monkeypatch):
    monkeypatch.delenv("SPINE_WITNESS_URI", raising=False)
    _archive(any_pipeline, "[scenario:completed] unwitnessed")
    evaluation = _check(any_pipeline)
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.WARN
    assert "set SPINE_WITNESS_URI" in evaluation.description
    assert evaluation.metadata["witness_sizes"].value == {}


def test_the_check_warns_until_the_log_is_checkpointed_and_witnessed(
    any_pipeline, tmp_path, monkeypatch
):
    monkeypatch.delenv("SPINE_SIGNING_KEY", raising=False)
    monkeypatch.delenv("SPINE_WITNESS_URI", raising=False)
    _archive(any_pipeline, "[scenario:completed] before the key")
    monkeypatch.setenv("SPINE_SIGNING_KEY", generate_keypair()[0].decode())
    witness = str(tmp_path / "witness")
    monkeypatch.setenv("SPINE_WITNESS_URI", witness)
    evaluation = _check(any_pipeline)
    assert (evaluation.passed, evaluation.severity) == (False, dg.AssetCheckSeverity.WARN)
    assert evaluation.description.startswith("none of the log's 1 manifests is checkpointed")

    monkeypatch.delenv("SPINE_WITNESS_URI")
    _archive(any_pipeline, "[scenario:completed] signed, not witnessed")
    monkeypatch.setenv("SPINE_WITNESS_URI", witness)
    evaluation = _check(any_pipeline)
    assert (evaluation.passed, evaluation.severity) == (False, dg.AssetCheckSeverity.WARN)
    assert evaluation.description == f"witness {witness} holds no checkpoint of this log yet"

    _archive(any_pipeline, "[scenario:completed] witnessed")
    evaluation = _check(any_pipeline)
    assert evaluation.passed, evaluation.description
    assert evaluation.metadata["witness_sizes"].value == {witness: 3}


def test_the_check_fails_on_a_verify_key_that_does_not_load(any_pipeline, monkeypatch):
    monkeypatch.setenv("SPINE_VERIFY_KEY", "/nonexistent/spine-verify.pem")
    evaluation = _check(any_pipeline)
    assert (evaluation.passed, evaluation.severity) == (False, dg.AssetCheckSeverity.ERROR)
    assert evaluation.description == (
        "SPINE_VERIFY_KEY: no such file: '/nonexistent/spine-verify.pem'"
    )
