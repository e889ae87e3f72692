"""Submit assets: one run per materialisation, durably recorded; unknown outcomes fail loudly."""

import dagster as dg
import pytest

from spine_pipeline.catalog import load_catalog
from spine_pipeline.defs.names import submit_run_config


def _materialize(pipeline, name, confirm=True):
    job = pipeline.defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        instance=pipeline.instance,
        asset_selection=[dg.AssetKey(f"submit_{name}")],
        run_config={"ops": {f"submit_{name}": {"config": {"confirm": confirm}}}},
        raise_on_error=False,
    )


def test_materialize_all_without_confirmation_submits_nothing(pipeline):
    """The UI's "Materialize all" launches the global asset job over every asset with no
    run config: Dagster refuses it at config validation, before any step (or Spine) runs."""
    job = pipeline.defs.resolve_implicit_global_asset_job_def()
    graph = pipeline.defs.resolve_asset_graph()
    everything = [k for k in graph.get_all_asset_keys() if graph.get(k).is_materializable]
    assert dg.AssetKey("submit_eu_ai_act_memo") in everything
    with pytest.raises(dg.DagsterInvalidConfigError, match="confirm"):
        job.execute_in_process(instance=pipeline.instance, asset_selection=everything)
    assert pipeline.sim.world.created_count == 0
    assert pipeline.instance.get_runs() == []  # refused before a run existed
    # A single submit asset is refused the same way.
    with pytest.raises(dg.DagsterInvalidConfigError, match="confirm"):
        job.execute_in_process(
            instance=pipeline.instance, asset_selection=[dg.AssetKey("submit_eu_ai_act_memo")]
        )
    assert pipeline.sim.world.created_count == 0 and _submissions(pipeline) == []


def test_confirm_false_fails_before_calling_spine(pipeline):
    result = _materialize(pipeline, "eu_ai_act_memo", confirm=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "confirm: false" in failure.step_failure_data.user_failure_data.description
    assert pipeline.sim.world.created_count == 0 and _submissions(pipeline) == []


def test_submit_catalog_needs_the_confirmation_of_every_request(pipeline):
    names = [r.name for r in load_catalog("data/requests.yaml")]
    config = submit_run_config(names)
    assert dg.validate_run_config(pipeline.defs.resolve_job_def("submit_catalog"), config)
    with pytest.raises(dg.DagsterInvalidConfigError):  # the job alone is not a confirmation
        pipeline.defs.resolve_job_def("submit_catalog").execute_in_process(
            instance=pipeline.instance
        )
    # What the demo and the soak launch (`execute_submit_catalog`, run end to end by the
    # demo's test) confirms exactly these requests.
    assert pipeline.sim.world.created_count == 0


def _submissions(pipeline):
    return [doc for _, doc in pipeline.ledger.submissions()]


def test_materialisation_submits_records_and_tracks(pipeline):
    result = _materialize(pipeline, "board_deck_q3_pipeline")
    assert result.success
    (event,) = result.get_asset_materialization_events()
    meta = event.materialization.metadata
    run_id = meta["run_id"].value
    assert run_id in pipeline.sim.world.run_ids()
    assert meta["template"].value == "slides"
    assert "canvas" in meta and "submitted_at" in meta
    (record,) = _submissions(pipeline)
    assert record["outcome"] == "accepted" and record["run_id"] == run_id
    assert record["request_name"] == "board_deck_q3_pipeline"
    assert pipeline.ledger.find_tracked(run_id).request_name == "board_deck_q3_pipeline"
    # The attached CSV reached Spine byte for byte.
    truth = pipeline.sim.world.ground_truth(run_id)
    (entry,) = [r for r in load_catalog("data/requests.yaml") if r.name == "board_deck_q3_pipeline"]
    assert [f[2] for f in truth.uploads] == [p.read_bytes() for p in entry.files]


def test_unknown_outcome_fails_without_retry_and_is_recorded(pipeline):
    pipeline.sim.set_faults("create:500-afterx1")
    before = pipeline.sim.world.created_count
    result = _materialize(pipeline, "eu_ai_act_memo")
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "outcome unknown" in failure.event_specific_data.error.message
    # Spine created exactly one run; nothing retried it.
    assert pipeline.sim.world.created_count == before + 1
    assert pipeline.sim.world.fault_counts.get("create:500-after") == 1
    (record,) = _submissions(pipeline)
    assert record["outcome"] == "unknown" and record["run_id"] is None
    assert list(pipeline.ledger.tracked()) == []


def test_rejection_is_recorded_as_rejected(pipeline):
    pipeline.sim.set_faults("create:429")  # refused every time: provably never created
    result = _materialize(pipeline, "eu_ai_act_memo")
    assert not result.success
    (record,) = _submissions(pipeline)
    assert record["outcome"] == "rejected"
    assert pipeline.sim.world.created_count == 0
