"""The run page in Dagster (issue 16): with a local archive each `spine_run` materialisation
links to the run's offline page, written under the instance's directory; with S3 the metadata
says why there is none; a page that cannot be written never fails the batch."""

import stat
from pathlib import Path

import dagster as dg

from spine_pipeline.defs import archive as archive_defs
from spine_pipeline.defs.archive import SPINE_RUN
from spine_pipeline.defs.names import ARCHIVE_JOB, archive_run_config
from spine_pipeline.driver import execute_run
from spine_pipeline.evidence import load_run_data, render_page_bytes


def _archive(pipeline, *prompts):
    ids = pipeline.submit(*prompts)
    pipeline.wait_terminal(ids)
    result = execute_run(pipeline.defs, pipeline.instance, ARCHIVE_JOB, archive_run_config(ids), {})
    assert result.success
    return ids


def _metadata(pipeline, run_id):
    (record,) = pipeline.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=SPINE_RUN, asset_partitions=[run_id]), limit=1
    ).records
    return record.asset_materialization.metadata


def test_each_archived_run_links_to_its_page(any_pipeline, umask_022):
    ids = _archive(any_pipeline, "[scenario:partial] page one", "[scenario:completed] page two")
    pages = Path(any_pipeline.instance.root_directory) / "spine-show"
    for run_id in ids:
        page = _metadata(any_pipeline, run_id)["page"]
        if any_pipeline.archive_uri.startswith("s3://"):
            assert (
                page.value
                == f"not written: the archive is not local (spine-pipeline show {run_id})"
            )
            continue
        assert isinstance(page, dg.PathMetadataValue)
        path = Path(page.value)
        assert path == pages / f"{run_id}.html"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(pages.stat().st_mode) == 0o700
        # The run's own page, as `show` renders it from the committed files.
        data = load_run_data(any_pipeline.store, run_id)
        assert path.read_bytes() == render_page_bytes(data, artifact_links=False)
    if any_pipeline.archive_uri.startswith("s3://"):
        assert not pages.exists()
    else:
        assert sorted(p.name for p in pages.iterdir()) == sorted(f"{r}.html" for r in ids)


def test_a_page_that_cannot_be_written_does_not_fail_the_batch(pipeline):
    blocker = Path(pipeline.instance.root_directory) / "spine-show"
    blocker.write_text("a file where the pages' directory should be")
    (run_id,) = _archive(pipeline, "[scenario:completed] no page")
    metadata = _metadata(pipeline, run_id)
    assert (
        metadata["page"].value == f"not written: refusing to write into {blocker}: not a directory"
    )
    assert metadata["manifest_seq"].value == 1  # archived all the same
    assert blocker.read_text().startswith("a file")


def test_pages_stop_when_the_batch_budget_is_used(pipeline, monkeypatch):
    monkeypatch.setattr(archive_defs, "PAGE_BUDGET_SECONDS", -1.0)
    (run_id,) = _archive(pipeline, "[scenario:completed] over budget")
    page = _metadata(pipeline, run_id)["page"].value
    assert page == (
        f"not written: the batch's -1 s for pages are used up (spine-pipeline show {run_id})"
    )
    assert not (Path(pipeline.instance.root_directory) / "spine-show").exists()
