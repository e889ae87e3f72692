"""Credit report: CLI table, budgets, headline, and the HTML report in headless Chromium."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime
from html.parser import HTMLParser
from pathlib import Path

import duckdb
import pytest
from click.testing import CliRunner

from spine_pipeline.audit import Budgets, headline_markdown, render_credit_report_html
from spine_pipeline.audit.html_report import nice_axis, page_links, render_report_data_html
from spine_pipeline.audit.reports import ReportData, RunDetail, Table, load_report_data
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


class _Dom(HTMLParser):
    """Anchors (with the id of the table they sit in), header cells and tick labels of a
    dumped DOM: what a reader clicks and reads."""

    def __init__(self) -> None:
        super().__init__()
        self.table: str | None = None
        self.anchors: list[tuple[str | None, str, str]] = []  # (table id, href, text)
        self.headers: list[str] = []
        self.ticks: list[str] = []
        self.scripts = 0
        self._open: tuple[str, dict[str, str | None]] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self.table = a.get("id")
        if tag == "script":
            self.scripts += 1
        if tag == "a" or tag == "th" or (tag == "text" and a.get("class") == "tick"):
            self._open, self._text = (tag, a), []

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.table = None
        if self._open is None or self._open[0] != tag:
            return
        text = "".join(self._text)
        if tag == "a":
            self.anchors.append((self.table, self._open[1].get("href") or "", text))
        elif tag == "th":
            self.headers.append(text)
        else:
            self.ticks.append(text)
        self._open = None


def _dom(text: str) -> _Dom:
    parser = _Dom()
    parser.feed(text)
    return parser


def test_html_report_renders_in_headless_chromium(
    world: World,
    tmp_path: Path,
    chromium: Callable[..., subprocess.CompletedProcess[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # `show` writes ./spine-show/, where the report looks
    env = {
        "SPINE_AUDIT_DB": str(world.db),
        "SPINE_ARCHIVE_URI": world.archive_uri,
        "SPINE_CREDIT_BUDGET_DAILY": "1500",
    }
    top = sorted(world.runs, key=lambda r: (-r.credits, r.run_id))[:10]
    with_page = {top[0].run_id, top[2].run_id}
    for run_id in with_page:
        shown = CliRunner().invoke(main, ["show", run_id], env=env)
        assert shown.exit_code == 0, shown.output
    out = tmp_path / "reports" / "report.html"
    out.parent.mkdir()
    result = CliRunner().invoke(main, ["report", "credits", "--html", str(out)], env=env)
    assert result.exit_code == 0, result.output
    page = out.read_text()
    # Self-contained: nothing loaded from anywhere (links are only followed when clicked).
    assert not re.search(r"""\ssrc\s*=""", page) and "<link" not in page
    assert "<script" not in page and "@import" not in page and "url(" not in page
    assert "Content-Security-Policy" in page

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
    for table_id in ("top-requests", "top-runs", "by-template", "by-model", "daily", "anomalies"):
        assert re.search(rf'<table id="{table_id}">', dom), table_id
    total = sum(r.credits for r in world.runs)
    assert f'<b id="total-credits">{total:,.2f}</b>' in dom
    for name in {r.request_name for r in world.runs if r.request_name}:
        assert name in dom
    parsed = _dom(dom)

    # Run ids link to their evidence page when one exists (and it resolves), else to the
    # run's canvas as archived.
    with duckdb.connect(str(world.db), read_only=True) as con:
        canvas = dict(con.execute("SELECT run_id, canvas_url FROM runs").fetchall())
    links = {text: href for table, href, text in parsed.anchors if table == "top-runs"}
    assert set(links) >= {r.run_id for r in top}, links
    for r in top:
        href = links[r.run_id]
        if r.run_id in with_page:
            assert href == f"../spine-show/{r.run_id}.html"
            assert (out.parent / href).resolve().is_file()
        else:
            assert href == canvas[r.run_id] and href.startswith("https://app.getspine.ai/canvas/")
    assert ("top-runs", canvas[top[0].run_id], "canvas") in parsed.anchors
    anomaly_links = [href for table, href, _ in parsed.anchors if table == "anomalies"]
    assert anomaly_links and all(h for h in anomaly_links)

    # Headers in words, not column names.
    assert "Run" in parsed.headers and "Credits" in parsed.headers
    assert not [h for h in parsed.headers if "_" in h], parsed.headers

    # The axis is scaled to the data: its top tick is the first nice tick at or above the
    # busiest day (the budget, 1,500, counts when within twice that).
    per_day = Counter()
    for r in world.runs:
        per_day[r.day] += r.credits
    peak = max(per_day.values())
    wanted = max(peak, 1500 if 2 * peak >= 1500 else 0)
    ticks = [float(t.replace(",", "")) for t in parsed.ticks]
    assert ticks == nice_axis(wanted) and ticks[-1] >= wanted > ticks[-2]
    assert f'data-axis-max="{ticks[-1]:g}"' in dom and f'data-data-max="{peak}"' in dom
    assert ('id="budget-line"' in dom) == (2 * peak >= 1500)

    # Credits: thousands separators and two decimals, in every credits column.
    daily = re.search(r'<table id="daily">.*?</table>', dom, re.S)
    assert daily is not None
    cells = re.findall(r"<td class=\"?num\"?>([^<]*)</td>", daily.group(0))
    assert cells and all(re.fullmatch(r"[0-9]{1,3}(,[0-9]{3})*(\.[0-9]{2})?%?", c) for c in cells)
    credit_cells = re.findall(r"<td class=\"?num\"?>([0-9,]+\.[0-9]{2})</td>", daily.group(0))
    assert len(credit_cells) >= len(per_day)


def test_nice_axis_fits_the_data() -> None:
    assert nice_axis(1234) == [0, 250, 500, 750, 1000, 1250]
    assert nice_axis(1000) == [0, 200, 400, 600, 800, 1000]
    assert nice_axis(3) == [0, 1, 2, 3]
    assert nice_axis(0) == [0, 1]
    for peak in (1, 7, 99, 101, 4_999, 123_456):
        ticks = nice_axis(peak)
        assert ticks[-1] >= peak > ticks[-2] and len(ticks) <= 6, (peak, ticks)


_HOSTILE = '"><script>alert(1)</script><img src=x onerror=alert(2)>\u202egnp.exe'


def test_hostile_strings_are_escaped_and_never_linked(
    tmp_path: Path, chromium: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    """Run ids, prompts, names and canvas URLs are text, whatever they hold (the archive
    takes what Spine sends)."""
    table = Table(
        ["run_id", "day", "request_name", "template", "status", "credits"],
        [
            (_HOSTILE, date(2026, 1, 2), _HOSTILE, _HOSTILE, "completed", 1234),
            ("plain-run", date(2026, 1, 2), "r", "t", "completed", 5),
        ],
    )
    data = ReportData(
        generated_at=datetime(2026, 1, 3, tzinfo=UTC),
        since=date(2026, 1, 2),
        until=date(2026, 1, 2),
        total_runs=2,
        total_credits=1239,
        daily=Table(["day", "runs", "credits"], [(date(2026, 1, 2), 2, 1239)]),
        daily_by_template=Table(
            ["day", "template", "credits"], [(date(2026, 1, 2), _HOSTILE, 1234)]
        ),
        templates=Table(["template", "runs", "credits"], [(_HOSTILE, 1, 1234)]),
        models=Table(["model"], []),
        requests=Table(["request_name", "runs", "credits"], [(_HOSTILE, 1, 1234)]),
        top_runs=table,
        anomalies=Table(["day"], []),
        outcomes=Table(["status", "top_errors"], [("failed", [_HOSTILE])]),
        overdue=Table(["run_id"], []),
        budgets=Budgets(),
        run_details={
            _HOSTILE: RunDetail("javascript:alert(3)", _HOSTILE),
            "plain-run": RunDetail('https://app.getspine.ai/canvas/x" onmouseover="alert(4)', None),
        },
    )
    pages_dir = tmp_path / "pages"
    pages_dir.mkdir()
    (pages_dir / "plain-run.html").write_text("<p>page</p>")
    out = tmp_path / "hostile.html"
    pages = page_links([_HOSTILE, "plain-run"], out, [pages_dir])
    assert pages == {"plain-run": "pages/plain-run.html"}
    out.write_text(render_report_data_html(data, pages))
    page = out.read_text()
    assert "<script" not in page and "<img" not in page and "javascript:" not in page
    assert "\u202e" not in page  # made visible, not obeyed
    dom_run = chromium(out, "--dump-dom")
    assert dom_run.returncode == 0, dom_run.stderr[-2000:]
    parsed = _dom(dom_run.stdout)
    assert parsed.scripts == 0
    # Neither hostile canvas URL is a link; the hostile id is no evidence page either
    # (not a run id a page can have), so it is plain text.
    assert [a for a in parsed.anchors if a[0] == "top-runs"] == [
        ("top-runs", "pages/plain-run.html", "plain-run")
    ]
    assert "onerror" not in re.sub(r"&[a-z]+;|&#[0-9]+;", "", "".join(parsed.headers))
    assert dom_run.stdout.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 4


def test_render_html_library_api(world: World) -> None:
    html = render_credit_report_html(world.db, budgets=Budgets(), today=datetime.now(UTC).date())
    assert html.startswith("<!DOCTYPE html>")
    assert "budgets<b" in html  # budgets not set
