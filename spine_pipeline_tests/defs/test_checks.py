"""Each asset check passes on a faithful archive and fails when the archive is wrong."""

import dagster as dg
import pyarrow.compute as pc

from spine_pipeline.archive import archiver as archiver_module
from spine_pipeline.defs.archive import SPINE_RUN
from spine_pipeline.demo import tick_and_archive


def _archive(pipeline, *prompts):
    ids = pipeline.submit(*prompts)
    pipeline.wait_terminal(ids)
    tick = tick_and_archive(pipeline.defs, pipeline.instance, None, say=lambda _: None)
    assert sorted(r for b in tick.requested for r in b) == sorted(ids)
    return ids


def _latest(pipeline, check, run_id):
    records = pipeline.instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(SPINE_RUN, check), limit=50
    )
    for record in records:
        evaluation = record.event.asset_check_evaluation
        if evaluation.partition == run_id:
            return evaluation
    raise AssertionError(f"no {check} evaluation for {run_id}")


def test_checks_pass_on_a_faithful_archive(pipeline):
    (run_id,) = _archive(pipeline, "[scenario:completed] faithful")
    for check in ("counts_match_api", "artifacts_downloaded"):
        assert _latest(pipeline, check, run_id).passed


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
    evaluation = _latest(pipeline, "counts_match_api", run_id)
    assert not evaluation.passed
    assert "blocks: archived" in evaluation.metadata["detail"].value


def test_artifact_check_fails_when_a_download_fails(pipeline):
    pipeline.sim.set_faults("download:expired")
    (run_id,) = _archive(pipeline, "[scenario:completed] expired artifacts")
    pipeline.sim.set_faults("")
    evaluation = _latest(pipeline, "artifacts_downloaded", run_id)
    assert not evaluation.passed
    assert "URL refused" in evaluation.metadata["detail"].value
    assert _latest(pipeline, "counts_match_api", run_id).passed


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

    job = pipeline.defs.resolve_job_def("archive_spine_runs")
    config = {"ops": {"archive_batch": {"config": {"run_ids": []}}}}

    def overdue_evaluation():
        result = job.execute_in_process(instance=pipeline.instance, run_config=config)
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
