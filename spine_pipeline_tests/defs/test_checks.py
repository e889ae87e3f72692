"""Each asset check passes on a faithful archive and fails when the archive is wrong.

At archive time the checks are evaluated once per batch (on `archive_batch`, naming failing
runs) and each run's verdict is in its `spine_run` materialisation; `recheck_spine_runs`
evaluates them per partition on demand.
"""

import dagster as dg
import pyarrow.compute as pc

from spine_pipeline.archive import archiver as archiver_module
from spine_pipeline.defs.archive import SPINE_RUN
from spine_pipeline.defs.names import AUDIT_JOB
from spine_pipeline.driver import tick_and_launch

BATCH = dg.AssetKey("archive_batch")


def _archive(pipeline, *prompts):
    ids = pipeline.submit(*prompts)
    pipeline.wait_terminal(ids)
    tick = tick_and_launch(pipeline.defs, pipeline.instance, None, say=lambda _: None)
    assert sorted(r for b in tick.requested for r in b) == sorted(ids)
    return ids


def _latest(pipeline, check):
    """The newest batch-level evaluation of `check` on archive_batch."""
    (record,) = pipeline.instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(BATCH, check), limit=1
    )
    return record.event.asset_check_evaluation


def _verdict(pipeline, check, run_id):
    """The run's own verdict, from its spine_run materialisation."""
    (record,) = pipeline.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=SPINE_RUN, asset_partitions=[run_id]), limit=1
    ).records
    return record.asset_materialization.metadata[f"check_{check}"].value


def test_checks_pass_on_a_faithful_archive(pipeline):
    (run_id,) = _archive(pipeline, "[scenario:completed] faithful")
    for check in ("counts_match_api", "artifacts_downloaded"):
        evaluation = _latest(pipeline, check)
        assert evaluation.passed
        assert evaluation.metadata["runs_checked"].value == 1
        assert evaluation.metadata["runs_failed"].value == 0
        assert _verdict(pipeline, check, run_id) == "pass"


def test_counts_check_fails_when_rows_go_missing(pipeline, monkeypatch):
    real = archiver_module.flatten_batch_by_dt

    def drop_one_block(runs, ctx):
        out = real(runs, ctx)
        for tables in out.values():
            blocks = tables["blocks"]
            keep = pc.not_equal(blocks["ordinal"], 0)
            tables["blocks"] = blocks.filter(keep)
        return out

    monkeypatch.setattr(archiver_module, "flatten_batch_by_dt", drop_one_block)
    (run_id,) = _archive(pipeline, "[scenario:completed] lossy flattening")
    evaluation = _latest(pipeline, "counts_match_api")
    assert not evaluation.passed
    assert evaluation.metadata["runs_failed"].value == 1
    assert f"`{run_id}`: blocks: archived" in evaluation.metadata["failures"].value
    assert _verdict(pipeline, "counts_match_api", run_id).startswith("FAIL: blocks: archived")


def test_artifact_check_fails_when_a_download_fails(pipeline):
    pipeline.sim.set_faults("download:expired")
    (run_id,) = _archive(pipeline, "[scenario:completed] expired artifacts")
    pipeline.sim.set_faults("")
    evaluation = _latest(pipeline, "artifacts_downloaded")
    assert not evaluation.passed
    assert "URL refused" in evaluation.metadata["failures"].value
    assert "URL refused" in _verdict(pipeline, "artifacts_downloaded", run_id)
    assert _latest(pipeline, "counts_match_api").passed
    assert _verdict(pipeline, "counts_match_api", run_id) == "pass"


def test_a_batch_check_names_only_the_failing_runs(pipeline, monkeypatch):
    real = archiver_module.flatten_batch_by_dt
    ids = pipeline.submit("[scenario:completed] kept whole", "[scenario:completed] loses a block")
    pipeline.wait_terminal(ids)

    def drop_a_block_of_the_second(runs, ctx):
        out = real(runs, ctx)
        for tables in out.values():
            blocks = tables["blocks"]
            keep = pc.or_(
                pc.not_equal(blocks["run_id"], ids[1]), pc.not_equal(blocks["ordinal"], 0)
            )
            tables["blocks"] = blocks.filter(keep)
        return out

    monkeypatch.setattr(archiver_module, "flatten_batch_by_dt", drop_a_block_of_the_second)
    tick_and_launch(pipeline.defs, pipeline.instance, None, say=lambda _: None)
    evaluation = _latest(pipeline, "counts_match_api")
    assert not evaluation.passed
    assert evaluation.metadata["runs_checked"].value == 2
    assert evaluation.metadata["runs_failed"].value == 1
    assert ids[1] in evaluation.metadata["failures"].value
    assert ids[0] not in evaluation.metadata["failures"].value
    assert _verdict(pipeline, "counts_match_api", ids[0]) == "pass"


def test_on_demand_check_rereads_the_archive(pipeline):
    (run_id,) = _archive(pipeline, "[scenario:completed] recheck me")
    job = pipeline.defs.resolve_job_def("recheck_spine_runs")
    outcome = job.execute_in_process(
        instance=pipeline.instance, tags={"dagster/partition": run_id}, raise_on_error=False
    )
    evaluations = [e for e in outcome.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert {e.event_specific_data.check_name for e in evaluations} == {
        "counts_match_api",
        "artifacts_downloaded",
    }
    assert all(e.event_specific_data.passed for e in evaluations)


def test_overdue_check_passes_then_warns_on_a_run_in_flight_for_hours(pipeline):
    from datetime import UTC, datetime, timedelta

    job = pipeline.defs.resolve_job_def(AUDIT_JOB)

    def overdue_evaluation():
        result = job.execute_in_process(instance=pipeline.instance)
        (evaluation,) = [
            e.event_specific_data
            for e in result.all_events
            if e.event_type_value == "ASSET_CHECK_EVALUATION"
            and e.event_specific_data.check_name == "no_overdue_runs"
        ]
        return evaluation

    assert overdue_evaluation().passed
    from spine_pipeline.spine import SpineClient

    with SpineClient(api_key=pipeline.sim.api_key, base_url=pipeline.sim.base_url) as client:
        slow = client.create_run("[scenario:slow] stuck for hours").run_id
    four_hours_ago = datetime.now(UTC) - timedelta(hours=4)
    assert pipeline.ledger.track(slow, submitted_at=four_hours_ago, now=four_hours_ago)
    evaluation = overdue_evaluation()
    assert not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.WARN
    assert slow in evaluation.metadata["oldest"].value
