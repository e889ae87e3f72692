"""The self-contained HTML credit report: inline SVG chart, tables, no external assets.

One file an auditor can mail or archive: no scripts, fonts, images or stylesheets from
anywhere else, so it renders the same offline and years later.
"""

from __future__ import annotations

import html
import math
import os
from collections import defaultdict
from datetime import date, timedelta
from typing import Any

from spine_pipeline.audit.reports import Budgets, ReportData, Table, load_report_data

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
svg text{font-family:inherit}
"""


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, list):
        return "; ".join(str(v) for v in value)
    return str(value)


def _table(table: Table, table_id: str, empty: str = "none") -> str:
    if not table.rows:
        return f'<p class="muted" id="{table_id}">{html.escape(empty)}</p>'
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = []
    for row in table.rows:
        cells = []
        for v in row:
            num = isinstance(v, int | float) and not isinstance(v, bool)
            cells.append(f"<td{' class=num' if num else ''}>{html.escape(_fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<table id="{table_id}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for m in (1, 2, 2.5, 5, 10):
        if value <= m * exp:
            return m * exp
    return 10 * exp


def daily_chart_svg(
    daily_by_template: Table, budgets: Budgets, *, width: int = 960, height: int = 320
) -> str:
    """Stacked bars of credits per day by template, with the daily budget line."""
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
    top = _nice_max(max(peak, budgets.daily or 0) * 1.05)
    left, right, top_pad, bottom = 64, 16, 16, 48
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    slot = plot_w / len(days)
    bar_w = max(1.0, slot * 0.7)

    def y(v: float) -> float:
        return top_pad + plot_h - plot_h * v / top

    parts = [
        f'<svg id="daily-chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height + 24 + 18 * math.ceil(len(templates) / 4)}" role="img" '
        f'aria-label="Daily credits stacked by template">'
    ]
    for i in range(5):
        v = top * i / 4
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
            f'stroke="#e4e7eb"/><text x="{left - 6}" y="{y(v) + 4:.1f}" font-size="11" '
            f'text-anchor="end" fill="#627d98">{v:,.0f}</text>'
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
                f'height="{y(base) - y(base + v):.1f}" fill="{colors[t]}">'
                f"<title>{html.escape(f'{day} {t}: {v:,} credits')}</title></rect>"
            )
            base += v
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{top_pad + plot_h + 16}" font-size="11" '
                f'text-anchor="middle" fill="#334e68">{day:%m-%d}</text>'
            )
    if budgets.daily:
        by = y(budgets.daily)
        parts.append(
            f'<line id="budget-line" x1="{left}" x2="{width - right}" y1="{by:.1f}" '
            f'y2="{by:.1f}" stroke="#c53030" stroke-width="2" stroke-dasharray="6 4"/>'
            f'<text x="{left + 4}" y="{by - 5:.1f}" font-size="11" text-anchor="start" '
            f'fill="#c53030">daily budget {budgets.daily:,.0f}</text>'
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
            f"{html.escape(t)} ({totals[t]:,})</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def render_report_data_html(data: ReportData) -> str:
    period = f"{data.since} to {data.until}" if data.until else "no runs yet"
    cards = [
        f'<div class="card">credits<b id="total-credits">{data.total_credits:,}</b></div>',
        f'<div class="card">runs<b id="total-runs">{data.total_runs:,}</b></div>',
    ]
    for b in data.budget_status:
        cards.append(
            f'<div class="card budget">budget {html.escape(b.period)}<b class="{b.level}">'
            f"{b.spent:,} / {b.budget:,.0f}</b>{b.fraction:.0%} {b.level.upper()}</div>"
        )
    if not data.budget_status:
        cards.append(
            '<div class="card budget">budgets<b class="muted">not set</b>'
            "SPINE_CREDIT_BUDGET_DAILY / _MONTHLY</div>"
        )
    body = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>Spine credit usage</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Spine credit usage</h1>",
        f'<p class="muted">{html.escape(period)}; generated '
        f"{data.generated_at:%Y-%m-%d %H:%M} UTC. Credits are Spine's per-run totals.</p>",
        f'<div class="cards">{"".join(cards)}</div>',
        "<h2>Daily credits by template</h2>",
        daily_chart_svg(data.daily_by_template, data.budgets),
        "<h2>Anomalies</h2>",
        '<p class="muted">Runs on days whose credits exceed 3&times; the median of the days '
        "with runs among the 7 days before.</p>",
        _table(data.anomalies, "anomalies", "no anomalous days"),
        "<h2>Top requests</h2>",
        _table(data.requests, "top-requests", "no runs"),
        "<h2>Most expensive runs</h2>",
        _table(data.top_runs, "top-runs", "no runs"),
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
        _table(data.overdue, "overdue", "none"),
        "</body></html>",
    ]
    return "\n".join(body) + "\n"


def render_credit_report_html(
    db_path: str | os.PathLike[str],
    *,
    since: date | None = None,
    budgets: Budgets | None = None,
    today: date | None = None,
) -> str:
    """The whole report as one HTML string (write it anywhere: file, archive root, S3)."""
    return render_report_data_html(
        load_report_data(db_path, since=since, budgets=budgets, today=today)
    )
