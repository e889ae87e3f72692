"""The run page in Dagster (issue 16, made lazy in issue 20): each `spine_run`
materialisation names the command that writes the run's offline page; the archive run renders
no page (rendering cost more CPU than archiving the run), and the named command writes the
run's own page from the committed files, on both backends."""

import shlex
from pathlib import Path

import dagster as dg
from click.testing import CliRunner

from spine_pipeline.cli import main
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


def test_each_archived_run_names_the_command_that_writes_its_page(any_pipeline, tmp_path):
    ids = _archive(any_pipeline, "[scenario:partial] page one", "[scenario:completed] page two")
    for run_id in ids:
        page = _metadata(any_pipeline, run_id)["page"]
        assert isinstance(page, dg.TextMetadataValue)
        assert page.value == f"spine-pipeline show {run_id}"
        # The command as named, run against the pipeline's archive (its environment),
        # writes the run's own page, as rendered from the committed files.
        out = tmp_path / f"{run_id}.html"
        argv = shlex.split(page.value)
        assert argv[0] == "spine-pipeline"
        result = CliRunner().invoke(main, [*argv[1:], "--out", str(out)])
        assert result.exit_code == 0, result.output
        data = load_run_data(any_pipeline.store, run_id)
        assert out.read_bytes() == render_page_bytes(data, artifact_links=False)


def test_the_archive_run_renders_no_page(pipeline, monkeypatch):
    """Rendering is off the archive path: a renderer that fails does not touch the batch, and
    nothing is written beside the instance or the archive."""
    import spine_pipeline.evidence.page as page_module
    import spine_pipeline.evidence.show as show_module

    def no_render(*args, **kwargs):
        raise AssertionError("the archive run rendered a page")

    for module in (page_module, show_module):
        monkeypatch.setattr(module, "render_page_bytes", no_render)
    (run_id,) = _archive(pipeline, "[scenario:completed] no page rendered")
    assert _metadata(pipeline, run_id)["manifest_seq"].value == 1
    home = Path(pipeline.instance.root_directory)
    archive_parent = Path(pipeline.archive_uri).parent
    assert not (home / "spine-show").exists()
    assert not (archive_parent / "spine-show").exists()
