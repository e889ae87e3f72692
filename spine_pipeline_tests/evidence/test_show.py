"""`spine-pipeline show`: simulator -> archive (both backends) -> page -> headless Chromium."""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from spine_pipeline.cli import main
from spine_pipeline.evidence import load_run_data
from spine_pipeline.evidence.page import BLOCK_TEXT_MAX_BYTES, PAGE_TEXT_BUDGET_BYTES
from spine_pipeline_tests.evidence.conftest import dom_text, pixel_variety


def _show(uri: str, *args: str):
    return CliRunner().invoke(main, ["show", *args], env={"SPINE_ARCHIVE_URI": uri})


def _words(text: str, n: int = 25) -> list[str]:
    """Plain words of Markdown source, which must survive rendering as text."""
    return [w for w in re.findall(r"[A-Za-z]{4,}", text)][:n]


def _sections(dom: str) -> dict[int, str]:
    """Each block's article in the DOM, by ordinal."""
    parts = re.split(r'(?=<article class="block" id="block-\d+")', dom)
    out = {}
    for part in parts:
        m = re.match(r'<article class="block" id="block-(\d+)"', part)
        if m:
            out[int(m.group(1))] = part.split("</article>")[0]
    return out


def test_show_renders_archived_runs_in_chromium(kit, chromium, tmp_path: Path, umask_022) -> None:
    ids = kit.submit(
        "[scenario:partial] Evidence for the auditors",
        "[scenario:hostile-names] Names that look like paths",
    )
    assert kit.archiver().archive(ids).ok
    for run_id in ids:
        out = tmp_path / f"{run_id}.html"
        result = _show(kit.uri, run_id, "--out", str(out))
        assert result.exit_code == 0, result.output
        assert result.output.strip() == str(out.absolute())
        assert stat.S_IMODE(out.stat().st_mode) == 0o600  # archived content: owner only
        data = load_run_data(kit.store, run_id)

        run = chromium(out, "--dump-dom")
        assert run.returncode == 0, run.stderr[-2000:]
        dom = run.stdout
        # Exactly one SVG node per block, each linking to its block.
        assert dom.count('<a class="node"') == len(data.blocks) > 0
        hrefs = re.findall(r'<a class="node" href="#block-(\d+)"', dom)
        assert sorted(map(int, hrefs)) == [b.ordinal for b in data.blocks]
        # Every block's content, as text, in its own section.
        sections = _sections(dom)
        assert sorted(sections) == [b.ordinal for b in data.blocks]
        for b in data.blocks:
            text = dom_text(sections[b.ordinal])
            for word in _words(b.content or ""):
                assert word in text, (b.ordinal, word)
        assert "<script" not in dom and "<img" not in dom

        shot = tmp_path / f"{run_id}.png"
        run = chromium(out, f"--screenshot={shot}")
        assert shot.exists(), run.stderr[-2000:]
        colours, inked = pixel_variety(shot)
        assert colours > 50 and inked > 0.02, (colours, inked)


def test_show_errors_are_one_line(kit, tmp_path: Path) -> None:
    kit.archiver().archive(kit.submit("[scenario:completed] one run"))
    missing = _show(kit.uri, "0" * 36)
    assert missing.exit_code == 1
    assert (
        missing.output
        == f"error: run {'0' * 36} is not archived (no committed manifest names it)\n"
    )
    bad = _show(kit.uri, "../etc/passwd")
    assert bad.exit_code == 2 and len(bad.output.splitlines()) == 1
    assert "not a valid run id" in bad.output


def test_show_default_path_symlinks_and_atomic_write(
    local_kit, tmp_path: Path, monkeypatch
) -> None:
    (run_id,) = local_kit.submit("[scenario:completed] paths")
    local_kit.archiver().archive([run_id])
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    result = _show(local_kit.uri, run_id)
    assert result.exit_code == 0, result.output
    page = work / "spine-show" / f"{run_id}.html"
    assert result.output.strip() == str(page)
    assert stat.S_IMODE((work / "spine-show").stat().st_mode) == 0o700
    first = page.read_bytes()
    assert _show(local_kit.uri, run_id).exit_code == 0  # replaced in place, same bytes
    assert page.read_bytes() == first
    assert sorted(os.listdir(work / "spine-show")) == [page.name]  # no temp file left

    target = tmp_path / "victim.txt"
    target.write_text("keep")
    link = tmp_path / "link.html"
    link.symlink_to(target)
    refused = _show(local_kit.uri, run_id, "--out", str(link))
    assert refused.exit_code == 1 and "is a symlink" in refused.output
    assert target.read_text() == "keep" and link.is_symlink()

    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    (other / "spine-show").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    refused = _show(local_kit.uri, run_id)
    assert refused.exit_code == 1 and "spine-show: it is a symlink" in refused.output


@pytest.mark.heavy
def test_heavy_scenarios_render_within_bounds(local_kit, chromium, tmp_path: Path) -> None:
    ids = local_kit.submit(
        "[scenario:huge-content] One block of 20 MB",
        "[scenario:many-blocks] A canvas of 20,000 blocks",
        "[scenario:deep-tasks] A task tree 5,000 levels deep",
        "[scenario:odd-sources] Sources as strings, nulls, nested arrays, 10,000",
        wait=False,
    )
    local_kit.wait(ids, timeout=120)
    assert local_kit.archiver().archive(ids).ok
    pages = {}
    for run_id, case in zip(ids, ("huge", "many", "deep", "odd"), strict=True):
        out = tmp_path / f"{case}.html"
        started = time.monotonic()
        result = _show(local_kit.uri, run_id, "--out", str(out))
        assert result.exit_code == 0, result.output
        assert time.monotonic() - started < 120
        pages[case] = out
    assert pages["huge"].stat().st_size < 2 * BLOCK_TEXT_MAX_BYTES + 1_000_000
    assert "Content truncated" in pages["huge"].read_text()
    assert pages["deep"].stat().st_size < 5_000_000
    assert pages["odd"].stat().st_size < 5_000_000
    many = pages["many"].read_text()
    assert many.count('<article class="block"') >= 20_000
    assert pages["many"].stat().st_size < 40_000_000 + PAGE_TEXT_BUDGET_BYTES
    dom = chromium(pages["many"], "--dump-dom").stdout
    assert dom.count('<a class="node"') == many.count('<a class="node"') >= 20_000
