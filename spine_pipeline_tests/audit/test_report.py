"""Credit report: CLI table, budgets, headline, and the HTML report in headless Chromium."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from spine_pipeline.audit import Budgets, headline_markdown, render_credit_report_html
from spine_pipeline.audit.reports import load_report_data
from spine_pipeline.cli import main
from spine_pipeline_tests.audit.conftest import World


def test_report_credits_cli_each_grouping(world: World) -> None:
    env = {"SPINE_AUDIT_DB": str(world.db)}
    total = sum(r.credits for r in world.runs)
    for by, first_col in (
        ("day", "day"),
        ("template", "template"),
        ("model", "model"),
        ("request", "request_name"),
    ):
        result = CliRunner().invoke(main, ["report", "credits", "--by", by], env=env)
        assert result.exit_code == 0, result.output
        assert result.output.splitlines()[0].split()[0] == first_col
        assert f"total: {total:,} credits over {len(world.runs)} runs" in result.output
    by_template = CliRunner().invoke(main, ["report", "credits", "--by", "template"], env=env)
    expected = Counter()
    for r in world.runs:
        expected[r.template] += r.credits
    for template, credits in expected.items():
        assert re.search(rf"^{template}\s+\d+\s+{credits}\s", by_template.output, re.M)
    bad = CliRunner().invoke(main, ["report", "credits", "--by", "week"], env=env)
    assert bad.exit_code == 2


def test_budgets_warn_and_alert(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    today = max(r.day for r in world.runs)
    spent_today = sum(r.credits for r in world.runs if r.day == today)
    spent_month = sum(
        r.credits for r in world.runs if (r.day.year, r.day.month) == (today.year, today.month)
    )
    data = load_report_data(
        world.db, budgets=Budgets(daily=spent_today / 0.9, monthly=spent_month / 2), today=today
    )
    levels = {b.period.split()[0]: (b.spent, b.level) for b in data.budget_status}
    assert levels == {"day": (spent_today, "warn"), "month": (spent_month, "alert")}
    monkeypatch.setenv("SPINE_CREDIT_BUDGET_DAILY", str(spent_today * 10))
    monkeypatch.delenv("SPINE_CREDIT_BUDGET_MONTHLY", raising=False)
    assert Budgets.from_env() == Budgets(daily=spent_today * 10, monthly=None)
    monkeypatch.setenv("SPINE_CREDIT_BUDGET_DAILY", "lots")
    result = CliRunner().invoke(main, ["report", "credits"], env={"SPINE_AUDIT_DB": str(world.db)})
    assert result.exit_code == 2 and "SPINE_CREDIT_BUDGET_DAILY must be a number" in result.output


def test_headline_markdown(world: World) -> None:
    md = headline_markdown(world.db, budgets=Budgets(daily=100.0))
    total = sum(r.credits for r in world.runs)
    assert f"{total:,} credits over {len(world.runs)} runs" in md
    assert "| day | runs | credits | anomaly |" in md
    assert "budget day" in md
    assert "anomalous days" in md


def test_html_report_renders_in_headless_chromium(
    world: World, tmp_path: Path, chromium: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    out = tmp_path / "report.html"
    env = {"SPINE_AUDIT_DB": str(world.db), "SPINE_CREDIT_BUDGET_DAILY": "1500"}
    result = CliRunner().invoke(main, ["report", "credits", "--html", str(out)], env=env)
    assert result.exit_code == 0, result.output
    page = out.read_text()
    # Self-contained: no external scripts, styles, images or fonts.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page and "@import" not in page and "url(" not in page

    shot = tmp_path / "report.png"
    shot_run = chromium(out, f"--screenshot={shot}", window="1200,1600")
    assert shot.exists() and shot.stat().st_size > 10_000, shot_run.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    dom_run = chromium(out, "--dump-dom", window="1200,1600")
    dom = dom_run.stdout
    assert dom_run.returncode == 0, dom_run.stderr[-2000:]
    assert '<svg id="daily-chart"' in dom
    bars = re.findall(r'<rect class="bar"', dom)
    per_day_template = {(r.day, r.template) for r in world.runs if r.credits > 0}
    assert len(bars) == len(per_day_template)
    assert 'id="budget-line"' in dom
    for table_id in ("top-requests", "top-runs", "by-template", "by-model", "daily", "anomalies"):
        assert re.search(rf'<table id="{table_id}">', dom), table_id
    total = sum(r.credits for r in world.runs)
    assert f'<b id="total-credits">{total:,}</b>' in dom
    for name in {r.request_name for r in world.runs if r.request_name}:
        assert name in dom


def test_render_html_library_api(world: World) -> None:
    html = render_credit_report_html(world.db, budgets=Budgets(), today=datetime.now(UTC).date())
    assert html.startswith("<!DOCTYPE html>")
    assert "budgets<b" in html  # budgets not set
