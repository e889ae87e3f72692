"""50 simulator runs through submit -> sensor -> batched archive runs -> audit, with faults."""

import hashlib
import json
import time

import dagster as dg

from spine_pipeline.archive.read import read_committed
from spine_pipeline.archive.verify import verify_archive
from spine_pipeline.audit import run_sql
from spine_pipeline.defs.archive import SPINE_RUN
from spine_pipeline.driver import tick_and_launch

SCENARIOS = ["completed", "partial", "failed", "odd-sources", "unknown-fields", "duplicate-blocks"]
TEMPLATES = ["report", "slides", "excel", "memo", "deep_research", "auto"]


def test_fifty_runs_end_to_end_equal_ground_truth(pipeline):
    ids = []
    for i in range(50):
        scenario = SCENARIOS[i % len(SCENARIOS)]
        ids += pipeline.submit(f"[scenario:{scenario}] run {i}", template=TEMPLATES[i % 6])
    pipeline.sim.set_faults(
        "get:429=0@0.05,get:503@0.05,get:drop@0.03,dag:503@0.05,tasks:malformed@0.05,"
        "download:expired@0.05,download:truncated@0.05,*:latency=30@0.05"
    )
    cursor, archive_runs, deadline = None, 0, time.monotonic() + 120
    refreshes = 0
    while time.monotonic() < deadline:
        tick = tick_and_launch(pipeline.defs, pipeline.instance, cursor, say=lambda _: None)
        cursor = tick.cursor
        archive_runs += len(tick.requested)
        refreshes += tick.refreshes
        committed = set(
            read_committed(pipeline.store, "runs", columns=["run_id"])["run_id"].to_pylist()
        )
        if committed >= set(ids) and tick.idle:  # archived, and the audit db caught up
            break
        time.sleep(0.3)
    pipeline.sim.set_faults("")

    runs = read_committed(pipeline.store, "runs").to_pylist()
    assert sorted(r["run_id"] for r in runs) == sorted(ids)  # every run, exactly once
    assert archive_runs < len(ids)  # batched, not one Dagster run per Spine run
    assert 1 <= refreshes <= archive_runs  # coalesced: never more refreshes than batches
    blocks = read_committed(pipeline.store, "blocks").to_pylist()
    artifacts = read_committed(pipeline.store, "artifacts").to_pylist()
    for run in runs:
        truth = pipeline.sim.world.ground_truth(run["run_id"])
        assert run["status"] == truth.status
        if truth.dag is not None:
            mine = sorted(
                (b for b in blocks if b["run_id"] == run["run_id"]), key=lambda b: b["ordinal"]
            )
            assert [b["content"] for b in mine] == [n.get("content") for n in truth.dag["nodes"]]
            assert [json.loads(b["sources_json"]) for b in mine] == [
                n.get("sources", []) for n in truth.dag["nodes"]
            ]
        got = {a["artifact_id"]: a["sha256"] for a in artifacts if a["run_id"] == run["run_id"]}
        assert got == {k: v.sha256 for k, v in truth.artifacts.items()}
    for a in artifacts:
        assert hashlib.sha256(pipeline.store.get_bytes(a["storage_uri"])).hexdigest() == a["sha256"]
    assert verify_archive(pipeline.store).ok

    # The audit database was refreshed by the runs the sensor requested, and agrees.
    _, rows = run_sql(pipeline.audit_db, "select count(*), sum(credits_consumed) from runs")
    expected_credits = sum(
        (pipeline.sim.world.ground_truth(r).final_run.get("metadata") or {}).get(
            "credits_consumed", 0
        )
        for r in ids
    )
    assert rows[0] == (50, expected_credits)

    # Each Spine run is its own partition, with a materialisation and its check verdicts.
    partitions = pipeline.instance.get_dynamic_partitions("spine_runs")
    assert set(partitions) == set(ids)
    records = pipeline.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=SPINE_RUN), limit=200
    ).records
    assert {r.partition_key for r in records} == set(ids)
    meta = records[0].asset_materialization.metadata
    assert {"status", "credits_consumed", "block_count", "artifact_count", "canvas"} <= set(meta)
    assert {"check_counts_match_api", "check_artifacts_downloaded"} <= set(meta)
