"""The archive against ground truth, on both backends: exactly once, byte for byte."""

import collections
import hashlib
import json

import pyarrow as pa
import pytest

from spine_pipeline.archive.arrow_schemas import TABLES
from spine_pipeline.archive.flatten.urls import redact_unparsed
from spine_pipeline.archive.layout import (
    CHAINED_PREFIXES,
    TABLE_PREFIX,
    manifest_key,
    parse_artifact_key,
    parse_manifest_seq,
    parse_table_key,
    table_key,
)
from spine_pipeline.archive.manifest import ManifestLog
from spine_pipeline.archive.verify import verify_archive
from spine_pipeline_tests.archive.conftest import ArchiveKit
from spine_pipeline_tests.fixtures.insider import plant

_EMPTY: pa.Table = TABLES["blocks"].empty_table()


def _rows(table, **where):
    rows = table.to_pylist()
    return [r for r in rows if all(r[k] == v for k, v in where.items())]


def test_archive_equals_ground_truth(kit):
    ids = kit.submit(
        "[scenario:completed] EU battery recycling report",
        "[scenario:partial] Vector database pricing",
        "[scenario:failed] Churn signals",
        "[scenario:odd-sources] [scenario:unknown-fields] Odd shapes",
        template="report",
    )
    ids += kit.submit("[scenario:completed] Board deck", template="slides")
    result = kit.archiver().archive(ids)
    assert [o.outcome for o in result.outcomes] == ["archived"] * len(ids)
    assert result.manifest.seq == 1
    tables = kit.tables()
    runs = {r["run_id"]: r for r in tables["runs"].to_pylist()}
    assert sorted(runs) == sorted(ids)
    for run_id in ids:
        truth = kit.sim.world.ground_truth(run_id)
        row = runs[run_id]
        assert row["status"] == truth.status
        assert row["credits_consumed"] == (truth.final_run.get("metadata") or {}).get(
            "credits_consumed"
        )
        assert row["final_output"] == (truth.final_run.get("result") or {}).get("final_output")
        # Unknown fields survive in raw_json; signed URLs do not.
        raw = json.loads(row["raw_json"])
        for art in (raw.get("result") or {}).get("artifacts") or []:
            assert "download_url" not in art
        if truth.dag is not None:
            blocks = sorted(_rows(tables["blocks"], run_id=run_id), key=lambda r: r["ordinal"])
            assert [b["block_id"] for b in blocks] == [n["id"] for n in truth.dag["nodes"]]
            for block, node in zip(blocks, truth.dag["nodes"], strict=True):
                assert block["content"] == node.get("content")  # byte-exact, whitespace kept
                if node.get("content") is not None:
                    assert (
                        block["content_sha256"]
                        == hashlib.sha256(node["content"].encode("utf-8")).hexdigest()
                    )
                assert json.loads(block["sources_json"]) == node.get("sources", [])
            edges = _rows(tables["edges"], run_id=run_id)
            assert sorted((e["source_id"], e["target_id"]) for e in edges) == sorted(
                (e["source_id"], e["target_id"]) for e in truth.dag["edges"]
            )
        if truth.tasks is not None:
            task_ids = [t["task_id"] for t in _rows(tables["tasks"], run_id=run_id)]
            stack = list(truth.tasks["completed"]) + list(truth.tasks["not_completed"])
            expected = []
            while stack:
                t = stack.pop()
                expected.append(t["task_id"])
                stack.extend(t.get("children") or [])
            assert collections.Counter(task_ids) == collections.Counter(expected)
        arts = {a["artifact_id"]: a for a in _rows(tables["artifacts"], run_id=run_id)}
        assert set(arts) == set(truth.artifacts)
        for art_id, art in truth.artifacts.items():
            assert arts[art_id]["sha256"] == art.sha256
            assert arts[art_id]["download_error"] is None
            stored = kit.store.get_bytes(arts[art_id]["storage_uri"])
            assert hashlib.sha256(stored).hexdigest() == art.sha256
    errors = tables["run_errors"].to_pylist()
    failed = [r for r in ids if kit.sim.world.ground_truth(r).status == "failed"]
    assert {e["run_id"] for e in errors} >= set(failed)
    assert verify_archive(kit.store).ok


def test_rearchive_is_idempotent(kit):
    ids = kit.submit("[scenario:completed] once", "[scenario:partial] twice")
    first = kit.archiver().archive(ids)
    again = kit.archiver().archive([*ids, ids[0]])
    assert first.manifest.seq == 1 and again.manifest is None
    assert [o.outcome for o in again.outcomes] == ["already_archived", "already_archived"]
    runs = kit.tables()["runs"]["run_id"].to_pylist()
    assert sorted(runs) == sorted(ids)


def test_not_terminal_and_unknown_runs_are_named_and_others_archived(kit):
    slow = kit.submit("[scenario:slow] never ends", wait=False)[0]
    done = kit.submit("[scenario:completed] finished")[0]
    missing = "00000000-0000-4000-8000-000000000000"
    result = kit.archiver().archive([slow, done, missing, "not-a-uuid"])
    outcome = {o.run_id: o for o in result.outcomes}
    assert outcome[done].outcome == "archived"
    assert outcome[slow].outcome == "not_terminal"
    assert outcome[missing].outcome == "failed" and "not found" in outcome[missing].message.lower()
    assert outcome["not-a-uuid"].outcome == "failed"
    assert kit.tables()["runs"]["run_id"].to_pylist() == [done]


def test_crash_before_commit_leaves_nothing_visible_and_rerun_commits_once(kit):
    ids = kit.submit("[scenario:completed] crash one", "[scenario:partial] crash two")

    def crash(files):
        assert files  # the data files are written at this point
        raise RuntimeError("injected crash between data files and manifest")

    with pytest.raises(RuntimeError, match="injected crash"):
        kit.archiver(before_commit=crash).archive(ids)
    log = ManifestLog(kit.store)
    log.refresh()
    assert log.manifests == []
    assert kit.tables() == {}
    report = verify_archive(kit.store)  # the crashed batch's files: warnings, not problems
    assert report.ok and report.warnings and {p.kind for p in report.warnings} == {"unlisted"}
    result = kit.archiver().archive(ids)
    assert [o.outcome for o in result.outcomes] == ["archived", "archived"]
    assert sorted(kit.tables()["runs"]["run_id"].to_pylist()) == sorted(ids)


def test_racing_archivers_take_consecutive_numbers_with_an_intact_chain(kit):
    a_ids = kit.submit("[scenario:completed] writer A")
    b_ids = kit.submit("[scenario:completed] writer B", "[scenario:partial] writer B2")
    state = {"raced": False}

    def let_b_win(files):
        if not state["raced"]:
            state["raced"] = True
            assert kit.archiver().archive(b_ids).manifest.seq == 1

    result = kit.archiver(before_commit=let_b_win).archive(a_ids)
    assert result.manifest.seq == 2
    log = ManifestLog(kit.store)
    log.refresh()
    assert [m.seq for m in log] == [1, 2]
    assert log.manifests[1].prev_sha256 == log.manifests[0].sha256
    assert sorted(kit.tables()["runs"]["run_id"].to_pylist()) == sorted(a_ids + b_ids)
    assert verify_archive(kit.store).ok


def test_the_same_run_archived_by_two_racing_writers_appears_once(kit):
    shared = kit.submit("[scenario:completed] shared run")
    own = kit.submit("[scenario:completed] only A")
    state = {"raced": False}

    def other_writer_commits_shared_first(files):
        if not state["raced"]:
            state["raced"] = True
            kit.archiver().archive(shared)

    result = kit.archiver(before_commit=other_writer_commits_shared_first).archive(shared + own)
    outcome = {o.run_id: o.outcome for o in result.outcomes}
    assert outcome == {shared[0]: "already_archived", own[0]: "archived"}
    runs = kit.tables()["runs"]["run_id"].to_pylist()
    assert sorted(runs) == sorted(shared + own)
    blocks = kit.tables()["blocks"].to_pylist()
    keys = [(b["run_id"], b["ordinal"]) for b in blocks]
    assert len(keys) == len(set(keys))


def test_a_run_another_writer_committed_before_our_log_caught_up_is_not_committed_again(kit):
    """The log can catch up between fetching a batch and committing it (a signing writer's
    checkpoint refreshes it); runs the newer manifests hold must leave the draft even when
    our commit then wins its sequence number outright (racing signing writers on S3 found
    this: a shared run in manifests 1 and 7)."""
    shared = kit.submit("[scenario:completed] shared run")
    own = kit.submit("[scenario:completed] only A")
    state = {"raced": False}

    def other_writer_commits_shared_and_we_catch_up(files):
        if not state["raced"]:
            state["raced"] = True
            assert kit.archiver().archive(shared).manifest.seq == 1
            archiver.log.refresh()

    archiver = kit.archiver(before_commit=other_writer_commits_shared_and_we_catch_up)
    result = archiver.archive(shared + own)
    outcome = {o.run_id: o.outcome for o in result.outcomes}
    assert outcome == {shared[0]: "already_archived", own[0]: "archived"}
    log = ManifestLog(kit.store)
    log.refresh()
    assert [list(m.run_ids) for m in log] == [shared, own]
    assert sorted(kit.tables()["runs"]["run_id"].to_pylist()) == sorted(shared + own)


def test_expired_url_is_refreshed_by_refetching_the_run(kit):
    run_id = kit.submit("[scenario:completed] expiring", template="report")[0]
    kit.sim.set_faults("download:expiredx1")
    result = kit.archiver().archive([run_id])
    assert result.outcomes[0].outcome == "archived"
    assert kit.sim.world.fault_counts.get("download:expired") == 1
    arts = kit.tables()["artifacts"].to_pylist()
    assert arts and all(a["download_error"] is None for a in arts)


def test_an_artifact_that_cannot_be_fetched_is_recorded_not_dropped(kit):
    run_id = kit.submit("[scenario:completed] never downloadable", template="report")[0]
    kit.sim.set_faults("download:expired")
    result = kit.archiver().archive([run_id])
    assert result.outcomes[0].outcome == "archived"
    assert result.outcomes[0].artifact_errors == result.outcomes[0].artifact_count > 0
    arts = kit.tables()["artifacts"].to_pylist()
    truth = kit.sim.world.ground_truth(run_id)
    assert {a["artifact_id"] for a in arts} == set(truth.artifacts)
    assert all(a["download_error"] and a["sha256"] is None for a in arts)


def test_transient_api_failures_leave_the_run_for_later(kit):
    run_id = kit.submit("[scenario:completed] flaky canvas")[0]
    kit.sim.set_faults("dag:503")
    result = kit.archiver().archive([run_id])
    assert result.outcomes[0].outcome == "failed" and result.manifest is None
    kit.sim.set_faults("")
    assert kit.archiver().archive([run_id]).outcomes[0].outcome == "archived"


@pytest.mark.parametrize(
    "scenario", ["canvas-404", "invalid-json", "bad-utf8", "duplicate-blocks", "size-mismatch"]
)
def test_persistently_odd_runs_are_archived_with_their_errors(kit, scenario):
    run_id = kit.submit(f"[scenario:{scenario}] [scenario:completed] odd")[0]
    other = kit.submit("[scenario:completed] innocent bystander")[0]
    result = kit.archiver().archive([run_id, other])
    outcome = {o.run_id: o for o in result.outcomes}
    assert outcome[other].outcome == "archived"
    assert outcome[run_id].outcome == "archived", outcome[run_id].message
    run_row = _rows(kit.tables()["runs"], run_id=run_id)[0]
    if scenario in ("canvas-404", "invalid-json"):
        assert run_row["fetch_errors"]
    if scenario == "size-mismatch":
        arts = _rows(kit.tables()["artifacts"], run_id=run_id)
        assert any("size mismatch" in (a["download_error"] or "") for a in arts)
    assert verify_archive(kit.store).ok


def test_a_dag_body_that_is_not_json_is_kept_verbatim_with_one_clear_error(kit):
    # docs/archive-format.md: kept verbatim (redacted) in dag_raw_json; nothing derived.
    run_id = kit.submit("[scenario:invalid-json] [scenario:completed] broken DAG")[0]
    assert kit.archiver().archive([run_id]).outcomes[0].outcome == "archived"
    tables = kit.tables()
    run_row = _rows(tables["runs"], run_id=run_id)[0]
    assert run_row["fetch_errors"] == [
        "dag: Malformed response: expected a JSON object (HTTP 200); "
        "body archived verbatim in dag_raw_json"
    ]
    truth = kit.sim.world.ground_truth(run_id)
    body = truth.dag_body.decode("utf-8")
    assert run_row["dag_raw_json"] == redact_unparsed(body)
    assert run_row["dag_raw_json"].endswith("<!-- upstream timeout -->")
    assert "sig=" not in run_row["dag_raw_json"]  # signed node urls lost their query string
    assert run_row["dag_raw_bytes"] is None  # the body was valid UTF-8
    assert run_row["block_count"] == 0 and not _rows(tables.get("blocks", _EMPTY), run_id=run_id)
    assert run_row["task_count"] == len(_rows(tables["tasks"], run_id=run_id)) > 0
    assert run_row["final_output"] == truth.final_run["result"]["final_output"]
    assert verify_archive(kit.store).ok


def test_big_and_small_paths_archive_the_same_tables(simulator, tmp_path):
    # The same simulator runs archived twice: once as usual, once with every string of 64
    # bytes or more carried as a BigString (decoded 16 bytes at a time).
    from spine_pipeline.spine import rawjson

    prompts = [
        "[scenario:odd-sources] [scenario:unknown-fields] [scenario:completed] shapes",
        "[scenario:bad-utf8] [scenario:completed] bytes",
        "[scenario:hostile-names] [scenario:partial] names",
        "[scenario:duplicate-blocks] [scenario:completed] duplicates",
        "[scenario:failed] failed",
    ]
    small = ArchiveKit(simulator, str(tmp_path / "small"))
    ids = small.submit(*prompts)
    assert all(o.outcome == "archived" for o in small.archiver().archive(ids).outcomes)
    big = ArchiveKit(simulator, str(tmp_path / "big"))
    saved = rawjson.BIG_STRING_BYTES, rawjson.CHUNK_BYTES
    rawjson.BIG_STRING_BYTES, rawjson.CHUNK_BYTES = 64, 16
    try:
        assert all(o.outcome == "archived" for o in big.archiver().archive(ids).outcomes)
    finally:
        rawjson.BIG_STRING_BYTES, rawjson.CHUNK_BYTES = saved
    varying = {"batch_id", "archived_at", "terminal_at", "downloaded_at"}

    def stable(kit: ArchiveKit) -> dict[str, list[dict]]:
        return {
            name: sorted(
                ({k: v for k, v in r.items() if k not in varying} for r in t.to_pylist()),
                key=repr,
            )
            for name, t in kit.tables().items()
        }

    got, expected = stable(big), stable(small)
    assert got == expected
    assert any("\ufffd" in (b["content"] or "") for b in expected["blocks"])


def test_hostile_names_never_escape_the_archive_root(kit, tmp_path_factory):
    run_id = kit.submit("[scenario:hostile-names] [scenario:completed] names", template="report")[0]
    result = kit.archiver().archive([run_id])
    assert result.outcomes[0].outcome == "archived"
    keys = [i.key for p in CHAINED_PREFIXES for i in kit.store.list(p)]
    assert keys and all(
        parse_table_key(k) or parse_artifact_key(k) or parse_manifest_seq(k) for k in keys
    )
    assert all(".." not in k.split("/") for k in keys)
    truth = kit.sim.world.ground_truth(run_id)
    names = {a["name"] for a in kit.tables()["artifacts"].to_pylist()}
    assert names == {a.name for a in truth.artifacts.values()}
    if not kit.uri.startswith("s3://"):
        from pathlib import Path

        root = Path(kit.uri).resolve()
        outside = [p for p in root.parent.rglob("*") if root not in p.parents and p != root]
        assert not any("passwd" in p.name or p.name == "x" for p in outside)


def test_tampering_is_detected_and_named(kit):
    ids = kit.submit("[scenario:completed] tamper target", template="report")
    kit.archiver().archive(ids)
    assert verify_archive(kit.store).ok
    log = ManifestLog(kit.store)
    log.refresh()
    manifest = log.manifests[0]
    parquet_key = manifest.files[0].key
    artifact_key = manifest.artifacts[0].key
    for key in (parquet_key, artifact_key, manifest_key(1)):
        original = kit.store.get_bytes(key)
        flipped = bytearray(original)
        flipped[len(flipped) // 2] ^= 0x01
        plant(kit.uri, key, bytes(flipped))
        report = verify_archive(kit.store)
        assert not report.ok
        # Named as the object, or (an edit that keeps the newest manifest canonical, such as
        # one hex digit of a listed hash) as the manifest whose claim no longer holds.
        assert any(p.key == key or key in p.detail for p in report.problems), [
            str(p) for p in report.problems
        ]
        plant(kit.uri, key, original)
    assert verify_archive(kit.store).ok


def test_verify_reports_missing_and_extra_objects(kit):
    ids = kit.submit("[scenario:completed] missing file")
    kit.archiver().archive(ids)
    log = ManifestLog(kit.store)
    log.refresh()
    victim = log.manifests[0].files[0].key
    kit.store.delete(victim)
    extra = table_key("runs", "2020-01-01", "extra")
    kit.store.put_bytes(extra, b"not committed")
    report = verify_archive(kit.store)
    assert ("missing", victim) in {(p.kind, p.key) for p in report.problems}
    assert ("unlisted", extra) in {(p.kind, p.key) for p in report.warnings}


KILLER = """
import os, signal, sys
from spine_pipeline.archive.archiver import Archiver
from spine_pipeline.archive.stores import open_store
from spine_pipeline.spine import AsyncSpineClient
uri, base, key, *ids = sys.argv[1:]
def die(files):
    os.kill(os.getpid(), signal.SIGKILL)  # after the data files, before the manifest
Archiver(open_store(uri), lambda: AsyncSpineClient(api_key=key, base_url=base),
         before_commit=die).archive(ids)
"""


def test_sigkill_between_data_files_and_manifest(kit):
    import subprocess
    import sys

    ids = kit.submit("[scenario:completed] killed one", "[scenario:partial] killed two")
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, kit.uri, kit.sim.base_url, kit.sim.api_key, *ids],
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert list(kit.store.list(TABLE_PREFIX))  # the batch's files were written...
    assert kit.tables() == {}  # ...but nothing is visible without its manifest
    result = kit.archiver().archive(ids)
    assert [o.outcome for o in result.outcomes] == ["archived", "archived"]
    assert sorted(kit.tables()["runs"]["run_id"].to_pylist()) == sorted(ids)
    from spine_pipeline.archive.gc import collect_garbage

    collected = collect_garbage(kit.store, grace=__import__("datetime").timedelta(0))
    assert collected.deleted and all(k.startswith(TABLE_PREFIX) for k in collected.deleted)
    assert verify_archive(kit.store).ok
