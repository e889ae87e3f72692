"""The self-contained HTML credit report: inline SVG chart, tables, no external assets.

One file an auditor can mail or archive: no scripts, fonts, images or stylesheets from
anywhere else, so it renders the same offline and years later.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

from spine_pipeline.audit.reports import Budgets, ReportData, Table, load_report_data
from spine_pipeline.evidence.text import clip, visible

PALETTE = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
    "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
]  # fmt: skip
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;
 margin:24px;color:#1f2933;background:#fff}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px}
.muted{color:#627d98;font-size:13px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.card{border:1px solid #d9e2ec;border-radius:6px;padding:10px 14px;min-width:150px}
.card b{display:block;font-size:20px}
.ok{color:#2f855a}.warn{color:#b7791f}.alert{color:#c53030}
table{border-collapse:collapse;font-size:13px;margin:4px 0 8px}
th,td{border-bottom:1px solid #e4e7eb;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f5f7fa} td.num{text-align:right;font-variant-numeric:tabular-nums}
td.run{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px;
 unicode-bidi:isolate} td.prompt{max-width:28em;unicode-bidi:isolate}
a.canvas{font-size:11px} td.day{white-space:nowrap}
svg text{font-family:inherit}
"""


#: Column headings a reader understands; a column not listed gets its name in words.
COLUMN_LABELS = {
    "day": "Day (UTC)",
    "runs": "Runs",
    "credits": "Credits",
    "completed_runs": "Completed",
    "partial_runs": "Partial",
    "failed_runs": "Failed",
    "runs_without_credits": "Runs without credits",
    "credits_per_run": "Credits per run",
    "trailing_7d_median": "Median of the 7 days before",
    "anomaly": "Anomaly",
    "template": "Template",
    "pct_credits": "Share of credits",
    "model": "Model",
    "credits_of_runs": "Credits of its runs",
    "runs_shared_with_other_models": "Runs shared with other models",
    "request_name": "Request",
    "max_run_credits": "Largest run (credits)",
    "run_id": "Run",
    "status": "Status",
    "day_credits": "Credits that day",
    "day_ratio": "Day / median",
    "errors": "Errors",
    "top_errors": "Most frequent errors",
    "state": "State",
    "hours": "Hours",
    "prompt": "Prompt",
}
#: Columns holding credit amounts: all shown with `CREDIT_DECIMALS` decimals, so a column
#: of totals and one of averages read alike.
CREDIT_COLUMNS = frozenset(
    {
        "credits",
        "credits_per_run",
        "trailing_7d_median",
        "credits_of_runs",
        "max_run_credits",
        "day_credits",
    }
)
CREDIT_DECIMALS = 2
#: A prompt is shown up to this many characters (the whole of what the report read is in
#: the cell's tooltip).
PROMPT_SHOWN_CHARS = 90
_WEB_URL = re.compile(r"https?://[^\s\"'<>\\]+", re.IGNORECASE)
_INERT = ' rel="noopener noreferrer nofollow" referrerpolicy="no-referrer"'


def label(column: str) -> str:
    """The heading of a column: its human label, else its name in words."""
    return COLUMN_LABELS.get(column) or column.replace("_", " ").capitalize()


def credits_text(value: float | int | Decimal | None) -> str:
    """A credit amount as every part of the report shows it: thousands separators, fixed
    decimals."""
    return "" if value is None else f"{float(value):,.{CREDIT_DECIMALS}f}"


def _esc(text: str) -> str:
    """Untrusted text for HTML: control and bidi characters made visible, then escaped."""
    return html.escape(visible(text), quote=True)


def _fmt(value: Any, column: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, Decimal):
        value = float(value)
    if column in CREDIT_COLUMNS and isinstance(value, int | float):
        return credits_text(value)
    if column == "pct_credits" and isinstance(value, int | float):
        return f"{value:.1f} %"
    if column == "day_ratio" and isinstance(value, int | float):
        return f"{value:,.2f}\u00d7"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list):
        return "; ".join(str(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class RunLink:
    """Where a run id in the report leads: its evidence page when one exists (a relative
    link), else its Spine canvas; `canvas` is also shown beside a page link."""

    page: str | None = None
    canvas: str | None = None
    prompt: str | None = None


def web_url(url: str | None) -> str | None:
    """`url` if it is a plain http(s) URL that is safe as a link target, else None (a
    `javascript:` or `data:` URL, or one with spaces, quotes or controls, is not linked)."""
    if url is None or len(url) > 2048 or not _WEB_URL.fullmatch(url) or not url.isprintable():
        return None
    return url


def run_links(data: ReportData, pages: Mapping[str, str] | None = None) -> dict[str, RunLink]:
    """Each linked run's link targets, from its archived canvas URL and the evidence pages
    found (`page_links`)."""
    pages = pages or {}
    ids = set(data.run_details) | set(pages)
    return {
        r: RunLink(
            page=pages.get(r),
            canvas=web_url(d.canvas_url) if (d := data.run_details.get(r)) else None,
            prompt=d.prompt if d else None,
        )
        for r in ids
    }


def page_links(
    run_ids: Iterable[str], report_path: Path, directories: Sequence[Path]
) -> dict[str, str]:
    """Links, relative to the report file, to the evidence pages (`spine-pipeline show`, or
    Dagster's) that exist for `run_ids` in `directories` (first found wins)."""
    from spine_pipeline.evidence.show import page_file, valid_run_id

    base = report_path.absolute().parent
    links = {}
    for run_id in run_ids:
        if not valid_run_id(run_id):
            continue
        for directory in directories:
            page = page_file(directory, run_id)
            if page.is_file():
                try:
                    rel = os.path.relpath(page.absolute(), base)
                except ValueError:  # another drive: only an absolute URL reaches it
                    links[run_id] = page.absolute().as_uri()
                else:
                    links[run_id] = quote(Path(rel).as_posix())
                break
    return links


def _run_cell(run_id: str, link: RunLink | None) -> str:
    text = _esc(run_id)
    if link is None:
        return f'<td class="run">{text}</td>'
    title = f' title="{_esc(clip(link.prompt, PROMPT_SHOWN_CHARS * 3))}"' if link.prompt else ""
    if link.page is not None:
        canvas = (
            f' <a class="canvas" href="{html.escape(link.canvas, quote=True)}"{_INERT}>canvas</a>'
            if link.canvas
            else ""
        )
        return (
            f'<td class="run"><a class="page" href="{html.escape(link.page, quote=True)}"'
            f"{title}>{text}</a>{canvas}</td>"
        )
    if link.canvas is not None:
        return (
            f'<td class="run"><a class="canvas" href="{html.escape(link.canvas, quote=True)}"'
            f"{_INERT}{title}>{text}</a></td>"
        )
    return f'<td class="run"{title}>{text}</td>'


def _table(
    table: Table,
    table_id: str,
    empty: str = "none",
    links: Mapping[str, RunLink] | None = None,
) -> str:
    if not table.rows:
        return f'<p class="muted" id="{table_id}">{html.escape(empty)}</p>'
    links = links or {}
    head = "".join(
        f'<th data-column="{_esc(c)}">{html.escape(label(c))}</th>' for c in table.columns
    )
    body = []
    for row in table.rows:
        cells = []
        for column, v in zip(table.columns, row, strict=True):
            if column == "run_id" and isinstance(v, str):
                cells.append(_run_cell(v, links.get(v)))
                continue
            if column == "prompt":
                text = str(v or "")
                cells.append(
                    f'<td class="prompt" title="{_esc(text)}">'
                    f"{_esc(clip(text, PROMPT_SHOWN_CHARS))}</td>"
                )
                continue
            num = isinstance(v, int | float | Decimal) and not isinstance(v, bool)
            kind = " class=num" if num else " class=day" if isinstance(v, date) else ""
            cells.append(f"<td{kind}>{_esc(_fmt(v, column))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<table id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def nice_step(value: float, max_ticks: int = 5) -> float:
    """The tick step for an axis from 0 to at least `value`: 1, 2, 2.5 or 5 times a power of
    ten, the smallest giving at most `max_ticks` steps (never below 1: credits are whole)."""
    if value <= 0:
        return 1.0
    raw = value / max_ticks
    exp = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for m in (1, 2, 2.5, 5, 10):
        if m * exp >= raw:
            return max(1.0, m * exp)
    return max(1.0, 10 * exp)  # pragma: no cover - the loop always returns


def nice_axis(value: float, max_ticks: int = 5) -> list[float]:
    """Ticks 0, step, ..., top: the smallest multiple of `nice_step` at or above `value`."""
    step = nice_step(value, max_ticks)
    count = max(1, math.ceil(value / step - 1e-9))
    return [step * i for i in range(count + 1)]


def daily_chart_svg(
    daily_by_template: Table, budgets: Budgets, *, width: int = 960, height: int = 320
) -> str:
    """Stacked bars of credits per day by template, with the daily budget line.

    The axis is scaled to the data: its top is the first nice tick at or above the busiest
    day (or the daily budget, when the budget is within twice that, so its line shows in
    context); a budget far above the data is named in a note instead of flattening the bars.
    `data-axis-max` and `data-data-max` on the `<svg>` carry both numbers for checks.
    """
    per_day: dict[date, dict[str, int]] = defaultdict(dict)
    for day, template, credits in daily_by_template.rows:
        per_day[day][template] = int(credits or 0)
    if not per_day:
        return '<p class="muted" id="daily-chart">no runs in this period</p>'
    first, last = min(per_day), max(per_day)
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    totals = {
        t: sum(v.get(t, 0) for v in per_day.values())
        for t in {t for v in per_day.values() for t in v}
    }
    templates = sorted(totals, key=lambda t: (-totals[t], t))
    colors = {t: PALETTE[i % len(PALETTE)] for i, t in enumerate(templates)}
    peak = max(sum(v.values()) for v in per_day.values())
    budget = budgets.daily
    budget_on_chart = bool(budget) and budget is not None and budget <= 2 * max(peak, 1)
    ticks = nice_axis(max(peak, budget if budget_on_chart and budget else 0))
    top = ticks[-1]
    left, right, top_pad, bottom = 72, 16, 16, 56
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    slot = plot_w / len(days)
    bar_w = max(1.0, slot * 0.7)

    def y(v: float) -> float:
        return top_pad + plot_h - plot_h * v / top

    legend_rows = math.ceil(len(templates) / 4)
    parts = [
        f'<svg id="daily-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height + 24 + 18 * legend_rows}" role="img" '
        f'aria-label="Daily credits stacked by template" data-axis-max="{top:g}" '
        f'data-data-max="{peak}">'
    ]
    for v in ticks:
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
            f'stroke="#e4e7eb"/><text class="tick" x="{left - 6}" y="{y(v) + 4:.1f}" '
            f'font-size="11" text-anchor="end" fill="#627d98">{v:,.0f}</text>'
        )
    parts.append(
        f'<text x="14" y="{top_pad + plot_h / 2:.1f}" font-size="11" fill="#334e68" '
        f'text-anchor="middle" transform="rotate(-90 14 {top_pad + plot_h / 2:.1f})">'
        "Credits</text>"
        f'<text x="{left + plot_w / 2:.1f}" y="{top_pad + plot_h + 36}" font-size="11" '
        'fill="#334e68" text-anchor="middle">Day (UTC)</text>'
    )
    label_every = max(1, math.ceil(len(days) / 12))
    for i, day in enumerate(days):
        x = left + i * slot + (slot - bar_w) / 2
        base = 0
        for t in templates:
            v = per_day.get(day, {}).get(t, 0)
            if not v:
                continue
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y(base + v):.1f}" width="{bar_w:.1f}" '
                f'height="{y(base) - y(base + v):.1f}" fill="{colors[t]}" data-credits="{v}">'
                f"<title>{_esc(f'{day} {t}: {credits_text(v)} credits')}</title></rect>"
            )
            base += v
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{top_pad + plot_h + 16}" font-size="11" '
                f'text-anchor="middle" fill="#334e68">{day:%m-%d}</text>'
            )
    if budget and budget_on_chart:
        by = y(budget)
        parts.append(
            f'<line id="budget-line" x1="{left}" x2="{width - right}" y1="{by:.1f}" '
            f'y2="{by:.1f}" stroke="#c53030" stroke-width="2" stroke-dasharray="6 4"/>'
            f'<text x="{left + 4}" y="{by - 5:.1f}" font-size="11" text-anchor="start" '
            f'fill="#c53030">daily budget {credits_text(budget)}</text>'
        )
    elif budget:
        parts.append(
            f'<text id="budget-off-chart" x="{width - right}" y="{top_pad + 10}" '
            'font-size="11" text-anchor="end" fill="#c53030">daily budget '
            f"{credits_text(budget)} (above the chart)</text>"
        )
    parts.append(
        f'<line x1="{left}" x2="{width - right}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#9aa5b1"/>'
    )
    legend_y = height + 8
    for i, t in enumerate(templates):
        lx = left + (i % 4) * 220
        ly = legend_y + 18 * (i // 4)
        parts.append(
            f'<rect x="{lx}" y="{ly}" width="12" height="12" fill="{colors[t]}"/>'
            f'<text x="{lx + 18}" y="{ly + 10}" font-size="12" fill="#1f2933">'
            f"{_esc(clip(t, 28))} ({credits_text(totals[t])})</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


_CSS_HASH = base64.b64encode(hashlib.sha256(_CSS.encode("utf-8")).digest()).decode("ascii")
#: Nothing but the report's own `<style>` may apply: no script, no fetch, no frame, so even
#: a string that escaped escaping could do nothing.
CSP = (
    f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; img-src data:; "
    "base-uri 'none'; form-action 'none'"
)


def render_report_data_html(data: ReportData, pages: Mapping[str, str] | None = None) -> str:
    """The report as one HTML string. `pages` maps run ids to links to their evidence pages
    (`page_links`); runs without one link to their Spine canvas."""
    links = run_links(data, pages)
    period = f"{data.since} to {data.until}" if data.until else "no runs yet"
    cards = [
        '<div class="card">credits<b id="total-credits">'
        f"{credits_text(data.total_credits)}</b></div>",
        f'<div class="card">runs<b id="total-runs">{data.total_runs:,}</b></div>',
    ]
    for b in data.budget_status:
        cards.append(
            f'<div class="card budget">budget {_esc(b.period)}<b class="{b.level}">'
            f"{credits_text(b.spent)} / {credits_text(b.budget)}</b>"
            f"{b.fraction:.0%} {b.level.upper()}</div>"
        )
    if not data.budget_status:
        cards.append(
            '<div class="card budget">budgets<b class="muted">not set</b>'
            "SPINE_CREDIT_BUDGET_DAILY / _MONTHLY</div>"
        )
    top_runs = Table(
        [*data.top_runs.columns, "prompt"],
        [
            (*row, (d.prompt if (d := data.run_details.get(str(row[0]))) else None))
            for row in data.top_runs.rows
        ],
    )
    body = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{html.escape(CSP)}">',
        '<meta name="referrer" content="no-referrer">',
        "<title>Spine credit usage</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Spine credit usage</h1>",
        f'<p class="muted">{_esc(period)}; generated '
        f"{data.generated_at:%Y-%m-%d %H:%M} UTC. Credits are Spine's per-run totals. "
        "Run ids link to the run's evidence page when one was written "
        "(<code>spine-pipeline show</code>), else to its Spine canvas.</p>",
        f'<div class="cards">{"".join(cards)}</div>',
        "<h2>Daily credits by template</h2>",
        daily_chart_svg(data.daily_by_template, data.budgets),
        "<h2>Anomalies</h2>",
        '<p class="muted">Runs on days whose credits exceed 3&times; the median of the days '
        "with runs among the 7 days before.</p>",
        _table(data.anomalies, "anomalies", "no anomalous days", links),
        "<h2>Top requests</h2>",
        _table(data.requests, "top-requests", "no runs"),
        "<h2>Most expensive runs</h2>",
        _table(top_runs, "top-runs", "no runs", links),
        "<h2>By template</h2>",
        _table(data.templates, "by-template", "no runs"),
        "<h2>By model</h2>",
        '<p class="muted">Spine reports only a run total: each run counts once under every '
        "model it used, with its whole total. These credits do not add up across models.</p>",
        _table(data.models, "by-model", "no runs"),
        "<h2>Daily</h2>",
        _table(data.daily, "daily", "no runs"),
        "<h2>Run outcomes</h2>",
        _table(data.outcomes, "outcomes", "no runs"),
        "<h2>Overdue runs (over 3 h)</h2>",
        _table(data.overdue, "overdue", "none", links),
        "</body></html>",
    ]
    return "\n".join(body) + "\n"


def render_credit_report_html(
    db_path: str | os.PathLike[str],
    *,
    since: date | None = None,
    budgets: Budgets | None = None,
    today: date | None = None,
    pages: Mapping[str, str] | None = None,
) -> str:
    """The whole report as one HTML string (write it anywhere: file, archive root, S3)."""
    return render_report_data_html(
        load_report_data(db_path, since=since, budgets=budgets, today=today), pages
    )
